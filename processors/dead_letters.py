"""Decoding faust records and dead-lettering what cannot be processed: the stages' face of
:mod:`streams.dead_letters`, which :class:`streams.consumer.EventConsumer` uses too.

A record refused at the edge is dead-lettered only by the component owning its topic
(``streams.dead_letters.DEAD_LETTER_OWNERS``: the feedback join for predictions and feedback,
shadow_comparison for shadow-predictions, drift for labeled-examples, triggers for feedback-stats and
drift, promotion for shadow-comparisons); the other stages reading the topic skip it silently. So one
bad record gives one dead letter whichever stages a worker runs.

A dead letter is flushed before the call returns (``flush=True``, the default), so it is durable before
faust can commit the record's offset (faust waits only for its own producer); a stage that flushes
``ctx.producer`` before acknowledging each batch anyway (the feedback join) passes ``flush=False``.
"""
from __future__ import annotations

from streams.dead_letters import RECORD_TOO_LARGE, Rejected, decode_checked, owner_of, publish_dead_letter, replay_of_header
from streams.record_size import RecordTooLarge


def dead_letter(ctx, *, topic: str, partition: int, offset: int, key, value: bytes | None, reason: str,
                error_type: str, component: str, flush: bool = True, replay_of: str | None = None) -> str:
    """Produce a DeadLetter (with the ctloop-* headers) through ``ctx.producer`` and, with ``flush``, wait
    until it is durable (raises streams.producer.DeliveryError if it is not); returns the error_type sent
    (record_too_large when the value had to be truncated to fit). ``replay_of``: the record's
    ``ctloop-replay-of`` header (a replayed dead letter), copied to the new dead letter."""
    sent = publish_dead_letter(ctx.producer, ctx.topics, topic=topic, partition=partition, offset=offset, key=key,
                               value=value, reason=reason, error_type=error_type, component=component,
                               replay_of=replay_of)
    if flush:
        ctx.producer.flush()
    return sent


def dead_letter_message(ctx, message, reason: str, error_type: str, component: str, *, flush: bool = True) -> str:
    """Dead-letter a raw faust message (its key, bytes and source position)."""
    return dead_letter(ctx, topic=message.topic, partition=message.partition, offset=message.offset,
                       key=message.key, value=message.value, reason=reason, error_type=error_type, component=component,
                       flush=flush, replay_of=replay_of_header(getattr(message, "headers", None)))


def dead_letter_failure(ctx, message, exc: BaseException, component: str, what: str = "handler error", *,
                        flush: bool = True) -> str:
    """Dead-letter a record whose processing raised ``exc``: ``record_too_large`` when one of its own
    writes (an output, a table row) was over ``max_message_bytes``, else ``processing_error``."""
    if isinstance(exc, RecordTooLarge):
        return dead_letter_message(ctx, message, f"its writes do not fit: {exc}", RECORD_TOO_LARGE, component,
                                   flush=flush)
    return dead_letter_message(ctx, message, f"{what}: {type(exc).__name__}: {exc}", "processing_error", component,
                               flush=flush)


def owns(ctx, topic: str, component: str) -> bool:
    """Whether ``component`` dead-letters the refused records of ``topic`` (a full name)."""
    return owner_of(ctx.topics, topic) == component


def decode_message(ctx, message, component: str, *, validate: bool = True, on_reject=None, flush: bool = True):
    """Decode one faust message; returns ``(event_type, value)``, or None when it is refused at the
    edge (over max_message_bytes, undecodable, unknown schema, a type not allowed on the topic, an
    invalid event): then it is dead-lettered if ``component`` owns the topic, and ``on_reject(exc)``
    (a :class:`streams.dead_letters.Rejected`) is called when given. ``flush``: see :func:`dead_letter`."""
    try:
        decoded = decode_checked(ctx.serde, ctx.topics, message.topic, message.value, validate=validate,
                                 key=message.key, max_bytes=ctx.settings.max_message_bytes,
                                 record_time_ms=round(message.timestamp * 1000) if message.timestamp else None,
                                 event_time_bounds=(ctx.settings.event_time_max_past_s,
                                                    ctx.settings.event_time_max_future_s))
    except Rejected as exc:
        if owns(ctx, message.topic, component):
            dead_letter_message(ctx, message, exc.reason, exc.error_type, component, flush=flush)
        if on_reject is not None:
            on_reject(exc)
        return None
    return decoded.event_type, decoded.value
