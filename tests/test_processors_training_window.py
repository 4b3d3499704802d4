"""Training windows over the real broker with a real worker: a drift change point gives a trigger whose
snapshot starts at the first post-change labeled example of every partition, only once
min_post_change_labels followed the change, and again when that count doubled (not held by the cooldown
in seconds); `ctloop trigger` honours the window (the change point a trigger named, then all history,
then a sliding window); on one partition, a sliding review trigger and an ADWIN-cut decay trigger start at
exact offsets."""
from __future__ import annotations

import json
import time
import urllib.request
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from processors.ownership import partition_for
from streams import catalog as ev
from streams.producer import EventProducer
from streams.sdk import CtloopClient
from streams.serde import new_event
from tests.helpers.collect import Collector
from tests.helpers.processes import running_processors, settings_env

STAGES = ["processors.feedback_join", "processors.drift", "processors.triggers"]
WAIT_S = 90
"""Deadline of each wait for the stage (seconds): generous, since two test workers and their stage
subprocesses share 2 cores in CI; a passing wait ends as soon as its condition holds."""


def _gauge(port: int, name: str, dep: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{") and f'deployment="{dep}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _triggers(c, dep, reason=None):
    return [e.value for e in c.of(ev.TRAINING_TRIGGERED, deployment=dep) if reason is None or e.value["reason"] == reason]


def _starts(snapshot):
    return {p["partition"]: p["start_offset"] for p in snapshot}


def _expected_starts(examples, snapshot):
    """Per partition of ``snapshot``: the lowest offset of ``examples`` (Events) in it, else its end."""
    out = {}
    for p in snapshot:
        offs = [e.offset for e in examples if e.partition == p["partition"]]
        out[p["partition"]] = min(offs) if offs else p["end_offset"]
    return out


def _manual(settings, dep):
    from infra.cli import cli

    res = CliRunner().invoke(cli, ["trigger", dep, "--requested-by", "tester"], env=settings_env(settings, {}))
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


@pytest.mark.slow
def test_drift_trigger_waits_for_post_change_labels_starts_at_the_change_and_doubles(settings, topics):
    settings = settings.replace(drift_window_size=100)
    dep = "window-dep"
    rng = np.random.default_rng(11)
    t0 = int(time.time() * 1000) - 60_000
    with running_processors(settings, stages=STAGES, timeout_s=60) as proc, CtloopClient(settings) as client, \
            Collector(settings, topics.triggers, topics.drift, topics.labeled_examples) as out:
        port = proc.ready["metrics_port"]
        client.setup_feedback_loop(dep, model_name="m", min_training_examples=20)   # below the 30 waited for
        # a cooldown of an hour: the evidence-gated drift triggers are spaced by post-change labels instead
        client.setup_continuous_training(dep, drift_threshold=0.5, cooldown_seconds=3600)
        client.setup_training_window(dep, "since_change", labels=2000, min_post_change_labels=30)
        for i in range(300):                                 # stationary, every prediction labeled
            pid = client.log_prediction(dep, {"a": rng.normal(), "b": rng.normal()}, label="x", model_version="1",
                                        event_time=t0 + i)
            client.log_feedback(pid, dep, label="x")
        shifted = [(client.log_prediction(dep, {"a": rng.normal() + 3, "b": rng.normal() + 3}, label="x",
                                          model_version="1", event_time=t0 + 300 + i), t0 + 300 + i) for i in range(400)]
        client.flush()
        detected = out.wait(lambda c: [e for e in c.of(ev.DRIFT_MEASURED, deployment=dep) if e.value["drift_detected"]],
                            60, "drift detected")[0].value
        out.wait(lambda c: len(c.of(ev.LABELED_EXAMPLE, deployment=dep)) == 300, WAIT_S, "the stationary labels")
        # the change: after the first detected window's start and the end of the clean window before it (a
        # window is filled from 4 partitions batch by batch, so their time spans overlap)
        measured = [e.value for e in out.of(ev.DRIFT_MEASURED, deployment=dep)]
        clean = [m["window_end"] for m in measured[:measured.index(detected)]]
        change_at = max([detected["window_start"]] + [end + 1 for end in clean[-1:]])
        post = [pid for pid, t in shifted if t >= change_at]
        assert len(post) >= 61

        def label(pids, expect_post):
            for pid in pids:
                client.log_feedback(pid, dep, label="x")
            client.flush()
            try:
                out.wait(lambda c: _gauge(port, "ctloop_training_window_post_change_labels", dep) == expect_post, WAIT_S,
                         f"{expect_post} post-change labels folded")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; post-change labels folded: "
                                     f"{_gauge(port, 'ctloop_training_window_post_change_labels', dep)} of "
                                     f"{_gauge(port, 'ctloop_training_window_labels_seen', dep)}") from None

        label(post[:29], 29)
        assert _triggers(out, dep) == [], "a drift trigger fired before min_post_change_labels post-change labels"
        label(post[29:30], 30)
        first = out.wait(lambda c: _triggers(c, dep), WAIT_S, "the drift trigger")[0]
        assert first["reason"] == "drift"
        ev_ = first["evidence"]
        assert ev_["training_window"] == "since_change" and int(ev_["post_change_labels"]) == 30
        assert int(ev_["window_labels"]) == 30 and "drift" in ev_["change_point"]
        post_examples = [e for e in out.of(ev.LABELED_EXAMPLE, deployment=dep)
                         if e.value["prediction_time"] >= change_at]
        assert len(post_examples) == 30
        assert _starts(first["snapshot"]) == _expected_starts(post_examples, first["snapshot"])
        assert any(p["start_offset"] > 0 for p in first["snapshot"])          # not all history

        # the run fails; the drift is still detected: the next trigger waits until the count doubled (60),
        # whatever the hour of cooldown
        with EventProducer(settings) as producer:
            producer.produce(topics.model_lifecycle, ev.TRAINING_RUN_FAILED, new_event(
                ev.TRAINING_RUN_FAILED, run_id=first["trigger_id"], trigger_id=first["trigger_id"], deployment=dep,
                reason="test", error_type="exception"), key=dep)
        label(post[30:59], 59)
        assert len(_triggers(out, dep)) == 1
        label(post[59:60], 60)
        second = out.wait(lambda c: len(_triggers(c, dep)) >= 2 and _triggers(c, dep)[1], WAIT_S, "the doubled trigger")
        assert second["reason"] == "drift" and int(second["evidence"]["post_change_labels"]) == 60
        assert second["idempotency_key"] == f"{dep}|drift|after={first['trigger_id']}"
        post_examples = [e for e in out.of(ev.LABELED_EXAMPLE, deployment=dep)
                         if e.value["prediction_time"] >= change_at]
        assert _starts(second["snapshot"]) == _expected_starts(post_examples, second["snapshot"])

        # ctloop trigger: the change point the latest trigger named
        manual_id = _manual(settings, dep)["trigger_id"]
        manual = out.wait(lambda c: [t for t in _triggers(c, dep, "manual") if t["trigger_id"] == manual_id], WAIT_S,
                          "the manual trigger")[0]
        assert manual["evidence"]["training_window"] == "since_change"
        assert int(manual["evidence"]["window_labels"]) == 60
        assert _starts(manual["snapshot"]) == _starts(second["snapshot"])
        # ... all history from 0
        client.setup_training_window(dep, "all")
        manual_id = _manual(settings, dep)["trigger_id"]
        manual = out.wait(lambda c: [t for t in _triggers(c, dep, "manual") if t["trigger_id"] == manual_id], WAIT_S,
                          "the all-history manual trigger")[0]
        assert manual["evidence"]["training_window"] == "all" and set(_starts(manual["snapshot"]).values()) == {0}
        # ... the last 10 labeled examples (across partitions, in the join's event_time order)
        client.setup_training_window(dep, "sliding", labels=10)
        manual_id = _manual(settings, dep)["trigger_id"]
        manual = out.wait(lambda c: [t for t in _triggers(c, dep, "manual") if t["trigger_id"] == manual_id], WAIT_S,
                          "the sliding manual trigger")[0]
        examples = sorted(out.of(ev.LABELED_EXAMPLE, deployment=dep),
                          key=lambda e: (e.value["event_time"], e.partition, e.offset))
        assert manual["evidence"]["training_window"] == "sliding" and int(manual["evidence"]["window_labels"]) == 10
        assert _starts(manual["snapshot"]) == _expected_starts(examples[-10:], manual["snapshot"])


@pytest.mark.slow
def test_sliding_review_trigger_and_adwin_decay_trigger_start_at_exact_offsets(settings, topics):
    """Prediction ids all on partition 0, so the order the stage sees is the log order: the sliding window
    of the last 10 of 40 labeled examples starts at the 31st; a champion right 300 times then wrong is cut
    by ADWIN, and the decay trigger, after 100 post-change labels, starts at the labeled example the cut
    names (the other partitions, without examples of the deployment, get empty ranges)."""
    settings = settings.replace(performance_window=20)
    ids = (str(uuid.uuid4()) for _ in iter(int, 1))
    on_p0 = (i for i in ids if partition_for(i, settings.default_partitions, settings.producer_partitioner) == 0)
    slide, decay = "slide-dep", "decay-dep"
    with running_processors(settings, stages=STAGES, timeout_s=60) as proc, CtloopClient(settings) as client, \
            Collector(settings, topics.triggers, topics.labeled_examples) as out:
        port = proc.ready["metrics_port"]
        client.setup_feedback_loop(slide, model_name="m")
        client.setup_feedback_loop(decay, model_name="m")
        client.setup_continuous_training(slide, trigger_threshold=40, cooldown_seconds=0)
        client.setup_training_window(slide, "sliding", labels=10)
        for i in range(40):
            pid = client.log_prediction(slide, {"x": float(i)}, label="a", model_version="1", prediction_id=next(on_p0))
            client.log_feedback(pid, slide, label="a")
        client.flush()
        trig = out.wait(lambda c: _triggers(c, slide), WAIT_S, "the review trigger")[0]
        examples = out.wait(lambda c: len(c.of(ev.LABELED_EXAMPLE, deployment=slide)) == 40 and
                            c.of(ev.LABELED_EXAMPLE, deployment=slide), WAIT_S, "40 examples")
        assert trig["reason"] == "review_threshold" and trig["evidence"]["training_window"] == "sliding"
        assert int(trig["evidence"]["window_labels"]) == 10
        assert trig["snapshot"][0] == {"partition": 0, "start_offset": examples[30].offset,
                                       "end_offset": trig["snapshot"][0]["end_offset"]}
        assert trig["snapshot"][0]["end_offset"] > examples[39].offset
        assert all(p["start_offset"] == p["end_offset"] for p in trig["snapshot"][1:])

        client.setup_continuous_training(decay, performance_decay_threshold=0.2, cooldown_seconds=0)
        # the decay (a window of 20) comes first; ADWIN's cut, more precise, replaces its change point
        client.setup_training_window(decay, "since_change", labels=2000, min_post_change_labels=100)
        for i in range(600):
            pid = client.log_prediction(decay, {"x": float(i)}, label="a", model_version="1", prediction_id=next(on_p0))
            client.log_feedback(pid, decay, label="a" if i < 300 else "b")   # wrong from the 301st on
            if i == 299:
                client.flush()
                out.wait(lambda c: _gauge(port, "ctloop_training_window_labels_seen", decay) == 300, WAIT_S, "300 folded")
        client.flush()
        trig = out.wait(lambda c: _triggers(c, decay), 60, "the decay trigger")[0]
        ev_ = trig["evidence"]
        assert trig["reason"] == "performance_decay" and ev_["training_window"] == "since_change"
        assert "ADWIN cut" in ev_["change_point"] and int(ev_["post_change_labels"]) >= 100
        n = int(ev_["change_point"].split("#", 1)[1].split()[0])             # the n-th labeled example
        assert 250 <= n <= 301, ev_["change_point"]
        examples = out.of(ev.LABELED_EXAMPLE, deployment=decay)
        assert trig["snapshot"][0]["start_offset"] == examples[n - 1].offset
