"""`ctloop status` shows the feedback-loop counters: the latest FeedbackLoopStats of the deployment,
latest by offset in its key partition of feedback-stats (never by the producer's clock). Over the
embedded broker (or whatever Kafka conftest provides)."""
from __future__ import annotations

import json

from click.testing import CliRunner
from confluent_kafka import Producer

from infra.commands.serving import _format_status, deployment_status
from processors.latest_stats import key_partition, latest_feedback_stats
from streams import catalog as ev
from streams.producer import EventProducer
from streams.serde import Serde, new_event


def stats(deployment: str, *, added: int, since: int, threshold: int = 10, event_time: int | None = None) -> dict:
    record = new_event(ev.FEEDBACK_LOOP_STATS, deployment=deployment, predictions_logged=100 + added,
                       feedback_received=added + 3, reviewed=added + 1, added_to_training=added,
                       reviewed_since_last_training=since, trigger_threshold=threshold,
                       progress=min(1.0, since / threshold) if threshold else 0.0, feedback_dead_lettered=2)
    if event_time is not None:
        record["event_time"] = event_time
    return record


def test_latest_stats_is_the_highest_offset_in_the_key_partition_not_the_newest_clock(settings, topics):
    dep = "fraud"
    with EventProducer(settings) as producer:
        # the newest event_time comes first in the log: a worker with a clock ahead, then a takeover
        producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS,
                         stats(dep, added=5, since=5, event_time=2_000_000_000_000), key=dep)
        producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS,
                         stats(dep, added=7, since=7, event_time=1_000_000_000_000), key=dep)
        producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS, stats("other", added=99, since=9), key="other")
        producer.flush()
    partition = key_partition(settings, topics.feedback_stats, dep)
    # a stray, newer-looking record of the deployment on another partition is not compared with it
    stray_partition = (partition + 1) % settings.default_partitions
    raw = Producer({"bootstrap.servers": settings.bootstrap_servers})
    raw.produce(topics.feedback_stats, Serde.from_settings(settings).encode(
        ev.FEEDBACK_LOOP_STATS, stats(dep, added=50, since=50, event_time=3_000_000_000_000), topics.feedback_stats),
        key=dep.encode(), partition=stray_partition)
    assert raw.flush(10) == 0

    found = latest_feedback_stats(settings, dep)

    assert found["partition"] == partition
    assert found["stats"]["added_to_training"] == 7
    assert found["offset"] == 1
    assert found["other_partitions"] == [stray_partition]

    status = deployment_status(settings, dep)
    loop = status["feedback_loop"]
    assert (loop["predictions_logged"], loop["feedback_received"], loop["reviewed"], loop["added_to_training"],
            loop["reviewed_since_last_training"], loop["trigger_threshold"]) == (107, 10, 8, 7, 7, 10)
    assert loop["progress"] == 0.7
    table = _format_status(status)
    assert "logged 107, feedback 10, reviewed 8, added to training 7, dead-lettered 2" in table
    assert "threshold progress 7/10 (70%) to the next training" in table


def test_status_cli_json_and_table_carry_the_counters(settings, topics, monkeypatch):
    from infra.cli import cli

    with EventProducer(settings) as producer:
        producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS, stats("churn", added=3, since=3, threshold=0),
                         key="churn")
        producer.flush()
    for k, v in {"CTLOOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "CTLOOP_TOPIC_PREFIX": settings.topic_prefix,
                 "CTLOOP_DATA_DIR": settings.data_dir}.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    as_json = runner.invoke(cli, ["status", "churn", "--json"], catch_exceptions=False)
    assert as_json.exit_code == 0, as_json.output
    loop = json.loads(as_json.output)["feedback_loop"]
    assert (loop["added_to_training"], loop["trigger_threshold"], loop["progress"]) == (3, 0, 0.0)

    table = runner.invoke(cli, ["status", "churn"], catch_exceptions=False)
    assert "threshold progress 3 since the last training (no threshold)" in table.output

    none_yet = runner.invoke(cli, ["status", "nobody"], catch_exceptions=False)
    assert "feedback loop  (no feedback-stats yet)" in none_yet.output


def test_a_manual_trigger_takes_its_evidence_from_the_latest_stats_by_offset(settings, topics):
    """`ctloop trigger` restarts reviewed_since_last_training from the deployment's latest stats: the last
    in its key partition, not the one with the newest clock (here the first, from a clock ahead)."""
    from processors.snapshot import publish_manual_trigger
    from streams.deployments import DeploymentSettingsClient

    dep = "manual-fraud"
    with EventProducer(settings) as producer:
        DeploymentSettingsClient(settings, producer=producer).setup_feedback_loop(dep, model_name="m")
        producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS,
                         stats(dep, added=7, since=7, event_time=2_000_000_000_000), key=dep)
        producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS,
                         stats(dep, added=7, since=7, event_time=1_000_000_000_000) | {"reviewed": 30}, key=dep)
        producer.flush()
    record = publish_manual_trigger(settings, dep, requested_by="ops")
    assert record["reason"] == "manual"
    assert record["evidence"]["added_to_training"] == "7"
    assert record["evidence"]["reviewed"] == "30"   # the later record in the log, whatever its clock says
