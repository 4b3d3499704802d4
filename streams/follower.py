"""Follow topics in a background thread: read them from the beginning, then keep tailing.

Used to fold small, ordered state topics (deployments, model lifecycle, model updates, triggers) in
every process that needs them: serving apps, the processors' stages, the demo. No consumer group:
every follower sees every partition and commits nothing, so a restart rebuilds the same state.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.consumer import Event
from streams.kafka_config import client_config
from streams.serde import DecodeError, Serde

log = logging.getLogger(__name__)


class TopicFollower:
    """Read ``topics`` from the beginning and keep following them, in a daemon thread, without a
    consumer group (nothing committed; every follower sees everything). ``on_event(event)`` is called
    for each decoded event and ``on_batch()`` after each batch, both in the follower thread.
    ``caught_up`` is set once every partition assigned at start has been read to its end (the fetch's
    end-of-partition event, not ListOffsets: see streams.consumer.end_offsets); topics created later
    are picked up as they appear."""

    def __init__(self, settings, topics: Iterable[str], on_event: Callable[[Event], None], *,
                 on_batch: Callable[[], None] | None = None, serde: Serde | None = None, name: str = "follower",
                 poll_timeout_s: float = 0.1):
        self.settings = settings
        self.topics = list(topics)
        self.on_event = on_event
        self.on_batch = on_batch
        self.serde = serde or Serde.from_settings(settings)
        self.name = name
        self.poll_timeout_s = poll_timeout_s
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0
        self.positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to read (decodable or not)

    def start(self) -> "TopicFollower":
        """Start the daemon thread that reads and follows the topics; returns self."""
        self._thread = threading.Thread(target=self._run, name=f"ctloop-{self.name}", daemon=True)
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float) -> None:
        """Wait until the topics were read to the end offsets they had at start. Raises
        TimeoutError (with the follower's error, if any) after ``timeout_s`` seconds."""
        if not self.caught_up.wait(timeout_s):
            raise TimeoutError(f"{self.name}: did not catch up with {self.topics} within {timeout_s}s"
                               + (f" ({self.error})" if self.error else ""))

    def _assign(self, consumer: Consumer, assigned: dict, pending: set) -> None:
        md = consumer.list_topics(timeout=5)
        new = []
        for topic in self.topics:
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                continue
            for p in t.partitions:
                if (topic, p) in assigned:
                    continue
                assigned[(topic, p)] = True
                if not self.caught_up.is_set():
                    pending.add((topic, p))
                new.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if new:
            consumer.incremental_assign(new)

    def _run(self) -> None:
        consumer = Consumer(client_config(self.settings, {
            "group.id": f"ctloop-follower-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "topic.metadata.refresh.interval.ms": 2000,
            "fetch.wait.max.ms": 100,  # small, rarely written topics: see changes quickly
            "log.connection.close": False}))
        assigned: dict = {}
        pending: set = set()  # partitions not yet read to the end they had at start
        try:
            self._assign(consumer, assigned, pending)
            last_assign = time.monotonic()
            while not self._stop.is_set():
                if len({t for t, _p in assigned}) < len(self.topics) and time.monotonic() - last_assign > 1.0:
                    self._assign(consumer, assigned, pending)  # a topic created after we started
                    last_assign = time.monotonic()
                msgs = consumer.consume(500, self.poll_timeout_s)
                for msg in msgs:
                    key = (msg.topic(), msg.partition())
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            pending.discard(key)
                        continue
                    self.positions[key] = msg.offset() + 1
                    try:
                        decoded = self.serde.decode(msg.value())
                    except DecodeError as exc:
                        log.warning("%s: skipping undecodable record %s@%d: %s", self.name, key, msg.offset(), exc)
                        continue
                    self.events += 1
                    try:
                        self.on_event(Event(decoded.event_type, decoded.value, msg.topic(), msg.partition(),
                                            msg.offset(), msg.key(), msg.timestamp()[1]))
                    except Exception:  # noqa: BLE001 - one bad event must not stop the follower
                        log.exception("%s: handler failed on %s@%d", self.name, key, msg.offset())
                if not pending and not self.caught_up.is_set():
                    self._batch()
                    self.caught_up.set()
                elif msgs:
                    self._batch()
        except BaseException as exc:  # noqa: BLE001 - reported through wait_caught_up / error
            self.error = exc
            log.exception("%s: follower stopped", self.name)
        finally:
            consumer.close()

    def _batch(self) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch()
            except Exception:  # noqa: BLE001
                log.exception("%s: batch handler failed", self.name)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop following; joins the thread for at most ``timeout_s`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
