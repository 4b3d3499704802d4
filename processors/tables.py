"""Writing faust tables from batched processing and timers.

faust takes a table write's changelog partition from the *current event*; a batch (take_events) or a
timer has no single current event. These helpers name the partition explicitly, and
:class:`BatchedTableWriter` coalesces the writes of one batch into one changelog record per key, sent
before the batch is acknowledged (faust flushes its producer before committing offsets), so a crash
replays the batch from state that is never ahead of the committed offsets' outputs.

Every changelog record is sized before it is queued: one over ``max_message_bytes`` would make faust's
producer fail (``MessageSizeTooLargeError``) in its background sender and stop the worker on the same
record after every restart. Such a write raises :class:`streams.record_size.RecordTooLarge` and leaves
the table unchanged; the stage dead-letters the record that caused it (``record_too_large``).
"""
from __future__ import annotations

import logging

from streams.record_size import check_size

log = logging.getLogger(__name__)


def changelog_record_size(table, key, value) -> tuple[bytes, bytes]:
    """The changelog record's (key, value) bytes as faust will serialize them."""
    serializers = table.app.serializers
    raw_key = serializers.dumps_key(table.key_type, key, serializer=table.key_serializer)
    raw_value = serializers.dumps_value(table.value_type, value, serializer=table.value_serializer)
    return raw_key, raw_value


def check_changelog_size(table, key, value, max_bytes: int | None) -> None:
    """Raise RecordTooLarge when the changelog record of ``key`` -> ``value`` would not fit ``max_bytes``
    (None: no check; plain dicts, used by unit tests, are sized as JSON)."""
    if max_bytes is None or value is None:
        return
    if isinstance(table, dict):
        import json

        raw_key, raw_value = str(key).encode(), json.dumps(value).encode()
        name = "table"
    else:
        raw_key, raw_value = changelog_record_size(table, key, value)
        name = getattr(table, "name", "table")
    check_size(f"the {name} row of {key!r}", raw_value, raw_key, None, max_bytes)


def table_set(table, partition: int, key, value, max_bytes: int | None = None) -> None:
    """Set a faust table key, writing its changelog record to ``partition`` explicitly (batched
    processing and timers have no single current event to take the partition from). Raises
    RecordTooLarge (table unchanged) when the row is over ``max_bytes``."""
    check_changelog_size(table, key, value, max_bytes)
    if isinstance(table, dict):
        table[key] = value
        return
    table.data[key] = value
    table.send_changelog(partition, key, value)


def table_del(table, partition: int, key) -> None:
    """Delete a faust table key, writing a tombstone to ``partition``."""
    if isinstance(table, dict):
        table.pop(key, None)
        return
    if key in table.data:
        del table.data[key]
        table.send_changelog(partition, key, None, value_serializer="raw")


_MISSING = object()


class BatchedTableWriter:
    """``write(partition, key, value_or_None)`` updates the in-memory table now and queues the
    changelog record; ``persist()`` sends one record per key written since the last call.

    ``max_bytes`` (Settings.max_message_bytes): a row whose changelog record would be larger raises
    RecordTooLarge from ``write`` and the table is left unchanged. ``begin()`` / ``rollback()`` undo
    every write since ``begin()`` (a record whose later writes or outputs turned out too large);
    ``release()`` keeps them."""

    def __init__(self, table, max_bytes: int | None = None):
        self.table = table
        self.max_bytes = max_bytes
        self._dirty: dict = {}
        self._journal: dict | None = None

    def _data(self):
        return self.table if isinstance(self.table, dict) else self.table.data

    def begin(self) -> None:
        """Start recording the writes that ``rollback()`` undoes."""
        self._journal = {}

    def release(self) -> None:
        """Keep the writes since ``begin()``."""
        self._journal = None

    def rollback(self) -> None:
        """Undo the writes since ``begin()``: the table and the queued changelog records are as before."""
        journal, self._journal = self._journal or {}, None
        data = self._data()
        for key, (value, dirty_partition) in journal.items():
            if value is _MISSING:
                data.pop(key, None)
            else:
                data[key] = value
            if dirty_partition is _MISSING:
                self._dirty.pop(key, None)
            else:
                self._dirty[key] = dirty_partition

    def write(self, partition: int, key, value) -> None:
        """Set ``key`` to ``value`` (None deletes it) in the table, journaled when inside ``begin()``, and
        mark it for the changelog on ``partition``. Raises RecordTooLarge when the changelog record would
        exceed ``max_bytes``."""
        check_changelog_size(self.table, key, value, self.max_bytes)
        data = self._data()
        if self._journal is not None and key not in self._journal:
            self._journal[key] = (data.get(key, _MISSING), self._dirty.get(key, _MISSING))
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        if not isinstance(self.table, dict):
            self._dirty[key] = partition

    def persist(self) -> int:
        """Send one changelog record per key written since the last call; returns how many."""
        dirty, self._dirty = self._dirty, {}
        for key, partition in dirty.items():
            value = self.table.data.get(key)
            if value is None:
                self.table.send_changelog(partition, key, None, value_serializer="raw")
            else:
                self.table.send_changelog(partition, key, value)
        return len(dirty)


def reload_assigned_changelogs(app, tables, settings, timeout_s: float = 60.0) -> int:
    """Re-read the changelog partitions of ``tables`` assigned to this worker, from the beginning to
    their real end, and make the tables' data match. Returns the records read.

    faust recovers a table up to the changelog's "highwater" from ListOffsets(latest); the embedded
    Tansu broker answers that with the base offset of the last record *batch* + 1, so the rest of the
    last batch (the newest state) would be missing after a restart. The end of a partition is taken
    from the fetch path here (partition-EOF events), which is right. Call it after faust's recovery and
    before streams resume (``app.on_rebalance_complete``). ``settings``: the cluster's client
    configuration (:func:`streams.kafka_config.client_config`)."""
    import time
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from streams.kafka_config import client_config

    by_topic = {t.changelog_topic.get_topic_name(): t for t in tables}
    assigned = [tp for tp in app.consumer.assignment() if tp.topic in by_topic]
    if not assigned:
        return 0
    consumer = Consumer(client_config(settings, {"group.id": f"ctloop-restore-{uuid.uuid4().hex[:8]}",
                                                 "enable.auto.commit": False, "enable.partition.eof": True,
                                                 "fetch.wait.max.ms": 10, "log.connection.close": False}))
    latest: dict[str, dict] = {name: {} for name in by_topic}
    waiting = {(tp.topic, tp.partition) for tp in assigned}
    n = 0
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in assigned])
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelogs {sorted(waiting)} not read to their end within {timeout_s}s")
            for msg in consumer.consume(5000, 0.05):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard((msg.topic(), msg.partition()))
                    continue
                latest[msg.topic()][msg.key()] = msg.value()
                n += 1
    finally:
        consumer.close()
    corrected = 0
    for name, records in latest.items():
        table = by_topic[name]
        for raw_key, raw_value in records.items():
            key = app.serializers.loads_key(table.key_type, raw_key, serializer=table.key_serializer)
            if raw_value is None:
                corrected += table.data.pop(key, None) is not None
            else:
                value = app.serializers.loads_value(table.value_type, raw_value, serializer=table.value_serializer)
                corrected += table.data.get(key) != value
                table.data[key] = value
    if corrected:
        log.warning("%d table keys were stale after faust's recovery and were corrected from the changelogs", corrected)
    return n
