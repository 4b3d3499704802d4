"""Sizing Kafka records before they are sent.

Every ctloop producer (the SDK's and processors' :class:`streams.producer.EventProducer`, faust's
producer for table changelogs and internal topics) is limited to ``Settings.max_message_bytes`` per
record; a record over it would be refused by the client (librdkafka ``MSG_SIZE_TOO_LARGE``, aiokafka
``MessageSizeTooLargeError``) or by the broker. Rather than let that error escape a handler (a poison
pill: the worker stops on the same record after every restart), writes are sized here first and a
record whose own writes do not fit is dead-lettered once with error_type ``record_too_large``.
"""
from __future__ import annotations

import hashlib

RECORD_OVERHEAD_BYTES = 512
"""Bytes kept free under the limit for the record and batch framing the client and broker add
(record headers' lengths, batch header, CRC): a payload of ``limit - 512`` bytes always fits."""


class RecordTooLarge(ValueError):
    """A record (key + value + headers) is larger than the producer limit.

    ``size`` and ``limit`` are bytes; ``what`` names the record (topic, event type or table)."""

    def __init__(self, what: str, size: int, limit: int):
        super().__init__(f"{what} is {size} bytes, over the {limit}-byte record limit "
                         f"(max_message_bytes={limit}, {RECORD_OVERHEAD_BYTES} bytes kept for framing)")
        self.what = what
        self.size = size
        self.limit = limit


def record_size(value: bytes | None, key: bytes | str | None = None, headers=None) -> int:
    """Bytes of a record's key + value + header names and values (what the producer limit counts)."""
    size = len(value or b"")
    if key is not None:
        size += len(key.encode() if isinstance(key, str) else key)
    for name, header in headers or ():
        size += len(name) + len(header or b"")
    return size


def fits(size: int, limit: int) -> bool:
    """Whether a record of ``size`` payload bytes fits under ``limit`` with the framing reserve."""
    return size + RECORD_OVERHEAD_BYTES <= limit


def check_size(what: str, value: bytes | None, key: bytes | str | None, headers, limit: int) -> int:
    """Return the record's size; raise :class:`RecordTooLarge` naming ``what`` when it does not fit."""
    size = record_size(value, key, headers)
    if not fits(size, limit):
        raise RecordTooLarge(what, size, limit)
    return size


def sha256_hex(data: bytes | None) -> str:
    """Hex SHA-256 of ``data`` (of b"" for None): identifies a truncated value."""
    return hashlib.sha256(data or b"").hexdigest()


def json_batches(items, limit: int, *, field: str = "items", key: bytes | str | None = None, what: str = "an item",
                 on_oversize=None):
    """Encode ``items`` (JSON-able) as messages ``{field: [...]}`` of at most ``limit`` bytes each (with
    the framing reserve and ``key``), in order; yields ``(encoded bytes, items in it)``. An item that does
    not fit on its own raises RecordTooLarge naming ``what`` (earlier batches were yielded already), or,
    when ``on_oversize`` is given, is skipped and passed to ``on_oversize(item, error)``."""
    import json

    head, tail = f'{{"{field}":['.encode(), b"]}"
    base = record_size(head + tail, key)
    chunk: list[bytes] = []
    members: list = []
    size = base
    for item in items:
        raw = json.dumps(item, separators=(",", ":")).encode()
        extra = len(raw) + (1 if chunk else 0)
        if not fits(size + extra, limit):
            if chunk:
                yield head + b",".join(chunk) + tail, members
                chunk, members, size = [], [], base
                extra = len(raw)
            if not fits(size + extra, limit):
                if on_oversize is None:
                    raise RecordTooLarge(what, size + extra, limit)
                on_oversize(item, RecordTooLarge(what, size + extra, limit))
                continue
        chunk.append(raw)
        members.append(item)
        size += extra
    if chunk:
        yield head + b",".join(chunk) + tail, members
