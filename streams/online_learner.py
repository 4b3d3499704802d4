"""Online learners (river) that learn in-stream from labeled examples: the online fallback's model.

>>> learner = OnlineLearner("arf", seed=7)
>>> learner.learn({"x": 1.0}, "yes")
>>> label, probabilities = learner.predict({"x": 1.0})

``OnlineLearner(name)`` wraps a river pipeline: ``StandardScaler | ARFClassifier`` (name "arf", an
adaptive random forest with ADWIN drift detectors per tree) or ``StandardScaler |
HoeffdingAdaptiveTreeClassifier`` ("hat"). Features are dicts of floats (a deployment's feature
dicts), labels strings. Its served version name is ``online:<name>``. Thread-safe: one lock around
every learn/predict (a serving app learns in its follower thread and predicts on request threads).
"""
from __future__ import annotations

import math
import threading

from streams.fallback_fold import online_version

LEARNERS = ("arf", "hat")


def _pipeline(name: str, seed: int):
    from river import compose, forest, preprocessing, tree

    if name == "arf":
        model = forest.ARFClassifier(n_models=10, seed=seed)
    elif name == "hat":
        model = tree.HoeffdingAdaptiveTreeClassifier(grace_period=50, seed=seed)
    else:
        raise ValueError(f"online_fallback: unknown online learner {name!r}; known: {', '.join(LEARNERS)}")
    return compose.Pipeline(preprocessing.StandardScaler(), model)


def _clean(features: dict) -> dict:
    """Finite floats only (a missing / non-finite / non-numeric value is left out, as river allows)."""
    out = {}
    for k, v in features.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


class OnlineLearner:
    """A river online classifier: ``learn(features, label)`` one example at a time, ``predict(features)
    -> (label, probabilities)`` (label None and {} before it has learned anything).

    ``name``: arf or hat (ValueError otherwise); ``seed``: the learner's random seed.
    ``version``: the served version name, e.g. online:arf; ``learned``: examples learned so far."""

    def __init__(self, name: str = "arf", seed: int = 42):
        self.name = name
        self.seed = seed
        self.version = online_version(name)
        self._model = _pipeline(name, seed)
        self._lock = threading.Lock()
        self.learned = 0

    def learn(self, features: dict, label) -> None:
        """Learn one labeled example (``label`` is taken as a string)."""
        x = _clean(features)
        with self._lock:
            self._model.learn_one(x, str(label))
            self.learned += 1

    def predict(self, features: dict) -> tuple[str | None, dict[str, float]]:
        """(predicted label, {label: probability}) of one feature dict; (None, {}) before any learning."""
        x = _clean(features)
        with self._lock:
            if self.learned == 0:
                return None, {}
            proba = self._model.predict_proba_one(x)
        if not proba:
            return None, {}
        label = max(sorted(proba), key=lambda k: proba[k])
        return str(label), {str(k): float(v) for k, v in proba.items()}

    def predict_batch(self, rows: list[dict]) -> list[tuple[str | None, dict[str, float]]]:
        """:meth:`predict` of each row (the shape serving's shadow loop uses)."""
        return [self.predict(r) for r in rows]

    def prequential(self, features: dict, label) -> str | None:
        """Predict, then learn (test-then-train): returns the prediction made before learning the example."""
        predicted, _ = self.predict(features)
        self.learn(features, label)
        return predicted
