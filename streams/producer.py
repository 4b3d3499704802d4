"""A thin event producer over confluent-kafka: encodes with the serde, applies back-pressure
instead of growing memory without bound, and surfaces delivery failures."""
from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.record_size import RECORD_OVERHEAD_BYTES, RecordTooLarge, check_size
from streams.serde import Serde

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """Some events were not delivered; raised by flush()/close()."""

    def __init__(self, failures: list[str], count: int):
        super().__init__(f"{count} event(s) failed delivery; first: {failures[:3]}")
        self.failures = failures
        self.count = count


class BackPressureTimeout(RuntimeError):
    pass


class EventProducer:
    """Produce ctloop events. Non-blocking until the local buffer is full; then the call waits for
    deliveries (back-pressure) up to ``block_timeout_s`` and raises BackPressureTimeout."""

    def __init__(self, settings, serde: Serde | None = None, **config):
        self.settings = settings
        self.serde = serde or Serde.from_settings(settings)
        # Delivery reports only for failures: a Python callback per delivered event would cost about a
        # microsecond each on the hot path. Successes are counted as produced - failed - still queued.
        self._producer = Producer(settings.producer_config(**{
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
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def delivered(self) -> int:
        """Events acknowledged by the broker so far."""
        return max(0, self.produced - self._failed_total - len(self._producer))

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            return
        with self._lock:
            self.failed += 1
            self._failed_total += 1
            if len(self._failures) < 100:
                self._failures.append(f"{msg.topic()}: {err.str() if hasattr(err, 'str') else err}")

    def produce(self, topic: str, event_type: str, record: dict, key: str | bytes | None = None, headers=None) -> None:
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
        return self._producer.poll(timeout)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every buffered event; raise DeliveryError if any failed since the last flush."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryError([f"{remaining} event(s) still undelivered after {timeout_s}s"], remaining)
        with self._lock:
            failures, count = self._failures, self.failed
            self._failures, self.failed = [], 0
        if count:
            raise DeliveryError(failures, count)

    def close(self, timeout_s: float = 30.0) -> None:
        if self._closed:
            return
        try:
            self.flush(timeout_s)
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
