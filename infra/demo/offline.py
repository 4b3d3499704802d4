"""The effectiveness comparison without Kafka: a scenario's stream, the initial model never retrained
(the trainers' default factory trained on the initial set), river HAT and ARF and a periodic
sliding-window retrain, all fed the same delayed reviews. ``ctloop effectiveness`` prints it; the demo
adds the ctloop-managed model's served labels to the same comparison."""
from __future__ import annotations

from typing import Sequence

from infra.demo.effectiveness import PEERS, Comparison, compare
from infra.demo.scenarios import DEFAULT_SCENARIO, make_scenario
from infra.demo.stream import Reviewers


def frozen_model(features: list[dict], labels: list[str]):
    """predict_batch of a model trained once with the trainers' default factory (the initial champion)."""
    from trainers.dataset import build_dataset
    from trainers.models import Predictor
    from trainers.training import train_classifier

    examples = [{"prediction_id": f"init-{i}", "features": f, "label": y} for i, (f, y) in enumerate(zip(features, labels))]
    result = train_classifier(build_dataset(examples))
    return Predictor(result.module, result.feature_names, result.classes, "frozen").predict_batch


def offline_comparison(n: int = 9000, *, scenario: str = DEFAULT_SCENARIO, seed: int = 42, review_fraction: float = 0.5,
                       min_delay: int = 20, max_delay: int = 200, predict_batch=None,
                       which: Sequence[str] = PEERS) -> Comparison:
    """The comparison on ``n`` events of ``scenario`` (three concepts of n // 3 events)."""
    if n < 30:
        raise ValueError(f"n: need at least 30 events for two drifts, got {n}")
    sc = make_scenario(scenario, seed=seed, concept_events=n // 3)
    reviews = Reviewers(fraction=review_fraction, min_delay=min_delay, max_delay=max_delay,
                        seed=seed + 7).schedule(sc.samples)
    predict_batch = predict_batch or frozen_model(*sc.initial)
    return compare(sc.samples, sc.drift_points, reviews, frozen_predict_batch=predict_batch, initial=sc.initial,
                   which=which)
