"""Triggers on the real broker with a real worker subprocess: the review threshold fires exactly
once (one outstanding trigger per deployment), again only after the run finished; a stationary
stream gives no drift trigger and a mean shift at a known event gives one within a bounded number
of events; a manual trigger via `ctloop trigger`; plus the policy logic without Kafka."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from processors.performance import PerformanceTracker
from processors.trigger_policy import TriggerPolicy
from streams import catalog as ev
from streams.producer import EventProducer
from streams.sdk import CtloopClient
from streams.serde import new_event
from tests.helpers.collect import Collector
from tests.helpers.processes import running_processors, settings_env

STAGES = ["processors.feedback_join", "processors.drift", "processors.triggers"]


def test_policy_outstanding_cooldown_and_baseline():
    p = TriggerPolicy(trigger_timeout_s=100)
    s = {"trigger_threshold": 10}
    assert p.review("d", {"added_to_training": 9, "reviewed": 9}, s) is None
    assert p.review("d", {"added_to_training": 10, "reviewed": 10}, s)["reviewed_since_last_training"] == 10
    assert p.blocked("d", cooldown_s=5, now_ms=1000) is None
    p.reserve("d", "t1", 1000, added_to_training=10)
    assert p.blocked("d", 5, 2000) == "outstanding"
    assert p.review("d", {"added_to_training": 15, "reviewed": 15}, s) is None   # baseline moved to 10
    p.on_run_done("d", "t1")
    assert p.blocked("d", 5, 2000) == "cooldown" and p.blocked("d", 5, 7000) is None
    p.reserve("d", "t2", 10_000, None)
    assert p.blocked("d", 0, 10_000 + 100_001) is None                        # outstanding timed out


def test_policy_takes_other_processes_times_as_at_most_its_own_now():
    """A trigger written by a process whose clock runs 10 minutes ahead (another worker, `ctloop trigger`)
    holds automatic triggers for the cooldown from now, not for the skew too; the latest trigger is the
    latest in the log, so the next idempotency key follows it whatever the clocks say."""
    now = {"ms": 1_000_000}
    p = TriggerPolicy(trigger_timeout_s=100, clock=lambda: now["ms"])
    p.on_trigger({"deployment": "d", "trigger_id": "ahead", "event_time": now["ms"] + 600_000, "evidence": {}})
    p.on_run_done("d", "ahead")
    assert p.blocked("d", cooldown_s=5, now_ms=now["ms"] + 4_000) == "cooldown"
    assert p.blocked("d", cooldown_s=5, now_ms=now["ms"] + 5_000) is None      # not 10 min + 5 s
    now["ms"] += 10_000
    p.on_trigger({"deployment": "d", "trigger_id": "behind", "event_time": 5, "evidence": {}})  # a clock far behind
    assert p.idempotency_key("d", "drift") == "d|drift|after=behind"
    p.on_settings({"deployment": "d", "shadow_model_version": "v2", "event_time": now["ms"] + 600_000})
    cd = {"continuous_deployment_enabled": True, "shadow_model_version": "v2"}
    assert p.blocked("d", 0, now["ms"] + 100_000, cd) is None                 # held trigger_timeout_s from now


def test_policy_holds_automatic_triggers_while_a_shadow_awaits_its_decision():
    """A new challenger replaces the shadow (and the evidence gathered on it): retraining while the
    policy has not judged the shadow would, when comparisons lag, replace every shadow before its
    decision (the demo's loop never closed). Held until the shadow is cleared, or trigger_timeout_s."""
    p = TriggerPolicy(trigger_timeout_s=100)
    cd = {"deployment": "d", "continuous_deployment_enabled": True, "shadow_model_version": "v3", "event_time": 1000}
    p.on_settings(cd)
    assert p.blocked("d", 0, 2000, cd) == "shadow_undecided"
    assert p.blocked("d", 0, 2000) is None                                    # no settings given: not checked
    assert p.blocked("d", 0, 2000, {**cd, "continuous_deployment_enabled": False}) is None  # nobody decides
    later = {**cd, "promotion_threshold": 0.1, "event_time": 50_000}           # another setting: same shadow
    p.on_settings(later)
    assert p.blocked("d", 0, 100_999, later) == "shadow_undecided" and p.blocked("d", 0, 101_000, later) is None
    cleared = {**cd, "shadow_model_version": None, "event_time": 60_000}       # the policy decided
    p.on_settings(cleared)
    assert p.blocked("d", 0, 60_000, cleared) is None
    p.on_settings({**cd, "shadow_model_version": "v4", "event_time": 70_000})  # the next challenger
    assert p.blocked("d", 0, 70_001, {**cd, "shadow_model_version": "v4"}) == "shadow_undecided"


def test_performance_decay_against_champion_and_first_window():
    t = PerformanceTracker(window=10)
    t.set_champion("1", 0.9)
    for i in range(10):
        t.add("a", "a" if i < 6 else "b", "1")
    ev_ = t.decay(0.2)
    assert ev_ and ev_["baseline_source"] == "champion_validation" and ev_["rolling_accuracy"] == "0.6000"
    t.add("a", "b", "0")                         # another version's prediction: ignored
    assert len(t.pairs) == 10
    t.set_champion("2", None)                    # promotion: window and baseline restart
    for _ in range(10):
        t.add("a", "a", "2")
    assert t.baseline == 1.0 and t.baseline_source == "first_window" and t.decay(0.1) is None


def _triggers(c, dep, reason=None):
    return [e for e in c.of(ev.TRAINING_TRIGGERED, deployment=dep) if reason is None or e.value["reason"] == reason]


@pytest.mark.slow
def test_review_threshold_fires_exactly_once_until_the_run_finished(settings, topics):
    dep = "review-dep"
    with running_processors(settings, stages=STAGES, timeout_s=60), CtloopClient(settings) as client, \
            Collector(settings, topics.triggers, topics.feedback_stats) as out:
        client.setup_feedback_loop(dep, model_name="m")
        client.setup_continuous_training(dep, trigger_threshold=10, cooldown_seconds=0)
        pids = [client.log_prediction(dep, {"x": float(i)}, label="a", model_version="1") for i in range(40)]
        for pid in pids[:9]:
            client.log_feedback(pid, dep, label="a")
        client.flush()
        out.wait(lambda c: any(e.value["added_to_training"] == 9 for e in c.of(ev.FEEDBACK_LOOP_STATS)), 30, "9 added")
        assert _triggers(out, dep) == []
        for pid in pids[9:25]:                     # crosses 10, then goes on to 25
            client.log_feedback(pid, dep, label="a")
        client.flush()
        out.wait(lambda c: any(e.value["added_to_training"] == 25 for e in c.of(ev.FEEDBACK_LOOP_STATS)), 30, "25 added")
        first = out.wait(lambda c: _triggers(c, dep), 30, "a review trigger")[0].value
        assert first["reason"] == "review_threshold"
        assert int(first["evidence"]["reviewed_since_last_training"]) >= 10
        assert first["snapshot_topic"] == topics.labeled_examples
        assert sorted(p["partition"] for p in first["snapshot"]) == [0, 1, 2, 3]
        # the snapshot is taken just after the count that fired: it covers at least the counted examples,
        # and may include examples the join published in between (never more than were reviewed)
        assert int(first["evidence"]["added_to_training"]) <= sum(p["end_offset"] for p in first["snapshot"]) <= 25
        # more feedback while the trigger is outstanding: no second trigger (stats show it was seen)
        out.wait(lambda c: c.of(ev.FEEDBACK_LOOP_STATS)[-1].value["reviewed_since_last_training"]
                 == 25 - int(first["evidence"]["added_to_training"]), 30, "stats after the trigger")
        assert len(_triggers(out, dep)) == 1
        # the run finishes: the next stats crossing the threshold fires a second trigger
        with EventProducer(settings) as producer:
            producer.produce(topics.model_lifecycle, ev.TRAINING_RUN_FAILED, new_event(
                ev.TRAINING_RUN_FAILED, run_id=first["trigger_id"], trigger_id=first["trigger_id"], deployment=dep,
                reason="test", error_type="exception"), key=dep)
        for pid in pids[25:40]:
            client.log_feedback(pid, dep, label="a")
        client.flush()
        second = out.wait(lambda c: len(_triggers(c, dep)) >= 2 and _triggers(c, dep)[1], 30, "a second trigger").value
        assert int(second["evidence"]["added_to_training"]) > int(first["evidence"]["added_to_training"])
        assert len(_triggers(out, dep)) == 2

        # manual trigger through the CLI: same snapshot shape, always allowed
        from infra.cli import cli

        res = CliRunner().invoke(cli, ["trigger", dep, "--requested-by", "tester"], env=settings_env(settings, {}))
        assert res.exit_code == 0, res.output
        printed = json.loads(res.output.strip().splitlines()[-1])
        manual = out.wait(lambda c: _triggers(c, dep, "manual"), 30, "the manual trigger")[0].value
        assert manual["trigger_id"] == printed["trigger_id"] and manual["requested_by"] == "tester"
        assert sum(p["end_offset"] for p in manual["snapshot"]) == 40


@pytest.mark.slow
def test_no_drift_trigger_on_a_stationary_stream_then_one_after_a_mean_shift(settings, topics):
    """Also in this worker: a schedule trigger, and a performance-decay trigger against the champion's
    validation accuracy (other deployments). Both drift and decay deployments turn the wait for
    post-change labels off (min_post_change_labels 0): this test bounds detection itself."""
    window = 200
    settings = settings.replace(drift_window_size=window, performance_window=20)
    dep = "drift-dep"
    rng = np.random.default_rng(7)
    stationary, shifted = 2000, 3 * window
    t0 = int(time.time() * 1000) - 60_000           # event times 1 ms apart, within the SDK's bounds
    with EventProducer(settings) as producer:       # a champion with 0.9 validation accuracy
        producer.produce(topics.model_lifecycle, ev.MODEL_REGISTERED, new_event(
            ev.MODEL_REGISTERED, deployment="perf-dep", model_name="m", model_version="1", alias="champion",
            metrics={"accuracy": 0.9}, artifact_uri="file:///x", artifact_sha256="0" * 64), key="perf-dep")
    with running_processors(settings, stages=STAGES, timeout_s=60), CtloopClient(settings) as client, \
            Collector(settings, topics.triggers, topics.drift) as out:
        client.setup_continuous_training("sched-dep", schedule="1s", cooldown_seconds=0)
        client.setup_continuous_training("perf-dep", performance_decay_threshold=0.2, cooldown_seconds=0)
        client.setup_training_window("perf-dep", "since_change", min_post_change_labels=0)  # no evidence wait
        for i in range(20):                           # live accuracy 0.5: 0.4 below the champion's 0.9
            pid = client.log_prediction("perf-dep", {"x": 1.0}, label="a", model_version="1")
            client.log_feedback(pid, "perf-dep", label="a" if i % 2 else "b")
        client.setup_continuous_training(dep, drift_threshold=0.5, cooldown_seconds=0)
        client.setup_training_window(dep, "since_change", min_post_change_labels=0)   # fire on detection
        for i in range(stationary):
            client.log_prediction(dep, {"a": rng.normal(), "b": rng.normal(), "c": rng.exponential()}, label="x",
                                  model_version="1", event_time=t0 + i)
        client.flush()
        drift = out.wait(lambda c: len(c.of(ev.DRIFT_MEASURED)) >= stationary // window - 1 and c.of(ev.DRIFT_MEASURED),
                         60, "the stationary windows measured")
        assert len(drift) == stationary // window - 1               # the first window is the reference
        assert not any(d.value["drift_detected"] for d in drift)
        assert all(d.value["reference"] == "first_window" and len(d.value["features"]) == 3 for d in drift)
        assert _triggers(out, dep) == []
        shift_at = t0 + stationary                            # the known event: the first shifted one
        for i in range(shifted):
            client.log_prediction(dep, {"a": rng.normal() + 1.0, "b": rng.normal() + 1.0, "c": rng.exponential()},
                                  label="x", model_version="1", event_time=shift_at + i)
        client.flush()
        trig = out.wait(lambda c: _triggers(c, dep), 60, "a drift trigger")[0].value
        assert trig["reason"] == "drift"
        assert set(trig["evidence"]["drifting_features"].split(",")) >= {"a", "b"}
        detected_at = int(trig["evidence"]["window_end"])
        assert detected_at >= shift_at
        measured = out.wait(lambda c: len(c.of(ev.DRIFT_MEASURED)) >= (stationary + shifted) // window - 1 and
                            c.of(ev.DRIFT_MEASURED), 30, "all windows")
        # The bound is two windows, counted in the order the stage consumed events. (Not in event time: a
        # window is filled from 4 partitions read batch by batch, so the first shifted window can already
        # hold shifted events from near the end of the shift, and its window_end says little of delay.)
        first = next(i for i, d in enumerate(measured) if d.value["drift_detected"])
        assert first - (stationary // window - 1) in (0, 1), first      # the 1st or 2nd shifted window
        assert measured[first].value["window_start"] >= shift_at       # ...made of shifted events only
        assert measured[first].value["window_end"] == detected_at      # ...and the one the trigger names
        assert len(_triggers(out, dep)) == 1                          # outstanding: no storm
        sched = out.wait(lambda c: _triggers(c, "sched-dep"), 30, "a schedule trigger")
        assert [t.value["reason"] for t in sched] == ["schedule"]     # then outstanding: no second one
        perf = out.wait(lambda c: _triggers(c, "perf-dep"), 30, "a performance-decay trigger")[0].value
        assert perf["reason"] == "performance_decay"
        assert perf["evidence"]["baseline_source"] == "champion_validation"
        assert float(perf["evidence"]["rolling_accuracy"]) == 0.5 and float(perf["evidence"]["decay"]) == 0.4


def _held_back(port: int, dep: str, why: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("ctloop_triggers_held_back_total{") and f'deployment="{dep}"' in line
               and f'why="{why}"' in line)


@pytest.mark.slow
def test_automatic_triggers_wait_until_the_shadow_is_decided(settings, topics):
    """Over the broker: with continuous deployment on and a shadow set, a review-threshold crossing is
    held back ("shadow_undecided") until the shadow is cleared (the promotion stage does so when it
    decides), then fires once."""
    dep = "shadow-dep"
    with running_processors(settings, stages=STAGES, timeout_s=60) as proc, CtloopClient(settings) as client, \
            Collector(settings, topics.triggers, topics.feedback_stats) as out:
        client.setup_feedback_loop(dep, model_name="m")
        client.setup_continuous_deployment(dep, min_samples=10)
        client.set_shadow_model(dep, "2")
        client.setup_continuous_training(dep, trigger_threshold=10, cooldown_seconds=0)
        for i in range(20):
            pid = client.log_prediction(dep, {"x": float(i)}, label="a", model_version="1")
            client.log_feedback(pid, dep, label="a")
        client.flush()
        out.wait(lambda c: any(e.value["added_to_training"] == 20 for e in c.of(ev.FEEDBACK_LOOP_STATS, deployment=dep)),
                 30, "20 added")
        port = proc.ready["metrics_port"]
        out.wait(lambda c: _held_back(port, dep, "shadow_undecided") >= 1 or _triggers(c, dep), 30,
                 "the review trigger held back (or fired)")
        assert _triggers(out, dep) == [], "an automatic trigger fired while the shadow was undecided"
        client.set_shadow_model(dep, None)             # decided: the promotion stage clears the shadow
        trig = out.wait(lambda c: _triggers(c, dep), 30, "the held-back review trigger")[0].value
        assert trig["reason"] == "review_threshold" and int(trig["evidence"]["added_to_training"]) == 20
        assert len(_triggers(out, dep)) == 1
