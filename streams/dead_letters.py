"""Checking a raw record at the edge, and dead-lettering it when it fails: the one implementation
used by ``streams.consumer.EventConsumer`` and by the faust stages (``processors/dead_letters.py``).

A dead letter is a DeadLetter event on the dead-letters topic, keyed by the original key, carrying the
original bytes, the reason and the source topic/partition/offset, also as ``ctloop-*`` headers. The dead
letter of a record re-injected by ``ctloop dead-letters replay`` also carries its ``ctloop-replay-of``
header (from the readers of raw records; streams/dead_letter_replay.py also finds it by source position).

**Sizes.** A dead letter always fits under ``Settings.max_message_bytes``: when the original value (or
key) would make it too large, it is truncated, the error_type becomes ``record_too_large`` (the first
cause stays in the reason) and the original size and SHA-256 are in the reason and in the headers
``ctloop-original-size`` / ``ctloop-original-sha256`` (``ctloop-truncated: true``). An input record over
the limit is refused at the edge (:func:`decode_checked`) with error_type ``record_too_large``.

**One dead letter per bad record.** Several components read the same topic (predictions: the feedback
join, drift, shadow comparison, the sink). A record refused at the edge (undecodable, unknown_schema,
unexpected_type, invalid, record_too_large) is dead-lettered only by the topic's owner in
:data:`DEAD_LETTER_OWNERS`; every other reader skips it silently. A failure of one component's own
processing (processing_error, unmatched_feedback) is dead-lettered by that component.
"""
from __future__ import annotations

import logging

from streams import catalog as ev
from streams.record_size import RECORD_OVERHEAD_BYTES, fits, record_size, sha256_hex
from streams.serde import Decoded, DecodeError, Serde, new_event
from streams.topics import Topics
from streams.validation import InvalidEvent, validate_event

log = logging.getLogger(__name__)

RECORD_TOO_LARGE = "record_too_large"

DEAD_LETTER_OWNERS: dict[str, str] = {
    "predictions": "processors.feedback_join",
    "feedback": "processors.feedback_join",
    "shadow-predictions": "shadow_comparison",
    "labeled-examples": "processors.drift",
    "feedback-stats": "processors.triggers",
    "drift": "processors.triggers",
    "shadow-comparisons": "promotion",
    "triggers": "trainers",
    "deployments": "clickhouse-sink",
    "model-lifecycle": "clickhouse-sink",
    "model-updates": "clickhouse-sink",
}
"""Topic key -> the component that dead-letters the topic's records refused at the edge (the processor
stage's component name, ``trainers`` for the trainer group, ``clickhouse-sink``). The dead-letters topic
has no owner: a dead letter is never dead-lettered. Other readers of a topic skip refused records."""

MAX_REASON_CHARS = 2000
"""A dead letter's reason is cut to this many characters (exception messages may quote the record)."""


class Rejected(ValueError):
    """A record that must go to the dead-letter topic; ``error_type`` is undecodable,
    unknown_schema, unexpected_type, invalid or record_too_large. ``decoded`` is the decoded event
    when the record could be decoded (invalid, unexpected_type), else None."""

    def __init__(self, reason: str, error_type: str, decoded: Decoded | None = None):
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type
        self.decoded = decoded


def owner_of(topics: Topics, topic: str) -> str | None:
    """The component that dead-letters refused records of ``topic`` (a full name); None: nobody."""
    spec = topics.spec_of(topic)
    return DEAD_LETTER_OWNERS.get(spec.key) if spec is not None else None


def decode_checked(serde: Serde, topics: Topics, topic: str, raw: bytes | None, *, validate: bool = True,
                   key: bytes | str | None = None, max_bytes: int | None = None, record_time_ms: int | None = None,
                   event_time_bounds: tuple[float, float] = (0.0, 0.0)) -> Decoded:
    """Decode ``raw`` read from ``topic`` and check it is allowed there and valid; raise Rejected.

    ``max_bytes`` (Settings.max_message_bytes): a record whose key + value is over it is refused
    (``record_too_large``) before decoding: no ctloop producer can have sent it, and its outputs and
    dead letter could not be sent whole. A PredictionLogged must have role shadow on shadow-predictions
    and primary/canary on predictions (``invalid``: every reader treats it the same way).
    ``record_time_ms`` (the record's Kafka timestamp) and ``event_time_bounds`` (Settings
    event_time_max_past_s, event_time_max_future_s): an app event whose event_time is outside the bounds
    around the timestamp is ``invalid`` (streams.validation.validate_event)."""
    if max_bytes is not None:
        size = record_size(raw, key)
        if not fits(size, max_bytes):
            raise Rejected(f"record of {size} bytes is over max_message_bytes={max_bytes}", RECORD_TOO_LARGE)
    try:
        decoded = serde.decode(raw)
    except DecodeError as exc:
        raise Rejected(exc.reason, exc.error_type) from None
    spec = topics.spec_of(topic)
    if spec is not None and decoded.event_type not in spec.event_types:
        raise Rejected(f"{decoded.event_type} is not allowed on {topic} (expects {', '.join(spec.event_types)})",
                       "unexpected_type", decoded)
    if validate:
        try:
            validate_event(decoded.event_type, decoded.value, record_time_ms=record_time_ms,
                           event_time_max_past_s=event_time_bounds[0], event_time_max_future_s=event_time_bounds[1])
        except InvalidEvent as exc:
            raise Rejected(f"invalid {decoded.event_type}: {exc}", "invalid", decoded) from None
        if spec is not None and decoded.event_type == ev.PREDICTION_LOGGED and spec.key in (
                "predictions", "shadow-predictions"):
            role = decoded.value.get("role")
            if (role == "shadow") != (spec.key == "shadow-predictions"):
                raise Rejected(f"invalid PredictionLogged: role {role} does not belong on {topic} (shadow "
                               "predictions go to shadow-predictions, primary and canary ones to predictions)",
                               "invalid", decoded)
    return decoded


REPLAY_OF_HEADER = "ctloop-replay-of"
"""Header of a record re-injected by ``ctloop dead-letters replay`` (streams/dead_letter_replay.py)."""


def replay_of_header(headers) -> str | None:
    """The ``ctloop-replay-of`` value of a record's headers (a list of (name, bytes) pairs, a dict, or None)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:
        if name == REPLAY_OF_HEADER and value:
            return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    return None


def _headers(reason: str, error_type: str, topic: str, partition, offset, extra=()) -> list[tuple[str, bytes]]:
    return [("ctloop-reason", reason.encode()), ("ctloop-error-type", error_type.encode()),
            ("ctloop-source-topic", topic.encode()), ("ctloop-source-partition", str(partition).encode()),
            ("ctloop-source-offset", str(offset).encode()), *extra]


def publish_dead_letter(producer, topics: Topics, *, topic: str, partition: int, offset: int, key, value: bytes | None,
                        reason: str, error_type: str, component: str, replay_of: str | None = None) -> str:
    """Produce the DeadLetter of one record through ``producer`` (an EventProducer); returns the
    error_type sent (``record_too_large`` when the value or key had to be truncated to fit
    ``producer.max_message_bytes``). Never raises RecordTooLarge. ``replay_of``: the record's
    ``ctloop-replay-of`` header (it was re-injected by ``ctloop dead-letters replay``), copied to the dead
    letter so the replay skips it unless ``--again`` (:func:`replay_of_header`)."""
    if isinstance(key, str):
        key = key.encode()
    reason = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "..."
    limit = producer.max_message_bytes
    extra: list[tuple[str, bytes]] = [(REPLAY_OF_HEADER, replay_of.encode())] if replay_of else []
    if error_type == RECORD_TOO_LARGE:
        size, digest = len(value or b""), sha256_hex(value)
        extra += [("ctloop-original-size", str(size).encode()), ("ctloop-original-sha256", digest.encode())]
        reason = f"{reason} (value of {size} bytes, sha256 {digest})"

    def build(k, v, why, etype, hdr_extra):
        record = new_event(ev.DEAD_LETTER, producer.serde.catalog, source_topic=topic, source_partition=int(partition),
                           source_offset=int(offset), key=k, value=v, reason=why, error_type=etype, component=component)
        encoded = producer.serde.encode(ev.DEAD_LETTER, record, topics.dead_letters)
        return encoded, _headers(why, etype, topic, partition, offset, hdr_extra)

    encoded, headers = build(key, value, reason, error_type, extra)
    if not fits(record_size(encoded, key, headers), limit):
        size, digest = len(value or b""), sha256_hex(value)
        first = "" if error_type == RECORD_TOO_LARGE else f"; first refused as {error_type}"
        why = (f"record_too_large: {reason}{first}; value of {size} bytes (sha256 {digest}) truncated in this "
               f"dead letter to fit max_message_bytes={limit}")
        key_out = key if key is None or len(key) <= 1024 else key[:1024]
        hdr_extra = [*extra[:1 if replay_of else 0],   # the ctloop-replay-of header, if any
                     ("ctloop-original-size", str(size).encode()), ("ctloop-original-sha256", digest.encode()),
                     ("ctloop-original-key-size", str(len(key or b"")).encode()), ("ctloop-truncated", b"true")]
        empty, headers = build(key_out, b"", why, RECORD_TOO_LARGE, hdr_extra)
        room = limit - RECORD_OVERHEAD_BYTES - record_size(empty, key_out, headers) - 16  # 16: the length prefix
        value_out = (value or b"")[:max(0, room)]
        encoded, headers = build(key_out, value_out, why, RECORD_TOO_LARGE, hdr_extra)
        key, reason, error_type = key_out, why, RECORD_TOO_LARGE
    producer.produce_raw(topics.dead_letters, encoded, key, headers)
    log.warning("%s: dead-lettered %s[%s]@%s (%s): %s", component, topic, partition, offset, error_type, reason[:500])
    return error_type
