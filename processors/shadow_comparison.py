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
   **Evidence belongs to one shadow assignment**: the agent follows the deployments topic (a
   :class:`streams.follower.TopicFollower` thread hands the assignment changes over a queue) and starts
   fresh statistics when a deployment's shadow assignment (version, revision) changes; each
   ShadowComparison carries ``shadow_revision``, the revision of the assignment its counts belong to.

The promotion stage also reads the outcomes topic (``primary`` outcomes: live accuracy per version).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from processors.dead_letters import dead_letter_failure, decode_message
from processors.shadow_join import PredictionJoin
from processors.shadow_stats import ComparisonAggregator, ShadowAssignments
from streams import catalog as ev
from streams.consumer import end_offset_consumer, end_offsets
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
    """The shadow-comparison stage: primary and shadow predictions and feedback in, ShadowComparison out.
    Declares its faust agents, and the timers, tasks and tables it needs, on ``app`` (``ctx``: the shared
    :class:`processors.app.ProcessorContext`)."""
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

    def join_one(message, refused: list) -> list[dict]:
        # types allowed per topic and the role of a prediction on its topic are checked at the edge
        # (streams.dead_letters.decode_checked); this stage dead-letters refused shadow-predictions only
        decoded = decode_message(ctx, message, component, on_reject=refused.append, flush=False)
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
            refused: list = []   # records refused or failed in this batch: their dead letters are flushed once
            for event in events:
                try:
                    produced = join_one(event.message, refused)
                except Exception as exc:  # noqa: BLE001 - one bad record must not stop the stage
                    log.warning("shadow_comparison: join failed: %s", exc, exc_info=not isinstance(exc, RecordTooLarge))
                    dead_letter_failure(ctx, event.message, exc, component, "join error", flush=False)
                    refused.append(exc)
                    continue
                for outcome in produced:
                    m_outcomes.labels(outcome["kind"]).inc()
                    by_deployment.setdefault(outcome["deployment"], []).append(outcome)
            for deployment, batch in by_deployment.items():
                key = deployment.encode()
                # sized batches: many outcomes carrying large labels must not make one message too large
                for raw, _members in json_batches(batch, limit, field="outcomes", key=key):
                    await outcomes.send(key=key, value=raw, value_serializer="raw")
            if refused:   # dead letters durable before the batch can be committed
                await asyncio.get_running_loop().run_in_executor(None, ctx.producer.flush)
            m_open.set(len(join))

    def publish(comparisons: list[dict]) -> None:
        for fields in comparisons:
            record = new_event(ev.SHADOW_COMPARISON, ctx.serde.catalog, **fields)
            ctx.producer.produce(topics.shadow_comparisons, ev.SHADOW_COMPARISON, record, key=fields["deployment"])
            m_comparisons.labels(fields["deployment"]).inc()
        if comparisons:
            ctx.producer.poll(0)

    # --- shadow assignments, from the deployments topic (folded in a follower thread, applied here) ---
    changes: queue.SimpleQueue = queue.SimpleQueue()  # (deployment, shadow version, revision)
    assignments = ShadowAssignments()  # follower thread only
    follower_box: dict = {}
    handled: dict = {}  # (topic, partition) -> next offset, once its events were handed over
    syncs = {"started": -1e9}  # monotonic time the last sync started
    mismatches: dict = {}  # (deployment, shadow version) -> [first, last] time it was seen not assigned

    def on_deployment(event) -> None:
        if event.event_type == ev.DEPLOYMENT_CONFIGURED:
            change = assignments.apply(event.value)
            if change is not None:
                changes.put(change)

    def follower():
        from streams.follower import TopicFollower

        if "f" not in follower_box:  # started with the worker, not when the app is built
            f = follower_box["f"] = TopicFollower(settings, [topics.deployments], on_deployment,
                                                  on_batch=lambda: handled.update(f.positions), serde=ctx.serde,
                                                  name="shadow-assignments")
            f.start()
        return follower_box["f"]

    def apply_changes() -> None:
        while True:
            try:
                aggregator.assign(*changes.get_nowait())
            except queue.Empty:
                return

    def sync(timeout_s: float = 5.0) -> None:
        """Blocking: wait until the follower has handed over every deployments event in the log now."""
        f = follower()
        if not f.caught_up.wait(30.0):
            log.warning("shadow_comparison: deployments follower has not caught up; counting without it")
            return
        if "consumer" not in follower_box:
            follower_box["consumer"] = end_offset_consumer(settings)
        ends = end_offsets(settings, topics.deployments, consumer=follower_box["consumer"])
        deadline = time.monotonic() + timeout_s
        waiter = threading.Event()
        while any(handled.get((topics.deployments, p), 0) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                log.warning("shadow_comparison: deployments follower not at %s after %.0fs", ends, timeout_s)
                return
            waiter.wait(0.02)

    @app.task
    async def start_shadow_assignments():
        follower()

    @app.on_before_shutdown.connect
    async def stop_shadow_assignments(sender, **kwargs):  # noqa: ARG001 - faust signal signature
        f = follower_box.pop("f", None)
        if f is not None:
            f.stop(5)
        consumer = follower_box.pop("consumer", None)
        if consumer is not None:
            consumer.close()

    async def aggregate(outcome: dict, received_s: float) -> None:
        if outcome.get("kind") == "pair" or (outcome.get("kind") == "labeled_pair" and "prediction_id" not in outcome):
            key = (outcome["deployment"], outcome["shadow_version"])
            if not aggregator.is_assigned(*key) and needs_sync(key, received_s):
                # not the assigned shadow as far as we know: maybe the follower has not read its assignment
                # yet. The app wrote it before shadowing, so a sync started after this outcome arrived sees it
                syncs["started"] = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, sync)
                apply_changes()
        publish(aggregator.add(outcome, time.monotonic()))

    def needs_sync(key, received_s: float) -> bool:
        if syncs["started"] >= received_s:
            return False  # a sync started after this outcome arrived: what it could depend on is folded
        now = time.monotonic()
        seen = mismatches.get(key)
        if seen is None or now - seen[1] > 2.0:
            seen = mismatches[key] = [now, now]  # a new run of outcomes of a shadow not assigned
        seen[1] = now
        # a version shadowed without an assignment for long (stragglers are over in seconds; a new
        # assignment's first pairs come right after a gap): sync at most once a second for it
        if now - seen[0] > 10.0 and now - syncs.get(key, -1e9) < 1.0:
            return False
        syncs[key] = now
        return True

    @app.agent(outcomes, name=f"{topics.prefix}shadow-aggregate")
    async def shadow_aggregate(stream):
        async for message in stream:
            received_s = time.monotonic()  # not before the outcomes topic delivered it
            try:
                if not follower().caught_up.is_set():  # the assignments before the first outcome
                    await asyncio.get_running_loop().run_in_executor(None, follower().caught_up.wait, 30.0)
                apply_changes()
                for outcome in iter_outcomes(message):
                    await aggregate(outcome, received_s)
            except Exception:  # noqa: BLE001 - logged; the stage keeps running
                log.exception("shadow_comparison: aggregating outcomes failed")

    @app.timer(interval=max(0.2, min(1.0, settings.shadow_comparison_interval_s / 2)))
    async def shadow_flush():
        try:
            apply_changes()
            publish(aggregator.due(time.monotonic()))
        except Exception:  # noqa: BLE001 - an exception in a faust timer would stop the worker
            log.exception("shadow_comparison: publishing due comparisons failed")
