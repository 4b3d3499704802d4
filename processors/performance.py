"""Rolling live performance of a deployment's primary model from its labeled examples, against the
champion's validation figures; no Kafka.

Baseline: the champion's validation accuracy (``metrics["accuracy"]`` of its ModelRegistered event)
when known, else the accuracy of the first full rolling window. After a promotion the window and the
baseline restart: the new champion is judged on traffic after its promotion. Decay = baseline minus
rolling accuracy; beyond the deployment's performance_decay_threshold it is a trigger reason.

The triggers stage feeds this tracker (it owns the decision); ``register`` here adds nothing.
"""
from __future__ import annotations

from collections import deque


def classification_metrics(pairs) -> dict[str, float]:
    """accuracy and macro precision/recall of (true label, predicted label) pairs."""
    pairs = list(pairs)
    if not pairs:
        return {}
    labels = sorted({t for t, _ in pairs} | {p for _, p in pairs if p is not None})
    correct = sum(t == p for t, p in pairs)
    precisions, recalls = [], []
    for c in labels:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        predicted = sum(1 for _, p in pairs if p == c)
        actual = sum(1 for t, _ in pairs if t == c)
        if predicted:
            precisions.append(tp / predicted)
        if actual:
            recalls.append(tp / actual)
    return {"accuracy": correct / len(pairs),
            "precision": sum(precisions) / len(precisions) if precisions else 0.0,
            "recall": sum(recalls) / len(recalls) if recalls else 0.0}


class PerformanceTracker:
    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"performance_window: must be positive, got {window}")
        self.window = window
        self.reset()

    def reset(self, champion_version: str | None = None, champion_accuracy: float | None = None) -> None:
        self.pairs: deque = deque(maxlen=self.window)
        self._metrics: dict[str, float] | None = None  # of self.pairs; None: changed since last computed
        self.champion_version = champion_version
        self.baseline = champion_accuracy
        self.baseline_source = "champion_validation" if champion_accuracy is not None else None

    def set_champion(self, version: str, accuracy: float | None) -> None:
        """A (new) champion: restart the window unless it is the version already tracked."""
        if version == self.champion_version:
            if accuracy is not None and self.baseline_source != "champion_validation":
                self.baseline, self.baseline_source = accuracy, "champion_validation"
            return
        self.reset(version, accuracy)

    def add(self, label: str, predicted: str | None, model_version: str) -> None:
        if self.champion_version is not None and model_version != self.champion_version:
            return  # another model's predictions (e.g. the previous champion's, still in flight)
        self.pairs.append((label, predicted))
        self._metrics = None
        if self.baseline is None and len(self.pairs) >= self.window:
            self.baseline = self.metrics()["accuracy"]
            self.baseline_source = "first_window"

    def metrics(self) -> dict[str, float]:
        """Rolling metrics of the window, computed once per change (the triggers stage asks for them per
        batch and decay() again, and its timer every half second)."""
        if self._metrics is None:
            self._metrics = classification_metrics(self.pairs)
        return self._metrics

    def decay(self, threshold: float) -> dict | None:
        """Evidence when rolling accuracy fell more than ``threshold`` below the baseline, else None."""
        if threshold <= 0 or self.baseline is None or len(self.pairs) < self.window:
            return None
        m = self.metrics()
        drop = self.baseline - m["accuracy"]
        if drop <= threshold:
            return None
        return {"rolling_accuracy": f"{m['accuracy']:.4f}", "rolling_precision": f"{m['precision']:.4f}",
                "rolling_recall": f"{m['recall']:.4f}", "baseline_accuracy": f"{self.baseline:.4f}",
                "baseline_source": self.baseline_source or "", "decay": f"{drop:.4f}",
                "performance_decay_threshold": f"{threshold:g}", "window": str(len(self.pairs))}


def register(app, ctx) -> None:
    """Performance is tracked inside the triggers stage (it decides on it); nothing to register."""
    return None
