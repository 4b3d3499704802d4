"""The schemas themselves: documented, evolvable, fingerprinted as the Avro spec says, and encoded
byte-for-byte like fastavro by the compiled encoder."""
from __future__ import annotations

import io
import json
import random
import shutil
import struct
from pathlib import Path

import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse as avro_parse

from streams import catalog as ev
from streams.catalog import SchemaCatalog, _strip_logical_types, default_catalog, schema_dir
from streams.codec import _long, compile_encoder
from tests.avro_values import samples

CATALOG = default_catalog()
SCHEMAS = list(CATALOG)
IDS = [s.name for s in SCHEMAS]

EXPECTED_EVENTS = {
    "PredictionLogged", "FeedbackReceived", "DeploymentConfigured", "LabeledExample", "FeedbackLoopStats",
    "DriftMeasured", "TrainingTriggered", "TrainingRunStarted", "TrainingRunFinished", "TrainingRunFailed",
    "ModelRegistered", "CandidateRejected", "ShadowComparison", "ModelPromoted", "ModelRolledBack", "DeadLetter",
    "OnlineFallbackSwitched",
}


# -- an independent implementation of the spec's canonical form and CRC-64-AVRO -------------------------
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    """The Avro spec's 64-bit Rabin fingerprint (Schema Fingerprints, CRC-64-AVRO)."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def canonical(node, namespace: str | None = None) -> str:
    """Parsing Canonical Form per the spec: [PRIMITIVES] [FULLNAMES] [STRIP] [ORDER] [STRINGS] [WHITESPACE]."""
    dump = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return dump(node)
        return dump(node if "." in node or not namespace else f"{namespace}.{node}")
    if isinstance(node, list):
        return "[" + ",".join(canonical(b, namespace) for b in node) + "]"
    t = node["type"]
    if t in ("record", "enum", "fixed"):
        name = node["name"]
        ns = node.get("namespace", namespace)
        full = name if "." in name else (f"{ns}.{name}" if ns else name)
        inner_ns = full.rsplit(".", 1)[0] if "." in full else None
        out = f'{{"name":{dump(full)},"type":{dump(t)}'
        if t == "record":
            fields = ",".join(f'{{"name":{dump(f["name"])},"type":{canonical(f["type"], inner_ns)}}}' for f in node["fields"])
            out += f',"fields":[{fields}]'
        elif t == "enum":
            out += ',"symbols":[' + ",".join(dump(s) for s in node["symbols"]) + "]"
        else:
            out += f',"size":{int(node["size"])}'
        return out + "}"
    if t == "array":
        return f'{{"type":"array","items":{canonical(node["items"], namespace)}}}'
    if t == "map":
        return f'{{"type":"map","values":{canonical(node["values"], namespace)}}}'
    return canonical(t, namespace)  # {"type": "long", "logicalType": ...} -> "long"


def test_every_event_of_the_loop_has_a_schema():
    assert set(CATALOG.names()) == EXPECTED_EVENTS
    for name in EXPECTED_EVENTS:
        assert getattr(ev, "".join("_" + c if c.isupper() else c for c in name).lstrip("_").upper()) == name


@pytest.mark.parametrize("schema", SCHEMAS, ids=IDS)
def test_schema_is_documented_and_in_one_namespace(schema):
    assert schema.definition["namespace"] == "ctloop.events"
    assert schema.definition.get("doc"), f"{schema.name} has no doc"
    undocumented = [f["name"] for f in schema.definition["fields"] if not f.get("doc")]
    assert not undocumented, f"{schema.name}: fields without doc: {undocumented}"
    assert schema.field_names[:2] == ("event_id", "event_time")
    fields = {f["name"]: f for f in schema.definition["fields"]}
    assert fields["event_id"]["type"] == {"type": "string", "logicalType": "uuid"}
    assert fields["event_time"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert Path(schema.path).name == "".join("_" + c.lower() if c.isupper() else c for c in schema.name).lstrip("_") + ".avsc"


def test_crc64_implementation_matches_known_avro_values():
    # Values from the Avro project's share/test/data/schema-tests.txt (signed 64-bit).
    known = {'"int"': 8247732601305521295, '"null"': 7195948357588979594, '"string"': -8142146995180207161}
    for text, expected in known.items():
        got = crc64_avro(text.encode())
        assert got - (1 << 64 if got >= 1 << 63 else 0) == expected, text


@pytest.mark.parametrize("schema", SCHEMAS, ids=IDS)
def test_fingerprint_is_crc64_avro_of_canonical_form(schema):
    mine = canonical(schema.definition)
    assert schema.canonical_form == mine
    assert schema.fingerprint == crc64_avro(mine.encode()).to_bytes(8, "little")
    # the avro package agrees once logical types (which its canonical form keeps as objects) are gone
    stripped = avro_parse(json.dumps(_strip_logical_types(schema.definition)))
    assert stripped.canonical_form == mine
    assert stripped.fingerprint("CRC-64-AVRO") == crc64_avro(mine.encode()).to_bytes(8, "little")


def test_fingerprints_are_distinct():
    assert len({s.fingerprint for s in SCHEMAS}) == len(SCHEMAS)


# -- the compiled encoder against fastavro ---------------------------------------------------------------
def _fastavro_bytes(parsed, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


@pytest.mark.parametrize("schema", SCHEMAS, ids=IDS)
def test_compiled_encoder_matches_fastavro_byte_for_byte(schema):
    encode = compile_encoder(schema.definition)
    assert hasattr(encode, "source"), f"{schema.name} fell back to fastavro: the compiler does not cover it"
    for i, record in enumerate(samples(schema.definition, seed=sum(map(ord, schema.name)))):
        expected = _fastavro_bytes(schema.parsed, record)
        assert encode(record) == expected, f"{schema.name} sample {i}"
        assert encode(record) == expected, f"{schema.name} sample {i}, encoded twice (caches)"
        assert encode.fields(*record.values()) == expected, f"{schema.name} sample {i}, positional"
        assert fastavro.schemaless_reader(io.BytesIO(expected), schema.parsed, None) == record


SYNTHETIC = {
    "type": "record", "name": "Everything", "namespace": "t.ns",
    "fields": [
        {"name": "n", "type": "null"}, {"name": "b", "type": "boolean"}, {"name": "i", "type": "int"},
        {"name": "l", "type": "long"}, {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"}, {"name": "s", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "green"]}},
        {"name": "e2", "type": "Colour"},
        {"name": "nested", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": ["null", "double"]}, {"name": "tags", "type": {"type": "array", "items": "string"}}]}},
        {"name": "inners", "type": {"type": "array", "items": "t.ns.Inner"}},
        {"name": "null_last", "type": ["string", "null"]},
        {"name": "maps", "type": {"type": "map", "values": {"type": "map", "values": "long"}}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def test_compiled_encoder_covers_every_construct_it_claims():
    encode = compile_encoder(SYNTHETIC)
    assert hasattr(encode, "source")
    parsed = fastavro.parse_schema(_strip_logical_types(SYNTHETIC))
    for i, record in enumerate(samples(SYNTHETIC, seed=7, n_random=60)):
        assert encode(record) == _fastavro_bytes(parsed, record), f"sample {i}"
        assert encode.fields(*record.values()) == _fastavro_bytes(parsed, record), f"sample {i}"


def test_number_maps_with_repeating_and_changing_key_sets():
    schema = {"type": "record", "name": "M", "fields": [{"name": "d", "type": {"type": "map", "values": "double"}},
                                                       {"name": "f", "type": {"type": "map", "values": "float"}}]}
    encode, parsed = compile_encoder(schema), fastavro.parse_schema(schema)
    rng = random.Random(11)
    names = [f"k{i}" for i in range(12)] + ["é", "x" * 200]
    for i in range(1500):  # more distinct key sets than the layout cache holds
        keys = rng.sample(names, rng.randint(0, len(names)))
        record = {"d": {k: rng.uniform(-1e9, 1e9) for k in keys},
                  "f": {k: struct.unpack("<f", struct.pack("<f", rng.random()))[0] for k in keys[:3]}}
        if i % 7 == 0:
            record["d"] = {k: rng.randint(-5, 5) for k in keys}  # ints are doubles too
        assert encode(record) == _fastavro_bytes(parsed, record), i
    with pytest.raises(TypeError):
        encode({"d": {3: 1.0}, "f": {}})
    with pytest.raises(struct.error):
        encode({"d": {"k0": "one"}, "f": {}})


def test_timestamps_repeating_and_changing():
    schema = default_catalog()[ev.FEEDBACK_RECEIVED]
    encode = compile_encoder(schema.definition)
    base = samples(schema.definition, seed=2, n_random=0)[1]
    for t in (5, 5, 1767225600000, 1767225600000, 1767225600001, 5, 2**62):
        record = {**base, "event_time": t}
        assert encode(record) == _fastavro_bytes(schema.parsed, record)
    encode({**base, "event_time": 5})
    with pytest.raises(TypeError):
        encode({**base, "event_time": 5.0})  # equal to the last value, but not an int


def test_compiled_encoder_falls_back_to_fastavro_for_general_unions():
    schema = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "long", "string"]}]}
    encode = compile_encoder(schema)
    assert not hasattr(encode, "source")
    parsed = fastavro.parse_schema(schema)
    for value in (None, 5, "x"):
        assert encode({"u": value}) == _fastavro_bytes(parsed, {"u": value})


def test_zigzag_varint_boundaries():
    parsed = fastavro.parse_schema("long")
    for n in (0, -1, 1, 63, -64, 64, -65, 8191, 8192, 2**31, 2**63 - 1, -2**63):
        assert _long(n) == _fastavro_bytes(parsed, n), n
    with pytest.raises(ValueError):
        _long(2**63)
    with pytest.raises(TypeError):
        _long(True)
    with pytest.raises(TypeError):
        _long(1.5)


def test_compiled_encoder_rejects_wrong_types():
    encode = compile_encoder(SYNTHETIC)
    good = samples(SYNTHETIC, seed=1, n_random=0)[1]
    for field, bad in (("b", 1), ("i", "1"), ("s", 3), ("by", "text"), ("e", "blue"), ("n", 0), ("d", "x")):
        with pytest.raises((TypeError, ValueError, KeyError, AttributeError, struct.error)):
            encode({**good, field: bad})


# -- schema evolution ---------------------------------------------------------------------------------------
def _released_versions(directory: Path) -> list[Path]:
    released = directory / "released"
    return sorted((p for p in released.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def incompatible_schemas(directory: Path) -> list[str]:
    """Schemas of ``directory`` that cannot read data written with their latest released version."""
    problems = []
    checker = ReaderWriterCompatibilityChecker()
    versions = _released_versions(directory)
    for current in sorted(directory.glob("*.avsc")):
        previous = next((v / current.name for v in reversed(versions) if (v / current.name).exists()), None)
        if previous is None:
            continue  # a new event type: nothing released to stay compatible with
        reader, writer = avro_parse(current.read_text()), avro_parse(previous.read_text())
        result = checker.get_compatibility(reader, writer)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            problems.append(f"{current.name} vs {previous}: {result.messages}")
    return problems


def test_schemas_are_backward_compatible_with_their_released_versions():
    assert _released_versions(schema_dir()), "no released schema versions under schemas/released/"
    assert incompatible_schemas(schema_dir()) == []


def test_every_released_schema_still_exists():
    for version in _released_versions(schema_dir()):
        for path in version.glob("*.avsc"):
            assert (schema_dir() / path.name).exists(), f"{path} was released but is gone from schemas/"


@pytest.fixture
def schema_copy(tmp_path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(schema_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return target


def _edit(path: Path, change) -> None:
    definition = json.loads(path.read_text())
    change(definition)
    path.write_text(json.dumps(definition, indent=2))


def test_checker_catches_a_new_field_without_default(schema_copy):
    _edit(schema_copy / "prediction_logged.avsc",
          lambda d: d["fields"].append({"name": "tenant", "type": "string", "doc": "new"}))
    problems = incompatible_schemas(schema_copy)
    assert len(problems) == 1 and "prediction_logged.avsc" in problems[0] and "tenant" in problems[0]


def test_checker_catches_a_removed_enum_symbol_and_a_type_change(schema_copy):
    def drop_canary(d):
        role = next(f for f in d["fields"] if f["name"] == "role")
        role["type"]["symbols"].remove("canary")

    def latency_to_string(d):
        next(f for f in d["fields"] if f["name"] == "latency_ms")["type"] = "string"

    _edit(schema_copy / "prediction_logged.avsc", drop_canary)
    _edit(schema_copy / "feedback_received.avsc", lambda d: None)
    assert len(incompatible_schemas(schema_copy)) == 1
    _edit(schema_copy / "prediction_logged.avsc", latency_to_string)
    assert len(incompatible_schemas(schema_copy)) == 1


def test_checker_accepts_a_new_field_with_default(schema_copy):
    _edit(schema_copy / "prediction_logged.avsc",
          lambda d: d["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None, "doc": "new"}))
    assert incompatible_schemas(schema_copy) == []


def test_events_of_a_released_version_still_decode_after_evolution(schema_copy):
    """Old producers keep writing the released schema's fingerprint: the evolved catalog resolves it."""
    from streams.serde import Serde, new_event

    old_serde = Serde(SchemaCatalog(schema_copy))
    record = new_event(ev.PREDICTION_LOGGED, old_serde.catalog, prediction_id="p1", deployment="d", model_name="m",
                       model_version="1", role="canary", features={"x": 1.5}, label="a")
    old_bytes = old_serde.encode(ev.PREDICTION_LOGGED, record)
    _edit(schema_copy / "prediction_logged.avsc",
          lambda d: d["fields"].append({"name": "tenant", "type": "string", "default": "acme", "doc": "new"}))
    new_serde = Serde(SchemaCatalog(schema_copy))
    assert new_serde.catalog[ev.PREDICTION_LOGGED].fingerprint != old_bytes[2:10]
    decoded = new_serde.decode(old_bytes)
    assert decoded.event_type == ev.PREDICTION_LOGGED
    assert decoded.value == {**record, "tenant": "acme"}
    # and the new version round-trips with its own fingerprint
    new_bytes = new_serde.encode(ev.PREDICTION_LOGGED, {**record, "tenant": "other"})
    assert new_serde.decode(new_bytes).value["tenant"] == "other"


def test_released_copies_are_valid_avro():
    for version in _released_versions(schema_dir()):
        for path in version.glob("*.avsc"):
            fastavro.parse_schema(json.loads(path.read_text()))
