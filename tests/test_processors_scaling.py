"""Several processor workers in one consumer group publish what one worker publishes.

Per-deployment aggregation happens on the deployment's owner (processors/ownership.py): partial
counts, drift inputs and performance pairs are re-keyed by deployment to internal topics; triggers are
decided by the owner; timers act only for owned deployments; automatic triggers carry an idempotent
trigger_id. The scenario runs with 1, 2 and 3 workers over the embedded broker, the extra workers
joining in the middle of the stream (a rebalance), and asserts the same final stats, the same
triggers and the same number of drift windows as the truth of the scenario.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from processors.feedback_counters import merge_partials, sum_partials
from processors.ownership import Ownership, partition_for
from processors.trigger_policy import TriggerPolicy, trigger_id_for
from streams import catalog as ev
from streams.producer import EventProducer
from streams.sdk import CtloopClient
from streams.serde import new_event
from tests.helpers.collect import Collector
from tests.helpers.processes import running_processors

STAGES = ["processors.feedback_join", "processors.drift", "processors.triggers"]


def test_partition_for_matches_the_producers_placement(settings, topics):
    for partitioner in ("consistent_random", "murmur2_random"):
        keys = [f"{partitioner}-{i}" for i in range(40)]
        s = settings.replace(producer_partitioner=partitioner)
        with EventProducer(s) as producer, Collector(s, topics.feedback_stats) as out:
            for k in keys:
                producer.produce(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS, new_event(
                    ev.FEEDBACK_LOOP_STATS, deployment=k, predictions_logged=0, feedback_received=0, reviewed=0,
                    added_to_training=0, reviewed_since_last_training=0, trigger_threshold=0, progress=0.0,
                    feedback_dead_lettered=0), key=k)
            producer.flush()
            mine = lambda c: {e.value["deployment"]: e.partition for e in c.of(ev.FEEDBACK_LOOP_STATS)  # noqa: E731
                              if e.value["deployment"] in keys}
            placed = out.wait(lambda c: len(mine(c)) == len(keys) and mine(c), 30, f"{len(keys)} stats ({partitioner})")
        assert placed == {k: partition_for(k, 4, partitioner) for k in keys}, partitioner
        assert len(set(placed.values())) > 1
    with pytest.raises(ValueError, match="producer_partitioner"):
        partition_for("d", 4, "random")


def test_ownership_is_the_assignment_of_the_deployments_partition():
    p = partition_for("d", 4)
    owner = Ownership(lambda: [("t", p), ("other", (p + 1) % 4)], "t", 4, "consistent_random")
    assert owner.owns("d")
    assert not Ownership(lambda: [("t", (p + 1) % 4)], "t", 4, "consistent_random").owns("d")


def test_partials_keep_the_record_covering_the_most_so_replays_and_duplicates_are_harmless():
    base = {"predictions_logged": 0, "feedback_received": 0, "reviewed": 0, "added_to_training": 0,
            "feedback_dead_lettered": 0}
    current: dict = {}
    r1 = {**base, "off": 10, "predictions_logged": 11}
    r2 = {**base, "off": 20, "predictions_logged": 21}
    assert merge_partials(current, {"d|predictions|0": r2})
    assert not merge_partials(current, {"d|predictions|0": r1})   # an older (replayed) partial
    assert not merge_partials(current, {"d|predictions|0": r2})   # a duplicate
    assert merge_partials(current, {"d|feedback|1": {**base, "off": 3, "reviewed": 2, "added_to_training": 2},
                                    "d|expired|1": {**base, "off": -1, "feedback_dead_lettered": 1}})
    assert merge_partials(current, {"d|expired|1": {**base, "off": -1, "feedback_dead_lettered": 2}})
    assert sum_partials(current) == {**base, "predictions_logged": 21, "reviewed": 2, "added_to_training": 2,
                                     "feedback_dead_lettered": 2}
    with pytest.raises(ValueError, match="d\\|feedback\\|2"):
        merge_partials(current, {"d|feedback|2": {"reviewed": 1}})


def test_idempotency_key_is_the_same_for_the_same_decision_on_any_worker():
    a, b = TriggerPolicy(100), TriggerPolicy(100)
    assert a.idempotency_key("d", "schedule") == b.idempotency_key("d", "schedule") == "d|schedule|after=none"
    for p in (a, b):
        p.on_trigger({"deployment": "d", "trigger_id": "t1", "event_time": 5, "evidence": {}})
    key = a.idempotency_key("d", "review_threshold")
    assert key == b.idempotency_key("d", "review_threshold") == "d|review_threshold|after=t1"
    assert trigger_id_for(key) == trigger_id_for(b.idempotency_key("d", "review_threshold"))
    assert trigger_id_for(key) != trigger_id_for(a.idempotency_key("d", "drift"))
    a.reserve("d", trigger_id_for(key), 10, 50)                 # the next decision follows the new trigger
    assert a.idempotency_key("d", "review_threshold") == f"d|review_threshold|after={trigger_id_for(key)}"


THRESHOLD, PHASES, EXTRA, PREDICTIONS, WINDOW = 40, 3, 7, 600, 100


def _triggers(c, dep):
    return [e.value for e in c.of(ev.TRAINING_TRIGGERED, deployment=dep)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_n_workers_publish_the_same_stats_and_triggers_as_one(settings, topics, workers):
    settings = settings.replace(drift_window_size=WINDOW, stats_min_interval_s=0.1)
    dep, sched = "scale-dep", "scale-sched"
    rng = np.random.default_rng(3)
    with contextlib.ExitStack() as stack:
        stack.enter_context(running_processors(settings, stages=STAGES, timeout_s=60))
        client = stack.enter_context(CtloopClient(settings))
        out = stack.enter_context(Collector(settings, topics.triggers, topics.feedback_stats, topics.drift))
        client.setup_feedback_loop(dep, model_name="m")
        client.setup_continuous_training(dep, trigger_threshold=THRESHOLD, cooldown_seconds=0)
        client.setup_continuous_training(sched, schedule="1s", cooldown_seconds=0)
        pids = [client.log_prediction(dep, {"x": float(rng.normal()), "y": float(rng.normal())}, label="a",
                                      model_version="1") for _ in range(PREDICTIONS)]
        client.flush()
        fed = 0
        for phase in range(PHASES):
            batch = pids[fed:fed + THRESHOLD]
            for pid in batch[:THRESHOLD // 2]:
                client.log_feedback(pid, dep, label="a")
            client.flush()
            if 0 < phase < workers:              # another worker joins in the middle of the stream
                stack.enter_context(running_processors(settings, stages=STAGES, timeout_s=60))
            for pid in batch[THRESHOLD // 2:]:
                client.log_feedback(pid, dep, label="b")
                client.log_feedback(pid, dep, label="b")     # a duplicate: counted as received, once as reviewed
            client.flush()
            fed += THRESHOLD
            trig = out.wait(lambda c: len(_triggers(c, dep)) > phase and _triggers(c, dep)[phase], 60,
                            f"review trigger {phase + 1}")
            assert trig["reason"] == "review_threshold" and int(trig["evidence"]["added_to_training"]) == fed
            with EventProducer(settings) as producer:    # the run finishes: the next crossing may fire
                producer.produce(topics.model_lifecycle, ev.TRAINING_RUN_FAILED, new_event(
                    ev.TRAINING_RUN_FAILED, run_id=trig["trigger_id"], trigger_id=trig["trigger_id"], deployment=dep,
                    reason="test", error_type="exception"), key=dep)
        for pid in pids[fed:fed + EXTRA]:
            client.log_feedback(pid, dep, label="a")
        client.flush()
        added = fed + EXTRA
        received = PHASES * (THRESHOLD + THRESHOLD // 2) + EXTRA

        def final(c):
            stats = c.of(ev.FEEDBACK_LOOP_STATS, deployment=dep)
            return stats and stats[-1].value["added_to_training"] == added and stats[-1].value
        stats = out.wait(final, 60, f"stats with {added} added")
        windows = out.wait(lambda c: len(c.of(ev.DRIFT_MEASURED, deployment=dep)) >= PREDICTIONS // WINDOW - 1
                           and c.of(ev.DRIFT_MEASURED, deployment=dep), 60, "every drift window")
        scheduled = out.wait(lambda c: _triggers(c, sched), 30, "the schedule trigger")
        out.wait(lambda c: c.of(ev.FEEDBACK_LOOP_STATS, deployment=dep)[-1].value["reviewed_since_last_training"]
                 == EXTRA, 30, "stats after the last trigger")
    assert {k: stats[k] for k in ("predictions_logged", "feedback_received", "reviewed", "added_to_training",
                                  "feedback_dead_lettered")} == {
        "predictions_logged": PREDICTIONS, "feedback_received": received, "reviewed": added,
        "added_to_training": added, "feedback_dead_lettered": 0}
    last = out.of(ev.FEEDBACK_LOOP_STATS, deployment=dep)[-1].value
    assert last["reviewed_since_last_training"] == EXTRA and last["added_to_training"] == added
    triggers = _triggers(out, dep)
    assert [t["reason"] for t in triggers] == ["review_threshold"] * PHASES
    assert len({t["trigger_id"] for t in triggers}) == PHASES
    previous = "none"                          # each trigger's idempotency key names the one before it
    for t in triggers:
        assert t["idempotency_key"] == f"{dep}|review_threshold|after={previous}"
        assert t["trigger_id"] == trigger_id_for(t["idempotency_key"])
        previous = t["trigger_id"]
    assert [t["reason"] for t in _triggers(out, sched)] == ["schedule"] == [t["reason"] for t in scheduled]
    assert len(out.of(ev.DRIFT_MEASURED, deployment=dep)) == len(windows) == PREDICTIONS // WINDOW - 1


def test_rows_of_revoked_partitions_are_forgotten_without_changelog_writes():
    from processors.ownership import forget_unassigned

    state = {"p1": {"pt": 0}, "p2": {"pt": 3}, "p3": {"pt": 1}, "odd": "not a row"}
    assert forget_unassigned(state, {0, 1}, lambda _k, v: v.get("pt") if isinstance(v, dict) else None) == 1
    assert set(state) == {"p1", "p3", "odd"}
    counts = {"d|predictions|0": {}, "d|feedback|2": {}, "d|expired|2": {}}
    assert forget_unassigned(counts, {0}, lambda k, _v: int(k.rsplit("|", 1)[1])) == 2
    assert set(counts) == {"d|predictions|0"}


def test_changed_records_are_drained_per_deployment_and_a_replay_sends_its_record_again():
    from processors.feedback_counters import FeedbackCounters

    c = FeedbackCounters()
    c.count("d", "predictions", 0, 5, predictions_logged=1)
    c.count("e", "feedback", 1, 2, feedback_received=1)
    drained = c.drain_touched()
    assert set(drained) == {"d", "e"} and drained["d"]["d|predictions|0"]["off"] == 5
    assert c.drain_touched() == {}
    # a replay after a crash counts nothing but re-sends the record: the partial may have been lost
    assert not c.count("d", "predictions", 0, 5, predictions_logged=1)
    assert c.drain_touched() == {"d": {"d|predictions|0": {**drained["d"]["d|predictions|0"]}}}
