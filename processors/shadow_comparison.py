"""Shadow comparison stage: primary predictions + shadow predictions + feedback -> ShadowComparison.

Two steps (docs/SERVING.md, "Shadow comparison"):

1. **Join, per partition.** One agent reads predictions, shadow-predictions and feedback (co-partitioned
   by prediction id) and joins them by prediction id in a bounded in-memory :class:`PredictionJoin`.
   Each completed join becomes a small JSON *outcome* (pair, labeled_pair, primary); the outcomes of a
   batch of events are sent as one message per deployment (``{"outcomes": [...]}``) to the internal
   topic ``<prefix>shadow-outcomes``, keyed by deployment, with ONE partition.
2. **Aggregate, single partition.** One agent reads that topic, so it sees every outcome of every
   deployment whatever worker joined it, folds them per (deployment, primary_version, shadow_version)
   in a :class:`ComparisonAggregator` and publishes ShadowComparison events on shadow-comparisons,
   rate-limited (every ``shadow_comparison_every`` labeled pairs, or ``shadow_comparison_interval_s``).

The promotion stage also reads the outcomes topic (``primary`` outcomes: live accuracy per version).
"""
from __future__ import annotations

import logging
import time

from processors.dead_letters import dead_letter_failure, decode_message
from processors.policies import ComparisonAggregator, PredictionJoin
from streams import catalog as ev
from streams.record_size import RecordTooLarge, json_batches
from streams.serde import new_event

log = logging.getLogger(__name__)

OUTCOMES_KEY = "shadow-outcomes"


def outcomes_topic(app, ctx):
    """The internal outcomes topic (JSON values, one partition), shared by this stage and promotion."""
    topic = ctx.faust_topics.get(OUTCOMES_KEY)
    if topic is None:
        topic = ctx.faust_topics[OUTCOMES_KEY] = app.topic(
            f"{ctx.settings.topic_prefix}{OUTCOMES_KEY}", key_type=bytes, key_serializer="raw",
            value_serializer="json", partitions=1, internal=True, retention=7 * 24 * 3600.0)
    return topic


def iter_outcomes(message) -> list[dict]:
    """The outcomes of one message of the outcomes topic ({"outcomes": [...]})."""
    batch = message.get("outcomes") if isinstance(message, dict) else None
    return [o for o in batch if isinstance(o, dict) and "kind" in o] if isinstance(batch, list) else []


def register(app, ctx) -> None:
    settings, topics = ctx.settings, ctx.topics
    component = "shadow_comparison"
    join = PredictionJoin()
    aggregator = ComparisonAggregator(settings.shadow_comparison_every, settings.shadow_comparison_interval_s)
    outcomes = outcomes_topic(app, ctx)
    source = app.topic(topics.predictions, topics.shadow_predictions, topics.feedback, key_type=bytes,
                       value_type=bytes, key_serializer="raw", value_serializer="raw")
    m_outcomes = ctx.metrics.counter("ctloop_shadow_outcomes_total", "Join outcomes by kind.", ("kind",))
    m_comparisons = ctx.metrics.counter("ctloop_shadow_comparisons_total", "ShadowComparison events published.",
                                        ("deployment",))
    m_open = ctx.metrics.gauge("ctloop_shadow_join_open_entries", "Predictions waiting in the shadow join.")

    limit = settings.max_message_bytes

    def join_one(message) -> list[dict]:
        # types allowed per topic and the role of a prediction on its topic are checked at the edge
        # (streams.dead_letters.decode_checked); this stage dead-letters refused shadow-predictions only
        decoded = decode_message(ctx, message, component)
        if decoded is None:
            return []
        value = decoded[1]
        produced = join.on_feedback(value) if message.topic == topics.feedback else join.on_prediction(value)
        for _ in json_batches(produced, limit, key=b"x" * 200, what="a shadow outcome of this record"):
            pass  # every outcome fits one outcomes message on its own (else: RecordTooLarge, dead-lettered)
        return produced

    @app.agent(source, name=f"{topics.prefix}shadow-join")
    async def shadow_join(stream):
        # batches: one outcomes message per deployment and batch keeps the per-event cost low (split by
        # size when needed: max_message_bytes)
        async for events in stream.take_events(500, within=0.05):
            by_deployment: dict[str, list[dict]] = {}
            for event in events:
                try:
                    produced = join_one(event.message)
                except Exception as exc:  # noqa: BLE001 - one bad record must not stop the stage
                    log.warning("shadow_comparison: join failed: %s", exc, exc_info=not isinstance(exc, RecordTooLarge))
                    dead_letter_failure(ctx, event.message, exc, component, "join error")
                    continue
                for outcome in produced:
                    m_outcomes.labels(outcome["kind"]).inc()
                    by_deployment.setdefault(outcome["deployment"], []).append(outcome)
            for deployment, batch in by_deployment.items():
                key = deployment.encode()
                # sized batches: many outcomes carrying large labels must not make one message too large
                for raw, _members in json_batches(batch, limit, field="outcomes", key=key):
                    await outcomes.send(key=key, value=raw, value_serializer="raw")
            m_open.set(len(join))

    def publish(comparisons: list[dict]) -> None:
        for fields in comparisons:
            record = new_event(ev.SHADOW_COMPARISON, ctx.serde.catalog, **fields)
            ctx.producer.produce(topics.shadow_comparisons, ev.SHADOW_COMPARISON, record, key=fields["deployment"])
            m_comparisons.labels(fields["deployment"]).inc()
        if comparisons:
            ctx.producer.poll(0)

    @app.agent(outcomes, name=f"{topics.prefix}shadow-aggregate")
    async def shadow_aggregate(stream):
        async for message in stream:
            try:
                for outcome in iter_outcomes(message):
                    publish(aggregator.add(outcome, time.monotonic()))
            except Exception:  # noqa: BLE001 - logged; the stage keeps running
                log.exception("shadow_comparison: aggregating outcomes failed")

    @app.timer(interval=max(0.2, min(1.0, settings.shadow_comparison_interval_s / 2)))
    async def shadow_flush():
        try:
            publish(aggregator.due(time.monotonic()))
        except Exception:  # noqa: BLE001 - an exception in a faust timer would stop the worker
            log.exception("shadow_comparison: publishing due comparisons failed")
