"""Checking a raw record at the edge, and dead-lettering it when it fails: the one implementation
used by ``streams.consumer.EventConsumer`` and by the faust stages (``processors/dead_letters.py``).

A dead letter is a DeadLetter event on the dead-letters topic, keyed by the original key, carrying the
original bytes, the reason and the source topic/partition/offset, also as ``ctloop-*`` headers.
"""
from __future__ import annotations

import logging

from streams import catalog as ev
from streams.serde import Decoded, DecodeError, Serde, new_event
from streams.topics import Topics
from streams.validation import InvalidEvent, validate_event

log = logging.getLogger(__name__)


class Rejected(ValueError):
    """A record that must go to the dead-letter topic; ``error_type`` is undecodable,
    unknown_schema, unexpected_type or invalid."""

    def __init__(self, reason: str, error_type: str):
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


def decode_checked(serde: Serde, topics: Topics, topic: str, raw: bytes | None, *, validate: bool = True,
                   record_time_ms: int | None = None, event_time_bounds: tuple[float, float] = (0.0, 0.0)) -> Decoded:
    """Decode ``raw`` read from ``topic`` and check it is allowed there and valid; raise Rejected.

    ``record_time_ms`` (the record's Kafka timestamp) and ``event_time_bounds`` (Settings
    event_time_max_past_s, event_time_max_future_s): an app event whose event_time is outside the bounds
    around the timestamp is ``invalid`` (streams.validation.validate_event)."""
    try:
        decoded = serde.decode(raw)
    except DecodeError as exc:
        raise Rejected(exc.reason, exc.error_type) from None
    spec = topics.spec_of(topic)
    if spec is not None and decoded.event_type not in spec.event_types:
        raise Rejected(f"{decoded.event_type} is not allowed on {topic} (expects {', '.join(spec.event_types)})",
                       "unexpected_type")
    if validate:
        try:
            validate_event(decoded.event_type, decoded.value, record_time_ms=record_time_ms,
                           event_time_max_past_s=event_time_bounds[0], event_time_max_future_s=event_time_bounds[1])
        except InvalidEvent as exc:
            raise Rejected(f"invalid {decoded.event_type}: {exc}", "invalid") from None
    return decoded


def publish_dead_letter(producer, topics: Topics, *, topic: str, partition: int, offset: int, key, value: bytes | None,
                        reason: str, error_type: str, component: str) -> None:
    """Produce the DeadLetter of one record through ``producer`` (an EventProducer)."""
    if isinstance(key, str):
        key = key.encode()
    record = new_event(ev.DEAD_LETTER, producer.serde.catalog, source_topic=topic, source_partition=int(partition),
                       source_offset=int(offset), key=key, value=value, reason=reason, error_type=error_type,
                       component=component)
    headers = [("ctloop-reason", reason.encode()), ("ctloop-error-type", error_type.encode()),
               ("ctloop-source-topic", topic.encode()), ("ctloop-source-partition", str(partition).encode()),
               ("ctloop-source-offset", str(offset).encode())]
    producer.produce(topics.dead_letters, ev.DEAD_LETTER, record, key=key, headers=headers)
    log.warning("%s: dead-lettered %s[%s]@%s: %s", component, topic, partition, offset, reason)
