"""The production stack's app (``ctloop app``): a serving app on the stack's shared topics.

It is what a real application does, on simulated data: it configures its deployment (feedback loop,
continuous training, continuous deployment), registers a first champion when the registry has none,
then serves predictions through :class:`trainers.serving.Deployment` (hot-swapping whatever the
promotion policy decides) and logs the reviewers' late labels as feedback. The world drifts every
``drift_every`` events (the demo's :class:`infra.demo.stream.DriftingStream`), so the stack's own
processors, trainer and sink have real work: joins, drift, triggers, training runs, promotions.

Unlike ``ctloop demo`` it starts no processors, trainer or broker and uses ``CTLOOP_TOPIC_PREFIX`` as it
is (no private ``demo-<id>.`` prefix): in docker-compose.yml it is the ``app`` service.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from infra.settings import Settings
from streams.kafka_config import client_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppOptions:
    """What the simulated app does. Counts are events (predictions); ``rate`` is events per second."""

    deployment: str = "app"
    rate: float = 50.0
    """Predictions per second (0: as fast as it can)."""
    events: int = 0
    """Stop after this many predictions (0: run until stopped)."""
    drift_every: int = 20_000
    """Move the world to the next concept every N events (0: never); after the last concept it returns
    to the first."""
    review_fraction: float = 0.5
    """Share of the predictions that reviewers label, 20-200 events later."""
    initial_examples: int = 2000
    """Examples of the first concept the initial champion is trained on (only when there is none)."""
    trigger_threshold: int = 1200
    drift_threshold: float = 0.5
    min_samples: int = 300
    seed: int = 42

    def __post_init__(self):
        for name in ("rate",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("events", "drift_every", "initial_examples", "trigger_threshold", "min_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if not 0 <= self.review_fraction <= 1:
            raise ValueError(f"review_fraction: must be in [0, 1], got {self.review_fraction!r}")
        if not self.deployment:
            raise ValueError("deployment: must be a non-empty string")


@dataclass
class AppResult:
    """What one run served: ``predictions`` and ``feedback`` logged, ``drifts`` made, and whether this
    run registered the initial champion (False when the registry already had one)."""

    predictions: int
    feedback: int
    drifts: int
    registered_initial: bool
    primary_version: str | None


def configure_deployment(settings: Settings, options: AppOptions, producer=None) -> None:
    """Publish the deployment's settings (DeploymentConfigured on ``deployments``; idempotent)."""
    from streams.deployments import DeploymentSettingsClient

    client = DeploymentSettingsClient(settings, producer=producer)
    name = options.deployment
    client.setup_feedback_loop(name, model_name=f"{name}-model")
    client.setup_continuous_training(name, trigger_threshold=options.trigger_threshold,
                                     drift_threshold=options.drift_threshold)
    client.setup_continuous_deployment(name, min_samples=options.min_samples)


def start_serving(settings: Settings, options: AppOptions, client, metrics=None, timeout_s: float = 30.0):
    """A started :class:`trainers.serving.Deployment`; registers an initial champion (trained on
    ``initial_examples`` of the first concept) only when none can be loaded. Returns
    (deployment, registered_initial)."""
    from infra.demo.stream import training_data
    from trainers.serving import Deployment
    from streams.registry import ModelRegistry

    registered = False
    if ModelRegistry.load(settings, timeout_s=timeout_s).champion(options.deployment) is None:
        from trainers.bootstrap import register_initial_model

        x0, y0 = training_data(options.initial_examples, seed=options.seed + 1000)
        version = register_initial_model(settings, options.deployment, x0, y0, model_name=f"{options.deployment}-model")
        log.info("app: no champion for %r; registered the initial model %s", options.deployment, version.version)
        registered = True
    deployment = Deployment(settings, options.deployment, client=client, metrics=metrics)
    return deployment.start(timeout_s=timeout_s), registered


def run_app(settings: Settings, options: AppOptions | None = None, *, stop: Callable[[], bool] = lambda: False,
            metrics=None) -> AppResult:
    """Serve ``options.events`` predictions (0: until ``stop()`` returns True) on the shared topics.

    Raises ValueError (naming the setting) without ``bootstrap_servers``; NoChampionError when no
    champion loads even after registering one."""
    from infra.demo.stream import DriftingStream, Reviewers
    from streams.sdk import CtloopClient
    from streams.topics import Topics, ensure_topics

    options = options or AppOptions()
    if not settings.bootstrap_servers:
        raise ValueError("bootstrap_servers: the app needs a Kafka cluster (CTLOOP_BOOTSTRAP_SERVERS)")
    from confluent_kafka.admin import AdminClient

    ensure_topics(AdminClient(client_config(settings)), Topics.from_settings(settings))
    stream = DriftingStream(seed=options.seed)
    reviewers = Reviewers(fraction=options.review_fraction, seed=options.seed + 7)
    predictions = feedback = drifts = 0
    client = CtloopClient(settings)
    deployment = None
    try:
        configure_deployment(settings, options, producer=client.producer)
        deployment, registered = start_serving(settings, options, client, metrics=metrics)
        log.info("app: serving %r with %s at %g events/s", options.deployment, deployment.primary_version, options.rate)
        t0 = time.monotonic()
        while not stop() and (options.events == 0 or predictions < options.events):
            if options.drift_every and predictions and predictions % options.drift_every == 0:
                if stream.concept + 1 >= len(stream.concepts):
                    stream = _restart_cycle(stream, options.seed + drifts + 1)
                else:
                    stream.drift()
                drifts += 1
                log.info("app: drift %d at event %d (concept %s)", drifts, predictions,
                         stream.concepts[stream.concept].name)
            sample = stream.next()
            p = deployment.predict(sample.features)
            predictions += 1
            reviewers.observe(sample, p.label, p.prediction_id)
            for review in reviewers.due(sample.index):
                client.log_feedback(review.prediction_id, options.deployment, label=review.label,
                                    feedback_type=review.feedback_type, verdict=review.verdict, reviewer=review.reviewer)
                feedback += 1
            if options.rate > 0:
                ahead = t0 + predictions / options.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the simulated traffic, not synchronisation
        for review in reviewers.drain() if options.events else ():
            client.log_feedback(review.prediction_id, options.deployment, label=review.label,
                                feedback_type=review.feedback_type, verdict=review.verdict, reviewer=review.reviewer)
            feedback += 1
        return AppResult(predictions, feedback, drifts, registered, deployment.primary_version)
    finally:
        if deployment is not None:
            deployment.close()
        client.close(30)


def _restart_cycle(stream, seed: int):
    """A new stream on the first concept (the world returns to where it started, with fresh samples)."""
    from infra.demo.stream import DriftingStream

    fresh = DriftingStream(stream.concepts, seed=seed)
    fresh.position = stream.position
    return fresh
