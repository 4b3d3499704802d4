"""The first model of a deployment, trained from data in hand (no trigger, no stream)."""
from __future__ import annotations

import logging
import time

from streams import catalog as ev
from streams.kafka_config import client_config
from streams.producer import EventProducer
from streams.serde import Serde, new_event
from streams.topics import Topics, ensure_topics
from trainers.artifacts import ArtifactStore
from trainers.dataset import build_dataset
from trainers.evaluation import score
from trainers.models import DEFAULT_FACTORY, Predictor
from trainers.pipeline import code_version
from streams.registry import ModelRegistry, ModelVersion
from trainers.training import configure_threads, resolve_device, train_classifier

log = logging.getLogger(__name__)


def register_initial_model(settings, deployment: str, features: list[dict], labels: list[str], model_name: str | None = None,
                           *, model_factory: str = DEFAULT_FACTORY, timeout_s: float = 15.0) -> ModelVersion:
    """Train a first model on ``features``/``labels``, publish ModelRegistered (alias champion) on
    model-lifecycle and ModelPromoted (manual, "initial model") on model-updates. Returns the version."""
    from confluent_kafka.admin import AdminClient

    if not isinstance(deployment, str) or not deployment:
        raise ValueError("deployment: must be a non-empty string")
    if len(features) != len(labels):
        raise ValueError(f"features/labels: {len(features)} feature rows but {len(labels)} labels")
    configure_threads(settings.trainer_threads)
    topics = Topics.from_settings(settings)
    ensure_topics(AdminClient(client_config(settings)), topics,
                  ["model-lifecycle", "model-updates"])
    now = int(time.time() * 1000)
    examples = [{"prediction_id": f"bootstrap:{i}", "label": str(lab), "features": dict(f), "prediction_time": now}
                for i, (f, lab) in enumerate(zip(features, labels))]
    dataset = build_dataset(examples, lineage_topic="", min_examples=2)
    holdout_mask = dataset.holdout_mask()
    train, holdout = dataset.subset(~holdout_mask), dataset.subset(holdout_mask)
    result = train_classifier(train, factory=model_factory, device=resolve_device(settings.trainer_device),
                              max_epochs=settings.trainer_max_epochs)
    registry = ModelRegistry.load(settings, timeout_s=timeout_s)
    version = f"v{len(registry.versions(deployment)) + 1}"
    uri, sha = ArtifactStore.from_settings(settings).save(deployment, version, result.module.state_dict())
    predictor = Predictor(result.module, result.feature_names, result.classes, version)
    metrics = score(holdout.y, predictor.predict_labels(holdout.x))
    metrics.update(train_seconds=result.train_seconds, epochs=float(result.epochs))
    name = model_name or deployment
    serde = Serde.from_settings(settings)
    registered = new_event(ev.MODEL_REGISTERED, serde.catalog, deployment=deployment, model_name=name,
                           model_version=version, alias="champion", metrics=metrics, lineage=dataset.lineage,
                           artifact_uri=uri, artifact_sha256=sha, model_factory=model_factory,
                           model_config=result.config)
    promoted = new_event(ev.MODEL_PROMOTED, serde.catalog, deployment=deployment, model_name=name, model_version=version,
                         previous_version=None, decided_by="manual", reason="initial model",
                         evidence={"holdout_accuracy": f"{metrics['accuracy']:.4f}", "code_version": code_version()})
    with EventProducer(settings, serde) as producer:
        producer.produce(topics.model_lifecycle, ev.MODEL_REGISTERED, registered, key=deployment)
        producer.flush()
        producer.produce(topics.model_updates, ev.MODEL_PROMOTED, promoted, key=deployment)
        producer.flush()
    log.info("registered initial model %s of %s (holdout accuracy %.3f)", version, deployment, metrics["accuracy"])
    fold = ModelRegistry()
    fold.apply(ev.MODEL_REGISTERED, registered)
    fold.apply(ev.MODEL_PROMOTED, promoted)
    return fold.get(deployment, version)
