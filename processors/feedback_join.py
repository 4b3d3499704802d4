"""Stage: predictions + feedback -> labeled examples, with the feedback-loop counters.

One agent reads the predictions and feedback topics (co-partitioned by prediction id) in batches.
Join state (processors/join_logic.py) and counters (processors/feedback_counters.py) are faust tables
with changelogs, written with the partition of the event that changed them, so a restarted worker
recovers them. Labeled examples and dead letters go out through ``ctx.producer``, which is flushed
before the batch is acknowledged: an event's outputs are durable before its offset can be committed
(at-least-once; replays are recognised, see join_logic). The counters' records changed by a batch go
to their deployments' owners (``feedback_counters.send_partials``), which sum them and publish
FeedbackLoopStats (``feedback_counters.register_aggregation``, registered here), so any number of
workers publishes the same stats as one.
"""
from __future__ import annotations

import asyncio
import logging
import time

from processors.dead_letters import dead_letter, dead_letter_failure, decode_message
from processors.deployment_view import DeploymentView
from processors.feedback_counters import FeedbackCounters, register_aggregation, send_partials
from processors.follower import LogFollower
from processors.join_logic import FeedbackJoiner
from processors.ownership import forget_unassigned
from processors.tables import BatchedTableWriter, reload_assigned_changelogs
from streams import catalog as ev
from streams.record_size import RecordTooLarge, check_size
from streams.serde import now_ms

log = logging.getLogger(__name__)
COMPONENT = "processors.feedback_join"


def register(app, ctx) -> None:
    """The feedback-join stage: predictions and feedback in, LabeledExamples and the feedback counters out.
    Declares its faust agents, and the timers, tasks and tables it needs, on ``app`` (``ctx``: the shared
    :class:`processors.app.ProcessorContext`)."""
    settings, topics, m = ctx.settings, ctx.topics, ctx.metrics
    n = topics.partitions("predictions")
    state = app.Table("feedback-join", default=None, partitions=n, key_type=str)
    counts = app.Table("feedback-counts", default=None, partitions=n, key_type=str)

    # rows are sized before they are queued: one over max_message_bytes is a RecordTooLarge, not a crash
    state_writer = BatchedTableWriter(state, settings.max_message_bytes)
    counts_writer = BatchedTableWriter(counts, settings.max_message_bytes)

    @app.on_rebalance_complete.connect
    async def _complete_recovery(sender, **kwargs) -> None:  # noqa: ARG001 - faust signal signature
        n = await asyncio.get_running_loop().run_in_executor(
            None, reload_assigned_changelogs, app, [state, counts], settings)
        log.info("feedback join: state re-read from %d changelog records", n)
        # rows of partitions revoked from this worker stay in faust's memory store: forget them, so the
        # expiry sweep acts only for partitions this worker owns (processors/ownership.py)
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.predictions}
        gone = forget_unassigned(state, owned, lambda _k, v: v.get("pt") if isinstance(v, dict) else None)
        gone += forget_unassigned(counts, owned, lambda k, _v: int(str(k).rsplit("|", 1)[1]))
        if gone:
            log.info("feedback join: forgot %d rows of partitions now owned by other workers", gone)

    def persist() -> None:
        state_writer.persist()
        counts_writer.persist()

    view = DeploymentView()
    counters = FeedbackCounters(counts, counts_writer.write)
    joiner = FeedbackJoiner(state, state_writer.write, feedback_enabled=lambda d: view.get(d)["feedback_loop_enabled"])
    register_aggregation(app, ctx)   # the deployments' owners sum the partial counts and publish stats

    LogFollower(settings, [topics.deployments], view.apply, serde=ctx.serde, name="feedback-join-follower").start()

    labels = ("deployment",)
    duplicates = m.counter("ctloop_feedback_duplicates_total", "Duplicate feedback (counted once).", labels)
    corrections = m.counter("ctloop_feedback_corrections_total", "Corrections that replaced an earlier label.", labels)
    ignored = m.counter("ctloop_feedback_ignored_total", "Feedback not joined because the feedback loop is off.", labels)
    examples_out = m.counter("ctloop_feedback_labeled_examples_total", "LabeledExample events published.", labels)
    events_in = m.counter("ctloop_feedback_join_events_total", "Events read by the feedback join.", ("topic",))
    batch_seconds = m.histogram("ctloop_feedback_join_batch_seconds", "Time to process one batch (incl. flush).")

    source = app.topic(topics.predictions, topics.feedback, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")

    def unmatched(result) -> None:
        """Dead-letter the feedback of predictions that were dead-lettered themselves (says why)."""
        for pid, fb in result.dead_letters:
            _topic_key, partition, offset = fb["src"]
            record = ctx.serde.encode(ev.FEEDBACK_RECEIVED, _feedback_record(pid, fb), topics.feedback)
            dead_letter(ctx, topic=topics.feedback, partition=partition, offset=offset, key=pid, value=record,
                        error_type="unmatched_feedback", component=COMPONENT, reason=fb["why"], flush=False)

    def rejected_prediction(msg, reason: str, decoded_value: dict | None) -> None:
        """A prediction dead-lettered by this stage: its feedback is unmatched, saying why."""
        pid = decoded_value.get("prediction_id") if decoded_value else None
        if pid is None and msg.key and len(msg.key) <= 200:   # predictions are keyed by prediction id
            pid = msg.key.decode("utf-8", "replace")
        if not isinstance(pid, str):
            return
        result = joiner.on_rejected_prediction(pid, reason, msg.partition, now_ms())
        unmatched(result)
        for _pid, fb in result.dead_letters:
            counters.count(fb["deployment"], "expired", msg.partition, None, feedback_dead_lettered=1)

    def on_reject(msg, exc) -> None:
        if msg.topic == topics.predictions:
            rejected_prediction(msg, f"{exc.error_type}: {exc.reason}", exc.decoded.value if exc.decoded else None)

    def handle(event) -> None:
        msg = event.message
        # dead letters are flushed with the batch's outputs, before the batch is acknowledged
        decoded = decode_message(ctx, msg, COMPONENT, on_reject=lambda exc: on_reject(msg, exc), flush=False)
        topic_key = "predictions" if msg.topic == topics.predictions else "feedback"
        events_in.labels(topic_key).inc()
        if decoded is None:
            return
        _etype, value = decoded
        # every write of this record is sized before anything is sent: if one does not fit, the table
        # writes are undone and the record is dead-lettered (record_too_large), never half-applied
        state_writer.begin()
        counts_writer.begin()
        try:
            outputs = process(msg, topic_key, value)
        except BaseException as exc:
            state_writer.rollback()
            counts_writer.rollback()
            if topic_key == "predictions":
                rejected_prediction(msg, f"{'record_too_large' if isinstance(exc, RecordTooLarge) else 'processing_error'}: "
                                    f"{exc}", value)
            raise
        state_writer.release()
        counts_writer.release()
        for raw, example in outputs:
            ctx.producer.produce_raw(topics.labeled_examples, raw, example["prediction_id"])
            examples_out.labels(example["deployment"]).inc()

    def process(msg, topic_key: str, value: dict) -> list:
        """Join one event (table writes recorded by the writers) and return its encoded labeled examples."""
        pid, dep = value["prediction_id"], value["deployment"]
        src = [topic_key, msg.partition, msg.offset]
        now = now_ms()
        if topic_key == "predictions":   # role shadow is refused at the edge (streams.dead_letters)
            result = joiner.on_prediction(pid, value, src, now)
            inc = {} if result.repeated else {"predictions_logged": 1}   # a re-sent prediction counts once
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
        if result.dead_letters:
            inc["feedback_dead_lettered"] = len(result.dead_letters)
        outputs = []
        for example in result.examples:   # sized now: a LabeledExample over the limit undoes the join
            raw = ctx.serde.encode(ev.LABELED_EXAMPLE, example, topics.labeled_examples)
            check_size(f"the LabeledExample of {pid}", raw, pid, None, settings.max_message_bytes)
            outputs.append((raw, example))
        counters.count(dep, topic_key, msg.partition, msg.offset, **inc)
        unmatched(result)
        if result.duplicates:
            duplicates.labels(dep).inc(result.duplicates)
        if result.corrections:
            corrections.labels(dep).inc(result.corrections)
        if result.ignored:
            ignored.labels(dep).inc()
        return outputs

    @app.agent(source, name=f"{COMPONENT}")
    async def join(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(2000, within=0.02):
            started = time.perf_counter()
            for event in events:
                try:
                    handle(event)
                except Exception as exc:  # noqa: BLE001 - dead-letter the event, keep the partition moving
                    log.warning("feedback join failed on %s[%d]@%d: %s", event.message.topic,
                                event.message.partition, event.message.offset, exc,
                                exc_info=not isinstance(exc, RecordTooLarge))
                    dead_letter_failure(ctx, event.message, exc, COMPONENT, flush=False)
            persist()                                             # one changelog record per key and batch
            await loop.run_in_executor(None, ctx.producer.flush)  # outputs durable before the batch is acked
            if send_partials(ctx, counters):                      # then the counts covering them -> owners (stats
                await loop.run_in_executor(None, ctx.producer.flush)  # never count an example not yet durable)
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
                            value=record, error_type="unmatched_feedback", component=COMPONENT, flush=False,
                            reason=(f"no prediction {pid} for deployment {fb['deployment']!r} within "
                                    f"feedback_park_ttl_s={settings.feedback_park_ttl_s:g}s"))
                counters.count(fb["deployment"], "expired", partition, None, feedback_dead_lettered=1)
            persist()
            if result.dead_letters:
                send_partials(ctx, counters)
                await asyncio.get_running_loop().run_in_executor(None, ctx.producer.flush)


def _feedback_record(pid: str, fb: dict) -> dict:
    return {"event_id": fb["event_id"], "event_time": fb["time"], "prediction_id": pid, "deployment": fb["deployment"],
            "feedback_type": fb["feedback_type"], "kind": fb.get("kind") or "explicit", "label": fb.get("label"),
            "verdict": fb.get("verdict"), "reviewer": fb.get("reviewer")}
