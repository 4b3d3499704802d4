"""Follow small, ordered topics (deployments, model lifecycle, model updates, triggers) in a
background thread: read them from the beginning, then keep tailing, calling a handler per event.

Every worker folds the whole log (no consumer group: all partitions are assigned), so each one has
the full deployment configuration and model history whatever partitions faust gives it; a restart
rebuilds the same state. ``start()`` returns once the log has been read to the end it had at start.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.serde import DecodeError, Serde

log = logging.getLogger(__name__)

Handler = Callable[[str, dict, str], None]
"""handler(event_type, value, topic)."""


class LogFollower:
    def __init__(self, settings, topics: Iterable[str], handler: Handler, *, serde: Serde | None = None,
                 name: str = "follower"):
        self.settings = settings
        self.topics = list(topics)
        self.handler = handler
        self.serde = serde or Serde.from_settings(settings)
        self.name = name
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self.events_seen = 0

    def start(self, timeout_s: float = 30.0) -> "LogFollower":
        consumer = Consumer({"bootstrap.servers": self.settings.bootstrap_servers,
                             "group.id": f"ctloop-follower-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                             "enable.partition.eof": True, "log.connection.close": False,
                             "fetch.wait.max.ms": 50, "topic.metadata.refresh.interval.ms": 2000})
        deadline = time.monotonic() + timeout_s
        assignment, ends = [], set()
        for topic in self.topics:
            while True:
                md = consumer.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
                t = md.topics.get(topic)
                if t is not None and t.error is None and t.partitions:
                    break
                if time.monotonic() > deadline:
                    consumer.close()
                    raise TimeoutError(f"{self.name}: topic {topic} not available within {timeout_s}s")
                time.sleep(0.1)  # polling topic metadata inside a deadline loop
            for p in sorted(t.partitions):
                # caught up at each partition's first end-of-partition event (the fetch path's high
                # watermark; the embedded broker's ListOffsets answer can be short of the real end)
                ends.add((topic, p))
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        consumer.assign(assignment)
        self._consumer = consumer
        self._ends = ends
        if not ends:
            self._caught_up.set()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._caught_up.wait(max(0.1, deadline - time.monotonic())):
            raise TimeoutError(f"{self.name}: could not read {self.topics} to their end within {timeout_s}s")
        return self

    def _run(self) -> None:
        pending = set(self._ends)
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, 0.1):
                    key = (msg.topic(), msg.partition())
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF and key in pending:
                            pending.discard(key)
                            if not pending:
                                self._caught_up.set()
                        continue
                    try:
                        decoded = self.serde.decode(msg.value())
                    except DecodeError:
                        decoded = None
                    if decoded is not None:
                        try:
                            self.handler(decoded.event_type, decoded.value, msg.topic())
                        except Exception:  # noqa: BLE001 - one bad event must not stop the fold
                            log.exception("%s: handler failed on %s[%d]@%d", self.name, *key, msg.offset())
                        self.events_seen += 1
        finally:
            self._consumer.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
