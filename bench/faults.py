"""Fault injection (prints figures; not a test): what ctloop loses, duplicates and how long it is
stuck when its processes are killed or its broker restarts.

Scenarios (each on its own topic prefix and data dir, each bounded by ``--bound`` seconds of waiting
for recovery, each stops by itself):

  processor-kill   SIGKILL the processor worker mid-stream, restart it. Expected: one labeled example
                   per prediction id; the final FeedbackLoopStats of each deployment exact.
  trainer-kill     SIGKILL the trainer during a run, restart it. Expected: one TrainingRunFinished and
                   one ModelRegistered/CandidateRejected per trigger; no orphaned artifact file.
  sink-kill        SIGKILL the ClickHouse sink mid-stream, restart it. Expected: one predictions row per
                   source (partition, offset).
  broker-restart   stop the embedded broker while a processor worker runs, start a new (empty) one on the
                   same port, re-create the topics and the deployment, log fresh pairs. Expected: one
                   labeled example per fresh prediction id. A worker that exits is restarted, as a
                   supervisor would, and counted; its bound is --bound + processor_stall_timeout_s.
  workers-N        N processor workers (1, 2, 3) in one group; the 2nd and 3rd join mid-stream (a
                   rebalance). Expected: as processor-kill.

Per scenario: lost (expected outputs missing when the bound ran out), duplicated (outputs beyond one
per expected key), stuck s (the longest stretch without new output after the fault, or after the
input was all produced if later; to the end of the bound when incomplete; for the sink, from the kill
to its first new commit), recover s (from the fault to every expected output present; "-" when never
within the bound). Times come from the records' own
timestamps (same host clock) where the output is a Kafka record. A scenario that fails is printed as
failed with the reason; the others still run.

Usage: python bench/faults.py [--quick] [--only processor-kill ...] [--bound 90] [--json]
(CTLOOP_BOOTSTRAP_SERVERS to use a cluster for all but broker-restart; else an embedded broker.)
``run(quick)`` gives bench/run.py the processor-kill figures only (the whole set takes minutes).
"""
# no `from __future__ import annotations`: bench/run.py loads this file without registering it in
# sys.modules, and @dataclass cannot resolve string annotations then

import argparse
import contextlib
import gc
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from infra.harness.collect import Collector  # noqa: E402
from infra.harness.processes import running_processors, settings_env, stop_process  # noqa: E402
from infra.embedded import EmbeddedBroker, free_port  # noqa: E402
from infra.settings import Settings  # noqa: E402
from infra.stack import kafka_stack  # noqa: E402
from streams import catalog as ev  # noqa: E402
from streams.consumer import end_offsets  # noqa: E402
from streams.kafka_config import client_config, producer_config  # noqa: E402
from streams.sdk import CtloopClient  # noqa: E402
from streams.topics import Topics, ensure_topics  # noqa: E402

SCENARIOS = ("processor-kill", "trainer-kill", "sink-kill", "broker-restart", "workers-1", "workers-2", "workers-3")


@dataclass
class Result:
    scenario: str
    expected: int = 0
    lost: int | None = None
    duplicated: int | None = None
    stuck_s: float | None = None
    recover_s: float | None = None
    status: str = "ok"              # ok | incomplete | failed
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Bound:
    """A deadline: ``left()`` seconds remain; ``over()`` once it has passed."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def over(self) -> bool:
        return time.monotonic() >= self.end


def until(condition, bound: Bound, interval_s: float = 0.05):
    """Poll ``condition`` until truthy or the bound is over; returns its last value (no exception)."""
    while True:
        value = condition()
        if value or bound.over():
            return value
        time.sleep(interval_s)  # polling inside a deadline loop


def _ms() -> float:
    return time.time() * 1000.0


def _stuck(times_ms, start_ms: float, end_ms: float | None) -> float:
    """The longest stretch without a new output between ``start_ms`` (the fault, or when the input was
    all produced, whichever is later) and ``end_ms`` (the last expected output, or when the bound ran
    out), in seconds."""
    later = sorted(t for t in times_ms if t > start_ms)
    points = [start_ms] + later + ([end_ms] if end_ms is not None else [])
    return max((b - a for a, b in zip(points, points[1:])), default=0.0) / 1000.0


def _why(exc: BaseException) -> str:
    """The first line of ``exc`` and the first error (else the last warning) of the log tail it quotes
    (running_processors puts the worker's log tail in its exceptions)."""
    lines = str(exc).splitlines()
    first = re.sub(r"within ([0-9.]+)s", lambda m: f"within {float(m.group(1)):.0f} s", lines[0] if lines else "")
    errors = [ln for ln in lines if "[ERROR]" in ln]
    warnings = [ln for ln in lines if "[WARNING]" in ln]
    quoted = errors[0] if errors else warnings[-1] if warnings else None
    if quoted:
        quoted = re.sub(r"^\[[^]]*\] \[\d+\] ", "", quoted).strip()
        first += f" (its log: {quoted[:260]})"
    return first


def scenario_settings(base: Settings, name: str, work: Path, **overrides) -> Settings:
    data = work / name
    data.mkdir(parents=True, exist_ok=True)
    s = base.replace(topic_prefix=f"faults{uuid.uuid4().hex[:6]}.", data_dir=str(data), stats_min_interval_s=0.1,
                     trainer_threads=1, metrics_port=0, **overrides)
    ensure_topics(AdminClient(client_config(s)), Topics.from_settings(s))
    return s


# -- processors: labeled examples per prediction id, stats per deployment ------------------------------
DEPLOYMENTS = ("fault-a", "fault-b", "fault-c")


def log_predictions(settings, n: int) -> dict[str, str]:
    """n predictions spread over DEPLOYMENTS; returns {prediction_id: deployment}."""
    pids = {}
    with CtloopClient(settings) as client:
        for dep in DEPLOYMENTS:
            client.setup_feedback_loop(dep, model_name="m")
        for i in range(n):
            dep = DEPLOYMENTS[i % len(DEPLOYMENTS)]
            pids[client.log_prediction(dep, {"x": float(i % 97), "y": float(i % 13)}, label="a",
                                       model_version="1")] = dep
        client.flush()
    return pids


def log_feedback(settings, pids) -> None:
    with CtloopClient(settings) as client:
        for i, (pid, dep) in enumerate(pids):
            client.log_feedback(pid, dep, label="a" if i % 3 else "b")
        client.flush()


def join_outcome(col: Collector, pids: dict[str, str]) -> tuple[int, int, list[float], list[str]]:
    """(lost, duplicated, arrival times in ms, problems with the final stats) for ``pids``."""
    examples = [e for e in col.of(ev.LABELED_EXAMPLE) if e.value["prediction_id"] in pids]
    per_pid = Counter(e.value["prediction_id"] for e in examples)
    lost = sum(1 for p in pids if p not in per_pid)
    duplicated = sum(c - 1 for c in per_pid.values())
    want = Counter(pids.values())
    problems = []
    for dep, n in sorted(want.items()):
        stats = [e for e in col.of(ev.FEEDBACK_LOOP_STATS, deployment=dep)]
        if not stats:
            problems.append(f"{dep}: no stats")
            continue
        home = Counter(e.partition for e in stats).most_common(1)[0][0]
        last = max((e for e in stats if e.partition == home), key=lambda e: e.offset).value
        wrong = {k: last[k] for k in ("predictions_logged", "feedback_received", "reviewed", "added_to_training")
                 if last[k] != n}
        if wrong:
            problems.append(f"{dep}: stats {wrong} (want {n} each)")
    return lost, duplicated, [e.timestamp_ms for e in examples], problems


def join_complete(col: Collector, pids: dict[str, str]) -> bool:
    col.poll(0.05)
    lost, _, _, problems = join_outcome(col, pids)
    return lost == 0 and not problems


def _finish_join(r: Result, col: Collector, pids, t_fault_ms: float, bound: Bound, t_input_ms: float = 0.0) -> None:
    done = until(lambda: join_complete(col, pids), bound, 0.0)
    t_end = _ms()
    for _ in range(10):          # a moment for stragglers (duplicates) already in flight
        col.poll(0.05)
    lost, dup, times, problems = join_outcome(col, pids)
    r.lost, r.duplicated = lost, dup
    r.notes += problems
    if done:
        stats_times = [e.timestamp_ms for e in col.of(ev.FEEDBACK_LOOP_STATS)]
        r.recover_s = (max(times + stats_times) - t_fault_ms) / 1000.0
        r.stuck_s = _stuck(times, max(t_fault_ms, t_input_ms), None)
    else:
        r.status = "incomplete"
        r.stuck_s = _stuck(times, max(t_fault_ms, t_input_ms), t_end)
        r.notes.append("not complete within the bound")


def processor_kill(base: Settings, work: Path, n: int, bound_s: float) -> Result:
    r = Result("processor-kill", expected=n)
    s = scenario_settings(base, r.scenario, work)
    topics = Topics.from_settings(s)
    pids = log_predictions(s, n)
    with Collector(s, topics.labeled_examples, topics.feedback_stats) as col:
        with running_processors(s, stages=["processors.feedback_join"], timeout_s=90) as proc:
            log_feedback(s, pids.items())
            col.wait(lambda c: len(c.of(ev.LABELED_EXAMPLE)) >= n // 4, 60, "a quarter of the examples")
            proc.kill()                                       # SIGKILL: no flush, no commit
            t_fault = _ms()
            proc.wait(10)
            col.poll(0.05)
            at_kill = len(col.of(ev.LABELED_EXAMPLE))
        r.notes.append(f"killed with about {at_kill}/{n} labeled examples out")
        bound = Bound(bound_s)
        with running_processors(s, stages=["processors.feedback_join"], timeout_s=max(10.0, bound.left())):
            _finish_join(r, col, pids, t_fault, bound)
    return r


def workers(base: Settings, work: Path, n: int, bound_s: float, count: int) -> Result:
    r = Result(f"workers-{count}", expected=n)
    s = scenario_settings(base, r.scenario, work)
    topics = Topics.from_settings(s)
    pids = log_predictions(s, n)
    items = list(pids.items())
    half = len(items) // 2
    with Collector(s, topics.labeled_examples, topics.feedback_stats) as col, contextlib.ExitStack() as stack:
        stack.enter_context(running_processors(s, stages=["processors.feedback_join"], timeout_s=90))
        log_feedback(s, items[:half])
        col.wait(lambda c: len(c.of(ev.LABELED_EXAMPLE)) >= half // 2, 60, "a quarter of the examples")
        t_fault = _ms()                                       # the rebalance (or, for 1 worker, the midpoint)
        for _ in range(count - 1):
            stack.enter_context(running_processors(s, stages=["processors.feedback_join"], timeout_s=90))
        if count > 1:
            r.notes.append(f"{count - 1} worker(s) joined at {len(col.of(ev.LABELED_EXAMPLE))}/{n} examples")
        log_feedback(s, items[half:])
        _finish_join(r, col, pids, t_fault, Bound(bound_s), t_input_ms=_ms())
    return r


# -- trainer: one outcome per trigger, no orphaned artifact --------------------------------------------
def _blobs(n: int, seed: int) -> list[tuple[dict, str]]:
    import numpy as np

    centers = {"a": (0.0, 0.0, 0.0), "b": (3.0, 0.0, 1.0), "c": (0.0, 3.0, -1.0)}
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(centers)[i % 3]
        x = np.asarray(centers[label]) + rng.normal(0, 0.6, size=3)
        rows.append(({"x0": float(x[0]), "x1": float(x[1]), "x2": float(x[2])}, label))
    return rows


def _publish(settings, topic: str, records: list[tuple[str, dict]], key_field: str) -> dict[int, int]:
    """Produce and flush; {partition: offset after the last record}, from the delivery reports."""
    from confluent_kafka import Producer

    from streams.serde import Serde

    serde = Serde.from_settings(settings)
    producer = Producer(producer_config(settings))
    ends: dict[int, int] = {}

    def delivered(err, msg):
        if err is None:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for event_type, record in records:
        producer.produce(topic, serde.encode(event_type, record, topic), record[key_field], on_delivery=delivered)
    if producer.flush(30):
        raise RuntimeError(f"could not produce to {topic}")
    return ends


def _trainer(settings, trainer_id: str, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "trainers.worker", "--trainer-id", trainer_id], cwd=str(ROOT),
                                env=settings_env(settings), stdout=log_file, stderr=subprocess.STDOUT)


def trainer_kill(base: Settings, work: Path, triggers: int, bound_s: float) -> Result:
    from streams.deployments import DeploymentSettingsClient
    from streams.serde import new_event
    from trainers.artifacts import classify, named_paths

    r = Result("trainer-kill", expected=triggers)
    # a pause after TrainingRunStarted makes "during a run" a window the kill can hit
    s = scenario_settings(base, r.scenario, work, trainer_run_delay_s=1.0, trainer_device="cpu")
    topics = Topics.from_settings(s)
    dep = "fault-train"
    client = DeploymentSettingsClient(s)
    client.setup_feedback_loop(dep, model_name="m", min_training_examples=50)
    client.close()
    now = int(time.time() * 1000)
    examples = [new_event(ev.LABELED_EXAMPLE, prediction_id=str(uuid.uuid4()), deployment=dep, model_version="v0",
                          role="primary", features=f, predicted_label=None, label=lab, correct=False,
                          feedback_event_id=str(uuid.uuid4()), prediction_time=now, feedback_time=now)
                for f, lab in _blobs(300, seed=7)]
    ends = _publish(s, topics.labeled_examples, [(ev.LABELED_EXAMPLE, e) for e in examples], "prediction_id")
    snapshot = [{"partition": p, "start_offset": 0, "end_offset": ends.get(p, 0)}
                for p in range(topics.partitions("labeled-examples"))]
    trigger_ids = [str(uuid.uuid4()) for _ in range(triggers)]
    _publish(s, topics.triggers, [(ev.TRAINING_TRIGGERED, new_event(
        ev.TRAINING_TRIGGERED, trigger_id=t, deployment=dep, reason="manual", snapshot_topic=topics.labeled_examples,
        snapshot=snapshot, training_mode="full")) for t in trigger_ids], "deployment")
    log_path = Path(s.data_dir) / "trainer.log"
    with Collector(s, topics.model_lifecycle) as col:
        proc = _trainer(s, "doomed", log_path)
        try:
            kill_at = min(2, triggers)                          # the kill lands in the 2nd run
            started = col.wait(lambda c: len(c.of(ev.TRAINING_RUN_STARTED)) >= kill_at or None, 120,
                               f"TrainingRunStarted #{kill_at}")
            proc.send_signal(signal.SIGKILL)
            t_fault = _ms()
            proc.wait(10)
            r.notes.append(f"killed during run {kill_at}" + ("" if started else " (not seen started)"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        bound = Bound(bound_s)
        proc = _trainer(s.replace(trainer_run_delay_s=0.0), "restarted", log_path)
        try:
            def outcomes():
                col.poll(0.05)
                decided = {e.value["trigger_id"] for e in col.of(ev.MODEL_REGISTERED)}
                rejected_runs = {e.value["run_id"] for e in col.of(ev.CANDIDATE_REJECTED)}
                finished = {e.value["run_id"]: e.value["trigger_id"] for e in col.of(ev.TRAINING_RUN_FINISHED)}
                decided |= {finished[run] for run in rejected_runs if run in finished}
                return decided
            done = until(lambda: set(trigger_ids) <= outcomes(), bound, 0.0)
            t_end = _ms()
            if proc.poll() is not None:
                r.notes.append(f"restarted trainer exited with {proc.returncode}")
        finally:
            stop_process(proc, 30)
        for _ in range(10):
            col.poll(0.05)
        finished = Counter(e.value["trigger_id"] for e in col.of(ev.TRAINING_RUN_FINISHED))
        decided = outcomes()
        r.lost = sum(1 for t in trigger_ids if t not in decided)
        r.duplicated = sum(max(0, finished[t] - 1) for t in trigger_ids) + \
            sum(max(0, c - 1) for c in Counter(e.value["trigger_id"] for e in col.of(ev.MODEL_REGISTERED)).values())
        after = [e.timestamp_ms for e in col.events if e.timestamp_ms > t_fault]
        r.stuck_s = _stuck(after, t_fault, None if done else t_end)
        if done:
            r.recover_s = (max(after) - t_fault) / 1000.0
        else:
            r.status = "incomplete"
            r.notes.append(f"{r.lost} trigger(s) without an outcome within the bound")
        failed = Counter(e.value["error_type"] for e in col.of(ev.TRAINING_RUN_FAILED))
        if failed:
            r.notes.append(f"runs failed: {dict(failed)}")
        names = named_paths(s.resolved_artifact_store, [(e.event_type, e.value) for e in col.events])
        orphans = [a.path.name for a in classify(s.resolved_artifact_store, names, min_age_s=0) if a.status == "orphan"]
        r.notes.append(f"orphaned artifact files: {len(orphans)}" + (f" {orphans}" if orphans else ""))
    return r


# -- sink: predictions rows per source offset ----------------------------------------------------------
def _committed(settings, group: str, topic: str, partitions: list[int]) -> int:
    c = Consumer(client_config(settings, {"group.id": group, "enable.auto.commit": False}))
    try:
        got = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(0, tp.offset) for tp in got)
    finally:
        c.close()


def _sink(settings, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "infra.cli", "sink"], cwd=str(ROOT),
                                env=settings_env(settings), stdout=log_file, stderr=subprocess.STDOUT)


def sink_kill(base: Settings, work: Path, n: int, bound_s: float) -> Result:
    from infra.clickhouse import connect

    r = Result("sink-kill", expected=n)
    s = scenario_settings(base, r.scenario, work, sink_flush_interval_s=0.2)
    topics = Topics.from_settings(s)
    with CtloopClient(s) as client:
        for i in range(n):
            client.log_prediction("fault-sink", {"x": float(i)}, label="a", model_version="1")
        client.flush()
    ends = end_offsets(s, topics.predictions)
    total = sum(ends.values())
    if total != n:
        r.notes.append(f"the predictions topic holds {total} records for {n} logged")
    group, parts = f"{s.topic_prefix}sink", sorted(ends)
    log_path = Path(s.data_dir) / "sink.log"
    proc = _sink(s, log_path)
    try:
        progressed = until(lambda: _committed(s, group, topics.predictions, parts) >= total // 4, Bound(90), 0.05)
        proc.send_signal(signal.SIGKILL)
        t_fault = time.monotonic()
        proc.wait(10)
        at_kill = _committed(s, group, topics.predictions, parts)
        r.notes.append(f"killed with {at_kill}/{total} offsets committed" + ("" if progressed else " (before a quarter)"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    bound = Bound(bound_s)
    proc = _sink(s, log_path)
    first_move = None
    try:
        def caught_up():
            nonlocal first_move
            done = _committed(s, group, topics.predictions, parts)
            if first_move is None and done > at_kill:
                first_move = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"the restarted sink exited with {proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-600:]}")
            return done >= total
        done = until(caught_up, bound, 0.05)
        t_done = time.monotonic()
    finally:
        rc = stop_process(proc, 30)
    if rc not in (0, None):
        r.notes.append(f"sink exit code on SIGTERM: {rc}")
    r.stuck_s = (first_move if first_move else t_done) - t_fault   # commits come in batches: kill -> first
    r.recover_s = t_done - t_fault if done else None
    ch = connect(s)
    try:
        rows = ch.query(f"SELECT kafka_partition, kafka_offset, count() FROM {s.clickhouse_database}.predictions "
                        "WHERE kafka_topic = {t:String} GROUP BY kafka_partition, kafka_offset",
                        parameters={"t": topics.predictions}).result_rows
    finally:
        ch.close()
    stored = {(p, o): c for p, o, c in rows}
    r.lost = sum(1 for p, end in ends.items() for o in range(end) if (p, o) not in stored)
    r.duplicated = sum(c - 1 for c in stored.values())
    if not done:
        r.status = "incomplete"
        r.notes.append("the sink did not commit every offset within the bound")
    r.notes.append("rows counted without FINAL (before ReplacingMergeTree merges)")
    return r


# -- broker restart --------------------------------------------------------------------------------------
def broker_restart(base: Settings, work: Path, n: int, bound_s: float) -> Result:
    r = Result("broker-restart", expected=n)
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    restarts = 0
    try:
        s = scenario_settings(base.for_embedded_broker(broker.bootstrap_servers), r.scenario, work)
        topics = Topics.from_settings(s)
        with contextlib.ExitStack() as stack:
            proc = stack.enter_context(running_processors(s, stages=["processors.feedback_join"], timeout_s=90))
            before = log_predictions(s, n // 2)
            with Collector(s, topics.labeled_examples) as col:
                log_feedback(s, before.items())
                col.wait(lambda c: len(c.of(ev.LABELED_EXAMPLE)) >= len(before), 60, "the examples before the restart")
            broker.stop()
            t_fault = _ms()
            broker = EmbeddedBroker(port=port).start()            # empty: in-memory storage
            ensure_topics(AdminClient(client_config(s)), topics)
            # a worker without its broker or topics exits (75) after processor_stall_timeout_s, for its
            # supervisor to restart it: the bound covers that wait too
            bound = Bound(bound_s + s.processor_stall_timeout_s)
            pids = log_predictions(s, n)
            with Collector(s, topics.labeled_examples, topics.feedback_stats) as col:
                log_feedback(s, pids.items())

                gave_up = False

                def progress():
                    nonlocal proc, restarts, gave_up
                    col.poll(0.05)
                    if proc.poll() is not None:                # a supervisor restarts what exits
                        r.notes.append(f"worker exited with {proc.returncode} "
                                       f"{(_ms() - t_fault) / 1000:.1f} s after the broker restart")
                        restarts += 1
                        try:
                            proc = stack.enter_context(running_processors(
                                s, stages=["processors.feedback_join"], timeout_s=max(60.0, bound.left())))
                        except (RuntimeError, TimeoutError) as exc:
                            r.notes.append(f"its restart failed: {_why(exc)}")
                            gave_up = True
                    lost, _, _, _ = join_outcome(col, pids)
                    return lost == 0 or gave_up
                until(progress, bound, 0.0)
                t_end = _ms()
                for _ in range(10):
                    col.poll(0.05)
                lost, dup, times, problems = join_outcome(col, pids)
                done = lost == 0
                r.lost, r.duplicated = lost, dup
                r.stuck_s = _stuck(times, t_fault, None if done else t_end)
                r.recover_s = (max(times) - t_fault) / 1000.0 if done and times else None
                r.notes += problems
                if not done:
                    r.status = "incomplete"
                    alive = "alive" if proc.poll() is None else f"exited {proc.returncode}"
                    r.notes.append(f"{lost}/{n} fresh pairs unjoined when the bound ran out; worker {alive}")
            r.notes.append(f"worker restarts by the script: {restarts}")
    finally:
        broker.stop()
    return r


# -- running and printing ----------------------------------------------------------------------------------
def sizes(quick: bool) -> dict:
    return {"events": 1500 if quick else 6000, "triggers": 3 if quick else 5, "sink": 10000 if quick else 30000}


def run_one(name: str, base: Settings, work: Path, quick: bool, bound_s: float) -> Result:
    z = sizes(quick)
    t0 = time.monotonic()
    try:
        if name == "processor-kill":
            r = processor_kill(base, work, z["events"], bound_s)
        elif name == "trainer-kill":
            r = trainer_kill(base, work, z["triggers"], bound_s)
        elif name == "sink-kill":
            r = sink_kill(base, work, z["sink"], bound_s)
        elif name == "broker-restart":
            r = broker_restart(base, work, z["events"] // 2, bound_s)
        elif name.startswith("workers-"):
            r = workers(base, work, z["events"], bound_s, int(name.split("-")[1]))
        else:
            raise ValueError(f"only: unknown scenario {name!r} (have {', '.join(SCENARIOS)})")
    except Exception as exc:  # noqa: BLE001 - a failed scenario is a figure, not a crash
        r = Result(name, status="failed", notes=[f"{type(exc).__name__}: {_why(exc)}"])
        traceback.print_exc(file=sys.stderr)
    r.wall_s = time.monotonic() - t0
    gc.collect()          # clients of a stopped broker would keep logging connection errors
    return r


def run_all(names, quick: bool, bound_s: float, progress=lambda line: print(line, file=sys.stderr),
            keep: bool = False) -> list[Result]:
    """Run the scenarios ``names`` on one broker (broker-restart on its own); the work folder (process
    logs, chdb, artifacts) is removed afterwards unless ``keep``."""
    base = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="ctloop-faults-"))
    if keep:
        progress(f"faults: logs and data under {work}")
    results = []
    try:
        with kafka_stack(base) as shared:
            for name in names:
                progress(f"faults: {name} ...")
                settings = base if name == "broker-restart" else shared
                r = run_one(name, settings, work, quick, bound_s)
                progress(f"faults: {name}: {r.status} in {r.wall_s:.0f}s")
                results.append(r)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def render(results: list[Result]) -> str:
    def f(v, digits=1):
        return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    head = f"{'scenario':<15} {'status':<10} {'expected':>8} {'lost':>5} {'dup':>5} {'stuck s':>8} {'recover s':>9} {'wall s':>7}  notes"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.scenario:<15} {r.status:<10} {r.expected:>8} {f(r.lost):>5} {f(r.duplicated):>5} "
                     f"{f(r.stuck_s):>8} {f(r.recover_s):>9} {r.wall_s:>7.0f}  {'; '.join(r.notes)}")
    return "\n".join(lines)


def run(quick: bool) -> list[dict]:
    """Figures for bench/run.py (see bench/README.md): the processor-kill scenario only."""
    (r,) = run_all(["processor-kill"], quick, 60.0 if quick else 120.0)
    if r.status == "failed":
        raise RuntimeError(f"processor-kill failed: {'; '.join(r.notes)}")
    notes = f"{r.expected} prediction ids; {r.status}; {'; '.join(r.notes)}"
    rows = [{"name": "SIGKILL processor mid-stream: labeled examples lost", "value": r.lost, "unit": "events",
             "peer_name": "", "peer_value": None, "higher_is_better": False, "notes": notes},
            {"name": "SIGKILL processor mid-stream: duplicated labeled examples", "value": r.duplicated,
             "unit": "events", "peer_name": "", "peer_value": None, "higher_is_better": False}]
    if r.recover_s is not None:
        rows.append({"name": "SIGKILL processor mid-stream: kill -> every example out", "value": r.recover_s,
                     "unit": "s", "peer_name": "", "peer_value": None})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller streams (about a minute per scenario)")
    ap.add_argument("--only", action="append", default=None, choices=SCENARIOS, help="run only this scenario (repeatable)")
    ap.add_argument("--bound", type=float, default=None,
                    help="seconds each scenario may wait for recovery after its fault (default 60 quick, 120 full)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (process logs, data)")
    args = ap.parse_args(argv)
    bound = args.bound or (60.0 if args.quick else 120.0)
    results = run_all(args.only or SCENARIOS, args.quick, bound, keep=args.keep)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(render(results))
        print("\nlost: expected outputs missing when the bound ran out; dup: outputs beyond one per expected key;\n"
              "stuck: longest stretch without new output after the fault; recover: fault -> every expected output\n"
              "(- : not within the bound). Definitions: python bench/faults.py --help and the module doc.")
    return 0 if all(r.status == "ok" and not r.lost and not r.duplicated for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
