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
    from streams.kafka_config import consumer_config, producer_config

    c = consumer_config(s, "g", **{"fetch.min.bytes": 10})
    assert c["group.id"] == "g" and c["bootstrap.servers"] == "b:1" and c["session.timeout.ms"] == 7000
    assert c["enable.auto.commit"] is False and c["fetch.min.bytes"] == 10
    p = producer_config(s, acks=1)
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


ROOT = DOCS.parent
CODE_DIRS = ("streams", "processors", "trainers", "infra", "bench")


def _settings_members_reading(field_name: str) -> list[str]:
    """Methods/properties of Settings (other than from_env/replace) whose body reads self.<field>."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Settings))
    members = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name not in ("from_env", "replace"):
            if any(isinstance(n, ast.Attribute) and n.attr == field_name and isinstance(n.value, ast.Name)
                   and n.value.id == "self" for n in ast.walk(node)):
                members.append(node.name)
    return members


def test_every_setting_is_read_by_code_outside_the_settings_module():
    """A documented setting that nothing reads does nothing (CTLOOP_PROCESSOR_WORKERS once was one).
    Read = ``.field`` / ``field=`` / ``"field"`` in code outside infra/settings.py, directly or through a
    Settings method or property that reads it (fetch_max_partition_bytes, resolved_artifact_store...)."""
    sources = [p.read_text() for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")
               if p.resolve() != (ROOT / "infra" / "settings.py").resolve()]

    def read(name: str) -> bool:
        pattern = re.compile(r"\.%s\b|\b%s=|[\"']%s[\"']" % (name, name, name))
        return any(pattern.search(text) for text in sources)

    unread = [f.name for f in dataclasses.fields(Settings)
              if not read(f.name) and not any(read(m) for m in _settings_members_reading(f.name))]
    assert not unread, f"settings that no code reads (implement them or remove them and their docs): {unread}"


# Settings with a behavioural test: the test sets the field and asserts what it changes.
BEHAVIOURAL_TESTS = {
    "processor_workers": "test_processors_liveness.py::test_processor_workers_supervises_workers_in_one_group",
    "processor_stall_timeout_s": "test_processors_liveness.py::test_a_broker_restart_makes_the_worker_exit_at_once",
    "metrics_port": "test_processors_liveness.py::test_child_settings_split_ports_and_ready_files",
    "processor_ready_file": "test_processors_liveness.py::test_child_settings_split_ports_and_ready_files",
    "producer_partitioner": "test_processors_scaling.py::test_partition_for_matches_the_producers_placement",
    "drift_window_size": "test_processors_scaling.py::test_n_workers_publish_the_same_stats_and_triggers_as_one",
    "stats_min_interval_s": "test_processors_crash.py::test_sigkill_and_restart_neither_loses_nor_double_counts",
    "performance_window": "test_processors_triggers.py::test_no_drift_trigger_on_a_stationary_stream_then_one_after_a_mean_shift",
    "trigger_timeout_s": "test_processors_triggers.py::test_policy_outstanding_cooldown_and_baseline",
    "feedback_park_ttl_s": "test_processors_join.py::test_feedback_join_end_to_end",
    "join_sweep_interval_s": "test_processors_join.py::test_feedback_join_end_to_end",
    "session_timeout_ms": "test_consumer.py::test_a_consumer_that_dies_before_committing_leaves_its_records_to_the_group",
    "heartbeat_interval_ms": "test_consumer.py::test_a_consumer_that_dies_before_committing_leaves_its_records_to_the_group",
    "producer_linger_ms": "test_sdk.py::test_back_pressure_blocks_then_continues_with_bounded_memory",
    "producer_queue_max_messages": "test_sdk.py::test_back_pressure_blocks_then_continues_with_bounded_memory",
    "producer_block_timeout_s": "test_sdk.py::test_back_pressure_times_out_when_the_broker_is_unreachable",
    "schema_registry_url": "test_serde.py::test_from_settings_picks_the_framing",
    "sdk_speedups": "test_speedups.py::test_client_takes_the_c_path_and_falls_back_with_the_same_bytes",
    "shadow_comparison_every": "test_serving.py::test_steady_stream_through_a_policy_promotion_has_zero_failed_requests",
    "trainer_run_delay_s": "test_trainers.py::test_killed_trainer_trigger_is_completed_after_restart",
    "clickhouse_database": "test_clickhouse_sink.py::test_schema_is_idempotent_and_database_name_checked",
    "trainer_device": "test_compose.py::test_the_gpu_reservation_is_in_the_override_file_only",
}


def test_behavioural_tests_of_settings_exist_and_set_the_setting():
    """The list above stays true: each named test exists and sets its field (or CTLOOP_ variable)."""
    import ast

    assert set(BEHAVIOURAL_TESTS) <= {f.name for f in dataclasses.fields(Settings)}
    for name, node_id in BEHAVIOURAL_TESTS.items():
        path, func = node_id.split("::")
        src = (ROOT / "tests" / path).read_text()
        body = next((ast.get_source_segment(src, n) for n in ast.parse(src).body
                     if isinstance(n, ast.FunctionDef) and n.name == func), None)
        assert body is not None, f"{node_id} (behavioural test of {name}) is gone"
        assert re.search(r"\b%s=" % name, body) or f"CTLOOP_{name.upper()}" in body, f"{node_id} no longer sets {name}"
