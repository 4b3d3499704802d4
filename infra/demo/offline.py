"""The effectiveness comparison without Kafka: the demo's stream with drifts at fixed positions,
a never-retrained model (the default ctloop factory trained on concept A) and a river online learner
fed the same delayed reviews. ``ctloop effectiveness`` prints it; the demo adds the ctloop-managed
model's served labels to the same comparison."""
from __future__ import annotations

from infra.demo.effectiveness import Comparison, compare
from infra.demo.stream import DriftingStream, Reviewers, training_data


def frozen_model(features: list[dict], labels: list[str]):
    """predict_batch of a model trained once with the trainers' default factory (the initial champion)."""
    from trainers.dataset import build_dataset
    from trainers.models import Predictor
    from trainers.training import train_classifier

    examples = [{"prediction_id": f"init-{i}", "features": f, "label": y} for i, (f, y) in enumerate(zip(features, labels))]
    result = train_classifier(build_dataset(examples))
    return Predictor(result.module, result.feature_names, result.classes, "frozen").predict_batch


def offline_comparison(n: int = 12000, *, seed: int = 42, review_fraction: float = 0.5, initial_examples: int = 2000,
                       predict_batch=None) -> Comparison:
    if n < 30:
        raise ValueError(f"n: need at least 30 events for two drifts, got {n}")
    drift_points = [n // 3, 2 * n // 3]
    samples = DriftingStream.samples(n, drift_points, seed=seed)
    reviewers = Reviewers(fraction=review_fraction, seed=seed + 7)
    reviews = [r for s in samples if (r := reviewers.observe(s)) is not None]
    initial = training_data(initial_examples, seed=seed + 1000)
    predict_batch = predict_batch or frozen_model(*initial)
    return compare(samples, drift_points, reviews, frozen_predict_batch=predict_batch, initial=initial)
