"""Collect the events of topics (tests, benchmarks): assign every partition from the beginning (no group, so no
rebalance wait) and accumulate decoded events; wait on conditions over them with a deadline."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.consumer import Event
from streams.kafka_config import client_config
from streams.serde import DecodeError, Serde


class Collector:
    """Every event of ``topics`` from the beginning (all partitions assigned, no consumer group), decoded.

    ``events`` holds the decoded :class:`streams.consumer.Event` s in arrival order (each partition in
    offset order), ``raw`` every record read (undecodable ones too). Raises the client's KafkaException
    when a topic's metadata cannot be read within 10 s."""

    def __init__(self, settings, *topics: str):
        self.serde = Serde.from_settings(settings)
        self.events: list[Event] = []
        self.raw: list = []
        self._consumer = Consumer(client_config(settings, {  # the settings' TLS/SASL too
            "group.id": f"test-collector-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "fetch.wait.max.ms": 20, "log.connection.close": False}))
        assignment = []
        for topic in topics:
            md = self._consumer.list_topics(topic, timeout=10)
            for p in md.topics[topic].partitions:
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        self._consumer.assign(assignment)

    def poll(self, timeout_s: float = 0.005) -> list[Event]:
        """Read what has arrived (up to 1,000 records, waiting up to ``timeout_s`` seconds); returns the
        newly decoded events (undecodable records are kept in ``raw`` only)."""
        new = []
        for msg in self._consumer.consume(1000, timeout_s):
            if msg.error():
                continue
            self.raw.append(msg)
            try:
                d = self.serde.decode(msg.value())
            except DecodeError:
                continue
            new.append(Event(d.event_type, d.value, msg.topic(), msg.partition(), msg.offset(), msg.key(),
                             msg.timestamp()[1]))
        self.events.extend(new)
        return new

    def of(self, event_type: str | None = None, **match) -> list[Event]:
        """The collected events of ``event_type`` (any when None) whose value fields equal ``match``."""
        return [e for e in self.events if (event_type is None or e.event_type == event_type)
                and all(e.value.get(k) == v for k, v in match.items())]

    def wait(self, condition, timeout_s: float, what: str = "condition"):
        """Poll until ``condition(self)`` is truthy; TimeoutError naming ``what`` after the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            result = condition(self)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout_s}s ({len(self.events)} events collected)")

    def close(self) -> None:
        """Close the consumer (no offsets to commit: it has no group)."""
        self._consumer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
