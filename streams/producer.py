"""A thin event producer over confluent-kafka: encodes with the serde, applies back-pressure
instead of growing memory without bound, and surfaces delivery failures."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.kafka_config import producer_config
from streams.record_size import RECORD_OVERHEAD_BYTES, RecordTooLarge, check_size
from streams.serde import Serde

log = logging.getLogger(__name__)


MAYBE_WRITTEN = (KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_INFLIGHT)
"""Failures after which the broker may still have written the event (a request sent and not answered)."""


@dataclass(frozen=True)
class LostEvent:
    """An event the client gave up on: ``topic``, ``key`` and ``value`` (the encoded bytes, to re-send
    as they are), ``event_id`` (None when the value is not a ctloop event), ``error`` (librdkafka's
    reason) and ``maybe_written`` (True after a timeout of a sent request: the broker may have it)."""
    topic: str
    key: bytes | None
    value: bytes
    event_id: str | None
    error: str
    maybe_written: bool


class DeliveryError(RuntimeError):
    """Raised by flush()/close() when not every event is known delivered.

    * ``lost``: the events the client gave up on (after ``message.timeout.ms`` =
      Settings.producer_delivery_timeout_ms, a permanent broker error, or purged unsent at close), each a
      :class:`LostEvent`; ``count`` is their number (``lost`` keeps the first 100 000). Re-send them
      (``EventProducer.resend(err.lost)``): consumers deduplicate by event id, so one that was written
      after all (``maybe_written``) is not counted twice. After ``close()`` raised, the closed producer
      takes nothing (``resend`` raises RuntimeError): re-send through a new one,
      ``with EventProducer(settings) as p: p.resend(err.lost)`` (or ``with CtloopClient(settings) as c:
      c.producer.resend(err.lost)``); each LostEvent carries its topic, key and value bytes, so any
      producer can send it as it was.
    * ``in_flight``: events still queued or awaiting the broker's answer when flush's timeout passed.
      They are NOT lost: the client keeps retrying them until the delivery timeout; call flush() again
      (it reports them as delivered or lost). Do not re-send them.
    ``failures`` ("topic: error" strings) is kept for older callers."""

    def __init__(self, lost: list[LostEvent], in_flight: int = 0, count: int | None = None, closed: bool = False):
        self.lost = list(lost)
        self.count = len(self.lost) if count is None else count
        self.in_flight = in_flight
        self.failures = [f"{e.topic}: {e.error}" for e in self.lost]
        parts = []
        if self.count:
            errors = sorted({e.error for e in self.lost})
            through = " through a new producer: this one is closed" if closed else ""
            parts.append(f"{self.count} event(s) lost (not delivered: {'; '.join(errors[:3])}); re-send them{through} "
                         "(err.lost; consumers deduplicate by event id)")
        if in_flight:
            parts.append(f"{in_flight} event(s) still in flight, not lost: being retried until the delivery "
                         "timeout; call flush() again, do not re-send them")
        super().__init__("; ".join(parts) or "delivery incomplete")


class BackPressureTimeout(RuntimeError):
    """The producer's local buffer stayed full for ``block_timeout_s`` seconds (the broker is
    unreachable or too slow); nothing was queued."""
    pass


class EventProducer:
    """Produce ctloop events. Non-blocking until the local buffer is full; then the call waits for
    deliveries (back-pressure) up to ``block_timeout_s`` and raises BackPressureTimeout."""

    def __init__(self, settings, serde: Serde | None = None, **config):
        self.settings = settings
        self.serde = serde or Serde.from_settings(settings)
        # Delivery reports only for failures: a Python callback per delivered event would cost about a
        # microsecond each on the hot path. Successes are counted as produced - failed - still queued.
        self._producer = Producer(producer_config(settings, **{
            "on_delivery": self._on_delivery, "delivery.report.only.error": True, **config}))
        self._produce = self._producer.produce
        self.block_timeout_s = settings.producer_block_timeout_s
        self.max_message_bytes = settings.max_message_bytes
        # a value up to this with a key of up to 1024 characters (4096 bytes) and no headers always fits:
        # only records near the limit are sized exactly
        self._size_guard = settings.max_message_bytes - RECORD_OVERHEAD_BYTES - 4096
        self.produced = 0
        self.failed = 0
        self._failed_total = 0
        self._lost: list[LostEvent] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def delivered(self) -> int:
        """Events acknowledged by the broker so far."""
        return max(0, self.produced - self._failed_total - len(self._producer))

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            return
        value = msg.value() or b""
        try:
            event_id = self.serde.decode(value).value.get("event_id")
        except Exception:  # noqa: BLE001 - not a ctloop event: still reported, without an id
            event_id = None
        lost = LostEvent(msg.topic(), msg.key(), value, event_id, err.str() if hasattr(err, "str") else str(err),
                         err.code() in MAYBE_WRITTEN)
        with self._lock:
            self.failed += 1
            self._failed_total += 1
            if len(self._lost) < 100_000:
                self._lost.append(lost)

    def produce(self, topic: str, event_type: str, record: dict, key: str | bytes | None = None, headers=None) -> None:
        """Encode ``record`` as ``event_type`` and queue it on ``topic``. Raises EncodeError naming the
        field, and as :meth:`produce_raw` does."""
        value = self.serde.encode(event_type, record, topic)
        self.produce_raw(topic, value, key, headers)

    def produce_raw(self, topic: str, value: bytes, key: str | bytes | None = None, headers=None) -> None:
        """Queue one encoded record. Raises :class:`streams.record_size.RecordTooLarge` (naming the topic
        and the sizes) when key + value + headers exceed ``settings.max_message_bytes``, before anything
        is queued; BackPressureTimeout when the buffer stays full."""
        if self._closed:
            raise RuntimeError("producer is closed")
        if headers is not None or len(value) > self._size_guard or (key is not None and len(key) > 1024):
            check_size(f"a record for {topic}", value, key, headers, self.max_message_bytes)
        try:
            if headers is None:
                self._produce(topic, value, key)
            else:
                self._produce(topic, value, key, headers=headers)
        except BufferError:
            self._wait_for_room(topic, value, key, headers)
        except KafkaException as exc:  # the client's own size check (e.g. a smaller message.max.bytes in config)
            if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise RecordTooLarge(f"a record for {topic}", len(value), self.max_message_bytes) from None
            raise
        self.produced += 1
        if not self.produced & 1023:  # serve (error-only) delivery reports now and then
            self._producer.poll(0)

    def _wait_for_room(self, topic, value, key, headers) -> None:
        deadline = time.monotonic() + self.block_timeout_s
        while True:
            self._producer.poll(0.05)  # serves delivery callbacks, frees buffer space
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise BackPressureTimeout(
                        f"producer buffer still full after {self.block_timeout_s}s: is the broker reachable?") from None

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery callbacks, waiting at most ``timeout`` seconds; returns how many were served."""
        return self._producer.poll(timeout)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait up to ``timeout_s`` for every buffered event. Raise DeliveryError naming the events lost
        since the last flush (``lost``) and counting those still in flight at the deadline (``in_flight``:
        still being retried, reported by a later flush)."""
        remaining = self._producer.flush(timeout_s)
        self._raise_undelivered(remaining)

    def _raise_undelivered(self, in_flight: int, closed: bool = False) -> None:
        with self._lock:
            lost, count = self._lost, self.failed
            self._lost, self.failed = [], 0
        if count or in_flight:
            raise DeliveryError(lost, in_flight, count, closed)

    def resend(self, lost: list[LostEvent]) -> None:
        """Produce lost events again, byte for byte (the same event ids). Then flush() (or close()) as usual.
        A closed producer raises RuntimeError: after close() raised DeliveryError, re-send through a new
        producer (``with EventProducer(settings) as p: p.resend(err.lost)``)."""
        if self._closed and lost:
            raise RuntimeError("producer is closed: re-send the lost events through a new one "
                               "(with EventProducer(settings) as p: p.resend(err.lost))")
        for event in lost:
            self.produce_raw(event.topic, event.value, event.key)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush up to ``timeout_s``, then give up on what is left: events never sent are purged and
        reported lost, events awaiting an answer are reported lost with ``maybe_written``. Raises
        DeliveryError when not every event is known delivered."""
        if self._closed:
            return
        try:
            remaining = self._producer.flush(timeout_s)
            if remaining:
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
                self._producer.flush(min(5.0, timeout_s))   # serves the purged events' delivery reports
            self._raise_undelivered(0, closed=True)
        finally:
            self._closed = True

    def __len__(self) -> int:
        """Events (and protocol requests) still buffered."""
        return len(self._producer)

    def __bool__(self) -> bool:
        # Without this, an idle producer (len 0) is falsy and `producer or EventProducer(...)` in a
        # caller silently makes a second producer, dropping the caller's configuration.
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
