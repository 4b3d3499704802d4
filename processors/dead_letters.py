"""Decoding faust records and dead-lettering what cannot be processed: the stages' face of
:mod:`streams.dead_letters`, which :class:`streams.consumer.EventConsumer` uses too."""
from __future__ import annotations

from streams.dead_letters import Rejected, decode_checked, publish_dead_letter


def dead_letter(ctx, *, topic: str, partition: int, offset: int, key, value: bytes | None, reason: str,
                error_type: str, component: str) -> None:
    """Produce a DeadLetter (with the ctloop-* headers) through ``ctx.producer``."""
    publish_dead_letter(ctx.producer, ctx.topics, topic=topic, partition=partition, offset=offset, key=key,
                        value=value, reason=reason, error_type=error_type, component=component)


def dead_letter_message(ctx, message, reason: str, error_type: str, component: str) -> None:
    """Dead-letter a raw faust message (its key, bytes and source position)."""
    dead_letter(ctx, topic=message.topic, partition=message.partition, offset=message.offset, key=message.key,
                value=message.value, reason=reason, error_type=error_type, component=component)


def decode_message(ctx, message, component: str, *, validate: bool = True):
    """Decode one faust message; returns ``(event_type, value)`` or None after dead-lettering it
    (undecodable, unknown schema, a type not allowed on the topic, or an invalid event)."""
    try:
        decoded = decode_checked(ctx.serde, ctx.topics, message.topic, message.value, validate=validate,
                                 record_time_ms=int(message.timestamp * 1000) if message.timestamp else None,
                                 event_time_bounds=(ctx.settings.event_time_max_past_s,
                                                    ctx.settings.event_time_max_future_s))
    except Rejected as exc:
        dead_letter_message(ctx, message, exc.reason, exc.error_type, component)
        return None
    return decoded.event_type, decoded.value
