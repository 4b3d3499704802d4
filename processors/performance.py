"""Rolling live performance of a deployment's primary model from its labeled examples, against the
champion's validation figures; no Kafka.

Baseline: the champion's validation accuracy (``metrics["accuracy"]`` of its ModelRegistered event)
when known, else the accuracy of the first full rolling window. After a promotion the window and the
baseline restart: the new champion is judged on traffic after its promotion. Decay = baseline minus
rolling accuracy; beyond the deployment's performance_decay_threshold it is a trigger reason.

Metrics are :func:`processors.statistics.classification_metrics` (accuracy, macro precision / recall /
F1 as scikit-learn defines them), the same function as the shadow comparison's, so the live tracker and a
ShadowComparison give the same figures for the same predictions.

The triggers stage feeds this tracker (it owns the decision); ``register`` here adds nothing.
"""
from __future__ import annotations

from collections import deque

from processors.statistics import classification_metrics, confusion_of


class PerformanceTracker:
    """The rolling window of the champion's last ``window`` (true label, predicted label) pairs and its
    baseline accuracy; raises ValueError naming performance_window when ``window`` < 1."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"performance_window: must be positive, got {window}")
        self.window = window
        self.reset()

    def reset(self, champion_version: str | None = None, champion_accuracy: float | None = None) -> None:
        """Empty the window; track ``champion_version`` with baseline ``champion_accuracy`` (in [0, 1]; None:
        the first full window's accuracy)."""
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
        """One labeled prediction of ``model_version`` (ignored unless it is the tracked champion);
        ``predicted`` None: the model gave no label (a wrong prediction of no class)."""
        if self.champion_version is not None and model_version != self.champion_version:
            return  # another model's predictions (e.g. the previous champion's, still in flight)
        self.pairs.append((label, predicted))
        self._metrics = None
        if self.baseline is None and len(self.pairs) >= self.window:
            self.baseline = self.metrics()["accuracy"]
            self.baseline_source = "first_window"

    def metrics(self) -> dict[str, float]:
        """Rolling metrics of the window ({"accuracy", "precision", "recall", "f1"}, each in [0, 1]; {} while
        the window is empty), computed once per change (the triggers stage asks for them per batch and
        decay() again, and its timer every half second)."""
        if self._metrics is None:
            self._metrics = classification_metrics(confusion_of(self.pairs)) if self.pairs else {}
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
