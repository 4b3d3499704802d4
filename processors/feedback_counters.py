"""Feedback-loop counters per deployment, exact across crashes and restarts.

Counts live in records keyed ``deployment|topic|partition``: the counts contributed by one source
partition, plus the offset of the last event counted (``off``). A record is stored in one changelog
write (a faust table), so state and the offset it reflects are atomic: an event replayed after a crash
(offset <= ``off``) is not counted again, and one whose record was never written is counted on replay.
A deployment's totals are the sums over its records. ``reviewed_since_last_training`` is
``added_to_training`` minus the value it had at the deployment's last trigger (from the trigger's
evidence on the triggers topic).

The join stage (processors/feedback_join.py) feeds :class:`FeedbackCounters`, because only the join
knows whether a feedback event is new, a duplicate or a correction. A join worker sees only its own
partitions, so it does not sum: after each batch it sends the records it changed (cumulative counts
per source partition, with the offset they cover) to the internal topic ``<prefix>feedback-partials``,
keyed by deployment (:func:`send_partials`). :func:`register_aggregation` (registered by the join
stage) runs on the deployment's owner (processors/ownership.py): it keeps the latest record per source
partition in the faust table ``feedback-totals`` (key: deployment), sums them and publishes
FeedbackLoopStats and the gauges. Records are cumulative, so a duplicate or a replayed partial is
harmless (:func:`merge_partials` keeps the record covering the most).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from streams import catalog as ev
from streams.serde import new_event

log = logging.getLogger(__name__)
PARTIALS_KEY = "feedback-partials"

FIELDS = ("predictions_logged", "feedback_received", "reviewed", "added_to_training", "feedback_dead_lettered")


class FeedbackCounters:
    """The counters (:data:`FIELDS`, events) per ``deployment|topic|partition`` record, each with the
    offset it covers (``off``), so a replayed event is not counted twice."""
    def __init__(self, table=None, store=None):
        """``table``: mapping of record key -> record (a faust Table or a dict); ``store(partition, key,
        value)`` persists one record (default: plain assignment)."""
        self.table = table if table is not None else {}
        self._store = store or (lambda partition, key, value: self.table.__setitem__(key, value))
        self.baseline: dict[str, int] = {}  # added_to_training at the last trigger, per deployment
        self._lock = threading.Lock()
        self._touched: dict[str, dict] = {}  # records changed since the last drain_touched()

    @staticmethod
    def key(deployment: str, topic_key: str, partition: int) -> str:
        """The record key ``deployment|topic_key|partition``."""
        return f"{deployment}|{topic_key}|{partition}"

    def count(self, deployment: str, topic_key: str, partition: int, offset: int | None, **increments: int) -> bool:
        """Add ``increments`` for the event at ``offset`` of ``topic_key[partition]``; False (nothing
        counted) when that event was counted before. ``offset`` None: no replay guard."""
        key = self.key(deployment, topic_key, partition)
        record = self.table.get(key)
        record = dict(record) if record else {"off": -1, **{f: 0 for f in FIELDS}}
        if offset is not None:
            if offset <= record["off"]:
                # a replay: the record may be durable while the partial carrying it was lost in the crash,
                # so send it again (partials are idempotent)
                if key in self.table:
                    self._touched[key] = record
                return False
            record["off"] = offset
        for name, n in increments.items():
            if name not in FIELDS:
                raise KeyError(f"unknown counter {name!r}; known: {', '.join(FIELDS)}")
            record[name] = record.get(name, 0) + n
        self._store(partition, key, record)
        self._touched[key] = record
        return True

    def drain_touched(self) -> dict[str, dict[str, dict]]:
        """{deployment: {record key: record}} of the records changed since the last call (the partial
        counts a join worker sends to its deployments' owners)."""
        touched, self._touched = self._touched, {}
        out: dict[str, dict[str, dict]] = {}
        for key, record in touched.items():
            out.setdefault(key.rsplit("|", 2)[0], {})[key] = dict(record)
        return out

    def totals(self) -> dict[str, dict[str, int]]:
        """Per deployment, each counter of :data:`FIELDS` summed over its records:
        {deployment: {counter: events}}."""
        out: dict[str, dict[str, int]] = {}
        for key, record in list(self.table.items()):
            deployment = key.rsplit("|", 2)[0]
            acc = out.setdefault(deployment, {f: 0 for f in FIELDS})
            for f in FIELDS:
                acc[f] += int(record.get(f, 0))
        return out

    def on_trigger(self, deployment: str, evidence: dict) -> None:
        """A trigger was emitted: reviewed_since_last_training restarts from its added_to_training."""
        raw = (evidence or {}).get("added_to_training")
        if raw is None:
            return
        with self._lock:
            self.baseline[deployment] = int(float(raw))

    def stats_record(self, deployment: str, totals: dict[str, int], trigger_threshold: int) -> dict:
        """A FeedbackLoopStats record from ``totals`` (the deployment's sums of :data:`FIELDS`):
        ``reviewed_since_last_training`` is added_to_training minus its value at the last trigger (>= 0),
        ``progress`` that over ``trigger_threshold`` capped at 1.0 (0.0 when the threshold is 0)."""
        since = max(0, totals["added_to_training"] - self.baseline.get(deployment, 0))
        progress = min(1.0, since / trigger_threshold) if trigger_threshold > 0 else 0.0
        return new_event(ev.FEEDBACK_LOOP_STATS, deployment=deployment,
                         predictions_logged=totals["predictions_logged"], feedback_received=totals["feedback_received"],
                         reviewed=totals["reviewed"], added_to_training=totals["added_to_training"],
                         reviewed_since_last_training=since, trigger_threshold=int(trigger_threshold),
                         progress=float(progress), feedback_dead_lettered=totals["feedback_dead_lettered"])


def _rank(record: dict) -> tuple[int, int]:
    return int(record.get("off", -1)), sum(int(record.get(f, 0)) for f in FIELDS)


def merge_partials(current: dict[str, dict], records: dict[str, dict]) -> bool:
    """Merge partial records (``{deployment|topic|partition: record}``) into ``current`` in place,
    keeping per key the record that covers the most (highest offset, then highest counts: counts of a
    source partition only grow). True when anything changed. Records without a numeric ``off`` raise
    ValueError naming the key."""
    changed = False
    for key, record in records.items():
        if not isinstance(record, dict) or not isinstance(record.get("off"), int):
            raise ValueError(f"feedback partial {key!r}: record needs an integer 'off', got {record!r}")
        old = current.get(key)
        if old is None or (_rank(record) > _rank(old)):
            current[key] = record
            changed = True
    return changed


def sum_partials(records: dict[str, dict]) -> dict[str, int]:
    """A deployment's totals: the sum over its records of each counter of FIELDS."""
    totals = {f: 0 for f in FIELDS}
    for record in records.values():
        for f in FIELDS:
            totals[f] += int(record.get(f, 0))
    return totals


def partials_topic(app, ctx):
    """The internal topic ``<prefix>feedback-partials`` (JSON ``{"records": {key: record}}``, keyed by
    deployment, ``default_partitions`` partitions like feedback-stats so one worker owns both)."""
    topic = ctx.faust_topics.get(PARTIALS_KEY)
    if topic is None:
        topic = ctx.faust_topics[PARTIALS_KEY] = app.topic(
            f"{ctx.settings.topic_prefix}{PARTIALS_KEY}", key_type=bytes, key_serializer="raw",
            value_serializer="json", partitions=ctx.topics.partitions("feedback-stats"), internal=True,
            retention=7 * 24 * 3600.0)
    return topic


def send_partials(ctx, counters: "FeedbackCounters") -> int:
    """Produce the records ``counters`` changed since the last call to ``<prefix>feedback-partials``
    through ``ctx.producer`` (its partitioner places them like feedback-stats); flush it before the
    source batch is acknowledged. Returns the messages produced (one per deployment)."""
    touched = counters.drain_touched()
    topic = f"{ctx.settings.topic_prefix}{PARTIALS_KEY}"
    for deployment, records in touched.items():
        ctx.producer.produce_raw(topic, json.dumps({"records": records}).encode(), key=deployment)
    return len(touched)


def register_aggregation(app, ctx) -> None:
    """The owner side of the counters: sum each deployment's partial records (faust table
    ``feedback-totals``, recovered from its changelog when the deployment's partition moves) and
    publish FeedbackLoopStats (rate-limited by ``stats_min_interval_s``; a trigger-threshold crossing at
    once) and the ``ctloop_feedback_*`` gauges, for the deployments this worker owns."""
    from processors.deployment_view import DeploymentView
    from processors.follower import LogFollower
    from processors.ownership import Ownership
    from processors.tables import reload_assigned_changelogs

    settings, topics, m = ctx.settings, ctx.topics, ctx.metrics
    source = partials_topic(app, ctx)
    n = topics.partitions("feedback-stats")
    table = app.Table("feedback-totals", default=None, partitions=n, key_type=str)
    owner = Ownership.of_app(app, source.get_topic_name(), n, settings.producer_partitioner)

    @app.on_rebalance_complete.connect
    async def _complete_recovery(sender, **kwargs) -> None:  # noqa: ARG001 - faust signal signature
        await asyncio.get_running_loop().run_in_executor(
            None, reload_assigned_changelogs, app, [table], settings)

    view = DeploymentView()
    counters = FeedbackCounters()
    emitter = StatsEmitter(settings.stats_min_interval_s)

    def on_log_event(event_type, value, topic):
        if event_type == ev.DEPLOYMENT_CONFIGURED:
            view.apply(event_type, value)
            emitter.changed(value["deployment"])
        elif event_type == ev.TRAINING_TRIGGERED:
            counters.on_trigger(value["deployment"], value.get("evidence") or {})
            emitter.changed(value["deployment"])

    LogFollower(settings, [topics.deployments, topics.triggers], on_log_event, serde=ctx.serde,
                name="feedback-totals-follower").start()

    labels = ("deployment",)
    g = {name: m.gauge(f"ctloop_feedback_{name}", doc, labels) for name, doc in (
        ("predictions_logged", "Predictions logged (primary and canary) per deployment."),
        ("received", "Feedback events received per deployment (duplicates included)."),
        ("reviewed", "Distinct predictions with feedback per deployment."),
        ("added_to_training", "Distinct labeled examples added to the training set per deployment."),
        ("added_since_last_trigger", "Labeled examples added to training since the deployment's last training "
                                     "trigger (FeedbackLoopStats.reviewed_since_last_training)."),
        ("progress_ratio", "added_since_last_trigger / trigger_threshold (0 without a threshold)."),
        ("dead_lettered", "Feedback dead-lettered (unmatched after the park TTL) per deployment."))}
    emitted_since: dict[str, int] = {}   # reviewed_since_last_training in the last stats sent

    def totals_of(dep: str) -> dict[str, int] | None:
        records = table.get(dep)
        return sum_partials(records) if records else None

    def check_crossing(dep: str, totals: dict[str, int]) -> None:
        threshold = view.get(dep)["trigger_threshold"]
        since = totals["added_to_training"] - counters.baseline.get(dep, 0)
        if threshold > 0 and since >= threshold > emitted_since.get(dep, 0):
            emitter.urgent(dep)

    def emit_due() -> None:
        sent = False
        for dep in emitter.due():
            t = totals_of(dep) if owner.owns(dep) else None
            if t is None:
                continue
            record = counters.stats_record(dep, t, view.get(dep)["trigger_threshold"])
            ctx.producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS, record, key=dep)
            sent = True
            emitted_since[dep] = record["reviewed_since_last_training"]
            g["predictions_logged"].labels(dep).set(t["predictions_logged"])
            g["received"].labels(dep).set(t["feedback_received"])
            g["reviewed"].labels(dep).set(t["reviewed"])
            g["added_to_training"].labels(dep).set(t["added_to_training"])
            g["added_since_last_trigger"].labels(dep).set(record["reviewed_since_last_training"])
            g["progress_ratio"].labels(dep).set(record["progress"])
            g["dead_lettered"].labels(dep).set(t["feedback_dead_lettered"])
        if sent:
            ctx.producer.poll(0)

    @app.agent(source, name=f"{ctx.topics.prefix}feedback-totals")
    async def aggregate(stream):
        async for event in stream.events():
            try:
                dep = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
                records = (event.value or {}).get("records") if isinstance(event.value, dict) else None
                if not isinstance(records, dict):
                    raise ValueError(f"feedback partial of {dep!r}: value needs 'records', got {event.value!r}")
                current = dict(table.get(dep) or {})
                if merge_partials(current, records):
                    table[dep] = current            # changelog on the event's partition (this deployment's)
                    emitter.changed(dep)
                    check_crossing(dep, sum_partials(current))
            except Exception:  # noqa: BLE001 - an internal record we cannot use must not stop the owner
                log.exception("feedback totals: partial record rejected")
            emit_due()

    @app.timer(max(0.02, settings.stats_min_interval_s / 4))
    async def stats_due():
        emit_due()


class StatsEmitter:
    """Rate-limits FeedbackLoopStats per deployment: an event on change, at most one every
    ``min_interval_s``; changes in between are coalesced and sent by a later ``due``. ``urgent``
    changes (a threshold crossing) skip the limit, so triggers do not wait for it."""

    def __init__(self, min_interval_s: float, clock=time.monotonic):
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()

    def changed(self, deployment: str) -> None:
        """Mark ``deployment`` changed: sent by a later :meth:`due` within the rate limit."""
        self._dirty.add(deployment)

    def urgent(self, deployment: str) -> None:
        """Send at the next ``due`` whatever the rate limit (e.g. the review threshold was crossed)."""
        self._dirty.add(deployment)
        self._urgent.add(deployment)

    def due(self) -> list[str]:
        """Deployments to send now (changed, and urgent or not sent for ``min_interval_s`` seconds);
        marks them sent."""
        now = self.clock()
        ready = [d for d in self._dirty
                 if d in self._urgent or now - self._last.get(d, float("-inf")) >= self.min_interval_s]
        self._urgent.difference_update(ready)
        for d in ready:
            self._dirty.discard(d)
            self._last[d] = now
        return ready


def register(app, ctx) -> None:
    """Counters are fed by the join stage (see the module docstring); nothing to register here."""
    return None
