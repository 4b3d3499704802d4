"""The ClickHouse sink: every topic of the loop lands in ClickHouse (one table per event type).

One consumer group (``<prefix>sink``) reads every topic; events are turned into rows, buffered per
table and inserted in batches (``sink_batch_size`` events or ``sink_flush_interval_s``, whichever comes
first). Offsets are committed only after the insert succeeded (at-least-once), including before a
rebalance takes partitions away.

No duplicates after a restart, two ways:
* each row keeps its Kafka topic/partition/offset; when partitions are assigned the sink reads the
  highest offset already stored per (table, topic, partition) and skips records at or below it (the
  records inserted but not committed before a crash);
* tables are ReplacingMergeTree ordered by (..., event_id) and views read them with FINAL, so an event
  that reached Kafka twice (a producer retry) still counts once.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

from infra.clickhouse import ClickHouseError, connect, table_columns
from infra.metrics import Metrics
from streams import catalog as ev
from streams.consumer import Event, EventConsumer
from streams.dead_letters import DEAD_LETTER_OWNERS
from streams.topics import Topics, ensure_topics

log = logging.getLogger(__name__)
SINK_COMPONENT = "clickhouse-sink"

TABLES: dict[str, str] = {
    ev.PREDICTION_LOGGED: "predictions",
    ev.FEEDBACK_RECEIVED: "feedback",
    ev.DEPLOYMENT_CONFIGURED: "deployment_configs",
    ev.LABELED_EXAMPLE: "labeled_examples",
    ev.FEEDBACK_LOOP_STATS: "feedback_stats",
    ev.DRIFT_MEASURED: "drift",
    ev.TRAINING_TRIGGERED: "triggers",
    ev.TRAINING_RUN_STARTED: "training_runs_started",
    ev.TRAINING_RUN_FINISHED: "training_runs_finished",
    ev.TRAINING_RUN_FAILED: "training_runs_failed",
    ev.MODEL_REGISTERED: "models_registered",
    ev.CANDIDATE_REJECTED: "candidates_rejected",
    ev.SHADOW_COMPARISON: "shadow_comparisons",
    ev.MODEL_PROMOTED: "models_promoted",
    ev.MODEL_ROLLED_BACK: "models_rolled_back",
    ev.ONLINE_FALLBACK_SWITCHED: "online_fallback_switches",
    ev.DEAD_LETTER: "dead_letters",
}
"""Event type -> table of infra/sql/001_tables.sql (online_fallback_switches: 004_online_fallback.sql)."""


class SinkError(RuntimeError):
    """The sink cannot store events (nothing was committed: they will be read again)."""


# -- events -> rows -------------------------------------------------------------------------------
def _offsets(prefix: str, ranges: list[dict] | None) -> dict:
    ranges = ranges or []
    return {f"{prefix}_partitions": [int(r["partition"]) for r in ranges],
            f"{prefix}_start_offsets": [int(r.get("start_offset", 0)) for r in ranges],
            f"{prefix}_end_offsets": [int(r["end_offset"]) for r in ranges]}


def _lineage(lineage: dict | None) -> dict:
    if lineage is None:
        return {"lineage_topic": None, "lineage_row_count": None, **_offsets("lineage", [])}
    return {"lineage_topic": lineage["topic"], "lineage_row_count": lineage["row_count"],
            "train_rows": lineage["train_rows"], "holdout_rows": lineage["holdout_rows"],
            "content_hash": lineage["content_hash"], "base_dataset": lineage.get("base_dataset"),
            **_offsets("lineage", lineage["partitions"])}


def _drift(v: dict) -> dict:
    feats = v.get("features") or []
    return {"feature_psi": {f["feature"]: float(f["psi"]) for f in feats},
            "feature_ks": {f["feature"]: float(f["ks_statistic"]) for f in feats},
            "drifted_features": [f["feature"] for f in feats if f["drifted"]]}


def _deployment(v: dict) -> dict:
    return {"settings_json": json.dumps(v, sort_keys=True, default=str)}


_DERIVED: dict[str, Callable[[dict], dict]] = {
    ev.DRIFT_MEASURED: _drift,
    ev.TRAINING_TRIGGERED: lambda v: _offsets("snapshot", v.get("snapshot")),
    ev.TRAINING_RUN_FINISHED: lambda v: _lineage(v.get("lineage")),
    ev.MODEL_REGISTERED: lambda v: _lineage(v.get("lineage")),
    ev.DEPLOYMENT_CONFIGURED: _deployment,
}


def event_row(event: Event, columns: list[str]) -> list:
    """The row of ``event`` for a table with ``columns`` (field values by name, flattened lineage /
    snapshot / drift features, and the Kafka coordinates)."""
    values = dict(event.value)
    derive = _DERIVED.get(event.event_type)
    if derive is not None:
        values.update(derive(event.value))
    values["kafka_topic"] = event.topic
    values["kafka_partition"] = event.partition
    values["kafka_offset"] = event.offset
    row = []
    for col in columns:
        if col not in values:
            raise KeyError(f"{event.event_type} has no value for column {col!r}")
        row.append(values[col])
    return row


class _SinkConsumer(EventConsumer):
    """EventConsumer that lets the sink insert its buffer before partitions are revoked (the base
    class commits on revoke) and notes assignment changes."""

    def __init__(self, *args, before_revoke: Callable[[], None], on_assigned: Callable[[], None], **kw):
        self._before_revoke = before_revoke
        self._on_assigned = on_assigned
        super().__init__(*args, **kw)

    def _on_assign(self, consumer, partitions):
        super()._on_assign(consumer, partitions)
        self._on_assigned()

    def _on_revoke(self, consumer, partitions):
        try:
            self._before_revoke()
        except Exception:  # noqa: BLE001 - insert failed: do not commit what was not stored
            log.exception("sink: insert before revoke failed; buffered events will be read again")
            self._pending = {}
            self.assignment = []
            return
        super()._on_revoke(consumer, partitions)


class ClickHouseSink:
    """Consume every ctloop topic into ClickHouse.

    >>> sink = ClickHouseSink(settings)                      # doctest: +SKIP
    >>> sink.run_until_caught_up(timeout_s=30)               # tests, reports
    >>> sink.run(stop=lambda: stopping)                      # `ctloop sink`
    """

    def __init__(self, settings, *, client=None, metrics: Metrics | None = None, group_id: str | None = None,
                 create_topics: bool = True):
        self.settings = settings
        self.database = settings.clickhouse_database
        self._owns_client = client is None
        self.client = client if client is not None else connect(settings)
        self.metrics = metrics or Metrics("sink")
        self.topics = Topics.from_settings(settings)
        self.group_id = group_id or f"{settings.topic_prefix}sink"
        self.batch_size = max(1, settings.sink_batch_size)
        self.flush_interval_s = settings.sink_flush_interval_s
        self.retries = max(1, settings.sink_insert_retries)
        self._columns = {t: table_columns(self.client, self.database, t) for t in set(TABLES.values())}
        self._contexts: dict[str, object] = {}
        self._buffer: dict[str, list[list]] = {}
        self._buffered = 0
        self._first_buffered_at: float | None = None
        self._watermarks: dict[tuple[str, str, int], int] = {}
        self._assignment_changed = True
        self.rows_inserted = 0
        self.duplicates_skipped = 0
        m = self.metrics
        self._m_rows = m.counter("ctloop_sink_rows_inserted_total", "Rows inserted into ClickHouse", ("table",))
        self._m_skipped = m.counter("ctloop_sink_duplicates_skipped_total",
                                    "Re-delivered events skipped (already stored)", ("table",))
        self._m_failures = m.counter("ctloop_sink_insert_failures_total", "Failed insert attempts", ("table",))
        self._m_insert = m.histogram("ctloop_sink_insert_duration_seconds", "Duration of one batched insert",
                                     ("table",), buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self._m_batch = m.histogram("ctloop_sink_batch_events", "Events per flushed batch", (),
                                    buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000))
        self._m_lag = m.gauge("ctloop_sink_lag_events", "Events not yet stored, per the last caught-up check")
        from confluent_kafka.admin import AdminClient

        from streams.kafka_config import client_config

        self._admin = AdminClient(client_config(settings))
        if create_topics:
            ensure_topics(self._admin, self.topics)
        # the sink dead-letters refused records only of the topics it owns (deployments, model-lifecycle,
        # model-updates); the other topics' owners (processor stages, trainers) dead-letter theirs, so a bad
        # record gives one dead letter (streams.dead_letters.DEAD_LETTER_OWNERS)
        owned = [self.topics.name(k) for k, owner in DEAD_LETTER_OWNERS.items() if owner == SINK_COMPONENT]
        self.consumer = _SinkConsumer(settings, self.group_id, self.topics.all_names(), component=SINK_COMPONENT,
                                      before_revoke=self._flush_before_revoke, on_assigned=self._mark_assignment,
                                      dead_letter_topics=owned)

    def _flush_before_revoke(self) -> None:
        try:
            self.flush()
        except Exception:
            # not stored, not committed: whoever gets the partitions reads these events again
            self._buffer, self._buffered, self._first_buffered_at = {}, 0, None
            raise

    # -- watermarks (restart deduplication) -------------------------------------------------------
    def _mark_assignment(self) -> None:
        self._assignment_changed = True

    def _load_watermarks(self) -> None:
        assigned = {tp.topic for tp in self.consumer.assignment}
        marks: dict[tuple[str, str, int], int] = {}
        if assigned:
            for table in sorted(set(TABLES.values())):
                rows = self.client.query(
                    f"SELECT kafka_topic, kafka_partition, max(kafka_offset) FROM {self.database}.{table} "
                    "WHERE kafka_topic IN {topics:Array(String)} GROUP BY kafka_topic, kafka_partition",
                    parameters={"topics": sorted(assigned)}).result_rows
                for topic, partition, offset in rows:
                    marks[(table, topic, int(partition))] = int(offset)
        self._watermarks = marks
        self._assignment_changed = False

    # -- the loop ---------------------------------------------------------------------------------
    def step(self, timeout_s: float = 0.2) -> int:
        """Poll once, buffer the rows, insert and commit when the batch is full or old enough.
        Returns the number of events read."""
        batch = self.consumer.poll_batch(max(1, self.batch_size - self._buffered), timeout_s)
        if self._assignment_changed:
            self._load_watermarks()
        for event in batch:
            self._add(event)
        due = self._buffered >= self.batch_size or (
            self._first_buffered_at is not None and time.monotonic() - self._first_buffered_at >= self.flush_interval_s)
        if due or (not batch and self._buffered):
            self.flush()
        if not batch and not self._buffered:
            self.consumer.commit()  # dead-lettered or skipped records only
        return len(batch)

    def _add(self, event: Event) -> None:
        table = TABLES.get(event.event_type)
        if table is None:
            self.consumer.dead_letter(event, f"no ClickHouse table for {event.event_type}", "processing_error")
            return
        mark = self._watermarks.get((table, event.topic, event.partition))
        if mark is not None and event.offset <= mark:
            self.duplicates_skipped += 1
            self._m_skipped.labels(table).inc()
            return
        try:
            row = event_row(event, self._columns[table])
        except Exception as exc:  # noqa: BLE001 - a record that cannot become a row
            self.consumer.dead_letter(event, f"cannot store in {table}: {type(exc).__name__}: {exc}", "processing_error")
            return
        self._buffer.setdefault(table, []).append(row)
        self._buffered += 1
        if self._first_buffered_at is None:
            self._first_buffered_at = time.monotonic()

    def flush(self) -> int:
        """Insert every buffered row, then commit the offsets read so far. Returns rows inserted."""
        inserted = 0
        for table in list(self._buffer):
            rows = self._buffer[table]
            if rows:
                self._insert(table, rows)
                inserted += len(rows)
            del self._buffer[table]
        if inserted:
            self._m_batch.observe(inserted)
        self._buffered = 0
        self._first_buffered_at = None
        self.consumer.commit()
        return inserted

    def _insert(self, table: str, rows: list[list]) -> None:
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            started = time.perf_counter()
            try:
                context = self._contexts.get(table)
                if context is None:
                    context = self.client.create_insert_context(f"{self.database}.{table}", self._columns[table])
                    self._contexts[table] = context
                context.data = rows
                self.client.insert(context=context)
                self._m_insert.labels(table).observe(time.perf_counter() - started)
                self._m_rows.labels(table).inc(len(rows))
                self.rows_inserted += len(rows)
                return
            except Exception as exc:  # noqa: BLE001
                self._m_failures.labels(table).inc()
                self._contexts.pop(table, None)
                if attempt == self.retries:
                    raise SinkError(f"inserting {len(rows)} rows into {self.database}.{table} failed "
                                    f"{attempt} times: {exc}") from exc
                log.warning("sink: insert into %s failed (%s); retry %d/%d in %.1fs", table, exc, attempt,
                            self.retries, delay)
                time.sleep(delay)  # back-off between insert attempts, not synchronisation
                delay = min(delay * 2, 5.0)

    def run(self, stop: Callable[[], bool], *, poll_timeout_s: float = 0.2, lag_every_s: float = 5.0) -> None:
        """Consume until ``stop()``; buffered rows are inserted and committed before returning.
        The lag gauge is refreshed every ``lag_every_s``."""
        next_lag = time.monotonic() + lag_every_s
        try:
            while not stop():
                self.step(poll_timeout_s)
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + lag_every_s
                    try:
                        self.lag()
                    except Exception as exc:  # noqa: BLE001 - a metric, never a reason to stop storing
                        log.debug("sink: lag check failed: %s", exc)
        finally:
            self.flush()

    # -- catching up ------------------------------------------------------------------------------
    def lag(self) -> int | None:
        """Events on the assigned partitions not yet stored; None before partitions are assigned."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        raw = self.consumer.raw
        parts = [TopicPartition(tp.topic, tp.partition) for tp in self.consumer.assignment]
        if not parts:
            return None
        positions = {(tp.topic, tp.partition): tp.offset for tp in raw.position(parts)}
        committed = {(tp.topic, tp.partition): tp.offset for tp in raw.committed(parts, timeout=10)}
        # one ListOffsets request for every partition (per-partition watermark queries are slow)
        futures = self._admin.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=10)
        highs = {tp: f.result(timeout=10).offset for tp, f in futures.items()}
        unread = [tp for tp in parts if positions.get((tp.topic, tp.partition), -1) < 0
                  and committed.get((tp.topic, tp.partition), -1) < 0 and highs[tp] > 0]
        lows = {}
        if unread:  # nothing read, nothing committed: lag is what retention kept
            futures = self._admin.list_offsets({tp: OffsetSpec.earliest() for tp in unread}, request_timeout=10)
            lows = {tp: f.result(timeout=10).offset for tp, f in futures.items()}
        total = 0
        for tp, high in highs.items():
            key = (tp.topic, tp.partition)
            pos = positions.get(key, -1)
            if pos < 0:
                pos = committed.get(key, -1)
            if pos < 0:
                pos = lows.get(tp, high)
            total += max(0, high - pos)
        self._m_lag.set(total + self._buffered)
        return total + self._buffered

    def run_until_caught_up(self, timeout_s: float = 60.0) -> int:
        """Consume until every event on the topics at call time (and since) is stored; returns the
        rows inserted by this call. Raises TimeoutError after ``timeout_s``."""
        before = self.rows_inserted
        deadline = time.monotonic() + timeout_s
        while True:
            read = self.step(0.2)
            if not read:
                self.flush()
                lag = self.lag()
                if lag == 0:
                    return self.rows_inserted - before
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink not caught up after {timeout_s}s (lag {self.lag()}, "
                                   f"{len(self.consumer.assignment)} partitions assigned)")

    def close(self) -> None:
        """Insert and commit what is buffered, leave the group, close the ClickHouse client if the
        sink opened it (so that this process may open another chdb path afterwards)."""
        try:
            self.flush()
        finally:
            try:
                self.consumer.close()
            finally:
                if self._owns_client:
                    self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["ClickHouseSink", "SinkError", "TABLES", "event_row", "ClickHouseError"]
