"""The stream-processor application (faust-streaming): the composition root of processors/.

``build_app(settings)`` makes the faust App tuned for quick group joins, a :class:`ProcessorContext`
holding what every stage needs, and calls ``register(app, ctx)`` of each stage module in STAGES.
Each stage module declares its agents and tables next to each other and keeps its logic in plain
classes that unit tests reach without Kafka.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from dataclasses import dataclass, field

import faust

from infra.metrics import Metrics
from infra.settings import Settings
from streams.kafka_config import faust_broker_options
from streams.producer import EventProducer
from streams.serde import Serde
from streams.topics import Topics

# Order matters only for readability: each stage reads and writes topics, never another stage's state.
STAGES = (
    "processors.feedback_join",     # predictions + feedback -> labeled examples (+ dead letters)
    "processors.feedback_counters", # feedback-loop counters -> feedback-stats
    "processors.drift",             # windowed PSI/KS + river ADWIN -> drift
    "processors.performance",       # rolling live accuracy/precision/recall
    "processors.triggers",          # policies -> triggers
    "processors.shadow_comparison", # primary + shadow + feedback -> shadow-comparisons
    "processors.promotion",         # promotion / rejection / rollback -> model-updates
    "processors.online_fallback",   # online learner vs champion -> OnlineFallbackSwitched (model-updates)
)


@dataclass
class ProcessorContext:
    """What every stage needs: the settings, topic names, serde, metrics, a confluent-kafka producer
    and the faust topic objects by topic key."""
    settings: Settings
    topics: Topics
    serde: Serde
    metrics: Metrics
    producer: EventProducer
    """confluent-kafka producer for output events and dead letters (faust's own producer is used
    for changelogs)."""
    faust_topics: dict = field(default_factory=dict)
    """faust topic objects by topic key (raw bytes values; decode with ctx.serde)."""


def build_app(settings: Settings, *, stages=STAGES, metrics: Metrics | None = None) -> tuple[faust.App, ProcessorContext]:
    """The faust App of the processors (in-memory tables, no standby replicas) and its ProcessorContext,
    with ``register(app, ctx)`` of each module in ``stages`` called. Raises ValueError naming an unknown
    stage."""
    topics = Topics.from_settings(settings)
    datadir = Path(settings.data_dir) / "faust"  # faust's own files; not the working directory
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}processors",
        **faust_broker_options(settings),   # broker URLs, client id, TLS/SASL credentials
        store="memory://",
        topic_partitions=settings.default_partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        consumer_auto_offset_reset="earliest",
        # no standby copies: faust applies a standby partition's changelog to the same in-memory table,
        # so a worker would sweep (expire) and hold state of partitions another worker owns
        table_standby_replicas=0,
        # faust compares offsets it read in an earlier recovery of a partition with the changelog's
        # highwater from ListOffsets; the embedded Tansu broker answers that with the last batch's base
        # offset + 1 (short of the end), so a partition coming back to a worker after a rebalance raised
        # ConsistencyError. The tables are re-read to the real end after recovery instead
        # (processors.tables.reload_assigned_changelogs).
        recovery_consistency_check=False,
        web_enabled=False,
        topic_allow_declare=True,
        datadir=str(datadir),
    )
    serde = Serde.from_settings(settings)
    ctx = ProcessorContext(settings=settings, topics=topics, serde=serde, metrics=metrics or Metrics("processors"),
                           producer=EventProducer(settings, serde))
    for key in topics.specs:
        ctx.faust_topics[key] = app.topic(topics.name(key), key_type=bytes, value_type=bytes,
                                          key_serializer="raw", value_serializer="raw",
                                          partitions=topics.partitions(key))
    for name in stages:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                raise ValueError(f"unknown processor stage {name!r} (CTLOOP_PROCESSOR_STAGES); "
                                 f"known: {', '.join(STAGES)}") from None
            raise
        module.register(app, ctx)
    return app, ctx
