"""Effectiveness: accuracy over time of three ways to run a model on the same drifting stream.

(a) *never retrained*: the initial model, frozen; (b) a river online learner that learns from the
same delayed reviews as they arrive (pre-trained on the same initial data); (c) the ctloop-managed
model: the labels actually served during the demo. Accuracy is measured against the true label of
every served sample (not only the reviewed ones), in windows placed by the known drift points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from infra.demo.stream import Review, Sample


# -- windowed accuracy maths ---------------------------------------------------------------------

def accuracy(correct: Sequence[bool], start: int = 0, end: int | None = None) -> float | None:
    """Share of True in correct[start:end]; None for an empty window."""
    part = correct[start:end]
    return (sum(1 for c in part if c) / len(part)) if len(part) else None


def rolling_accuracy(correct: Sequence[bool], window: int) -> list[float]:
    """Accuracy of the last ``window`` items at every position (shorter at the start)."""
    if window <= 0:
        raise ValueError(f"window: must be positive, got {window}")
    out, hits = [], 0
    for i, c in enumerate(correct):
        hits += 1 if c else 0
        if i >= window:
            hits -= 1 if correct[i - window] else 0
        out.append(hits / min(i + 1, window))
    return out


@dataclass(frozen=True)
class Window:
    name: str
    start: int
    end: int
    kind: str
    """before_drift, after_drift or after_recovery."""


def phase_windows(n: int, drift_points: Sequence[int], width: int | None = None) -> list[Window]:
    """Windows of the comparison: before the first drift (the last ``width`` events before it), right
    after each drift (its first ``width`` events) and after recovery (the last ``width`` events of each
    post-drift phase). ``width`` defaults to a third of the shortest phase."""
    points = list(drift_points)
    if any(b <= a for a, b in zip(points, points[1:])) or (points and (points[0] <= 0 or points[-1] >= n)):
        raise ValueError(f"drift_points: must increase strictly inside (0, {n}), got {points}")
    bounds = [0, *points, n]
    shortest = min(b - a for a, b in zip(bounds, bounds[1:]))
    w = width if width is not None else max(1, shortest // 3)
    if w <= 0:
        raise ValueError(f"width: must be positive, got {width}")
    if not points:
        return [Window("whole stream", 0, n, "before_drift")]
    windows = [Window("before drift", max(0, points[0] - w), points[0], "before_drift")]
    for k, (start, end) in enumerate(zip(points, [*points[1:], n]), 1):
        windows.append(Window(f"after drift {k}", start, min(end, start + w), "after_drift"))
        windows.append(Window(f"after recovery {k}", max(start, end - w), end, "after_recovery"))
    return windows


def window_accuracies(correct: Sequence[bool], windows: Sequence[Window]) -> dict[str, float | None]:
    return {w.name: accuracy(correct, w.start, w.end) for w in windows}


def summarise_kinds(correct: Sequence[bool], windows: Sequence[Window]) -> dict[str, float | None]:
    """Accuracy pooled over all windows of each kind (before_drift, after_drift, after_recovery)."""
    out = {}
    for kind in ("before_drift", "after_drift", "after_recovery"):
        part = [c for w in windows if w.kind == kind for c in correct[w.start:w.end]]
        out[kind] = (sum(part) / len(part)) if part else None
    return out


# -- the baselines -----------------------------------------------------------------------------

def never_retrained(predict_batch: Callable[[list[dict]], list], samples: Sequence[Sample]) -> list[bool]:
    """Correctness of a frozen model; ``predict_batch`` returns labels or (label, probabilities) tuples."""
    out = predict_batch([s.features for s in samples])
    labels = [o[0] if isinstance(o, tuple) else o for o in out]
    return [label == s.label for label, s in zip(labels, samples)]


def default_online_learner():
    from river import preprocessing, tree

    return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeClassifier(grace_period=50, seed=1)


def online_learner(samples: Sequence[Sample], reviews: Sequence[Review], *, initial: tuple[list[dict], list[str]] | None = None,
                   model=None) -> list[bool]:
    """Prequential run of a river learner: at each position it first learns from the reviews that
    arrived by then (only those: the same delayed labels ctloop gets), then predicts the sample."""
    model = model if model is not None else default_online_learner()
    if initial is not None:
        for x, y in zip(*initial):
            model.learn_one(x, y)
    by_due: dict[int, list[Review]] = {}
    for r in reviews:
        by_due.setdefault(r.due_index, []).append(r)
    features = {s.index: s.features for s in samples}
    correct = []
    for s in samples:
        for r in by_due.pop(s.index, ()):
            if r.sample_index in features:
                model.learn_one(features[r.sample_index], r.label)
        correct.append(model.predict_one(s.features) == s.label)
    return correct


@dataclass
class Comparison:
    windows: list[Window]
    series: dict[str, list[bool]]
    """Correctness per served sample of each contender (same length, same stream)."""

    def table(self) -> dict[str, dict[str, float | None]]:
        return {name: window_accuracies(correct, self.windows) for name, correct in self.series.items()}

    def by_kind(self) -> dict[str, dict[str, float | None]]:
        return {name: summarise_kinds(correct, self.windows) for name, correct in self.series.items()}

    def overall(self) -> dict[str, float | None]:
        return {name: accuracy(correct) for name, correct in self.series.items()}

    def render(self) -> str:
        names = list(self.series)
        head = f"{'window':<20}{'events':>14}" + "".join(f"{n:>22}" for n in names)
        lines = [head, "-" * len(head)]
        table = self.table()
        for w in self.windows:
            cells = "".join(f"{_pct(table[n][w.name]):>22}" for n in names)
            lines.append(f"{w.name:<20}{f'{w.start}-{w.end}':>14}{cells}")
        overall = self.overall()
        lines.append(f"{'whole stream':<20}{f'0-{len(next(iter(self.series.values()), []))}':>14}"
                     + "".join(f"{_pct(overall[n]):>22}" for n in names))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"windows": [{"name": w.name, "start": w.start, "end": w.end, "kind": w.kind} for w in self.windows],
                "accuracy": self.table(), "by_kind": self.by_kind(), "overall": self.overall()}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def compare(samples: Sequence[Sample], drift_points: Sequence[int], reviews: Sequence[Review], *,
            frozen_predict_batch: Callable[[list[dict]], list], served_labels: Sequence[str | None] | None = None,
            initial: tuple[list[dict], list[str]] | None = None, width: int | None = None) -> Comparison:
    """Build the comparison; ``served_labels[i]`` is what ctloop served for samples[i] (None: unknown,
    counted as wrong)."""
    series = {"never retrained": never_retrained(frozen_predict_batch, samples),
              "river online (HAT)": online_learner(samples, reviews, initial=initial)}
    if served_labels is not None:
        if len(served_labels) != len(samples):
            raise ValueError(f"served_labels: {len(served_labels)} labels for {len(samples)} samples")
        series["ctloop"] = [lbl == s.label for lbl, s in zip(served_labels, samples)]
    return Comparison(phase_windows(len(samples), drift_points, width), series)
