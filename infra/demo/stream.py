"""The simulated world of the demo: a stream with concept drift, and reviewers who label part of it late.

Each *concept* is a river ``RandomRBF`` generator (its own random centroids and class regions) whose
points are moved by a per-feature offset: at a drift the population moves to a region where the old
decision rule is wrong, so both the inputs (feature drift) and the input->label relation change.
Drifts are abrupt and happen at known positions: fixed ones (``samples(n, drift_points)``) or
positions the caller chooses while streaming (``drift()``), recorded in ``drift_points``.
Everything is deterministic for a given seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from river.datasets import synth


@dataclass(frozen=True)
class Concept:
    """One concept of the synthetic stream: a river RandomRBF generator (``seed_model``, ``n_centroids``) whose
    features are shifted by ``offset``."""
    name: str
    seed_model: int
    """Seed of the RandomRBF centroids (the class regions)."""
    offset: float
    """Shift of the features: +offset on even features, -offset on odd ones."""
    n_centroids: int = 8


DEFAULT_CONCEPTS = (
    Concept("A", seed_model=7, offset=0.0),
    Concept("B", seed_model=11, offset=0.6),
    Concept("C", seed_model=15, offset=-0.6),
)
N_FEATURES = 5
FEATURE_NAMES = tuple(f"x{i}" for i in range(N_FEATURES))
CLASSES = ("0", "1")


@dataclass(frozen=True)
class Sample:
    """One event of the stream: its index, the concept that generated it, ``features`` (feature name to float)
    and the true ``label``."""
    index: int
    """Position in the stream (0-based)."""
    concept: int
    """Index of the concept that generated it."""
    features: dict
    label: str
    """The true label (what a reviewer would say)."""


class DriftingStream:
    """An endless stream of :class:`Sample` over ``concepts``; ``drift()`` moves to the next concept.

    >>> stream = DriftingStream(seed=1)
    >>> first = stream.next(); stream.drift(); later = stream.next()
    >>> (first.concept, later.concept, stream.drift_points)
    (0, 1, [1])
    """

    def __init__(self, concepts: Sequence[Concept] = DEFAULT_CONCEPTS, *, seed: int = 42):
        if len(concepts) < 1:
            raise ValueError("concepts: need at least one concept")
        self.concepts = tuple(concepts)
        self.seed = seed
        self.position = 0
        self.concept = 0
        self.drift_points: list[int] = []
        self._iters = [self._generator(i) for i in range(len(self.concepts))]

    def _generator(self, i: int) -> Iterator:
        c = self.concepts[i]
        gen = synth.RandomRBF(seed_model=c.seed_model, seed_sample=self.seed * 100 + i, n_classes=len(CLASSES),
                              n_features=N_FEATURES, n_centroids=c.n_centroids)
        return iter(gen)

    def next(self) -> Sample:
        """The next sample of the current concept (features shifted by the concept's offset)."""
        x, y = next(self._iters[self.concept])
        off = self.concepts[self.concept].offset
        features = {name: float(x[i] + (off if i % 2 == 0 else -off)) for i, name in enumerate(FEATURE_NAMES)}
        sample = Sample(self.position, self.concept, features, CLASSES[int(y)])
        self.position += 1
        return sample

    def drift(self) -> int:
        """Switch to the next concept from the next sample on; returns the drift position."""
        if self.concept + 1 >= len(self.concepts):
            raise ValueError(f"no concept left to drift to (there are {len(self.concepts)})")
        self.concept += 1
        self.drift_points.append(self.position)
        return self.position

    def take(self, n: int) -> list[Sample]:
        """The next ``n`` samples of the current concept, in order."""
        return [self.next() for _ in range(n)]

    @classmethod
    def samples(cls, n: int, drift_points: Sequence[int] = (), *, concepts: Sequence[Concept] = DEFAULT_CONCEPTS,
                seed: int = 42) -> list[Sample]:
        """``n`` samples with drifts at the given positions (fixed schedule)."""
        points = sorted(drift_points)
        if len(points) >= len(concepts):
            raise ValueError(f"drift_points: {len(points)} drifts need {len(points) + 1} concepts, have {len(concepts)}")
        if points and (points[0] <= 0 or points[-1] >= n):
            raise ValueError(f"drift_points: must lie strictly inside (0, {n}), got {points}")
        stream = cls(concepts, seed=seed)
        out = []
        for i in range(n):
            if points and i == points[0]:
                points.pop(0)
                stream.drift()
            out.append(stream.next())
        return out


def training_data(n: int, *, concept: int = 0, concepts: Sequence[Concept] = DEFAULT_CONCEPTS,
                  seed: int = 4242) -> tuple[list[dict], list[str]]:
    """Labeled examples of one concept, independent of the served stream (the initial training set)."""
    stream = DriftingStream(concepts, seed=seed)
    for _ in range(concept):
        stream.drift()
    samples = stream.take(n)
    return [s.features for s in samples], [s.label for s in samples]


@dataclass(frozen=True)
class Review:
    """A scheduled review of one served sample: due at stream index ``due_index`` (events), with the true
    ``label``; ``verdict`` correct/incorrect for a review, None for a plain label."""
    sample_index: int
    due_index: int
    """Stream position at which the review arrives (after that sample was served)."""
    prediction_id: str | None
    label: str
    feedback_type: str
    """label, or review (a verdict that also carries the true label)."""
    verdict: str | None
    reviewer: str


@dataclass
class Reviewers:
    """Reviewers label ``fraction`` of the predictions, each ``delay`` events after it was served
    (uniform in [min_delay, max_delay]); ``review_share`` of the feedback is a verdict on the predicted
    label (correct/incorrect, with the true label) instead of a plain label. Reviewers are right."""

    fraction: float = 0.5
    min_delay: int = 20
    max_delay: int = 200
    review_share: float = 0.2
    seed: int = 7
    names: tuple = ("ana", "bo", "chen")
    _pending: dict = field(default_factory=dict, repr=False)
    _rng: random.Random = field(default=None, repr=False)

    def __post_init__(self):
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"fraction: must be in [0, 1], got {self.fraction!r}")
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError(f"min_delay/max_delay: need 0 <= min_delay <= max_delay, got {self.min_delay}, {self.max_delay}")
        if not 0 <= self.review_share <= 1:
            raise ValueError(f"review_share: must be in [0, 1], got {self.review_share!r}")
        self._rng = random.Random(self.seed)

    def observe(self, sample: Sample, predicted_label: str | None = None, prediction_id: str | None = None) -> Review | None:
        """Decide whether (and when) ``sample`` will be reviewed; returns the scheduled review or None."""
        rng = self._rng
        reviewed = rng.random() < self.fraction
        delay = rng.randint(self.min_delay, self.max_delay)
        as_verdict = rng.random() < self.review_share
        reviewer = self.names[rng.randrange(len(self.names))]
        if not reviewed:
            return None
        if as_verdict and predicted_label is not None:
            verdict = "correct" if predicted_label == sample.label else "incorrect"
            review = Review(sample.index, sample.index + delay, prediction_id, sample.label, "review", verdict, reviewer)
        else:
            review = Review(sample.index, sample.index + delay, prediction_id, sample.label, "label", None, reviewer)
        self._pending.setdefault(review.due_index, []).append(review)
        return review

    def schedule(self, samples) -> list[Review]:
        """Observe every sample (no predicted label: plain labels) and return the scheduled reviews. The
        random draws do not depend on the predicted label, so a fresh ``Reviewers`` with the same
        settings schedules the same (sample, due index, label) while serving."""
        return [r for s in samples if (r := self.observe(s)) is not None]

    def due(self, position: int) -> list[Review]:
        """Reviews due at or before stream ``position`` (each returned once)."""
        ready = sorted(k for k in self._pending if k <= position)
        return [r for k in ready for r in self._pending.pop(k)]

    def drain(self) -> list[Review]:
        """Every review still pending (end of the stream)."""
        return self.due(max(self._pending, default=-1))

    @property
    def pending(self) -> int:
        """Reviews scheduled and not yet returned by :meth:`due` (count)."""
        return sum(len(v) for v in self._pending.values())
