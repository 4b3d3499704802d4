"""The serde: every schema round-trips in both framings, decoders accept both, bad bytes give
DecodeError with a reason (never another exception), and the documented wire format is the real one."""
from __future__ import annotations

import io
import json
import random
import re
import struct
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from infra.settings import Settings
from streams import catalog as ev
from streams.catalog import default_catalog
from streams.serde import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, DecodeError, EncodeError, Serde, new_event
from tests.avro_values import samples

SCHEMAS = list(default_catalog())
IDS = [s.name for s in SCHEMAS]
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def registry():
    return SchemaRegistryClient.new_client({"url": "mock://serde-test"})


@pytest.mark.parametrize("schema", SCHEMAS, ids=IDS)
def test_single_object_round_trip_of_generated_values(schema):
    serde = Serde()
    for record in samples(schema.definition, seed=len(schema.name)):
        data = serde.encode(schema.name, record, "some-topic")
        assert data[:2] == SINGLE_OBJECT_MAGIC and data[2:10] == schema.fingerprint
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema.parsed, record)
        assert data[10:] == body.getvalue()
        decoded = serde.decode(data)
        assert decoded.event_type == schema.name
        assert decoded.value == record


@pytest.mark.parametrize("schema", SCHEMAS, ids=IDS)
def test_confluent_round_trip_of_generated_values(schema, registry):
    writer = Serde(registry=registry)
    reader = Serde(registry=registry)  # a fresh serde: learns the schema from the registry by id
    for record in samples(schema.definition, seed=len(schema.name) + 1, n_random=10):
        data = writer.encode(schema.name, record, "ctloop.some-topic")
        assert data[:1] == CONFLUENT_MAGIC
        sid = struct.unpack(">I", data[1:5])[0]
        registered = registry.get_schema(sid)
        assert json.loads(registered.schema_str)["name"] == schema.name
        for serde in (writer, reader):
            decoded = serde.decode(data)
            assert (decoded.event_type, decoded.value) == (schema.name, record)
    subjects = registry.get_subjects()
    assert f"ctloop.some-topic-ctloop.events.{schema.name}" in subjects


def test_decoders_accept_both_framings_whatever_they_encode(registry):
    confluent, single = Serde(registry=registry), Serde()
    record = new_event(ev.FEEDBACK_RECEIVED, prediction_id="p", deployment="d", feedback_type="label",
                       kind="explicit", label="spam")
    for encoder in (confluent, single):
        data = encoder.encode(ev.FEEDBACK_RECEIVED, record, "t")
        assert confluent.decode(data).value == record
    assert single.decode(single.encode(ev.FEEDBACK_RECEIVED, record)).value == record
    # a serde without a registry cannot know a schema id: that is an unknown schema, not a crash
    with pytest.raises(DecodeError) as err:
        single.decode(confluent.encode(ev.FEEDBACK_RECEIVED, record, "t"))
    assert err.value.error_type == "unknown_schema" and "registry" in err.value.reason


def test_from_settings_picks_the_framing():
    assert Serde.from_settings(Settings()).registry is None
    serde = Serde.from_settings(Settings(schema_registry_url="mock://from-settings"))
    assert serde.registry is not None
    schema = default_catalog()[ev.DEAD_LETTER]
    record = samples(schema.definition, seed=3, n_random=0)[1]
    data = serde.encode(ev.DEAD_LETTER, record, "x")
    assert data[:1] == CONFLUENT_MAGIC and serde.decode(data).value == record


def test_registry_schema_that_is_not_a_ctloop_event(registry):
    sid = registry.register_schema("other-value", Schema(json.dumps(
        {"type": "record", "name": "Other", "namespace": "acme", "fields": [{"name": "a", "type": "int"}]}), "AVRO"))
    with pytest.raises(DecodeError) as err:
        Serde(registry=registry).decode(CONFLUENT_MAGIC + struct.pack(">I", sid) + b"\x02")
    assert err.value.error_type == "unknown_schema" and "Other" in err.value.reason
    with pytest.raises(DecodeError) as err:
        Serde(registry=registry).decode(CONFLUENT_MAGIC + struct.pack(">I", 999_999) + b"\x02")
    assert err.value.error_type == "unknown_schema" and "999999" in err.value.reason


def _valid_prediction_bytes(serde: Serde) -> bytes:
    record = new_event(ev.PREDICTION_LOGGED, prediction_id="p", deployment="d", model_name="m", model_version="1",
                       role="primary", features={"a": 1.0, "b": -2.5}, label="yes")
    return serde.encode(ev.PREDICTION_LOGGED, record)


@pytest.mark.parametrize("mutate, error_type, words", [
    (lambda b: b"", "undecodable", "empty"),
    (lambda b: b[:6], "undecodable", "truncated"),
    (lambda b: b"\x00\x00", "undecodable", "truncated"),
    (lambda b: b"garbage bytes", "undecodable", "framing"),
    (lambda b: b[:2] + bytes(8) + b[10:], "unknown_schema", "fingerprint"),
    (lambda b: b[:-3], "undecodable", "parse"),
    (lambda b: b + b"\x00\x01", "undecodable", "trailing"),
    (lambda b: b[:10] + b"\xff" * 12, "undecodable", "parse"),
])
def test_bad_bytes_give_a_decode_error_with_a_reason(mutate, error_type, words):
    serde = Serde()
    with pytest.raises(DecodeError) as err:
        serde.decode(mutate(_valid_prediction_bytes(serde)))
    assert err.value.error_type == error_type
    assert words in err.value.reason


def test_random_garbage_never_escapes_as_another_exception():
    serde, rng = Serde(), random.Random(5)
    valid = _valid_prediction_bytes(serde)
    for _ in range(500):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(10, len(data))] = rng.getrandbits(8)
        try:
            serde.decode(bytes(data))
        except DecodeError:
            pass


def test_new_event_fills_ids_and_defaults_and_names_missing_fields():
    record = new_event(ev.FEEDBACK_RECEIVED, prediction_id="p", deployment="d", feedback_type="review",
                       kind="implicit", verdict="correct")
    assert len(record["event_id"]) == 36 and record["event_time"] > 1_600_000_000_000
    assert record["label"] is None and record["reviewer"] is None
    with pytest.raises(EncodeError, match="'deployment'"):
        new_event(ev.FEEDBACK_RECEIVED, prediction_id="p", feedback_type="label", kind="explicit")
    with pytest.raises(EncodeError, match="colour"):
        new_event(ev.FEEDBACK_RECEIVED, prediction_id="p", deployment="d", feedback_type="label", kind="explicit",
                  colour="red")
    with pytest.raises(KeyError, match="NoSuchEvent"):
        new_event("NoSuchEvent")


def test_encode_error_names_the_field():
    serde = Serde()
    record = new_event(ev.PREDICTION_LOGGED, prediction_id="p", deployment="d", model_name="m", model_version="1",
                       role="primary", features={"a": 1.0}, label="yes")
    for field, bad in (("deployment", 5), ("role", "boss"), ("features", {"a": "x"}), ("latency_ms", "fast")):
        with pytest.raises(EncodeError) as err:
            serde.encode(ev.PREDICTION_LOGGED, {**record, field: bad})
        assert field in str(err.value), str(err.value)


def test_encoder_failures_are_encode_errors_never_bare_exceptions():
    """An int beyond a double (OverflowError inside struct.pack) and a lone surrogate (UnicodeEncodeError)
    used to escape Serde.encode as other exception types."""
    serde = Serde()
    record = new_event(ev.PREDICTION_LOGGED, prediction_id="p", deployment="d", model_name="m", model_version="1",
                       role="primary", features={"a": 1.0}, label="yes")
    for field, bad in (("features", {"a": 10**400}), ("features", {"a\udcff": 1.0}), ("deployment", "d\udcff"),
                       ("label", "\ud800"), ("latency_ms", 10**400)):
        with pytest.raises(EncodeError):
            serde.encode(ev.PREDICTION_LOGGED, {**record, field: bad})


# -- the documented example is the real encoding ------------------------------------------------------------
def _doc_example():
    text = (DOCS / "WIRE_FORMAT.md").read_text()
    record = json.loads(re.search(r"<!-- example-record -->\s*```json\n(.*?)```", text, re.S).group(1))
    hex_block = re.search(r"<!-- example-hex -->\s*```\n(.*?)```", text, re.S).group(1)
    hex_bytes = bytes.fromhex("".join(line.split("|")[0].split(":", 1)[1] for line in hex_block.strip().splitlines()))
    return record, hex_bytes


def test_wire_format_doc_example_matches_the_encoder():
    record, documented = _doc_example()
    serde = Serde()
    assert serde.encode(ev.FEEDBACK_RECEIVED, record) == documented
    assert serde.decode(documented).value == record


def test_a_nested_field_with_a_default_may_be_left_out_and_is_written_as_its_default():
    """A producer that builds a nested record without a field added later (with a default), e.g. a
    DatasetLineage without training_window, still encodes; the reader sees the default."""
    from streams.serde import Serde, new_event

    serde = Serde()
    lineage = {"topic": "t", "partitions": [{"partition": 0, "start_offset": 0, "end_offset": 5}], "row_count": 5,
               "train_rows": 4, "holdout_rows": 1, "content_hash": "h", "base_dataset": None}
    record = new_event("TrainingRunFinished", serde.catalog, deployment="d", run_id="r", trigger_id="t",
                       model_version="v1", metrics={}, lineage=lineage, code_version="c", environment={},
                       artifact_uri="u", artifact_sha256="s", duration_ms=1, samples_per_second=1.0)
    decoded = serde.decode(serde.encode("TrainingRunFinished", record))
    assert decoded.value["lineage"]["training_window"] is None
    assert decoded.value["lineage"]["row_count"] == 5
