"""The trainer process: consumes TrainingTriggered events in the consumer group ``<prefix>trainers``.

Each trigger is processed fully (its run's events published and flushed) before its offset is
committed, so a trainer that dies mid-run leaves the trigger to be redelivered to another trainer or
to its restart. A trigger whose run already finished or failed (folded from model-lifecycle) is
skipped, so a redelivery after a crash between publishing and committing does not train twice.

``python -m trainers.worker`` runs one from ``Settings.from_env()``; ``ctloop train`` does the same.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

from infra.settings import Settings
from streams import catalog as ev
from streams.consumer import EventConsumer
from streams.kafka_config import client_config
from streams.producer import EventProducer
from streams.serde import Serde
from streams.topics import Topics, ensure_topics
from trainers.pipeline import RunOutcome, TrainingPipeline
from trainers.training import configure_threads

log = logging.getLogger(__name__)

NEEDED_TOPICS = ["triggers", "labeled-examples", "model-lifecycle", "model-updates", "deployments", "dead-letters"]


def trainer_group(settings) -> str:
    """The trainers' consumer group on the triggers topic: ``<topic_prefix>trainers``."""
    return f"{settings.topic_prefix}trainers"


def run_trainer(settings, stop: Callable[[], bool], trainer_id: str | None = None, label_noise: float = 0.0, *,
                metrics=None, on_ready: Callable[[], None] | None = None,
                on_handled: Callable[[dict, RunOutcome], None] | None = None,
                on_assignment: Callable[[list[int]], None] | None = None) -> int:
    """Train triggers until ``stop()`` is true (checked between triggers and while idle).

    ``on_ready`` is called once the group has assigned this trainer partitions; ``on_handled(trigger,
    outcome)`` after each trigger is processed and before its offset is committed; ``on_assignment(partitions)``
    whenever the trigger partitions owned by this trainer change.
    Returns the number of triggers handled."""
    from confluent_kafka.admin import AdminClient

    threads = configure_threads(settings.trainer_threads)
    topics = Topics.from_settings(settings)
    ensure_topics(AdminClient(client_config(settings)), topics, NEEDED_TOPICS)
    serde = Serde.from_settings(settings)
    producer = EventProducer(settings, serde)
    pipeline = TrainingPipeline(settings, producer=producer, serde=serde, trainer_id=trainer_id,
                                label_noise=label_noise, metrics=metrics)
    # a long run must not get the trainer evicted from the group (that would redeliver its trigger)
    consumer = EventConsumer(settings, trainer_group(settings), [topics.triggers], serde=serde, dlq_producer=producer,
                             component=f"trainer {pipeline.trainer_id}", **{"max.poll.interval.ms": 3_600_000})
    handled = 0
    log.info("trainer %s: device %s, %d torch threads, group %s", pipeline.trainer_id, pipeline.device, threads,
             trainer_group(settings))
    try:
        ready_sent = False
        owned: list[int] = []
        while not stop():
            batch = consumer.poll_batch(1, 0.5)
            now_owned = sorted(tp.partition for tp in consumer.assignment)
            if now_owned != owned:
                owned = now_owned
                log.info("trainer %s: owns trigger partitions %s", pipeline.trainer_id, owned)
                if on_assignment is not None:
                    on_assignment(owned)
            if not ready_sent and consumer.assignment:
                ready_sent = True
                if on_ready is not None:
                    on_ready()
            for event in batch:
                if event.event_type != ev.TRAINING_TRIGGERED:
                    continue
                outcome = pipeline.run(event.value)
                handled += 1
                if on_handled is not None:
                    on_handled(event.value, outcome)
                log.info("trainer %s: trigger %s -> %s %s", pipeline.trainer_id, event.value["trigger_id"],
                         outcome.status, outcome.version or "")
            if batch:
                consumer.commit()  # only after the run's events are flushed
    finally:
        consumer.close()
        producer.close()
    return handled


def main(argv=None) -> None:
    """``python -m trainers.worker [--trainer-id ID] [--label-noise P]``: a foreground trainer with settings
    from the environment."""
    import argparse

    parser = argparse.ArgumentParser(description="ctloop trainer (settings from CTLOOP_* variables)")
    parser.add_argument("--trainer-id", default=None)
    parser.add_argument("--label-noise", type=float, default=0.0)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings, trainer_id=args.trainer_id, label_noise=args.label_noise)


def serve(settings, trainer_id: str | None = None, label_noise: float = 0.0) -> int:
    """Foreground trainer with Prometheus metrics, stopped by SIGTERM/SIGINT (after the current run)."""
    from infra.metrics import Metrics

    stopping = threading.Event()

    def _stop(signum, _frame):
        log.info("trainer: signal %d, stopping after the current run", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    metrics = Metrics("trainer")
    metrics.serve(settings.metrics_port)
    return run_trainer(settings, stopping.is_set, trainer_id, label_noise, metrics=metrics)


if __name__ == "__main__":
    main()
