"""The one settings object: CTLOOP_* environment variables, typed, with clear errors, documented."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from infra.settings import Settings, _parse, settings_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.bootstrap_servers == "" and s.topic_prefix == "ctloop." and s.default_partitions == 4
    assert s.resolved_clickhouse_url.startswith("chdb:///") and s.resolved_clickhouse_url.endswith("/chdb")
    assert s.resolved_artifact_store == str(Path(".ctloop") / "artifacts")


def test_values_from_environment_are_typed():
    env = {"CTLOOP_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "CTLOOP_DEFAULT_PARTITIONS": "12",
           "CTLOOP_PRODUCER_BLOCK_TIMEOUT_S": "2.5", "CTLOOP_TOPIC_PREFIX": "prod.", "OTHER": "x",
           "CTLOOP_SCHEMA_REGISTRY_URL": "http://sr:8081"}
    s = Settings.from_env(env)
    assert s.bootstrap_servers == "k1:9092,k2:9092" and s.topic_prefix == "prod."
    assert s.default_partitions == 12 and isinstance(s.default_partitions, int)
    assert s.producer_block_timeout_s == 2.5 and isinstance(s.producer_block_timeout_s, float)
    assert s.schema_registry_url == "http://sr:8081"
    assert Settings.from_env(env, default_partitions=3).default_partitions == 3  # overrides win


@pytest.mark.parametrize("var, raw, kind", [
    ("CTLOOP_DEFAULT_PARTITIONS", "four", "int"),
    ("CTLOOP_DEFAULT_PARTITIONS", "4.5", "int"),
    ("CTLOOP_PRODUCER_BLOCK_TIMEOUT_S", "soon", "float"),
    ("CTLOOP_METRICS_PORT", "", "int"),
])
def test_bad_values_name_the_variable(var, raw, kind):
    with pytest.raises(ValueError) as err:
        Settings.from_env({var: raw})
    assert var in str(err.value) and repr(raw) in str(err.value) and kind in str(err.value)


def test_bool_parsing():
    field = dataclasses.field()
    field.type = "bool"
    for raw, expected in (("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False), ("", False)):
        assert _parse(field, raw, "CTLOOP_X") is expected
    with pytest.raises(ValueError, match="CTLOOP_X='maybe' is not a valid bool"):
        _parse(field, "maybe", "CTLOOP_X")


def test_frozen_and_replace():
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.topic_prefix = "x."  # type: ignore[misc]
    t = s.replace(topic_prefix="x.")
    assert t.topic_prefix == "x." and s.topic_prefix == "ctloop."


def test_client_configs():
    s = Settings(bootstrap_servers="b:1", session_timeout_ms=7000, producer_linger_ms=9,
                 producer_queue_max_messages=77)
    c = s.consumer_config("g", **{"fetch.min.bytes": 10})
    assert c["group.id"] == "g" and c["bootstrap.servers"] == "b:1" and c["session.timeout.ms"] == 7000
    assert c["enable.auto.commit"] is False and c["fetch.min.bytes"] == 10
    p = s.producer_config(acks=1)
    assert p["linger.ms"] == 9 and p["queue.buffering.max.messages"] == 77 and p["acks"] == 1


def test_every_field_is_documented():
    rows = settings_table()
    assert [r[0] for r in rows] == [f"CTLOOP_{f.name.upper()}" for f in dataclasses.fields(Settings)]
    undocumented = [var for var, _default, doc in rows if not doc]
    assert not undocumented, f"add a docstring line under these Settings fields: {undocumented}"


def test_configuration_doc_lists_every_variable():
    text = (DOCS / "CONFIGURATION.md").read_text()
    listed = set(re.findall(r"`(CTLOOP_[A-Z0-9_]+)`", text))
    missing = [var for var, _d, _doc in settings_table() if var not in listed]
    assert not missing, f"docs/CONFIGURATION.md lacks {missing}: regenerate it with `ctloop settings --write docs/CONFIGURATION.md`"
    stale = sorted(listed - {var for var, _d, _doc in settings_table()} - {"CTLOOP_TEST_BOOTSTRAP_SERVERS",
                                                                         "CTLOOP_TEST_CLICKHOUSE_URL",
                                                                         "CTLOOP_TEST_NO_DOCKER"})
    assert not stale, f"docs/CONFIGURATION.md lists variables Settings no longer has: {stale}"
