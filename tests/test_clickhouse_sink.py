"""The ClickHouse sink over real Kafka (embedded broker) and real ClickHouse (chdb by default)."""
from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest

from infra.clickhouse import ClickHouseLocked, connect
from infra.clickhouse_sink import TABLES, ClickHouseSink
from streams import catalog as ev
from streams.producer import EventProducer
from streams.serde import new_event
from tests.clickhouse_scenario import T0, publish_scenario


@pytest.fixture
def ch_settings(settings, clickhouse_url, topics):
    return settings.replace(clickhouse_url=clickhouse_url, clickhouse_database=f"t_{uuid.uuid4().hex[:10]}",
                            sink_flush_interval_s=0.2, event_time_max_past_s=0)  # the scenario backfills T0


def table_counts(client, db) -> dict[str, int]:
    return {t: client.query(f"SELECT count() FROM {db}.{t}").result_rows[0][0] for t in sorted(set(TABLES.values()))}


def test_round_trip_row_counts_equal_events_produced(ch_settings):
    scenario = publish_scenario(ch_settings)
    with ClickHouseSink(ch_settings) as sink:
        inserted = sink.run_until_caught_up(timeout_s=60)
        client = sink.client
        counts = table_counts(client, ch_settings.clickhouse_database)
        exposition = sink.metrics.exposition()
        _check_round_trip(ch_settings, scenario, client)
    assert f'ctloop_sink_rows_inserted_total{{table="predictions"}} {float(scenario.produced["predictions"])}' in exposition
    assert "ctloop_sink_lag_events 0.0" in exposition
    expected = {t: scenario.produced.get(t, 0) for t in counts}
    assert counts == expected
    assert inserted == sum(expected.values())


def _check_round_trip(ch_settings, scenario, client):
    # typed columns: maps, times, nullable strings, Kafka coordinates
    row = client.query("SELECT features, event_time, label, kafka_topic, kafka_offset FROM predictions "
                       "WHERE role = 'primary' AND deployment = 'fraud' ORDER BY event_time LIMIT 1").result_rows[0]
    assert row[0] == {"x": 0.0, "y": 1.0}
    assert row[1].replace(tzinfo=dt.timezone.utc) == dt.datetime.fromtimestamp(T0 / 1000, dt.timezone.utc)
    assert row[2] == "b" and row[3] == ch_settings.topic_prefix + "predictions"
    dead = client.query("SELECT component, error_type, source_topic FROM dead_letters").result_rows
    assert dead == [("clickhouse-sink", "undecodable", ch_settings.topic_prefix + "model-updates")]
    lineage = client.query("SELECT lineage_partitions, lineage_end_offsets FROM models_registered "
                           "WHERE model_version = '3'").result_rows[0]
    assert lineage[0] == [p["partition"] for p in scenario.snapshot2]
    assert lineage[1] == [p["end_offset"] for p in scenario.snapshot2]


@pytest.mark.slow
def test_no_duplicates_after_a_sink_restart(ch_settings):
    scenario = publish_scenario(ch_settings, garbage=False)
    total = sum(scenario.produced.values())
    db = ch_settings.clickhouse_database

    # sink A inserts every event, then "crashes" before committing a single offset
    crashed = ClickHouseSink(ch_settings)
    deadline = time.monotonic() + 60
    while crashed._buffered < total:
        assert time.monotonic() < deadline, f"sink A read {crashed._buffered}/{total} events"
        batch = crashed.consumer.poll_batch(1000, 0.2)
        if crashed._assignment_changed:
            crashed._load_watermarks()
        for event in batch:
            crashed._add(event)
    for table, rows in crashed._buffer.items():
        crashed._insert(table, rows)
    crashed._buffer, crashed._buffered, crashed.consumer._pending = {}, 0, {}
    crashed.consumer.raw.close()  # no commit: every record will be delivered again
    assert sum(table_counts(crashed.client, db).values()) == total
    crashed.client.close()

    # sink B in the same group reads everything again and stores nothing twice
    with ClickHouseSink(ch_settings) as sink:
        assert sink.run_until_caught_up(timeout_s=60) == 0
        assert sink.duplicates_skipped == total
        counts = table_counts(sink.client, db)
        # and a restart after a clean commit reads nothing at all
    assert counts == {t: scenario.produced.get(t, 0) for t in counts}
    with ClickHouseSink(ch_settings) as again:
        assert again.run_until_caught_up(timeout_s=60) == 0
        assert again.duplicates_skipped == 0


def test_same_event_published_twice_counts_once(ch_settings):
    """A producer retry writes one event at two offsets, here in two separate sink batches:
    ReplacingMergeTree + FINAL collapse it, and the views count it once."""
    record = new_event(ev.PREDICTION_LOGGED, prediction_id=str(uuid.uuid4()), deployment="d", model_name="m",
                       model_version="1", role="primary", features={"x": 1.0}, label="a")
    topic = ch_settings.topic_prefix + "predictions"
    with EventProducer(ch_settings) as producer, ClickHouseSink(ch_settings) as sink:
        for _ in range(2):
            producer.produce(topic, ev.PREDICTION_LOGGED, record, key=record["prediction_id"])
            producer.flush()
            assert sink.run_until_caught_up(timeout_s=60) == 1
        client = sink.client
        assert client.query("SELECT count() FROM predictions").result_rows[0][0] == 2
        assert client.query("SELECT count() FROM predictions FINAL").result_rows[0][0] == 1
        assert client.query("SELECT logged FROM feedback_funnel WHERE deployment = 'd'").result_rows == [(1,)]


def test_schema_is_idempotent_and_database_name_checked(ch_settings):
    first = connect(ch_settings)
    connect(ch_settings).close()  # applying the DDL again changes nothing and raises nothing
    tables = first.query(f"SHOW TABLES FROM {ch_settings.clickhouse_database}").result_rows
    first.close()
    assert {t for (t,) in tables} >= set(TABLES.values()) | {"feedback_funnel", "feedback_latency"}
    with pytest.raises(ValueError, match="CTLOOP_CLICKHOUSE_DATABASE"):
        connect(ch_settings.replace(clickhouse_database="x; DROP TABLE y"))


def test_chdb_path_locked_by_another_process_gives_a_clear_error(ch_settings, tmp_path):
    import subprocess
    import sys

    if not ch_settings.resolved_clickhouse_url.startswith("chdb:"):
        pytest.skip("ClickHouse server configured: no chdb lock")
    # this process holds the session's chdb path; another process opening it must be told why it cannot
    holder = connect(ch_settings)
    code = ("import sys; from infra.settings import Settings; from infra.clickhouse import connect, ClickHouseLocked\n"
            f"try:\n    connect(Settings(clickhouse_url={ch_settings.resolved_clickhouse_url!r}))\n"
            "except ClickHouseLocked as e:\n    print('LOCKED', e); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "in use by another process" in proc.stdout
    holder.close()


def test_run_stores_and_commits_until_stopped(ch_settings):
    from streams.sdk import CtloopClient

    with CtloopClient(ch_settings) as client:
        for i in range(10):
            client.log_prediction("run", {"x": float(i)}, label="a", model_version="1")
    deadline = time.monotonic() + 60
    with ClickHouseSink(ch_settings) as sink:
        sink.run(stop=lambda: sink.rows_inserted >= 10 or time.monotonic() > deadline, lag_every_s=0.5)
        assert sink.rows_inserted == 10
    # offsets were committed: the next sink of the group has nothing to read, nothing to skip
    with ClickHouseSink(ch_settings) as again:
        assert again.run_until_caught_up(timeout_s=60) == 0
        assert again.duplicates_skipped == 0
        assert again.client.query("SELECT count() FROM predictions WHERE deployment = 'run'").result_rows == [(10,)]


def test_the_sink_dead_letters_only_the_topics_it_owns_and_survives_oversized_records(ch_settings):
    """A bad record on predictions is the feedback join's to dead-letter (one dead letter per bad record):
    the sink skips it, as it skips a 6 MB record there; a bad record on deployments (the sink owns it) is
    dead-lettered by the sink, once."""
    from confluent_kafka import Producer

    from streams.topics import Topics

    topics = Topics.from_settings(ch_settings)
    raw = Producer({"bootstrap.servers": ch_settings.bootstrap_servers, "message.max.bytes": 10_000_000})
    raw.produce(topics.predictions, b"not an event", b"p")
    raw.produce(topics.predictions, b"\x00" + b"g" * 6_000_000, b"big")
    raw.produce(topics.deployments, b"not an event either", b"d")
    assert raw.flush(30) == 0
    with ClickHouseSink(ch_settings) as sink:
        sink.run_until_caught_up(timeout_s=60)
        dead = sink.client.query(f"SELECT component, error_type, source_topic FROM "
                                 f"{ch_settings.clickhouse_database}.dead_letters").result_rows
        assert sink.consumer.skipped == 2
    assert dead == [("clickhouse-sink", "undecodable", topics.deployments)]


def test_every_top_level_event_field_has_a_column(ch_settings):
    """A field added to an event schema (with its Avro default) also gets its column (infra/sql/), or the
    sink would silently drop it: decisions' expected_champion/forced, triggers' idempotency_key..."""
    from infra.clickhouse import table_columns

    client = connect(ch_settings)
    try:
        missing = {}
        for event_type, table in TABLES.items():
            columns = set(table_columns(client, ch_settings.clickhouse_database, table))
            if "settings_json" in columns:   # the whole event is kept as JSON (deployment_configs)
                continue
            fields = set(ev.default_catalog()[event_type].field_names)
            flattened = {"lineage", "snapshot", "features"}  # stored as derived columns (infra/clickhouse_sink.py)
            lost = sorted(fields - columns - flattened)
            if lost:
                missing[table] = lost
    finally:
        client.close()
    assert not missing, f"event fields without a column (add them in infra/sql/): {missing}"
