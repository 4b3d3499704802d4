"""Avro serde: one module used by the SDK, the processors, the trainers and `ctloop tail`.

Two framings (docs/WIRE_FORMAT.md):

* **Single-object encoding** (default, no registry): ``C3 01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's parsing canonical form + Avro binary body.
* **Confluent Schema Registry framing** (when a registry is configured): ``00`` + 4-byte big-endian
  schema id + Avro binary body.

Decoders accept both, whatever the encoder is set to.
"""
from __future__ import annotations

import io
import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fastavro

from streams.catalog import EventSchema, SchemaCatalog, default_catalog
from streams.codec import compile_encoder

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class DecodeError(ValueError):
    """A record that cannot be decoded; ``error_type`` is undecodable or unknown_schema."""

    def __init__(self, reason: str, error_type: str = "undecodable"):
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


class EncodeError(ValueError):
    """A record that cannot be encoded (a missing, unknown or ill-typed field); the message names the event
    type and, when it can, the field."""
    pass


@dataclass(frozen=True)
class Decoded:
    """A decoded event: ``event_type`` the short record name (e.g. PredictionLogged) and ``value`` the record
    dict in the current catalog schema (fields of an older released writer resolved to it)."""
    event_type: str
    value: dict


def now_ms() -> int:
    """Wall-clock time as epoch milliseconds (the unit of every ``event_time``)."""
    return time.time_ns() // 1_000_000


def new_event(schema: EventSchema | str, catalog: SchemaCatalog | None = None, **fields: Any) -> dict:
    """A complete record of ``schema``: event_id and event_time filled, defaults applied.

    Raises EncodeError naming the first missing required field."""
    if isinstance(schema, str):
        schema = (catalog or default_catalog())[schema]
    record = dict(schema.defaults)
    record["event_id"] = str(uuid.uuid4())
    record["event_time"] = now_ms()
    record.update(fields)
    for name in schema.field_names:
        if name not in record:
            raise EncodeError(f"{schema.name}: missing required field {name!r}")
    unknown = set(record) - set(schema.field_names)
    if unknown:
        raise EncodeError(f"{schema.name}: unknown field(s) {', '.join(sorted(unknown))}")
    return record


class Serde:
    """Encode and decode ctloop events.

    ``registry`` is a ``confluent_kafka.schema_registry.SchemaRegistryClient``; with one, ``encode``
    registers the schema under ``<topic>-<full record name>`` (the record-name strategy of the topic)
    and writes Confluent framing. Without one it writes single-object encoding.
    """

    def __init__(self, catalog: SchemaCatalog | None = None, registry=None):
        self.catalog = catalog or default_catalog()
        self.registry = registry
        self._encoders = {}
        self._registry_ids: dict[tuple[str, str], int] = {}
        self._registry_schemas: dict[int, EventSchema | tuple[EventSchema, Any]] = {}

    @classmethod
    def from_settings(cls, settings, catalog: SchemaCatalog | None = None) -> "Serde":
        """A Serde with a Schema Registry client when ``settings.schema_registry_url`` is set (a
        ``mock://`` URL gives confluent's in-memory registry), else single-object encoding."""
        registry = None
        if settings.schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            # new_client: a "mock://..." URL gives confluent's in-memory registry (tests, demos)
            registry = SchemaRegistryClient.new_client({"url": settings.schema_registry_url})
        return cls(catalog, registry)

    # -- encoding ---------------------------------------------------------------------------------
    def _encoder(self, event_type: str):
        enc = self._encoders.get(event_type)
        if enc is None:
            schema = self.catalog[event_type]
            enc = self._encoders[event_type] = (schema, compile_encoder(schema.definition))
        return enc

    def encode_body(self, event_type: str, record: dict) -> bytes:
        """The Avro binary body of ``record`` (no framing). Raises KeyError for an unknown event type and
        EncodeError naming the field when the record does not fit the schema."""
        schema, enc = self._encoder(event_type)
        try:
            return enc(record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error) as exc:
            # OverflowError: a number beyond an Avro float (|x| > 3.4e38), or an int beyond a double
            raise EncodeError(f"{event_type}: {_describe(schema, record, exc)}") from None

    def encode(self, event_type: str, record: dict, topic: str | None = None) -> bytes:
        """``record`` framed: single-object encoding (``C3 01`` + 8-byte fingerprint + body) without a registry,
        else Confluent framing (``00`` + 4-byte big-endian schema id registered for ``topic`` + body).
        Raises as :meth:`encode_body` does."""
        body = self.encode_body(event_type, record)
        if self.registry is None:
            schema = self._encoder(event_type)[0]
            return SINGLE_OBJECT_MAGIC + schema.fingerprint + body
        return CONFLUENT_MAGIC + struct.pack(">I", self.registry_id(event_type, topic or "ctloop")) + body

    def single_object_header(self, event_type: str) -> bytes:
        """The 10-byte single-object header of ``event_type``: ``C3 01`` + its 8-byte
        fingerprint. Raises KeyError for an unknown event type."""
        return SINGLE_OBJECT_MAGIC + self._encoder(event_type)[0].fingerprint

    def registry_id(self, event_type: str, topic: str) -> int:
        """The Schema Registry id of ``event_type`` under subject ``<topic>-<full record name>``,
        registering the schema on first use (cached per event type and topic)."""
        key = (event_type, topic)
        sid = self._registry_ids.get(key)
        if sid is None:
            from confluent_kafka.schema_registry import Schema

            schema = self.catalog[event_type]
            sid = self.registry.register_schema(f"{topic}-{schema.full_name}", Schema(json.dumps(schema.definition), "AVRO"))
            self._registry_ids[key] = sid
            self._registry_schemas[sid] = (schema, schema.parsed)  # we wrote it: writer == catalog schema
        return sid

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, data: bytes | None) -> Decoded:
        """Decode one framed record (either framing) into a :class:`Decoded`. Raises DecodeError
        (``error_type`` unknown_schema for an unknown fingerprint or schema id, else undecodable: empty, truncated,
        unknown framing, an unparsable body or trailing bytes)."""
        if not data:
            raise DecodeError("empty value")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("truncated single-object header")
            fp = bytes(data[2:10])
            schema = self.catalog.by_fingerprint(fp)
            if schema is None:
                released = self.catalog.released_by_fingerprint(fp)
                if released is None:
                    raise DecodeError(f"unknown schema fingerprint {fp.hex()}", "unknown_schema")
                schema, writer = released  # written with an earlier released version: resolve
                return Decoded(schema.name, self._read(writer.parsed, schema.parsed, data, 10))
            return Decoded(schema.name, self._read(schema.parsed, None, data, 10))
        if data[:1] == CONFLUENT_MAGIC:
            if len(data) < 5:
                raise DecodeError("truncated Confluent header")
            sid = struct.unpack(">I", data[1:5])[0]
            schema, writer = self._registry_lookup(sid)
            return Decoded(schema.name, self._read(writer, schema.parsed, data, 5))
        raise DecodeError(f"unknown framing: first byte 0x{data[0]:02x} (expected C3 01 or 00)")

    def _registry_lookup(self, sid: int):
        cached = self._registry_schemas.get(sid)
        if isinstance(cached, tuple):
            return cached
        if self.registry is None:
            raise DecodeError(f"Confluent-framed record (schema id {sid}) but no schema registry is configured", "unknown_schema")
        try:
            registered = self.registry.get_schema(sid)
        except Exception as exc:  # noqa: BLE001 - registry errors become dead letters
            raise DecodeError(f"schema id {sid} not found in the registry: {exc}", "unknown_schema") from None
        definition = json.loads(registered.schema_str)
        from streams.catalog import _strip_logical_types

        schema = self.catalog.by_full_name(f"{definition.get('namespace', '')}.{definition.get('name', '')}")
        if schema is None:
            raise DecodeError(f"schema id {sid} is {definition.get('name')!r}, not a ctloop event", "unknown_schema")
        writer = fastavro.parse_schema(_strip_logical_types(definition), _write_hint=False)
        self._registry_schemas[sid] = (schema, writer)
        return schema, writer

    @staticmethod
    def _read(writer, reader, data: bytes, offset: int) -> dict:
        buf = io.BytesIO(data)
        buf.seek(offset)
        try:
            value = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # noqa: BLE001 - any parse failure is undecodable input
            raise DecodeError(f"Avro body does not parse: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the Avro body")
        return value


def _describe(schema: EventSchema, record: dict, exc: Exception) -> str:
    """Name the offending field when fastavro's validator can."""
    from fastavro.validation import ValidationError, validate

    try:
        validate(record, schema.parsed, raise_errors=True)
    except ValidationError as verr:
        return f"invalid record: {verr}"
    except Exception:  # noqa: BLE001
        pass
    return f"cannot encode: {exc}"
