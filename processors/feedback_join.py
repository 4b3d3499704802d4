"""Stage: predictions + feedback -> labeled examples, with the feedback-loop counters.

One agent reads the predictions and feedback topics (co-partitioned by prediction id) in batches.
Join state (processors/join_logic.py) and counters (processors/feedback_counters.py) are faust tables
with changelogs, written with the partition of the event that changed them, so a restarted worker
recovers them. Labeled examples and dead letters go out through ``ctx.producer``, which is flushed
before the batch is acknowledged: an event's outputs are durable before its offset can be committed
(at-least-once; replays are recognised, see join_logic).
"""
from __future__ import annotations

import asyncio
import logging
import time

from processors.dead_letters import dead_letter, decode_message
from processors.deployment_view import DeploymentView
from processors.feedback_counters import FeedbackCounters, StatsEmitter
from processors.follower import LogFollower
from processors.join_logic import FeedbackJoiner
from processors.tables import BatchedTableWriter, reload_assigned_changelogs
from streams import catalog as ev
from streams.serde import now_ms

log = logging.getLogger(__name__)
COMPONENT = "processors.feedback_join"


def register(app, ctx) -> None:
    settings, topics, m = ctx.settings, ctx.topics, ctx.metrics
    n = topics.partitions("predictions")
    state = app.Table("feedback-join", default=None, partitions=n, key_type=str)
    counts = app.Table("feedback-counts", default=None, partitions=n, key_type=str)

    state_writer, counts_writer = BatchedTableWriter(state), BatchedTableWriter(counts)

    @app.on_rebalance_complete.connect
    async def _complete_recovery(sender, **kwargs) -> None:  # noqa: ARG001 - faust signal signature
        n = await asyncio.get_running_loop().run_in_executor(
            None, reload_assigned_changelogs, app, [state, counts], settings.bootstrap_servers)
        log.info("feedback join: state re-read from %d changelog records", n)

    def persist() -> None:
        state_writer.persist()
        counts_writer.persist()

    view = DeploymentView()
    counters = FeedbackCounters(counts, counts_writer.write)
    joiner = FeedbackJoiner(state, state_writer.write, feedback_enabled=lambda d: view.get(d)["feedback_loop_enabled"])
    emitter = StatsEmitter(settings.stats_min_interval_s)

    def on_log_event(event_type, value, topic):
        if event_type == ev.DEPLOYMENT_CONFIGURED:
            view.apply(event_type, value)
            emitter.changed(value["deployment"])
        elif event_type == ev.TRAINING_TRIGGERED:
            counters.on_trigger(value["deployment"], value.get("evidence") or {})
            emitter.changed(value["deployment"])

    LogFollower(settings, [topics.deployments, topics.triggers], on_log_event, serde=ctx.serde,
                name="feedback-join-follower").start()

    labels = ("deployment",)
    g = {name: m.gauge(f"ctloop_feedback_{name}", doc, labels) for name, doc in (
        ("predictions_logged", "Predictions logged (primary and canary) per deployment."),
        ("received", "Feedback events received per deployment (duplicates included)."),
        ("reviewed", "Distinct predictions with feedback per deployment."),
        ("added_to_training", "Distinct labeled examples added to the training set per deployment."),
        ("reviewed_since_last_training", "Labeled examples added since the deployment's last training trigger."),
        ("progress_ratio", "reviewed_since_last_training / trigger_threshold (0 without a threshold)."),
        ("dead_lettered", "Feedback dead-lettered (unmatched after the park TTL) per deployment."))}
    duplicates = m.counter("ctloop_feedback_duplicates_total", "Duplicate feedback (counted once).", labels)
    corrections = m.counter("ctloop_feedback_corrections_total", "Corrections that replaced an earlier label.", labels)
    ignored = m.counter("ctloop_feedback_ignored_total", "Feedback not joined because the feedback loop is off.", labels)
    examples_out = m.counter("ctloop_feedback_labeled_examples_total", "LabeledExample events published.", labels)
    events_in = m.counter("ctloop_feedback_join_events_total", "Events read by the feedback join.", ("topic",))
    batch_seconds = m.histogram("ctloop_feedback_join_batch_seconds", "Time to process one batch (incl. flush).")

    emitted_since: dict[str, int] = {}   # reviewed_since_last_training in the last stats sent

    def check_crossings(deps) -> None:
        """A deployment whose added examples reach its trigger threshold gets its stats at once."""
        totals = counters.totals()
        for dep in deps:
            threshold = view.get(dep)["trigger_threshold"]
            t = totals.get(dep)
            if threshold <= 0 or t is None:
                continue
            since = t["added_to_training"] - counters.baseline.get(dep, 0)
            if since >= threshold > emitted_since.get(dep, 0):
                emitter.urgent(dep)

    def emit_due() -> None:
        due = emitter.due()
        if not due:
            return
        totals = counters.totals()
        for dep in due:
            t = totals.get(dep)
            if t is None:
                continue
            record = counters.stats_record(dep, t, view.get(dep)["trigger_threshold"])
            ctx.producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS, record, key=dep)
            emitted_since[dep] = record["reviewed_since_last_training"]
            g["predictions_logged"].labels(dep).set(t["predictions_logged"])
            g["received"].labels(dep).set(t["feedback_received"])
            g["reviewed"].labels(dep).set(t["reviewed"])
            g["added_to_training"].labels(dep).set(t["added_to_training"])
            g["reviewed_since_last_training"].labels(dep).set(record["reviewed_since_last_training"])
            g["progress_ratio"].labels(dep).set(record["progress"])
            g["dead_lettered"].labels(dep).set(t["feedback_dead_lettered"])
        ctx.producer.poll(0)

    source = app.topic(topics.predictions, topics.feedback, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")

    crossed: set[str] = set()   # deployments with new examples in the current batch

    def handle(event) -> None:
        msg = event.message
        decoded = decode_message(ctx, msg, COMPONENT)
        topic_key = "predictions" if msg.topic == topics.predictions else "feedback"
        events_in.labels(topic_key).inc()
        if decoded is None:
            return
        _etype, value = decoded
        pid, dep = value["prediction_id"], value["deployment"]
        src = [topic_key, msg.partition, msg.offset]
        now = now_ms()
        if topic_key == "predictions":
            if value["role"] == "shadow":
                return
            result = joiner.on_prediction(pid, value, src, now)
            inc = {"predictions_logged": 1}
        else:
            result = joiner.on_feedback(pid, value, src, now)
            inc = {"feedback_received": 1}
            record = state.get(pid)
            if record and record.get("p"):
                dep = record["p"]["deployment"]  # reviews count for the prediction's deployment
        if result.new_reviews:
            inc["reviewed"] = result.new_reviews
        if result.new_examples:
            inc["added_to_training"] = result.new_examples
        counters.count(dep, topic_key, msg.partition, msg.offset, **inc)
        for example in result.examples:
            ctx.producer.produce(topics.labeled_examples, ev.LABELED_EXAMPLE, example, key=pid)
            examples_out.labels(example["deployment"]).inc()
        if result.duplicates:
            duplicates.labels(dep).inc(result.duplicates)
        if result.corrections:
            corrections.labels(dep).inc(result.corrections)
        if result.ignored:
            ignored.labels(dep).inc()
        emitter.changed(value["deployment"])
        emitter.changed(dep)
        if result.new_examples:
            crossed.add(dep)

    @app.agent(source, name=f"{COMPONENT}")
    async def join(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(2000, within=0.02):
            started = time.perf_counter()
            for event in events:
                try:
                    handle(event)
                except Exception as exc:  # noqa: BLE001 - dead-letter the event, keep the partition moving
                    log.exception("feedback join failed on %s[%d]@%d", event.message.topic, event.message.partition,
                                  event.message.offset)
                    dead_letter(ctx, topic=event.message.topic, partition=event.message.partition,
                                offset=event.message.offset, key=event.message.key, value=event.message.value,
                                reason=f"handler error: {type(exc).__name__}: {exc}", error_type="processing_error",
                                component=COMPONENT)
            persist()                                             # one changelog record per key and batch
            await loop.run_in_executor(None, ctx.producer.flush)  # outputs durable before the batch is acked
            if crossed:
                check_crossings(crossed)
                crossed.clear()
            emit_due()
            batch_seconds.observe(time.perf_counter() - started)

    @app.timer(min(settings.join_sweep_interval_s, max(0.02, settings.stats_min_interval_s / 4)))
    async def sweep_and_stats():
        now = now_ms()
        last = getattr(sweep_and_stats, "last_sweep", 0)
        if now - last >= settings.join_sweep_interval_s * 1000:
            sweep_and_stats.last_sweep = now
            result = joiner.expire(now, int(settings.join_ttl_s * 1000), int(settings.feedback_park_ttl_s * 1000))
            for pid, fb in result.dead_letters:
                topic_key, partition, offset = fb["src"]
                record = ctx.serde.encode(ev.FEEDBACK_RECEIVED, _feedback_record(pid, fb), topics.feedback)
                dead_letter(ctx, topic=topics.name(topic_key), partition=partition, offset=offset, key=pid,
                            value=record, error_type="unmatched_feedback", component=COMPONENT,
                            reason=(f"no prediction {pid} for deployment {fb['deployment']!r} within "
                                    f"feedback_park_ttl_s={settings.feedback_park_ttl_s:g}s"))
                counters.count(fb["deployment"], "expired", partition, None, feedback_dead_lettered=1)
                emitter.changed(fb["deployment"])
            persist()
            if result.dead_letters:
                await asyncio.get_running_loop().run_in_executor(None, ctx.producer.flush)
        emit_due()


def _feedback_record(pid: str, fb: dict) -> dict:
    return {"event_id": fb["event_id"], "event_time": fb["time"], "prediction_id": pid, "deployment": fb["deployment"],
            "feedback_type": fb["feedback_type"], "kind": fb.get("kind") or "explicit", "label": fb.get("label"),
            "verdict": fb.get("verdict"), "reviewer": fb.get("reviewer")}
