"""Trainers on the real (embedded) broker: triggers -> runs -> registered or rejected models."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from streams import catalog as ev
from streams.consumer import read_to_end
from streams.deployments import DeploymentSettingsClient
from streams.kafka_config import producer_config
from streams.registry import ModelRegistry
from streams.serde import new_event
from trainers.artifacts import ArtifactStore, TamperedArtifactError
from trainers.bootstrap import register_initial_model
from trainers.models import load_predictor
from trainers.pipeline import TrainingPipeline
from trainers.worker import run_trainer

REPO = Path(__file__).resolve().parents[1]
CENTERS = {"a": (0.0, 0.0, 0.0), "b": (3.0, 0.0, 1.0), "c": (0.0, 3.0, -1.0)}


def blobs(n: int, seed: int = 0, shift: float = 0.0) -> list[tuple[dict, str]]:
    rng = np.random.default_rng(seed)
    labels = list(CENTERS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        c = np.asarray(CENTERS[label]) + shift
        x = c + rng.normal(0, 0.6, size=3)
        rows.append(({"x0": float(x[0]), "x1": float(x[1]), "x2": float(x[2])}, label))
    return rows


def labeled(deployment: str, features: dict, label: str, prediction_id: str | None = None) -> dict:
    now = int(time.time() * 1000)
    return new_event(ev.LABELED_EXAMPLE, prediction_id=prediction_id or str(uuid.uuid4()), deployment=deployment,
                     model_version="v0", role="primary", features=features, predicted_label=None, label=label,
                     correct=False, feedback_event_id=str(uuid.uuid4()), prediction_time=now, feedback_time=now)


def publish(settings, topic: str, records: list[tuple[str, dict]], key_field: str) -> dict[int, int]:
    """Produce and wait; returns {partition: offset after the last record written there}, from the
    delivery reports (exact, unlike the embedded broker's lagging high watermark)."""
    from confluent_kafka import Producer

    from streams.serde import Serde

    serde = Serde.from_settings(settings)
    producer = Producer(producer_config(settings))
    ends: dict[int, int] = {}
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for event_type, record in records:
        producer.produce(topic, serde.encode(event_type, record, topic), record[key_field], on_delivery=delivered)
    assert producer.flush(30) == 0 and not errors, errors
    return ends


class ExampleLog:
    """Labeled examples written by a test, with the exact end offset of each partition."""

    def __init__(self, settings, topics):
        self.settings, self.topics = settings, topics
        self.ends = {p: 0 for p in range(topics.partitions("labeled-examples"))}

    def add(self, records: list[dict]) -> list[dict]:
        for p, end in publish(self.settings, self.topics.labeled_examples,
                              [(ev.LABELED_EXAMPLE, r) for r in records], "prediction_id").items():
            self.ends[p] = max(self.ends[p], end)
        return self.snapshot()

    def snapshot(self) -> list[dict]:
        return [{"partition": p, "start_offset": 0, "end_offset": e} for p, e in sorted(self.ends.items())]


def publish_examples(settings, topics, deployment: str, rows) -> list[dict]:
    return ExampleLog(settings, topics).add([labeled(deployment, f, l) for f, l in rows])


def make_trigger(topics, deployment: str, snap: list[dict], mode: str = "full") -> dict:
    return new_event(ev.TRAINING_TRIGGERED, trigger_id=str(uuid.uuid4()), deployment=deployment, reason="manual",
                     snapshot_topic=topics.labeled_examples, snapshot=snap, training_mode=mode)


def publish_trigger(settings, topics, trigger: dict) -> None:
    publish(settings, topics.triggers, [(ev.TRAINING_TRIGGERED, trigger)], "deployment")


def wait_lifecycle(settings, topics, predicate, timeout_s: float = 30.0, topic: str | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        events = read_to_end(settings, topic or topics.model_lifecycle, timeout_s=10)
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s}s; events: {[(e.event_type, e.value.get('trigger_id')) for e in events]}")
        time.sleep(0.2)  # polling inside a deadline loop


def of_type(events, event_type: str, **match):
    return [e.value for e in events if e.event_type == event_type and all(e.value.get(k) == v for k, v in match.items())]


class TrainerThread:
    """run_trainer in a thread, stopped on exit."""

    def __init__(self, settings, **kw):
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.outcomes: list = []
        self.partitions: list[int] = []

        def target():
            try:
                run_trainer(settings, self.stop.is_set, on_ready=self.ready.set,
                            on_handled=lambda trigger, outcome: self.outcomes.append(outcome),
                            on_assignment=lambda parts: setattr(self, "partitions", parts), **kw)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the test
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "trainer did not stop"
        if self.error and not exc[0]:
            raise self.error


# -- tests -----------------------------------------------------------------------------------------
def test_trigger_produces_registered_model_with_exact_lineage(settings, topics):
    dep = "fraud"
    DeploymentSettingsClient(settings).setup_feedback_loop(dep, model_name="fraud-model", min_training_examples=50)
    rows = blobs(240, seed=1)
    examples = [labeled(dep, f, l) for f, l in rows]
    # a correction: the same prediction labeled again later; the latest label wins (one row)
    corrected = labeled(dep, examples[0]["features"], "c", prediction_id=examples[0]["prediction_id"])
    other = [labeled("other-dep", f, l) for f, l in blobs(30, seed=2)]
    log = ExampleLog(settings, topics)
    snap = log.add(examples + [corrected] + other)
    assert sum(p["end_offset"] for p in snap) == 271
    # examples after the snapshot must not be trained on
    log.add([labeled(dep, f, l) for f, l in blobs(60, seed=3)])
    trigger = make_trigger(topics, dep, snap)
    with TrainerThread(settings, trainer_id="t1") as trainer:
        trainer.ready.wait(30)
        publish_trigger(settings, topics, trigger)
        events = wait_lifecycle(settings, topics, lambda es: of_type(es, ev.MODEL_REGISTERED, trigger_id=trigger["trigger_id"]))
    started = of_type(events, ev.TRAINING_RUN_STARTED, trigger_id=trigger["trigger_id"])
    finished = of_type(events, ev.TRAINING_RUN_FINISHED, trigger_id=trigger["trigger_id"])
    registered = of_type(events, ev.MODEL_REGISTERED, trigger_id=trigger["trigger_id"])[0]
    assert len(started) == 1 and started[0]["trainer_id"] == "t1" and started[0]["device"] == "cpu"
    assert len(finished) == 1
    lineage = registered["lineage"]
    assert lineage["topic"] == topics.labeled_examples
    assert lineage["partitions"] == snap
    assert lineage["row_count"] == 240            # this deployment only, correction deduplicated, nothing after the snapshot
    assert lineage["train_rows"] + lineage["holdout_rows"] == 240 and 20 < lineage["holdout_rows"] < 80
    assert len(lineage["content_hash"]) == 64 and finished[0]["lineage"] == lineage
    assert finished[0]["environment"]["torch"] and finished[0]["environment"]["python"]
    assert finished[0]["code_version"].startswith("ctloop") and finished[0]["samples_per_second"] > 0
    assert registered["alias"] == "champion" and registered["model_name"] == "fraud-model"
    assert registered["metrics"]["accuracy"] > 0.9
    assert registered["artifact_sha256"] == finished[0]["artifact_sha256"]
    promoted = of_type(read_to_end(settings, topics.model_updates), ev.MODEL_PROMOTED)
    assert [p["model_version"] for p in promoted] == [registered["model_version"]]

    registry = ModelRegistry.load(settings)
    champion = registry.champion(dep)
    assert champion.version == registered["model_version"] and champion.lineage["partitions"] == snap
    predictor = load_predictor(champion, ArtifactStore.from_settings(settings))
    assert predictor.classes == ["a", "b", "c"]
    label, probs = predictor.predict({"x0": 3.0, "x1": 0.0, "x2": 1.0})
    assert label == "b" and abs(sum(probs.values()) - 1) < 1e-5

    # the same trigger redelivered: skipped, not trained twice
    assert TrainingPipeline(settings).run(trigger).status == "skipped"

    # `ctloop models` lists the version with its lineage
    from click.testing import CliRunner

    from infra.cli import cli

    env = {k: v for k, v in _env(settings).items() if k.startswith("CTLOOP_")}
    result = CliRunner().invoke(cli, ["models", dep], env=env)
    assert result.exit_code == 0, result.output
    line = [l for l in result.output.splitlines() if l.startswith(registered["model_version"])][0]
    assert "champion" in line and " 240 " in line and lineage["content_hash"][:12] in line
    assert ",".join(f"{p['partition']}:0-{p['end_offset']}" for p in snap) in line


@pytest.mark.slow
def test_noisy_candidate_rejected_and_good_candidate_registered_as_shadow(settings, topics):
    dep = "churn"
    DeploymentSettingsClient(settings).setup_feedback_loop(dep, min_training_examples=50)
    features, labels = zip(*blobs(300, seed=4))
    champion = register_initial_model(settings, dep, list(features), list(labels))
    assert champion.alias == "champion" and champion.version == "v1"
    snap = publish_examples(settings, topics, dep, blobs(300, seed=5))

    noisy = make_trigger(topics, dep, snap)
    outcome = TrainingPipeline(settings, label_noise=0.7).run(noisy)
    assert outcome.status == "rejected", outcome
    events = read_to_end(settings, topics.model_lifecycle)
    rejected = of_type(events, ev.CANDIDATE_REJECTED, model_version=outcome.version)
    assert len(rejected) == 1 and rejected[0]["stage"] == "evaluation" and rejected[0]["champion_version"] == "v1"
    reasons = " | ".join(rejected[0]["reasons"])
    assert "recent_accuracy" in reasons and "segment[" in reasons, reasons
    assert rejected[0]["metrics"]["accuracy"] < rejected[0]["champion_metrics"]["accuracy"]
    assert not of_type(events, ev.MODEL_REGISTERED, model_version=outcome.version)
    registry = ModelRegistry.load(settings)
    assert registry.get(dep, outcome.version).alias == "rejected"
    assert registry.champion(dep).version == "v1"

    good = make_trigger(topics, dep, snap, mode="finetune")
    outcome = TrainingPipeline(settings).run(good)
    assert outcome.status == "registered", outcome
    registry = ModelRegistry.load(settings)
    challenger = registry.get(dep, outcome.version)
    assert challenger.alias == "challenger" and registry.champion(dep).version == "v1"
    finished = of_type(read_to_end(settings, topics.model_lifecycle), ev.TRAINING_RUN_FINISHED, model_version=outcome.version)
    assert finished[0]["environment"]["training_mode"] == "finetune"
    current = DeploymentSettingsClient(settings).current(dep)
    assert current["shadow_model_version"] == outcome.version and current["change"] == "auto_shadow"


def test_bad_datasets_fail_the_run_with_a_reason(settings, topics, tmp_path):
    client = DeploymentSettingsClient(settings)
    base = tmp_path / "base.csv"
    base.write_text("x0,x1,x2,label\n1.0,,0.5,a\n0.0,1.0,0.5,b\n")
    cases = {"too_few_examples": blobs(20), "single_class": [(f, "a") for f, _ in blobs(80)], "nan_values": blobs(80),
             "invalid_configuration": blobs(80)}
    log = ExampleLog(settings, topics)
    for case, rows in cases.items():
        client.setup_feedback_loop(case, min_training_examples=50)
        log.add([labeled(case, f, l) for f, l in rows])
    client.attach_dataset_version("nan_values", str(base))
    client.setup_feedback_loop("invalid_configuration", model_factory="no_such_module:model")
    expected = {"too_few_examples": "at least 50", "single_class": "'a'", "nan_values": "x1",
                "invalid_configuration": "no_such_module"}
    pipeline = TrainingPipeline(settings)
    for case in cases:
        trigger = make_trigger(topics, case, log.snapshot())
        assert pipeline.run(trigger).status == "failed"
        failed = of_type(read_to_end(settings, topics.model_lifecycle), ev.TRAINING_RUN_FAILED, trigger_id=trigger["trigger_id"])
        assert len(failed) == 1 and failed[0]["error_type"] == case, failed
        assert expected[case] in failed[0]["reason"], failed[0]["reason"]


@pytest.mark.slow
def test_base_dataset_is_added_and_named_in_lineage(settings, topics, tmp_path):
    import pandas as pd

    dep = "with-base"
    client = DeploymentSettingsClient(settings)
    client.setup_feedback_loop(dep, min_training_examples=50)
    base_rows = blobs(200, seed=9)
    frame = pd.DataFrame([{**f, "label": l} for f, l in base_rows])
    path = tmp_path / "base.parquet"
    frame.to_parquet(path)
    client.attach_dataset_version(dep, str(path))
    snap = publish_examples(settings, topics, dep, blobs(60, seed=10))
    outcome = TrainingPipeline(settings).run(make_trigger(topics, dep, snap))
    assert outcome.status == "registered"
    mv = ModelRegistry.load(settings).get(dep, outcome.version)
    assert mv.lineage["row_count"] == 260 and mv.lineage["base_dataset"] == str(path)
    # base-dataset rows count as historical: the forgetting metric is measured
    assert "historical_accuracy" in mv.metrics


@pytest.mark.slow
def test_since_change_trigger_compiles_exactly_its_window_without_the_base_dataset(settings, topics, tmp_path):
    """Issue 12: a since_change trigger's snapshot offsets are the window; the trainer reads exactly them,
    leaves the base dataset (an earlier concept) out, records window and change point in the lineage, and
    the gate judges the candidate on the window: a candidate of the new concept is registered although
    the champion (concept A) is perfect on the pre-change rows."""
    import pandas as pd

    dep = "windowed"
    client = DeploymentSettingsClient(settings)
    client.setup_feedback_loop(dep, min_training_examples=50)
    features, labels = zip(*blobs(300, seed=11))
    register_initial_model(settings, dep, list(features), list(labels))
    frame = pd.DataFrame([{**f, "label": l} for f, l in blobs(200, seed=12)])
    frame.to_parquet(tmp_path / "base.parquet")
    client.attach_dataset_version(dep, str(tmp_path / "base.parquet"))
    log = ExampleLog(settings, topics)
    before = log.add([labeled(dep, f, l) for f, l in blobs(120, seed=13)])        # concept A
    rename = {"a": "b", "b": "c", "c": "a"}                                      # concept B: classes permuted
    after = log.add([labeled(dep, f, rename[l]) for f, l in blobs(240, seed=14)])
    window = [{"partition": b["partition"], "start_offset": b["end_offset"], "end_offset": a["end_offset"]}
              for b, a in zip(before, after)]
    trigger = make_trigger(topics, dep, window)
    trigger["evidence"] = {"training_window": "since_change", "change_point": "ADWIN cut after 120 labels",
                           "post_change_labels": "240", "window_labels": "240"}
    outcome = TrainingPipeline(settings).run(trigger)
    assert outcome.status == "registered", outcome
    mv = ModelRegistry.load(settings).get(dep, outcome.version)
    assert mv.lineage["partitions"] == window and mv.lineage["row_count"] == 240
    assert mv.lineage["base_dataset"] is None
    assert mv.lineage["training_window"] == "since_change"
    assert mv.lineage["change_point"] == "ADWIN cut after 120 labels"
    assert "historical_accuracy" not in mv.metrics and mv.metrics["accuracy"] > 0.9


def test_two_trainers_in_one_group_train_each_trigger_once(settings, topics):
    # two deployments whose triggers land on partitions 0 and 3 (librdkafka's default partitioner is
    # crc32 of the key): whatever the assignor (range or round robin), each trainer owns one of them
    names = (f"dep{i}" for i in range(1000))
    deps = [next(n for n in names if zlib.crc32(n.encode()) % 4 == part) for part in (0, 3)]
    client = DeploymentSettingsClient(settings)
    for dep in deps:
        client.setup_feedback_loop(dep, min_training_examples=50)
    rows = []
    for i, dep in enumerate(deps):
        rows += [labeled(dep, f, l) for f, l in blobs(90, seed=20 + i)]
    snap = ExampleLog(settings, topics).add(rows)
    triggers = [make_trigger(topics, dep, snap) for dep in deps]
    with TrainerThread(settings, trainer_id="A") as a, TrainerThread(settings, trainer_id="B") as b:
        assert a.ready.wait(30) and b.ready.wait(30)
        deadline = time.monotonic() + 30   # the group has settled: each owns half of the partitions
        while not (a.partitions and b.partitions and sorted(a.partitions + b.partitions) == [0, 1, 2, 3]):
            assert time.monotonic() < deadline, (a.partitions, b.partitions)
            time.sleep(0.05)
        for trigger in triggers:
            publish_trigger(settings, topics, trigger)
        # the same trigger published twice (a duplicate from an at-least-once producer)
        publish_trigger(settings, topics, triggers[0])
        ids = {t["trigger_id"] for t in triggers}
        events = wait_lifecycle(settings, topics, lambda es: ids <= {v["trigger_id"] for v in of_type(es, ev.TRAINING_RUN_FINISHED)},
                                timeout_s=60)
        # wait until the duplicate delivery was handled too (skipped)
        deadline = time.monotonic() + 30
        while len(a.outcomes) + len(b.outcomes) < 3 and time.monotonic() < deadline and not (a.error or b.error):
            time.sleep(0.1)
    statuses = sorted(o.status for o in a.outcomes + b.outcomes)
    assert statuses == ["registered"] * 2 + ["skipped"], statuses
    events = read_to_end(settings, topics.model_lifecycle)
    for trigger in triggers:
        assert len(of_type(events, ev.TRAINING_RUN_FINISHED, trigger_id=trigger["trigger_id"])) == 1
        assert len(of_type(events, ev.TRAINING_RUN_STARTED, trigger_id=trigger["trigger_id"])) == 1
    trainers_used = {v["trainer_id"] for v in of_type(events, ev.TRAINING_RUN_STARTED)}
    assert trainers_used == {"A", "B"}, trainers_used


def _env(settings) -> dict:
    env = dict(os.environ)
    for f in fields(settings):
        env[f"CTLOOP_{f.name.upper()}"] = str(getattr(settings, f.name))
    return env


@pytest.mark.slow
def test_killed_trainer_trigger_is_completed_after_restart(settings, topics):
    dep = "crashy"
    DeploymentSettingsClient(settings).setup_feedback_loop(dep, min_training_examples=50)
    snap = publish_examples(settings, topics, dep, blobs(150, seed=30))
    trigger = make_trigger(topics, dep, snap)
    # a short session: the group notices the dead member soon
    slow = settings.replace(trainer_run_delay_s=120.0, session_timeout_ms=2000, heartbeat_interval_ms=300)
    proc = subprocess.Popen([sys.executable, "-m", "trainers.worker", "--trainer-id", "doomed"], cwd=REPO,
                            env=_env(slow), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        publish_trigger(settings, topics, trigger)
        wait_lifecycle(settings, topics, lambda es: of_type(es, ev.TRAINING_RUN_STARTED, trigger_id=trigger["trigger_id"]),
                       timeout_s=60)
        proc.send_signal(signal.SIGKILL)   # dies mid-run: the trigger offset is not committed
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = read_to_end(settings, topics.model_lifecycle)
    assert not of_type(events, ev.TRAINING_RUN_FINISHED)
    with TrainerThread(settings, trainer_id="restarted"):
        events = wait_lifecycle(settings, topics,
                                lambda es: of_type(es, ev.MODEL_REGISTERED, trigger_id=trigger["trigger_id"]), timeout_s=60)
    started = of_type(events, ev.TRAINING_RUN_STARTED, trigger_id=trigger["trigger_id"])
    assert [s["trainer_id"] for s in started] == ["doomed", "restarted"]
    assert len(of_type(events, ev.TRAINING_RUN_FINISHED, trigger_id=trigger["trigger_id"])) == 1


@pytest.mark.slow
def test_tampered_artifact_is_refused(settings, topics):
    dep = "secure"
    features, labels = zip(*blobs(120, seed=40))
    mv = register_initial_model(settings, dep, list(features), list(labels))
    store = ArtifactStore.from_settings(settings)
    assert load_predictor(mv, store).predict({"x0": 0, "x1": 0, "x2": 0})[0] == "a"
    path = Path(mv.artifact_uri.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedArtifactError, match="sha256"):
        load_predictor(mv, store)
    # a trainer refuses to build on a tampered champion
    DeploymentSettingsClient(settings).setup_feedback_loop(dep, min_training_examples=50)
    snap = publish_examples(settings, topics, dep, blobs(100, seed=41))
    trigger = make_trigger(topics, dep, snap)
    assert TrainingPipeline(settings).run(trigger).status == "failed"
    failed = of_type(read_to_end(settings, topics.model_lifecycle), ev.TRAINING_RUN_FAILED, trigger_id=trigger["trigger_id"])
    assert failed[0]["error_type"] == "champion_artifact_invalid"


def test_a_challenger_registered_before_a_crash_is_put_in_shadow_on_redelivery(settings, topics):
    """Issue 11: a trainer SIGKILLed after ModelRegistered but before DeploymentConfigured "auto_shadow".
    The redelivered trigger is done (decided) but the log shows the missing step: the restarted trainer
    sets the challenger as shadow, once; a shadow an operator chose since is never overwritten."""
    dep = "crashy"
    settings_client = DeploymentSettingsClient(settings)
    settings_client.setup_feedback_loop(dep)
    trigger = make_trigger(topics, dep, [{"partition": 0, "start_offset": 0, "end_offset": 0}])
    run_id = str(uuid.uuid4())

    def dead_trainer_events(version: str, trig: dict, run: str) -> list:
        return [(ev.TRAINING_RUN_STARTED, new_event(ev.TRAINING_RUN_STARTED, deployment=dep, run_id=run,
                                                    trigger_id=trig["trigger_id"], trainer_id="dead", device="cpu")),
                (ev.MODEL_REGISTERED, new_event(ev.MODEL_REGISTERED, deployment=dep, model_name="m", model_version=version,
                                                run_id=run, trigger_id=trig["trigger_id"], alias="challenger",
                                                metrics={}, artifact_uri="file:///x.pt", artifact_sha256="0" * 64))]

    publish(settings, topics.model_lifecycle, dead_trainer_events("v2-crash", trigger, run_id), "deployment")
    assert settings_client.current(dep)["shadow_model_version"] is None
    with TrainingPipeline(settings) as pipeline:
        outcome = pipeline.run(trigger)                                   # the redelivery
        assert (outcome.status, outcome.version) == ("resumed", "v2-crash")
        current = DeploymentSettingsClient(settings).current(dep)
        assert current["shadow_model_version"] == "v2-crash" and current["change"] == "auto_shadow"
        assert pipeline.run(trigger).status == "skipped"                  # idempotent: nothing missing now
        DeploymentSettingsClient(settings).set_shadow_model(dep, "v7-operator")
        assert pipeline.run(trigger).status == "skipped"                  # set once already: not put back
    assert DeploymentSettingsClient(settings).current(dep)["shadow_model_version"] == "v7-operator"
    started = of_type(read_to_end(settings, topics.model_lifecycle), ev.TRAINING_RUN_STARTED,
                      trigger_id=trigger["trigger_id"])
    assert [s["trainer_id"] for s in started] == ["dead"]                # resumed, never retrained
