"""One definition per metric (issue 14): the live performance tracker and the shadow comparison compute
accuracy and macro precision / recall / F1 with the same function (processors/statistics.py), which is
scikit-learn's definition. No Kafka needed."""
from __future__ import annotations

import random

import pytest

from processors.performance import PerformanceTracker
from processors.shadow_join import PredictionJoin
from processors.shadow_stats import ComparisonAggregator
from processors.statistics import METRICS, binomial_pvalue, classification_metrics, confusion_of
from streams.deployments import PROMOTION_METRICS

# the example: two predictions of class "a", one right (true a) and one wrong (true b)
TWO = [("a", "a"), ("b", "a")]
EXPECTED = {"accuracy": 0.5, "precision": 0.25, "recall": 0.5, "f1": 1 / 3}


def _shadow_comparison(pairs: list[tuple[str, str]]) -> dict:
    """The ShadowComparison fields after the join and the aggregator saw ``pairs`` (true, primary label),
    with a shadow that is always right."""
    join, aggregator = PredictionJoin(), ComparisonAggregator(every=len(pairs), interval_s=1e9)
    aggregator.assign("d", "v2", 1)
    out = []
    for i, (truth, predicted) in enumerate(pairs):
        pid = f"p{i}"
        outcomes = join.on_prediction({"prediction_id": pid, "deployment": "d", "model_version": "v1",
                                       "label": predicted, "role": "primary", "latency_ms": 1.0, "event_time": 1})
        outcomes += join.on_prediction({"prediction_id": pid, "deployment": "d", "model_version": "v2",
                                        "label": truth, "role": "shadow", "latency_ms": 1.0, "event_time": 1})
        outcomes += join.on_feedback({"prediction_id": pid, "deployment": "d", "feedback_type": "label",
                                      "label": truth, "verdict": None})
        for outcome in outcomes:
            out += aggregator.add(outcome, now_s=0.0)
    assert len(out) == 1, out
    return out[0]


def _tracked(pairs: list[tuple[str, str | None]]) -> dict[str, float]:
    tracker = PerformanceTracker(window=len(pairs))
    tracker.set_champion("v1", None)
    for truth, predicted in pairs:
        tracker.add(truth, predicted, "v1")
    return tracker.metrics()


def test_macro_precision_of_the_two_prediction_example_is_025_in_the_live_tracker_and_the_shadow_comparison():
    """The issue: 0.5 in the live tracker and 0.25 in the shadow comparison for the same two predictions.
    Both now give scikit-learn's macro precision, (1/2 + 0) / 2 = 0.25 (class b was never predicted)."""
    live = _tracked(TWO)
    shadow = _shadow_comparison(TWO)
    assert shadow["labeled_samples"] == 2
    for metric, value in EXPECTED.items():
        assert live[metric] == pytest.approx(value), metric
        assert shadow["primary_metrics"][metric] == pytest.approx(value), metric
    assert shadow["shadow_metrics"] == pytest.approx({m: 1.0 for m in METRICS})


def test_live_tracker_and_shadow_comparison_agree_on_random_predictions():
    rng = random.Random(14)
    for _ in range(20):
        classes = rng.sample("abcde", rng.randint(2, 5))
        pairs = [(rng.choice(classes), rng.choice(classes)) for _ in range(rng.randint(1, 40))]
        assert _tracked(pairs) == pytest.approx(_shadow_comparison(pairs)["primary_metrics"])


def test_classification_metrics_are_scikit_learns_macro_averages():
    """accuracy_score and precision/recall/f1_score(average="macro", zero_division=0) over the labels
    present in y_true or y_pred, including classes only predicted or only true."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    for _ in range(50):
        true_classes = rng.sample("abcdef", rng.randint(1, 4))
        predicted_classes = rng.sample("abcdef", rng.randint(1, 4))
        n = rng.randint(1, 60)
        y_true = [rng.choice(true_classes) for _ in range(n)]
        y_pred = [rng.choice(predicted_classes + true_classes[:1]) for _ in range(n)]
        ours = classification_metrics(confusion_of(zip(y_true, y_pred)))
        expected = {"accuracy": metrics.accuracy_score(y_true, y_pred)}
        for name, fn in (("precision", metrics.precision_score), ("recall", metrics.recall_score),
                         ("f1", metrics.f1_score)):
            expected[name] = fn(y_true, y_pred, average="macro", zero_division=0)
        assert ours == pytest.approx(expected), (y_true, y_pred)


def test_a_missing_prediction_is_wrong_and_belongs_to_no_class():
    """A primary that logged no label (label null) is wrong and counts in no class's precision: as
    scikit-learn with a placeholder prediction outside ``labels``. Before, the shadow comparison sorted
    None among the labels (TypeError) and the live tracker dropped the class from its average."""
    pairs = [("a", "a"), ("b", None), ("b", "b"), ("a", None)]
    ours = classification_metrics(confusion_of(pairs))
    # a: precision 1/1, recall 1/2; b: precision 1/1, recall 1/2
    assert ours == pytest.approx({"accuracy": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    assert _tracked(pairs) == pytest.approx(ours)
    assert classification_metrics({("a", None): 3}) == {m: 0.0 for m in METRICS}
    metrics = pytest.importorskip("sklearn.metrics")
    y_true, y_pred = [t for t, _ in pairs], [p or "<none>" for _, p in pairs]
    assert ours["precision"] == pytest.approx(
        metrics.precision_score(y_true, y_pred, labels=["a", "b"], average="macro", zero_division=0))


def test_metric_names_are_the_promotion_metrics_and_an_empty_window_has_none():
    assert set(METRICS) == set(PROMOTION_METRICS)
    assert set(classification_metrics({("a", "b"): 1})) == set(METRICS)
    assert classification_metrics({}) == {m: 0.0 for m in METRICS}
    assert PerformanceTracker(window=3).metrics() == {}


def test_binomial_pvalue_is_the_one_sided_exact_test():
    assert binomial_pvalue(0, 10, 0.5, "less") == pytest.approx(0.5 ** 10)
    assert binomial_pvalue(10, 10, 0.5, "greater") == pytest.approx(0.5 ** 10)
    assert binomial_pvalue(3, 3, 1.0, "less") == pytest.approx(1.0)    # a perfect reference is clipped, finite
    assert binomial_pvalue(0, 0, 0.9, "less") == 1.0
    with pytest.raises(ValueError, match="alternative"):
        binomial_pvalue(1, 2, 0.5, "two-sided")
