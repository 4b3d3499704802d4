"""Effectiveness: prequential accuracy, in events, of several ways to run a model on the same stream.

Every contender is scored on every served event against its true label; labels reach a learner only
when they are due (the same delayed reviews ctloop gets: a review due at index *d* is learned before
event *d* is predicted, never earlier). Contenders:

* ``never retrained``: the initial model (the initial champion), frozen;
* ``river HAT`` / ``river ARF``: river ``HoeffdingAdaptiveTreeClassifier`` / ``ARFClassifier`` behind a
  ``StandardScaler``, pre-trained on the initial set, then prequential (learn what arrived, then predict);
* ``sliding retrain``: every ``every`` (500) arrived labels, the trainers' default model factory
  (``trainers.training.train_classifier``) is trained on the last ``window`` (1,000) arrived labels and
  serves from the next event on; before its first retrain it serves the initial model. It retrains
  instantly (no Kafka, no trigger, no shadow), which favours it;
* ``ctloop``: the labels the loop actually served, read back from the predictions topic (whatever
  version or learner served them).

Windows (all in events): the whole stream first, then the first ``after_drift`` (1,000) events after each
known drift point, then consecutive fixed windows of ``every`` (1,000) events, so that no stretch of the
stream is left out. The maths here is pure (no Kafka).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from infra.demo.stream import Review, Sample

NEVER = "never retrained"
HAT = "river HAT"
ARF = "river ARF"
SLIDING = "sliding retrain"
CTLOOP = "ctloop"
PEERS = (HAT, ARF, SLIDING)


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
    """A window of the served stream, events ``[start, end)``, with its ``name`` and ``kind``."""
    name: str
    start: int
    end: int
    kind: str
    """whole, after_drift or fixed (report windows); before_drift, after_drift or end_of_phase (phase windows)."""


def _check_points(n: int, drift_points: Sequence[int]) -> list[int]:
    points = list(drift_points)
    if any(b <= a for a, b in zip(points, points[1:])) or (points and (points[0] <= 0 or points[-1] >= n)):
        raise ValueError(f"drift_points: must increase strictly inside (0, {n}), got {points}")
    return points


def report_windows(n: int, drift_points: Sequence[int] = (), *, after_drift: int = 1000, every: int = 1000) -> list[Window]:
    """The report's windows over ``n`` events: the whole stream; the first ``after_drift`` events after
    each drift point (cut at the next one); consecutive windows of ``every`` events (the last one shorter)."""
    if n <= 0:
        raise ValueError(f"n: need at least one event, got {n}")
    if after_drift <= 0 or every <= 0:
        raise ValueError(f"after_drift/every: must be positive, got {after_drift}, {every}")
    points = _check_points(n, drift_points)
    windows = [Window("whole stream", 0, n, "whole")]
    for k, (start, nxt) in enumerate(zip(points, [*points[1:], n]), 1):
        windows.append(Window(f"after drift {k}", start, min(nxt, start + after_drift), "after_drift"))
    windows += [Window(f"events {s}-{min(n, s + every)}", s, min(n, s + every), "fixed") for s in range(0, n, every)]
    return windows


def phase_windows(n: int, drift_points: Sequence[int], width: int | None = None) -> list[Window]:
    """Windows placed by the drift points: before the first drift (its last ``width`` events), right
    after each drift (its first ``width``) and the end of each post-drift phase (its last ``width``).
    ``width`` defaults to a third of the shortest phase."""
    points = _check_points(n, drift_points)
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
        windows.append(Window(f"end of phase {k}", max(start, end - w), end, "end_of_phase"))
    return windows


def window_accuracies(correct: Sequence[bool], windows: Sequence[Window]) -> dict[str, float | None]:
    """window name -> accuracy of ``correct`` over the window (None for an empty one)."""
    return {w.name: accuracy(correct, w.start, w.end) for w in windows}


def summarise_kinds(correct: Sequence[bool], windows: Sequence[Window]) -> dict[str, float | None]:
    """Accuracy pooled over all windows of each kind present in ``windows``."""
    out = {}
    for kind in dict.fromkeys(w.kind for w in windows):
        part = [c for w in windows if w.kind == kind for c in correct[w.start:w.end]]
        out[kind] = (sum(part) / len(part)) if part else None
    return out


# -- the contenders ----------------------------------------------------------------------------

def _labels(out) -> list:
    return [o[0] if isinstance(o, tuple) else o for o in out]


def never_retrained(predict_batch: Callable[[list[dict]], list], samples: Sequence[Sample]) -> list[bool]:
    """Correctness of a frozen model; ``predict_batch`` returns labels or (label, probabilities) tuples."""
    labels = _labels(predict_batch([s.features for s in samples]))
    return [label == s.label for label, s in zip(labels, samples)]


def hat_learner():
    """river HoeffdingAdaptiveTree behind a StandardScaler (the HAT contender)."""
    from river import preprocessing, tree

    return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeClassifier(grace_period=50, seed=1)


def arf_learner():
    """river Adaptive Random Forest (10 trees, ADWIN drift detectors) behind a StandardScaler."""
    from river import forest, preprocessing

    return preprocessing.StandardScaler() | forest.ARFClassifier(n_models=10, seed=1)


default_online_learner = hat_learner


def reviews_by_due(reviews: Sequence[Review]) -> dict[int, list[Review]]:
    """Reviews grouped by the index at which they arrive (order within an index kept)."""
    by_due: dict[int, list[Review]] = {}
    for r in reviews:
        if r.due_index < r.sample_index:
            raise ValueError(f"reviews: review of sample {r.sample_index} is due at {r.due_index}, before it was served")
        by_due.setdefault(r.due_index, []).append(r)
    return by_due


def online_learner(samples: Sequence[Sample], reviews: Sequence[Review], *, initial: tuple[list[dict], list[str]] | None = None,
                   model=None) -> list[bool]:
    """Prequential run of a river learner: at each position it first learns from the reviews that
    arrived by then (only those: the same delayed labels ctloop gets), then predicts the sample."""
    model = model if model is not None else hat_learner()
    if initial is not None:
        for x, y in zip(*initial):
            model.learn_one(x, y)
    by_due = reviews_by_due(reviews)
    features = {s.index: s.features for s in samples}
    correct = []
    for s in samples:
        for r in by_due.pop(s.index, ()):
            if r.sample_index in features:
                model.learn_one(features[r.sample_index], r.label)
        correct.append(model.predict_one(s.features) == s.label)
    return correct


def sliding_window_retrain(samples: Sequence[Sample], reviews: Sequence[Review], *, initial_labels: Sequence[str],
                           train: Callable[[list[dict], list[str]], Callable[[list[dict]], list]],
                           every: int = 500, window: int = 1000) -> tuple[list[bool], list[int]]:
    """Periodic retraining on a sliding window of the labels that arrived. ``initial_labels[i]``: what
    the initial model predicts for samples[i] (served until the first retrain); ``train(features,
    labels)`` returns a predict_batch. After every ``every`` arrived labels (counted at the event they
    arrive) a model is trained on the last ``window`` of them and predicts from that event on.
    Returns (correctness per sample, event indices of the retrains)."""
    if every <= 0 or window <= 0:
        raise ValueError(f"every/window: must be positive, got {every}, {window}")
    if len(initial_labels) != len(samples):
        raise ValueError(f"initial_labels: {len(initial_labels)} labels for {len(samples)} samples")
    by_due = reviews_by_due(reviews)
    features = {s.index: s.features for s in samples}
    arrived: list[tuple[dict, str]] = []
    since, retrains = 0, []
    predicted: list = list(initial_labels)
    predict = None
    segment: list[int] = []  # positions (in samples) waiting for the current model's predictions

    def flush() -> None:
        if predict is not None and segment:
            for pos, label in zip(segment, _labels(predict([samples[p].features for p in segment]))):
                predicted[pos] = label
        segment.clear()

    for pos, s in enumerate(samples):
        for r in by_due.pop(s.index, ()):
            if r.sample_index in features:
                arrived.append((features[r.sample_index], r.label))
                since += 1
        if since >= every:
            flush()
            recent = arrived[-window:]
            predict = train([f for f, _ in recent], [y for _, y in recent])
            retrains.append(s.index)
            since = 0
        segment.append(pos)
    flush()
    return [p == s.label for p, s in zip(predicted, samples)], retrains


def mlp_trainer(threads: int = 1) -> Callable[[list[dict], list[str]], Callable[[list[dict]], list]]:
    """``train(features, labels) -> predict_batch`` with the trainers' default model factory (the
    same code path as a ctloop training run, without Kafka)."""
    from trainers.training import configure_threads

    configure_threads(threads)

    def train(features: list[dict], labels: list[str]):
        from trainers.dataset import build_dataset
        from trainers.models import Predictor
        from trainers.training import train_classifier

        examples = [{"prediction_id": f"w{i}", "features": f, "label": y} for i, (f, y) in enumerate(zip(features, labels))]
        if len(set(labels)) < 2:  # one class only: predict it
            only = labels[0]
            return lambda rows: [only] * len(rows)
        result = train_classifier(build_dataset(examples, min_examples=2))
        return Predictor(result.module, result.feature_names, result.classes, "sliding").predict_batch

    return train


def baseline_series(samples: Sequence[Sample], reviews: Sequence[Review], *, initial: tuple[list[dict], list[str]],
                    initial_labels: Sequence[str], train=None, every: int = 500, window: int = 1000,
                    which: Sequence[str] = PEERS) -> dict[str, list[bool]]:
    """Correctness series of the learning peers (``which`` of HAT, ARF, SLIDING) on the same samples and
    the same delayed reviews. ``initial_labels``: the initial model's predictions (sliding's start)."""
    out: dict[str, list[bool]] = {}
    for name in which:
        if name == HAT:
            out[HAT] = online_learner(samples, reviews, initial=initial, model=hat_learner())
        elif name == ARF:
            out[ARF] = online_learner(samples, reviews, initial=initial, model=arf_learner())
        elif name == SLIDING:
            out[SLIDING] = sliding_window_retrain(samples, reviews, initial_labels=initial_labels,
                                                  train=train or mlp_trainer(), every=every, window=window)[0]
        else:
            raise ValueError(f"which: unknown contender {name!r}; one of {PEERS}")
    return out


# -- the comparison -------------------------------------------------------------------------------

@dataclass
class Comparison:
    """The prequential correctness of every contender on the same served events and the windows they are
    compared on; tables of accuracy (fractions) per window, kind and contender."""
    windows: list[Window]
    series: dict[str, list[bool]]
    """Correctness per served sample of each contender (same length, same stream)."""

    def table(self) -> dict[str, dict[str, float | None]]:
        """contender -> window name -> accuracy."""
        return {name: window_accuracies(correct, self.windows) for name, correct in self.series.items()}

    def by_kind(self) -> dict[str, dict[str, float | None]]:
        """contender -> window kind -> accuracy pooled over the windows of that kind."""
        return {name: summarise_kinds(correct, self.windows) for name, correct in self.series.items()}

    def overall(self) -> dict[str, float | None]:
        """contender -> whole-stream accuracy."""
        return {name: accuracy(correct) for name, correct in self.series.items()}

    def best(self) -> dict[str, str]:
        """window name -> the contender with the highest accuracy there (first listed on ties)."""
        table = self.table()
        out = {}
        for w in self.windows:
            scored = [(table[n][w.name], n) for n in self.series if table[n][w.name] is not None]
            if scored:
                top = max(v for v, _ in scored)
                out[w.name] = next(n for v, n in scored if v == top)
        return out

    def margins(self, name: str = CTLOOP, versus: str = NEVER) -> dict[str, float | None]:
        """window name -> accuracy of ``name`` minus that of ``versus`` (None when either is missing)."""
        if name not in self.series or versus not in self.series:
            return {w.name: None for w in self.windows}
        table = self.table()
        return {w.name: None if table[name][w.name] is None or table[versus][w.name] is None
                else table[name][w.name] - table[versus][w.name] for w in self.windows}

    def render(self) -> str:
        """The comparison as a plain-text table: one row per window (its events start-end, each contender's
        accuracy, the best contender and ctloop's margin over never retrained in percentage points)."""
        names = list(self.series)
        col = max(16, *(len(n) + 2 for n in names))
        margin_head = f"{CTLOOP} - never" if CTLOOP in self.series else ""
        head = f"{'window':<22}{'events':>12}" + "".join(f"{n:>{col}}" for n in names) + f"  {'best':<18}{margin_head:>14}"
        lines = [head, "-" * len(head)]
        table, best, margins = self.table(), self.best(), self.margins()
        previous_kind = None
        for w in self.windows:
            if previous_kind is not None and w.kind != previous_kind:
                lines.append("")
            previous_kind = w.kind
            cells = "".join(f"{_pct(table[n][w.name]):>{col}}" for n in names)
            m = margins.get(w.name)
            margin = "" if m is None else f"{100 * m:+.1f}"
            lines.append(f"{w.name:<22}{f'{w.start}-{w.end}':>12}{cells}  {best.get(w.name, '-'):<18}{margin:>14}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-ready dict: windows (name, start, end, kind), accuracy, by_kind, overall, best and
        ctloop_minus_never (accuracies as fractions, None where undefined)."""
        return {"windows": [{"name": w.name, "start": w.start, "end": w.end, "kind": w.kind} for w in self.windows],
                "accuracy": self.table(), "by_kind": self.by_kind(), "overall": self.overall(), "best": self.best(),
                "ctloop_minus_never": self.margins()}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def compare(samples: Sequence[Sample], drift_points: Sequence[int] | None, reviews: Sequence[Review], *,
            frozen_predict_batch: Callable[[list[dict]], list], served_labels: Sequence[str | None] | None = None,
            initial: tuple[list[dict], list[str]] | None = None, peers: dict[str, list[bool]] | None = None,
            which: Sequence[str] = PEERS, train=None, after_drift: int = 1000, every: int = 1000) -> Comparison:
    """Build the comparison over ``samples``. ``served_labels[i]``: what ctloop served for samples[i]
    (None: unknown, counted as wrong); ``peers``: learning peers' series computed elsewhere (else
    ``which`` of them are computed here from ``initial`` and ``reviews``)."""
    frozen = _labels(frozen_predict_batch([s.features for s in samples]))
    series = {NEVER: [label == s.label for label, s in zip(frozen, samples)]}
    if peers is None:
        if initial is None:
            raise ValueError("initial: the peers need the initial training set (or pass peers=)")
        peers = baseline_series(samples, reviews, initial=initial, initial_labels=frozen, train=train, which=which)
    for name, correct in peers.items():
        if len(correct) != len(samples):
            raise ValueError(f"peers: {name} has {len(correct)} results for {len(samples)} samples")
        series[name] = list(correct)
    if served_labels is not None:
        if len(served_labels) != len(samples):
            raise ValueError(f"served_labels: {len(served_labels)} labels for {len(samples)} samples")
        series[CTLOOP] = [lbl == s.label for lbl, s in zip(served_labels, samples)]
    return Comparison(report_windows(len(samples), drift_points or (), after_drift=after_drift, every=every), series)
