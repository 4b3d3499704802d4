"""Follow one deployment's labeled examples from the recent past on: what a serving app's online
learner learns from (trainers/serving.py, the online fallback).

``LabeledExampleFeed(settings, deployment, on_example)`` starts, in a daemon thread, a group-less
consumer of every labeled-examples partition at ``ceil(warm_records / partitions)`` records before its
end (a bounded warm start: about ``warm_records`` records in all, of every deployment), then keeps
following. ``on_example(value)`` is called, in that thread, with each
LabeledExample of the deployment whose role is not shadow (a shadow example repeats the features of
its primary). Partitions are read side by side, so examples of different partitions may be seen in
another order than the processors' fallback stage folds them (it folds them re-keyed by deployment).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from confluent_kafka import Consumer, TopicPartition

from streams.consumer import end_offsets
from streams.kafka_config import client_config
from streams.serde import DecodeError, Serde
from streams.topics import Topics

log = logging.getLogger(__name__)

WARM_RECORDS = 5000
"""Records of labeled-examples (all partitions together) read back when a feed starts."""


class LabeledExampleFeed:
    """Warm start + follow of one deployment's non-shadow LabeledExamples (see the module doc).
    ``examples``: examples delivered so far; ``caught_up``: set once the warm start was read."""

    def __init__(self, settings, deployment: str, on_example: Callable[[dict], None], *, serde: Serde | None = None,
                 warm_records: int = WARM_RECORDS, name: str = "labeled-feed"):
        self.settings = settings
        self.deployment = deployment
        self.on_example = on_example
        self.serde = serde or Serde.from_settings(settings)
        self.warm_records = max(0, int(warm_records))
        self.topic = Topics.from_settings(settings).labeled_examples
        self.name = name
        self.examples = 0
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "LabeledExampleFeed":
        """Start the daemon thread (warm start, then follow); returns self."""
        self._thread = threading.Thread(target=self._run, name=f"ctloop-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the feed; joins its thread for at most ``timeout_s`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        try:
            ends = end_offsets(self.settings, self.topic)
        except Exception:  # noqa: BLE001 - follow from the beginning rather than not at all
            log.exception("labeled feed %s: end offsets unknown; reading from the beginning", self.deployment)
            ends = {}
        consumer = Consumer(client_config(self.settings, {"group.id": "ctloop-reader", "enable.auto.commit": False,
                                                          "auto.offset.reset": "earliest", "log.connection.close": False,
                                                          "fetch.wait.max.ms": 50}))
        try:
            if not ends:
                md = consumer.list_topics(self.topic, timeout=15)
                ends = {p: 0 for p in (md.topics[self.topic].partitions if self.topic in md.topics else {})}
            per_partition = -(-self.warm_records // max(1, len(ends)))
            consumer.assign([TopicPartition(self.topic, p, max(0, end - per_partition)) for p, end in ends.items()])
            reached = {p for p, end in ends.items() if end <= 0}
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.1):
                    if msg.error():
                        continue
                    if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                        reached.add(msg.partition())
                    try:
                        decoded = self.serde.decode(msg.value())
                    except DecodeError:
                        continue   # dead-lettered by the topic's owner
                    value = decoded.value
                    if value.get("deployment") != self.deployment or value.get("role") == "shadow":
                        continue
                    try:
                        self.on_example(value)
                        self.examples += 1
                    except Exception:  # noqa: BLE001 - one bad example must not stop the feed
                        log.exception("labeled feed %s: example not learned", self.deployment)
                if not self.caught_up.is_set() and reached >= set(ends):
                    self.caught_up.set()
        finally:
            consumer.close()
