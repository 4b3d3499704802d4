"""`ctloop dead-letters replay` over the embedded broker: filters, dry run, the original bytes back on
the source topic with the original key, a ledger so a dead letter is replayed once (also by two replays
at the same time: claims), a crashed replay's claims taken over with --reclaim-after, dead letters of
replayed records skipped unless --again, truncated values never sent."""
from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

from infra.cli import cli
from streams import catalog as ev
from streams import dead_letter_replay
from streams.dead_letter_replay import (REPLAY_HEADER, ensure_ledger_topic, ledger_topic, read_ledger, read_ledger_state,
                                        replay_dead_letters)
from streams.dead_letters import publish_dead_letter, replay_of_header
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


@pytest.mark.slow
def test_a_replayed_unmatched_feedback_is_joined_once_its_prediction_exists(settings, topics):
    """The operator's loop: feedback dead-lettered as unmatched_feedback (its prediction came after the park
    TTL). Replayed before the fix, it is dead-lettered again, and that dead letter is skipped by the next
    replay (no endless loop); once the prediction is there, replaying it with ``again`` joins it."""
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
        # replayed before the fix: dead-lettered again; the next replay skips that one (no endless loop)
        early = replay_dead_letters(settings, error_types=["unmatched_feedback"])
        assert len(early.replayed) == 1
        out.wait(lambda c: len(c.of(ev.DEAD_LETTER, error_type="unmatched_feedback")) >= 2, 30,
                 "the replayed feedback dead-lettered again")
        skipped = replay_dead_letters(settings, error_types=["unmatched_feedback"])
        assert skipped.replayed == [] and len(skipped.already_replayed) == 1
        assert [i["replay_of"] for i in skipped.of_replayed] == ["%d:%d" % tuple(early.replayed[0]["dead_letter"])]
        client.log_prediction("d", {"x": 1.0}, label="a", model_version="1", prediction_id=pid)   # the fix
        client.flush()
        report = replay_dead_letters(settings, error_types=["unmatched_feedback"], again=True)
        assert [i["source"][0] for i in report.replayed] == [topics.feedback]
        (example,) = out.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id=pid), 30, "the replayed feedback joined")
        assert example.value["label"] == "b"
        assert replay_dead_letters(settings, error_types=["unmatched_feedback"], again=True).replayed == []


def _dead_letter_feedback(settings, topics, n: int) -> list[bytes]:
    serde = Serde.from_settings(settings)
    values = [serde.encode(ev.FEEDBACK_RECEIVED, _feedback(f"p{i}"), topics.feedback) for i in range(n)]
    with EventProducer(settings) as producer:
        for i, value in enumerate(values):
            publish_dead_letter(producer, topics, topic=topics.feedback, partition=0, offset=100 + i, key=f"p{i}",
                                value=value, reason="test", error_type="processing_error", component="test")
    return values


def _replays_on(settings, topic: str) -> list:
    """The records on ``topic`` now that carry ctloop-replay-of (a replay returns once they are flushed)."""
    from streams.consumer import read_messages_to_end

    return [m for m in read_messages_to_end(settings, topic, timeout_s=30) if replay_of_header(m.headers())]


def test_two_replays_at_the_same_time_inject_each_dead_letter_once(settings, topics, monkeypatch):
    values = _dead_letter_feedback(settings, topics, 5)
    # both runs read the (empty) ledger before either claims anything: the race of the reviewer's script
    barrier = threading.Barrier(2, timeout=60)
    real_ensure = dead_letter_replay.ensure_ledger_topic

    def ensure_after_both_read(*args, **kwargs):
        barrier.wait()
        return real_ensure(*args, **kwargs)

    monkeypatch.setattr(dead_letter_replay, "ensure_ledger_topic", ensure_after_both_read)
    reports, errors = [None, None], []

    def run(i):
        try:
            reports[i] = replay_dead_letters(settings, source_topic="feedback", requested_by=f"op{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    a, b = reports
    replayed = [tuple(i["dead_letter"]) for r in reports for i in r.replayed]
    assert sorted(replayed) == sorted(set(replayed)) and len(replayed) == 5      # each once, by one run or the other
    # what a run did not replay, it lists as claimed by the other run
    assert {tuple(i["dead_letter"]) for i in a.claimed} == {tuple(i["dead_letter"]) for i in b.replayed}
    assert {tuple(i["dead_letter"]) for i in b.claimed} == {tuple(i["dead_letter"]) for i in a.replayed}
    assert all(i["claimed_by_run"] == b.run for i in a.claimed) and all(i["claimed_by_run"] == a.run for i in b.claimed)
    injected = _replays_on(settings, topics.feedback)
    assert sorted(m.value() for m in injected) == sorted(values)                 # exactly once each
    assert len(read_ledger(settings)) == 5
    again = replay_dead_letters(settings, source_topic="feedback")
    assert again.replayed == [] and len(again.already_replayed) == 5 and again.claimed == []


def _claim(settings, ledger_key: str, run: str, over, age_s: float) -> None:
    ensure_ledger_topic(settings)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": settings.bootstrap_servers})
    claim = {"claim": ledger_key, "run": run, "over": over, "time_ms": int((time.time() - age_s) * 1000), "by": "x"}
    p.produce(ledger_topic(settings), json.dumps(claim).encode(), f"claim:{ledger_key}:{run}".encode())
    assert p.flush(10) == 0


def test_a_crashed_replays_claim_is_listed_then_taken_over_with_reclaim_after(settings, topics):
    values = _dead_letter_feedback(settings, topics, 2)
    dls = replay_dead_letters(settings, dry_run=True).replayed
    crashed_key = "%d:%d" % tuple(dls[0]["dead_letter"])
    _claim(settings, crashed_key, "crashed", None, age_s=600)   # claimed, then the run died before replaying
    report = replay_dead_letters(settings)
    assert [i["dead_letter"] for i in report.replayed] == [dls[1]["dead_letter"]]
    assert [(i["dead_letter"], i["claimed_by_run"]) for i in report.claimed] == [(dls[0]["dead_letter"], "crashed")]

    env = settings_env(settings)
    result = CliRunner().invoke(cli, ["dead-letters", "replay"], env=env)
    assert result.exit_code == 0, result.output
    assert "claimed, not replayed: dead-letters" in result.output and "run crashed" in result.output
    assert "0 replayed, 1 replayed before (skipped), 0 not replayable, 1 claimed by another run" in result.output
    # too young to take over: still listed
    assert len(replay_dead_letters(settings, reclaim_after_s=3600).claimed) == 1
    result = CliRunner().invoke(cli, ["dead-letters", "replay", "--reclaim-after", "60"], env=env)
    assert result.exit_code == 0 and "1 replayed, 1 replayed before" in result.output, result.output
    injected = _replays_on(settings, topics.feedback)
    assert sorted(m.value() for m in injected) == sorted(values)
    assert crashed_key in read_ledger(settings)


def test_of_two_takeovers_of_one_claim_the_first_wins(settings, topics):
    _claim(settings, "0:7", "r0", None, age_s=600)
    _claim(settings, "0:7", "late-fresh", None, age_s=0)         # a fresh claim after the first: loses
    first = read_ledger_state(settings).winners["0:7"]
    assert first["run"] == "r0"
    _claim(settings, "0:7", "r1", first["offset"], age_s=0)      # two runs take over r0's stale claim
    _claim(settings, "0:7", "r2", first["offset"], age_s=0)
    assert read_ledger_state(settings).winners["0:7"]["run"] == "r1"


def test_a_dead_letter_of_a_replayed_record_is_skipped_unless_again(settings, topics):
    values = _dead_letter_feedback(settings, topics, 2)
    first = replay_dead_letters(settings)
    assert len(first.replayed) == 2
    injected = _replays_on(settings, topics.feedback)
    # the cause was not fixed: the component dead-letters both replayed records again; one keeps the
    # replayed record's header (a raw-record reader), the other not (found by its source position)
    with EventProducer(settings) as producer:
        for msg, keep_header in zip(sorted(injected, key=lambda m: m.key()), (True, False)):
            publish_dead_letter(producer, topics, topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                                key=msg.key(), value=msg.value(), reason="still failing", error_type="processing_error",
                                component="test", replay_of=replay_of_header(msg.headers()) if keep_header else None)
    dead_letters = dead_letter_replay.read_dead_letters(settings)
    assert sum(d.headers.get(REPLAY_HEADER) is not None for d in dead_letters) == 1
    report = replay_dead_letters(settings)
    assert report.replayed == [] and len(report.already_replayed) == 2
    firsts = {"%d:%d" % tuple(i["dead_letter"]) for i in first.replayed}
    assert len(report.of_replayed) == 2 and {i["replay_of"] for i in report.of_replayed} == firsts
    result = CliRunner().invoke(cli, ["dead-letters", "replay"], env=settings_env(settings))
    assert "2 of replayed records (skipped)" in result.output and "--again to replay it" in result.output, result.output
    again = replay_dead_letters(settings, again=True)
    assert len(again.replayed) == 2 and again.of_replayed == []
    assert sorted(m.value() for m in _replays_on(settings, topics.feedback)) == sorted(values * 2)
