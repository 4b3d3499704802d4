"""`ctloop dead-letters replay` over the embedded broker: filters, dry run, the original bytes back on
the source topic with the original key, a ledger so a dead letter is replayed once, truncated values
never sent."""
from __future__ import annotations

import json

from click.testing import CliRunner

from infra.cli import cli
from streams import catalog as ev
from streams.dead_letter_replay import ledger_topic, read_ledger, replay_dead_letters
from streams.dead_letters import publish_dead_letter
from streams.producer import EventProducer
from streams.serde import Serde, new_event
from tests.helpers.collect import Collector
from tests.helpers.processes import settings_env


def _admin(settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def _feedback(pid: str, label: str = "a") -> dict:
    return new_event(ev.FEEDBACK_RECEIVED, prediction_id=pid, deployment="d", feedback_type="label", kind="explicit",
                     label=label)


def test_replay_filters_dry_run_ledger_and_truncated(settings, topics):
    serde = Serde.from_settings(settings)
    fb1 = serde.encode(ev.FEEDBACK_RECEIVED, _feedback("p1"), topics.feedback)
    fb2 = serde.encode(ev.FEEDBACK_RECEIVED, _feedback("p2"), topics.feedback)
    with EventProducer(settings) as producer:
        for offset, (key, value, etype) in enumerate([("p1", fb1, "processing_error"), ("p2", fb2, "unmatched_feedback"),
                                                      ("p3", b"junk", "undecodable")]):
            publish_dead_letter(producer, topics, topic=topics.feedback, partition=0, offset=10 + offset, key=key,
                                value=value, reason="test", error_type=etype, component="test")
        publish_dead_letter(producer, topics, topic=topics.predictions, partition=1, offset=5, key="x", value=b"p",
                            reason="test", error_type="processing_error", component="test")
        # a value over the limit: truncated in its dead letter, so it cannot be replayed
        publish_dead_letter(producer, topics, topic=topics.feedback, partition=0, offset=20, key="big",
                            value=b"b" * 1_200_000, reason="test", error_type="undecodable", component="test")
        producer.flush()

    dry = replay_dead_letters(settings, source_topic="feedback", error_types=["processing_error", "unmatched_feedback"],
                              dry_run=True)
    assert [i["source"][2] for i in dry.replayed] == [10, 11] and dry.dry_run
    assert read_ledger(settings) == {}
    assert ledger_topic(settings) not in _admin(settings).list_topics(timeout=10).topics   # a dry run writes nothing

    ranged = replay_dead_letters(settings, source_topic="feedback", from_offset=11, to_offset=20, dry_run=True)
    assert [i["source"][2] for i in ranged.replayed] == [11, 12]
    assert [(i["source"][2], i["why"]) for i in ranged.not_replayable] == [(20, "value truncated in the dead letter")]

    runner = CliRunner()
    env = settings_env(settings)
    result = runner.invoke(cli, ["dead-letters", "replay", "--source-topic", "feedback", "--error-type", "processing_error",
                                 "--error-type", "unmatched_feedback", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert [i["source"][2] for i in report["replayed"]] == [10, 11]
    with Collector(settings, topics.feedback) as out:
        replayed = out.wait(lambda c: len(c.raw) >= 2 and c.raw, 30, "two replayed records")
        assert sorted((m.key(), m.value()) for m in replayed) == [(b"p1", fb1), (b"p2", fb2)]
        assert {dict(m.headers())["ctloop-replay-of"].decode() for m in replayed} == \
            {"%d:%d" % tuple(i["dead_letter"]) for i in report["replayed"]}
    assert len(read_ledger(settings)) == 2

    # again: nothing is replayed twice
    again = replay_dead_letters(settings, source_topic="feedback")
    assert [i["source"][2] for i in again.replayed] == [12]                 # the undecodable one, not filtered
    assert sorted(i["source"][2] for i in again.already_replayed) == [10, 11]
    result = runner.invoke(cli, ["dead-letters", "replay", "--source-topic", "feedback"], env=env)
    assert result.exit_code == 0 and "0 replayed, 3 replayed before (skipped), 1 not replayable" in result.output


def test_a_replayed_unmatched_feedback_is_joined_once_its_prediction_exists(settings, topics):
    """The operator's loop: feedback dead-lettered as unmatched_feedback (its prediction came after the park
    TTL); once the prediction is there, replaying the dead letter joins it."""
    from streams.sdk import CtloopClient
    from tests.helpers.processes import running_processors

    settings = settings.replace(feedback_park_ttl_s=0.5, join_sweep_interval_s=0.2)
    with CtloopClient(settings) as client:
        client.setup_feedback_loop("d", model_name="m")
    with running_processors(settings, stages=["processors.feedback_join"], timeout_s=60), \
            CtloopClient(settings) as client, Collector(settings, topics.dead_letters, topics.labeled_examples) as out:
        pid = "late-prediction"
        client.log_feedback(pid, "d", label="b")
        client.flush()
        out.wait(lambda c: c.of(ev.DEAD_LETTER, error_type="unmatched_feedback"), 30, "the unmatched feedback")
        client.log_prediction("d", {"x": 1.0}, label="a", model_version="1", prediction_id=pid)   # the fix
        client.flush()
        report = replay_dead_letters(settings, error_types=["unmatched_feedback"])
        assert [i["source"][0] for i in report.replayed] == [topics.feedback]
        (example,) = out.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id=pid), 30, "the replayed feedback joined")
        assert example.value["label"] == "b"
        assert replay_dead_letters(settings, error_types=["unmatched_feedback"]).replayed == []
