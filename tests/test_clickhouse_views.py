"""Each analytics view answers correctly on a known scenario published on Kafka and sunk into ClickHouse."""
from __future__ import annotations

import pytest

from infra.clickhouse_sink import ClickHouseSink
from tests.clickhouse_scenario import publish_scenario, scenario_settings


@pytest.fixture(scope="module")
def loaded(kafka_bootstrap, clickhouse_url, tmp_path_factory):
    """One scenario, sunk once, shared by the view tests of this module (read-only)."""
    settings = scenario_settings(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("views"), "v")
    scenario = publish_scenario(settings)
    with ClickHouseSink(settings) as sink:
        sink.run_until_caught_up(timeout_s=60)
        yield settings, scenario, sink.client


def q(client, sql, **params):
    return client.query(sql, parameters=params).result_rows


def test_feedback_funnel_per_deployment(loaded):
    _, _, client = loaded
    rows = q(client, "SELECT deployment, logged, reviewed, added_to_training, trained_on FROM feedback_funnel "
                     "ORDER BY deployment")
    # fraud: 20 primary predictions (shadows excluded), 12 reviewed (p10 twice counts once), 10 labeled,
    # all 10 inside some model's lineage; churn: its 2 labeled examples were never trained on
    assert rows == [("churn", 3, 1, 2, 0), ("fraud", 20, 12, 10, 10)]


def test_which_events_trained_which_model_version(loaded):
    _, sc, client = loaded
    rows = q(client, "SELECT model_version, groupArray(toString(prediction_id)) FROM model_training_examples "
                     "WHERE deployment = 'fraud' GROUP BY model_version ORDER BY model_version")
    assert [r[0] for r in rows] == ["2", "3"]
    assert sorted(rows[0][1]) == sorted(sc.predictions[:6])
    assert sorted(rows[1][1]) == sorted(sc.predictions[:10])
    # the churn examples inside the same offset ranges belong to no fraud model
    assert q(client, "SELECT count() FROM model_training_examples WHERE deployment = 'churn'") == [(0,)]
    lineage = q(client, "SELECT partition, start_offset, end_offset FROM model_lineage "
                        "WHERE model_version = '3' ORDER BY partition")
    assert lineage == [(p["partition"], 0, p["end_offset"]) for p in sc.snapshot2]


def test_feedback_loop_latency(loaded):
    _, sc, client = loaded
    rows = q(client, "SELECT toString(prediction_id), first_model_version, latency_s FROM feedback_latency "
                     "WHERE deployment = 'fraud'")
    got = {pid: (version, latency) for pid, version, latency in rows}
    assert len(got) == 10
    for i, pid in enumerate(sc.predictions[:10]):
        version = "2" if i < 6 else "3"
        expected = (sc.registered_at[version] - sc.feedback_time[pid]) / 1000
        assert got[pid] == (version, pytest.approx(expected)), i


def test_drift_over_time(loaded):
    _, sc, client = loaded
    rows = q(client, "SELECT toUnixTimestamp64Milli(window_end), drift_detected, drift_share, drifted_features "
                     "FROM drift_over_time WHERE deployment = 'fraud' ORDER BY window_end")
    assert rows == [(sc.t0 + 5 * 60_000, False, 0.0, []), (sc.t0 + 10 * 60_000, False, 0.0, []),
                    (sc.t0 + 15 * 60_000, True, 1.0, ["x"])]


def test_model_comparison_over_time(loaded):
    _, _, client = loaded
    rows = q(client, "SELECT kind, primary_version, shadow_version, primary_accuracy, shadow_accuracy "
                     "FROM model_comparison WHERE deployment = 'fraud' ORDER BY event_time")
    assert rows == [
        ("shadow_comparison", "1", "2", 0.70, 0.80),
        ("shadow_comparison", "1", "2", 0.72, 0.85),
        ("promoted", "1", "2", None, None),
        ("rejected_evaluation", "2", "3", 0.8, 0.6),
        ("rolled_back", "2", "1", None, None),
    ]


def test_accuracy_over_time(loaded):
    _, _, client = loaded
    rows = q(client, "SELECT sum(labeled), round(sum(accuracy * labeled) / sum(labeled), 6) FROM accuracy_over_time "
                     "WHERE deployment = 'fraud'")
    # labeled examples p0..p9 are correct unless i % 3 == 0 (i = 0, 3, 6, 9)
    assert rows == [(10, 0.6)]


def _ctloop(settings, *args):
    from click.testing import CliRunner

    from infra.cli import cli

    env = {"CTLOOP_CLICKHOUSE_URL": settings.resolved_clickhouse_url,
           "CTLOOP_CLICKHOUSE_DATABASE": settings.clickhouse_database, "CTLOOP_DATA_DIR": settings.data_dir}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_ctloop_sql_prints_table_csv_and_json(loaded):
    import json

    settings, _, _ = loaded
    query = "SELECT deployment, logged, reviewed FROM feedback_funnel ORDER BY deployment"
    result = _ctloop(settings, "sql", query, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"deployment": "churn", "logged": 3, "reviewed": 1},
                                         {"deployment": "fraud", "logged": 20, "reviewed": 12}]
    result = _ctloop(settings, "sql", query, "--format", "csv")
    assert result.output.splitlines() == ["deployment,logged,reviewed", "churn,3,1", "fraud,20,12"]
    result = _ctloop(settings, "sql", query)
    lines = result.output.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["deployment", "logged", "reviewed"]
    assert lines[1].index("+") == lines[0].index("|")
    assert lines[2].split() == ["churn", "|", "3", "|", "1"] and lines[-1] == "(2 rows)"


def test_ctloop_sql_reports_a_bad_query(loaded):
    settings, _, _ = loaded
    result = _ctloop(settings, "sql", "SELECT * FROM no_such_table")
    assert result.exit_code == 1
    assert "query failed" in result.output and "no_such_table" in result.output
