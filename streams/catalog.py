"""The schema catalog: every event type of the loop, loaded from schemas/*.avsc.

An event type is named by its Avro record name (``PredictionLogged``...). For each one the catalog
keeps the parsing canonical form, its CRC-64-AVRO fingerprint (the single-object encoding header) and
a parsed schema for fastavro in which logical types are left out, so that in Python times are epoch
milliseconds (int) and ids are strings: the bytes on the wire are the same.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

NAMESPACE = "ctloop.events"

# Event type names, for use in code.
PREDICTION_LOGGED = "PredictionLogged"
FEEDBACK_RECEIVED = "FeedbackReceived"
DEPLOYMENT_CONFIGURED = "DeploymentConfigured"
LABELED_EXAMPLE = "LabeledExample"
FEEDBACK_LOOP_STATS = "FeedbackLoopStats"
DRIFT_MEASURED = "DriftMeasured"
TRAINING_TRIGGERED = "TrainingTriggered"
TRAINING_RUN_STARTED = "TrainingRunStarted"
TRAINING_RUN_FINISHED = "TrainingRunFinished"
TRAINING_RUN_FAILED = "TrainingRunFailed"
MODEL_REGISTERED = "ModelRegistered"
CANDIDATE_REJECTED = "CandidateRejected"
SHADOW_COMPARISON = "ShadowComparison"
MODEL_PROMOTED = "ModelPromoted"
MODEL_ROLLED_BACK = "ModelRolledBack"
ONLINE_FALLBACK_SWITCHED = "OnlineFallbackSwitched"
DEAD_LETTER = "DeadLetter"


def schema_dir() -> Path:
    """The folder of the installed ``schemas`` package (the ``*.avsc`` files)."""
    return Path(str(resources.files("schemas")))


def _strip_logical_types(node):
    if isinstance(node, list):
        return [_strip_logical_types(x) for x in node]
    if isinstance(node, dict):
        if "logicalType" in node and isinstance(node.get("type"), str):
            return node["type"]
        return {k: (_strip_logical_types(v) if k in ("type", "items", "values", "fields") else v) for k, v in node.items()}
    return node


@dataclass(frozen=True)
class EventSchema:
    """One event's Avro schema: its short ``name``, the ``.avsc`` ``path`` and the parsed JSON
    ``definition`` (dict); derived forms (canonical form, fingerprint, fastavro schema) are cached."""
    name: str
    """Short record name, e.g. PredictionLogged."""
    path: Path
    definition: dict

    @cached_property
    def full_name(self) -> str:
        """The namespaced record name, e.g. ``ctloop.events.PredictionLogged``."""
        return f"{self.definition.get('namespace', NAMESPACE)}.{self.name}"

    @cached_property
    def canonical_form(self) -> str:
        """The Avro parsing canonical form of the definition (the string the fingerprint hashes)."""
        return to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(self.definition)))

    @cached_property
    def fingerprint(self) -> bytes:
        """CRC-64-AVRO fingerprint, 8 bytes little-endian, as single-object encoding writes it."""
        # fastavro's hex string already is the little-endian byte sequence (as in the spec's examples)
        return bytes.fromhex(fingerprint(self.canonical_form, "CRC-64-AVRO"))

    @cached_property
    def parsed(self):
        """fastavro schema without logical types (times as int millis, uuids as str)."""
        return fastavro.parse_schema(_strip_logical_types(copy.deepcopy(self.definition)), _write_hint=False)

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        """The record's field names, in schema order."""
        return tuple(f["name"] for f in self.definition["fields"])

    @cached_property
    def defaults(self) -> dict:
        """Field name to default value, for the fields that declare a default."""
        return {f["name"]: f["default"] for f in self.definition["fields"] if "default" in f}


class SchemaCatalog:
    """All event schemas of one directory (default: the installed ``schemas`` package)."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else schema_dir()
        self._by_name: dict[str, EventSchema] = {}
        self._by_fingerprint: dict[bytes, EventSchema] = {}
        for path in sorted(self.directory.glob("*.avsc")):
            definition = json.loads(path.read_text())
            schema = EventSchema(definition["name"], path, definition)
            self._by_name[schema.name] = schema
            self._by_fingerprint[schema.fingerprint] = schema
        if not self._by_name:
            raise FileNotFoundError(f"no .avsc schemas in {self.directory}")
        # Earlier released versions (released/<N>/*.avsc): events written with them keep decoding
        # (their writer schema is resolved against the current one) after a schema evolves.
        self._released: dict[bytes, tuple[EventSchema, EventSchema]] = {}
        released = self.directory / "released"
        if released.is_dir():
            for path in sorted(released.glob("*/*.avsc")):
                definition = json.loads(path.read_text())
                current = self._by_name.get(definition.get("name"))
                if current is None:
                    continue
                old = EventSchema(definition["name"], path, definition)
                if old.fingerprint not in self._by_fingerprint:
                    self._released[old.fingerprint] = (current, old)

    def __getitem__(self, name: str) -> EventSchema:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown event type {name!r}; known: {', '.join(sorted(self._by_name))}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        """Short names of every event type in the catalog, sorted."""
        return sorted(self._by_name)

    def by_fingerprint(self, fp: bytes) -> EventSchema | None:
        """The current schema with this 8-byte fingerprint; None when none has it."""
        return self._by_fingerprint.get(fp)

    def released_by_fingerprint(self, fp: bytes) -> tuple[EventSchema, EventSchema] | None:
        """(current schema, released writer schema) for a fingerprint of an earlier released
        version that differs from the current one; None otherwise."""
        return self._released.get(fp)

    def by_full_name(self, full_name: str) -> EventSchema | None:
        """The schema whose short name ends ``full_name`` (the namespace is not compared); None
        when unknown."""
        return self._by_name.get(full_name.rsplit(".", 1)[-1])


_DEFAULT: SchemaCatalog | None = None


def default_catalog() -> SchemaCatalog:
    """The catalog of the installed schemas (parsed once; read-only)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SchemaCatalog()
    return _DEFAULT
