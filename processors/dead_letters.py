"""Decoding faust records and dead-lettering what cannot be processed, the same way as
:class:`streams.consumer.EventConsumer` does (DeadLetter event + ``ctloop-*`` headers)."""
from __future__ import annotations

import logging

from streams import catalog as ev
from streams.serde import DecodeError, new_event
from streams.validation import InvalidEvent, validate_event

log = logging.getLogger(__name__)


def dead_letter(ctx, *, topic: str, partition: int, offset: int, key, value: bytes | None, reason: str,
                error_type: str, component: str) -> None:
    """Produce a DeadLetter (with the ctloop-* headers) through ``ctx.producer``."""
    if isinstance(key, str):
        key = key.encode()
    record = new_event(ev.DEAD_LETTER, ctx.serde.catalog, source_topic=topic, source_partition=int(partition),
                       source_offset=int(offset), key=key, value=value, reason=reason, error_type=error_type,
                       component=component)
    headers = [("ctloop-reason", reason.encode()), ("ctloop-error-type", error_type.encode()),
               ("ctloop-source-topic", topic.encode()), ("ctloop-source-partition", str(partition).encode()),
               ("ctloop-source-offset", str(offset).encode())]
    ctx.producer.produce(ctx.topics.dead_letters, ev.DEAD_LETTER, record, key=key, headers=headers)
    log.warning("%s: dead-lettered %s[%s]@%s: %s", component, topic, partition, offset, reason)


def decode_message(ctx, message, component: str, *, validate: bool = True):
    """Decode one faust message; returns ``(event_type, value)`` or None after dead-lettering it
    (undecodable, unknown schema, a type not allowed on the topic, or an invalid event)."""
    topic, partition, offset = message.topic, message.partition, message.offset
    raw = message.value
    try:
        decoded = ctx.serde.decode(raw)
    except DecodeError as exc:
        dead_letter(ctx, topic=topic, partition=partition, offset=offset, key=message.key, value=raw,
                    reason=exc.reason, error_type=exc.error_type, component=component)
        return None
    spec = ctx.topics.spec_of(topic)
    if spec is not None and decoded.event_type not in spec.event_types:
        dead_letter(ctx, topic=topic, partition=partition, offset=offset, key=message.key, value=raw,
                    reason=f"{decoded.event_type} is not allowed on {topic} (expects {', '.join(spec.event_types)})",
                    error_type="unexpected_type", component=component)
        return None
    if validate:
        try:
            validate_event(decoded.event_type, decoded.value)
        except InvalidEvent as exc:
            dead_letter(ctx, topic=topic, partition=partition, offset=offset, key=message.key, value=raw,
                        reason=f"invalid {decoded.event_type}: {exc}", error_type="invalid", component=component)
            return None
    return decoded.event_type, decoded.value
