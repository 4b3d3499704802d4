"""A typed consumer: decodes events, dead-letters what cannot be processed, commits only after
processing (at-least-once).

Dead letters carry the original key and value, the reason, and the source topic, partition and offset
both in the DeadLetter event and in headers (``ctloop-reason``, ``ctloop-error-type``,
``ctloop-source-topic``, ``ctloop-source-partition``, ``ctloop-source-offset``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.dead_letters import RECORD_TOO_LARGE, Rejected, decode_checked, publish_dead_letter, replay_of_header
from streams.kafka_config import client_config, consumer_config
from streams.producer import EventProducer
from streams.record_size import RecordTooLarge
from streams.serde import DecodeError, Serde
from streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Event:
    """One decoded event with its place in the log: event type, value dict, topic, partition, offset, record
    key (bytes or None) and the record's Kafka timestamp (epoch ms)."""
    event_type: str
    value: dict
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int


class EventConsumer:
    """Consume ctloop events from ``topics`` (full names) in consumer group ``group_id``.

    >>> with EventConsumer(settings, "my-group", [topics.predictions]) as consumer:   # doctest: +SKIP
    ...     consumer.run(handle, stop=lambda: done)
    """

    def __init__(self, settings, group_id: str, topics: Iterable[str], *, serde: Serde | None = None,
                 dlq_producer: EventProducer | None = None, component: str | None = None,
                 validate: bool = True, dead_letter_topics: Iterable[str] | None = None, **config):
        """``dead_letter_topics`` (full names; default: every topic read): the topics whose records refused
        at the edge this consumer dead-letters; refused records of the other topics are skipped and
        counted (``skipped``), their owner dead-letters them (``streams.dead_letters.DEAD_LETTER_OWNERS``)."""
        self.settings = settings
        self.topics_registry = Topics.from_settings(settings)
        self.topics = list(topics)
        self.dead_letter_topics = set(self.topics if dead_letter_topics is None else dead_letter_topics)
        self.skipped = 0
        self.serde = serde or Serde.from_settings(settings)
        self.component = component or group_id
        self.validate = validate
        self._owns_producer = dlq_producer is None
        self.dlq = dlq_producer or EventProducer(settings, self.serde)
        self._consumer = Consumer(consumer_config(settings, group_id, **config))
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._pending: dict[tuple[str, int], int] = {}
        self.assignment: list[TopicPartition] = []
        self.dead_lettered = 0
        self.processed = 0

    # -- group membership ------------------------------------------------------------------------
    def _on_assign(self, consumer, partitions):
        self.assignment = list(partitions)

    def _on_revoke(self, consumer, partitions):
        self.commit()
        self.assignment = []

    def wait_for_assignment(self, timeout_s: float = 30.0) -> list[TopicPartition]:
        """Poll until the group has given this consumer partitions (records read meanwhile are
        kept for the next poll_batch)."""
        deadline = time.monotonic() + timeout_s
        while not self.assignment:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.component}: no partition assigned within {timeout_s}s")
            msgs = self._consumer.consume(1, 0.1)
            if msgs:
                self._buffer = getattr(self, "_buffer", []) + msgs
        return self.assignment

    # -- reading --------------------------------------------------------------------------------
    def poll_batch(self, max_events: int = 500, timeout_s: float = 0.5) -> list[Event]:
        """Up to ``max_events`` decoded, valid events. Undecodable, unknown-schema, unexpected-type
        and invalid records are dead-lettered here and never returned."""
        buffered = getattr(self, "_buffer", None)
        if buffered:
            msgs, self._buffer = buffered, []
        else:
            msgs = self._consumer.consume(max_events, timeout_s)
        events = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer error %s", self.component, err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            self._pending[(topic, partition)] = offset + 1
            try:
                decoded = decode_checked(self.serde, self.topics_registry, topic, msg.value(), validate=self.validate,
                                         key=msg.key(), max_bytes=self.settings.max_message_bytes,
                                         record_time_ms=msg.timestamp()[1],
                                         event_time_bounds=(self.settings.event_time_max_past_s,
                                                            self.settings.event_time_max_future_s))
            except Rejected as exc:
                if topic in self.dead_letter_topics:
                    self.dead_letter(msg, exc.reason, exc.error_type)
                else:
                    self.skipped += 1
                    log.debug("%s: skipped %s[%d]@%d (%s; its owner dead-letters it)", self.component, topic,
                              partition, offset, exc.error_type)
                continue
            ts = msg.timestamp()[1]
            events.append(Event(decoded.event_type, decoded.value, topic, partition, offset, msg.key(), ts))
        return events

    def dead_letter(self, msg_or_event, reason: str, error_type: str) -> None:
        """Send a record (a confluent Message or an Event) to the dead-letter topic (truncated to fit
        max_message_bytes, then error_type record_too_large: streams.dead_letters.publish_dead_letter)."""
        replay_of = None   # an Event keeps no headers: the replay finds its replays by source position instead
        if isinstance(msg_or_event, Event):
            topic, partition, offset, key = msg_or_event.topic, msg_or_event.partition, msg_or_event.offset, msg_or_event.key
            value = self.serde.encode(msg_or_event.event_type, msg_or_event.value, topic)
        else:
            topic, partition, offset = msg_or_event.topic(), msg_or_event.partition(), msg_or_event.offset()
            key, value = msg_or_event.key(), msg_or_event.value()
            replay_of = replay_of_header(msg_or_event.headers())
        publish_dead_letter(self.dlq, self.topics_registry, topic=topic, partition=partition, offset=offset, key=key,
                            value=value, reason=reason, error_type=error_type, component=self.component,
                            replay_of=replay_of)
        self.dead_lettered += 1

    # -- committing -----------------------------------------------------------------------------
    def commit(self) -> None:
        """Commit the offsets of everything returned so far. Dead letters are flushed first, so a
        record is committed only once its dead letter is durable."""
        if not self._pending:
            return
        self.dlq.flush()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        self._pending = {}
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - e.g. rebalance in progress; records will be redelivered
            log.warning("%s: commit failed (%s); uncommitted records will be redelivered", self.component, exc)

    def run(self, handler: Callable[[Event], None], stop: Callable[[], bool], *, max_events: int = 500,
            timeout_s: float = 0.5, on_idle: Callable[[], None] | None = None) -> None:
        """Poll, handle, commit until ``stop()`` is true. A handler exception dead-letters that event
        (error_type processing_error) rather than blocking the partition."""
        while not stop():
            batch = self.poll_batch(max_events, timeout_s)
            for event in batch:
                try:
                    handler(event)
                    self.processed += 1
                except RecordTooLarge as exc:  # one of the event's own writes is over max_message_bytes
                    log.warning("%s: %s[%d]@%d: %s", self.component, event.topic, event.partition, event.offset, exc)
                    self.dead_letter(event, f"its writes do not fit: {exc}", RECORD_TOO_LARGE)
                except Exception as exc:  # noqa: BLE001
                    log.exception("%s: handler failed on %s[%d]@%d", self.component, event.topic, event.partition, event.offset)
                    self.dead_letter(event, f"handler error: {type(exc).__name__}: {exc}", "processing_error")
            if batch:
                self.commit()
            elif on_idle is not None:
                on_idle()

    def close(self) -> None:
        """Commit what was returned (dead letters flushed first), then close the consumer and the
        dead-letter producer it created."""
        try:
            self.commit()
        finally:
            self._consumer.close()
            if self._owns_producer:
                self.dlq.close()

    @property
    def raw(self) -> Consumer:
        """The underlying confluent-kafka Consumer."""
        return self._consumer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def end_offsets(settings, topic: str, *, timeout_s: float = 15.0, consumer: Consumer | None = None) -> dict[int, int]:
    """{partition: end offset (one past the last record)} of ``topic``; {} when it does not exist.

    Use this rather than ``get_watermark_offsets``: the embedded Tansu broker answers ListOffsets
    with the base offset of the last record batch + 1, not the offset after the last record. Here the
    last batch is read (from the reported watermark - 1 to the fetch's end of partition) and the
    true end is taken from it, which costs one small fetch per partition on any broker.
    ``consumer``, when given, must have ``enable.partition.eof`` set; it is assigned and unassigned
    (reuse one across calls to save the connection set-up)."""
    own = consumer is None
    consumer = consumer or end_offset_consumer(settings)
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        if topic not in md.topics or md.topics[topic].error is not None:
            return {}
        return probe_end_offsets(consumer, topic, sorted(md.topics[topic].partitions), timeout_s)
    finally:
        if own:
            consumer.close()


def end_offset_consumer(settings) -> Consumer:
    """A group-less consumer suited to :func:`end_offsets` / :func:`probe_end_offsets`."""
    return Consumer(client_config(settings, {"group.id": "ctloop-reader", "enable.auto.commit": False,
                                             "enable.partition.eof": True, "log.connection.close": False,
                                             "fetch.wait.max.ms": 10}))


def probe_end_offsets(consumer: Consumer, topic: str, partitions: list[int], timeout_s: float = 10.0) -> dict[int, int]:
    """The end offset of each partition as the fetch path reports it (see :func:`end_offsets`):
    start fetching one below the ListOffsets answer and read to the partition-EOF event."""
    from confluent_kafka import KafkaError

    ends: dict[int, int] = {}
    assign = []
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
        if high <= low:
            ends[p] = int(high)
        else:
            assign.append(TopicPartition(topic, p, max(low, high - 1)))
    if not assign:
        return ends
    consumer.assign(assign)
    waiting = {tp.partition for tp in assign}
    deadline = time.monotonic() + timeout_s
    try:
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"end offsets of {topic} partitions {sorted(waiting)} not known within {timeout_s}s")
            msg = consumer.poll(0.05)  # returns at the first record or event
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
            elif err.code() == KafkaError._PARTITION_EOF and msg.partition() in waiting:
                waiting.discard(msg.partition())
                ends[msg.partition()] = max(ends.get(msg.partition(), 0), int(msg.offset()))
    finally:
        consumer.unassign()
    return ends


def read_messages_to_end(settings, topic: str, *, timeout_s: float = 15.0) -> list:
    """Every record of ``topic`` from the beginning to its current end offsets, as confluent-kafka
    Messages (undecoded), without a consumer group (no commits), in log order: by partition, then offset.
    An absent topic gives []. Raises TimeoutError when the end is not reached within ``timeout_s``."""
    from confluent_kafka import OFFSET_BEGINNING

    consumer = end_offset_consumer(settings)
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        if topic not in md.topics or md.topics[topic].error is not None:
            return []
        ends = {p: end for p, end in end_offsets(settings, topic, timeout_s=timeout_s, consumer=consumer).items()
                if end > consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[0]}
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        messages = []
        deadline = time.monotonic() + timeout_s
        done = {p: False for p in ends}
        while not all(done.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to its end took more than {timeout_s}s")
            for msg in consumer.consume(1000, 0.2):
                if msg.error():
                    continue
                p = msg.partition()
                if msg.offset() + 1 >= ends[p]:
                    done[p] = True
                if msg.offset() < ends[p]:
                    messages.append(msg)
        messages.sort(key=lambda m: (m.partition(), m.offset()))  # log order; producer clocks never order events
        return messages
    finally:
        consumer.close()


def read_to_end(settings, topic: str, *, serde: Serde | None = None, timeout_s: float = 15.0) -> list[Event]:
    """Read every decodable event of ``topic`` from the beginning to its current end offsets,
    without a consumer group (no commits). Used to fold state (settings, registry) on start-up.
    Events come in log order: by partition, then offset (a single-partition topic: its exact order)."""
    serde = serde or Serde.from_settings(settings)
    events: list[Event] = []
    for msg in read_messages_to_end(settings, topic, timeout_s=timeout_s):
        try:
            d = serde.decode(msg.value())
        except DecodeError:
            continue
        events.append(Event(d.event_type, d.value, topic, msg.partition(), msg.offset(), msg.key(), msg.timestamp()[1]))
    return events
