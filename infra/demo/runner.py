"""``ctloop demo``: the whole loop end to end on a drifting stream (the composition root of the demo).

Phases: Kafka (configured, else the embedded broker) and topics -> deployment settings (feedback loop,
continuous training, continuous deployment; the new issue-12 fields at their defaults) -> initial
champion trained on the scenario's initial set -> the processors worker (a subprocess) -> a *faulty*
trainer (label noise) that handles the fault-injection trigger early in the first concept, so that one
deliberately bad candidate must be rejected -> the regular trainer -> the serving app predicting on the
scenario's stream while reviewers label part of it late -> summary from the topics, ClickHouse sink,
HTML report and the effectiveness comparison (prequential, in events, against never retrained, river
HAT and ARF and a sliding-window retrain computed on the same events and the same delayed labels).

The scenario (``infra.demo.scenarios``) is built before streaming: its drift points are fixed in events,
so they do not depend on the event rate or on how fast the loop closes.

What to do at each served event (publish the fault-injection trigger, hand over to the regular trainer,
announce drifts and promotions, stop at the deadline) is decided by the pure phase machine
``infra.demo.phases.DemoPhases``; this module runs the components and carries out its effects.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from infra.demo.effectiveness import PEERS, Comparison, compare, phase_windows, summarise_kinds
from infra.demo.phases import Action, DemoPhases, Effect, faulty_run_outcome
from infra.demo.scenarios import DEFAULT_SCENARIO, SCENARIOS, Scenario, make_scenario
from infra.demo.stream import Reviewers, Sample
from infra.demo.summary import LoopEvents, summarise
from infra.metrics import Metrics
from infra.settings import Settings
from streams.kafka_config import client_config

if TYPE_CHECKING:
    from streams.sdk import CtloopClient
    from trainers.serving import Deployment

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
# the deployment settings of issue 12 the demo leaves at their defaults (printed at start)
LOOP_SETTINGS_SHOWN = ("training_window", "training_window_labels", "training_window_seconds", "min_post_change_labels",
                       "cooldown_seconds", "trigger_threshold", "drift_threshold", "performance_decay_threshold",
                       "promotion_min_samples", "fast_promotion_min_samples", "promotion_threshold",
                       "significance_level", "rollback_margin", "online_fallback")


@dataclass
class DemoOptions:
    """Options of one demo run (``ctloop demo``): scenario, stream size and pace, label share and delay,
    and the loop settings the run configures; :meth:`check` raises ValueError naming a bad one."""
    deployment: str = "demo"
    scenario: str = DEFAULT_SCENARIO
    """One of infra.demo.scenarios.SCENARIOS."""
    seed: int = 42
    drifts: int = 2
    """Concept changes of the synthetic scenarios (drifts + 1 concepts); gradual and real ones serve
    (drifts + 1) * concept_events events without known drift points."""
    concept_events: int = 3000
    """Events of each concept (drift points at multiples of it)."""
    rate: float = 75.0
    """Served events per second (0: as fast as possible). At 100/s and 150/s the processors worker
    (every stage, the online fallback's learner included) fell behind on the busy 2-core machine and no
    automatic trigger fired within a 3,000-event concept; at 75/s the loop reacted within seconds."""
    initial_examples: int | None = None
    """Size of the initial training set (first concept, not served); None: the scenario's default."""
    fault_at: int = 900
    """Event at which the fault-injection trigger is published (early in the first concept, so its
    cooldown is over long before the first drift)."""
    review_fraction: float = 0.5
    """Label share: the fraction of predictions reviewers label."""
    min_review_delay: int = 20
    max_review_delay: int = 200
    label_noise: float = 0.7
    """Label noise of the faulty trainer (above 0.5 inverts a binary classifier)."""
    trigger_threshold: int = 1500
    drift_threshold: float = 0.5
    performance_decay_threshold: float = 0.15
    cooldown_seconds: int = 5
    min_training_examples: int = 200
    promotion_min_samples: int = 200
    promotion_threshold: float = 0.03
    significance_level: float = 0.05
    rollback_margin: float = 0.1
    timeout_s: float = 540.0
    """Deadline of the streaming part; the demo stops streaming then and reports what happened."""
    report: bool = True
    """Run the ClickHouse sink and write the HTML report."""
    peers: bool = True
    """Compute river HAT, river ARF and the sliding-window retrain on the same events (a low-priority
    subprocess while streaming)."""
    progress_interval_s: float = 5.0
    max_label_lag: int = 100
    """Labels the processors may be behind the reviewers before the stream waits for them (0: never
    wait). Effectiveness is counted in events: on a busy machine the processors worker falls behind
    the wall-clock rate, so without this the loop's reactions would arrive thousands of events late
    and its figures would measure the machine's load, not its decisions (the peers learn every label
    the event it is due). The lag is the feedback logged minus the labeled examples the serving app's
    labeled-examples feed has delivered (so only with an online fallback configured); the time the
    stream waited is in the summary (``paced_s``)."""
    max_pace_wait_s: float = 30.0
    """Longest single wait for the processors (then the stream goes on regardless)."""

    @classmethod
    def quick(cls, **overrides) -> "DemoOptions":
        """A smaller set-up for tests and a first look (about 2.5 minutes on 2 cores): initial set 1,500,
        shadow sample 150, min_training_examples 150, review trigger at 1,200 labels, fault injection at
        event 800. The events per concept and the drifts stay those of the full demo (the end-to-end test
        passes ``drifts=1``: two concepts); the rate too (75 events/s)."""
        base = dict(initial_examples=1500, fault_at=800, promotion_min_samples=150, min_training_examples=150,
                    trigger_threshold=1200, timeout_s=300.0)
        base.update(overrides)
        return cls(**base)

    def check(self) -> None:
        """Raise ValueError naming the option that cannot work."""
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario: unknown {self.scenario!r}; one of {sorted(SCENARIOS)}")
        if self.drifts not in (1, 2):
            raise ValueError(f"drifts: must be 1 or 2, got {self.drifts}")
        if not 0 < self.review_fraction <= 1:
            raise ValueError(f"review_fraction (label share): must be in (0, 1], got {self.review_fraction}")
        if not 0 <= self.min_review_delay <= self.max_review_delay:
            raise ValueError(f"label delay: need 0 <= MIN <= MAX, got {self.min_review_delay}:{self.max_review_delay}")
        if not 0 < self.fault_at < self.concept_events:
            raise ValueError(f"fault_at: must lie inside the first concept (0, {self.concept_events}), got {self.fault_at}")
        if self.rate > 0 and self.fault_at + self.cooldown_seconds * self.rate >= self.concept_events:
            raise ValueError(f"cooldown_seconds: {self.cooldown_seconds}s after the fault injection at event "
                             f"{self.fault_at} (at {self.rate:g} events/s) would cover the first drift at event "
                             f"{self.concept_events}")


@dataclass
class DemoResult:
    """What one demo run found: the ``summary`` recomputed from the topics (dict of counts, latencies,
    accuracies), the effectiveness ``comparison`` (None when it failed), the HTML report path (None when not
    written), the drift points (event indexes), wall time (seconds), problems and per-drift closure."""
    settings: Settings
    options: DemoOptions
    summary: dict
    comparison: Comparison | None
    report_path: Path | None
    drift_points: list[int]
    elapsed_s: float
    problems: list[str] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)
    """Per drift point: a model promoted by the policy after it (before the next one)."""
    loop_settings: dict = field(default_factory=dict)

    @property
    def loop_closed(self) -> bool:
        """True when the policy promoted at least one model and at least one candidate was rejected."""
        return self.summary["promotions"] >= 1 and self.summary["candidates_rejected"] >= 1

    @property
    def ok(self) -> bool:
        """The demo's requirements: a promotion by the policy after every drift, at least one rejected
        candidate (the noisy one) and no problem."""
        return all(self.closed) and self.summary["candidates_rejected"] >= 1 and not self.problems

    def as_dict(self) -> dict:
        """The summary dict plus the run's scenario, seed, drift points, per-drift closure, loop settings,
        elapsed_s (seconds, 1 decimal), report path (str or None), problems, ok and effectiveness (when compared);
        JSON-serialisable with ``default=str``."""
        out = dict(self.summary)
        out["scenario"] = self.options.scenario
        out["seed"] = self.options.seed
        out["drift_points"] = self.drift_points
        out["closed_per_drift"] = self.closed
        out["loop_settings"] = self.loop_settings
        out["elapsed_s"] = round(self.elapsed_s, 1)
        out["report"] = str(self.report_path) if self.report_path else None
        out["problems"] = self.problems
        out["ok"] = self.ok
        if self.comparison is not None:
            out["effectiveness"] = self.comparison.as_dict()
        return out


# --- processes and threads -------------------------------------------------------------------------

class ProcessorsProcess:
    """``python -m processors.worker`` as a subprocess; ``start`` waits for its ready file."""

    def __init__(self, settings: Settings, run_dir: Path):
        self.ready_file = run_dir / "processors.ready"
        self.log_path = run_dir / "processors.log"
        self.settings = settings.replace(processor_ready_file=str(self.ready_file))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> "ProcessorsProcess":
        """:meth:`launch` then :meth:`wait_ready` (``timeout_s`` seconds; raises as it does); returns self."""
        return self.launch().wait_ready(timeout_s)

    def launch(self) -> "ProcessorsProcess":
        """Start the subprocess without waiting (``wait_ready`` waits)."""
        from infra.child_env import child_environment, child_metrics_port

        # its own metrics port (the demo's + 1), never the demo's CTLOOP_METRICS_PORT (issue 13)
        env = child_environment(self.settings, metrics_port=child_metrics_port(self.settings.metrics_port))
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen([sys.executable, "-m", "processors.worker"], cwd=str(ROOT),
                                         env=env, stdout=log_file, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> "ProcessorsProcess":
        """Wait for the ready file; RuntimeError when the worker exited first, TimeoutError (after
        stopping it) when it is not ready within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"processor worker exited with {self.proc.returncode} before it was ready; "
                                   f"log {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"processor worker not ready within {timeout_s}s; log {self.log_path}:\n{self.tail()}")
            time.sleep(0.1)  # polling the ready file inside a deadline loop
        return self

    def alive(self) -> bool:
        """True while the subprocess was launched and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of the worker's log; "" when it cannot be read."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def crash_excerpt(self, lines: int = 40) -> str:
        """The first traceback in the worker's log (the original failure), else its tail."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for i, line in enumerate(text):
            if "Traceback (most recent call last)" in line:
                return "\n".join(text[max(0, i - 2):i + lines])
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the worker and wait ``timeout_s`` seconds, then SIGKILL; no-op when not running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class TrainerThread:
    """``trainers.worker.run_trainer`` in a thread, stopped through its ``stop`` callable."""

    def __init__(self, settings: Settings, trainer_id: str, label_noise: float = 0.0,
                 on_ready: Callable[[str], None] | None = None, metrics=None):
        self.settings, self.trainer_id, self.label_noise = settings, trainer_id, label_noise
        self.metrics = metrics
        self.on_ready = on_ready
        self.ready = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"demo-{trainer_id}", daemon=True)

    def _run(self) -> None:
        from trainers.worker import run_trainer

        try:
            run_trainer(self.settings, self._stop.is_set, trainer_id=self.trainer_id, label_noise=self.label_noise,
                        on_ready=self._ready, metrics=self.metrics)
        except BaseException as exc:  # noqa: BLE001 - reported by the runner
            log.exception("trainer %s failed", self.trainer_id)
            self.error = exc

    def _ready(self) -> None:
        self.ready.set()
        if self.on_ready is not None:
            self.on_ready(self.trainer_id)

    def start(self) -> "TrainerThread":
        """Start the trainer thread; returns self."""
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the trainer to stop without waiting for it."""
        self._stop.set()

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Ask the trainer to stop and join it for ``timeout_s`` seconds; True when the thread ended."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        """True while the trainer thread runs."""
        return self._thread.is_alive()


class LoopMonitor:
    """Follows triggers, model-lifecycle and model-updates (group-less) to drive the demo's phases and
    progress lines. The final summary does not use it: it is recomputed from the topics."""

    def __init__(self, settings: Settings, deployment: str):
        from streams.follower import TopicFollower
        from streams.topics import Topics

        topics = Topics.from_settings(settings)
        self.deployment = deployment
        self.lock = threading.Lock()
        self.events: list[tuple[str, dict]] = []
        self.added_to_training = 0
        """The latest FeedbackLoopStats' labeled examples of the deployment (what a trigger can train on)."""
        self.follower = TopicFollower(settings, [topics.triggers, topics.model_lifecycle, topics.model_updates,
                                                 topics.feedback_stats], self._on_event, name="demo-monitor")

    def _on_event(self, event) -> None:
        from streams import catalog as ev

        if event.event_type == ev.FEEDBACK_LOOP_STATS:
            if event.value.get("deployment") == self.deployment:
                self.added_to_training = max(self.added_to_training, int(event.value.get("added_to_training") or 0))
            return
        if event.value.get("deployment") == self.deployment:
            with self.lock:
                self.events.append((event.event_type, event.value))

    def start(self, timeout_s: float = 30.0) -> "LoopMonitor":
        """Start following and wait until caught up (TimeoutError after ``timeout_s`` seconds); returns self."""
        self.follower.start()
        self.follower.wait_caught_up(timeout_s)
        return self

    def of(self, *types: str) -> list[dict]:
        """The values of the deployment's events of ``types``, in arrival order."""
        with self.lock:
            return [v for t, v in self.events if t in types]

    def snapshot(self) -> list[tuple[str, dict]]:
        """A copy of the deployment's (event type, value) pairs so far, in arrival order."""
        with self.lock:
            return list(self.events)

    def policy_promotions(self) -> list[str]:
        """Model versions promoted by the policy so far (ModelPromoted with decided_by policy), in order."""
        from streams import catalog as ev

        return [p["model_version"] for p in self.of(ev.MODEL_PROMOTED) if p.get("decided_by") == "policy"]

    def counts(self) -> dict:
        """Events of the deployment seen so far by type: dict with keys triggers, runs, registered, rejected,
        promoted, rolled_back (event counts)."""
        from streams import catalog as ev

        with self.lock:
            c: dict[str, int] = {}
            for t, v in self.events:
                c[t] = c.get(t, 0) + 1
        return {"triggers": c.get(ev.TRAINING_TRIGGERED, 0), "runs": c.get(ev.TRAINING_RUN_STARTED, 0),
                "registered": c.get(ev.MODEL_REGISTERED, 0), "rejected": c.get(ev.CANDIDATE_REJECTED, 0),
                "promoted": c.get(ev.MODEL_PROMOTED, 0), "rolled_back": c.get(ev.MODEL_ROLLED_BACK, 0)}

    def stop(self) -> None:
        """Stop the follower thread."""
        self.follower.stop()


# --- the run --------------------------------------------------------------------------------------

class _Clock:
    """Paces the stream at ``rate`` events per second."""

    def __init__(self, rate: float):
        self.rate = rate
        self.t0 = time.monotonic()
        self.n = 0

    def restart(self) -> None:
        """Pace from now on (after a wait for the processors: no burst to catch up)."""
        self.t0 = time.monotonic() - self.n / self.rate if self.rate > 0 else self.t0

    def tick(self) -> None:
        """Count one event and sleep until its slot at ``rate`` events/s; more than 2 s behind, re-base
        instead of bursting to catch up."""
        self.n += 1
        if self.rate > 0:
            ahead = self.t0 + self.n / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the simulated traffic, not synchronisation
            elif ahead < -2.0:  # fell behind (busy machine): do not burst to catch up
                self.t0 = time.monotonic() - self.n / self.rate


def _lower_priority() -> None:
    """Initializer of the peers' subprocess: run below the loop's processes (they share the CPUs)."""
    with contextlib.suppress(OSError):
        os.nice(10)


def compute_peers(samples: list[Sample], reviews: list, initial: tuple[list[dict], list[str]],
                  initial_labels: list[str]) -> dict[str, list[bool]]:
    """river HAT, river ARF and the sliding-window retrain on the same events and delayed reviews (what
    the peers' subprocess runs)."""
    from infra.demo.effectiveness import baseline_series

    return baseline_series(samples, reviews, initial=initial, initial_labels=initial_labels)


def build_scenario(options: DemoOptions) -> Scenario:
    """The options' scenario: ``drifts + 1`` concepts of ``concept_events`` events each, seeded;
    raises as :func:`infra.demo.scenarios.make_scenario` does for an unknown name."""
    return make_scenario(options.scenario, seed=options.seed, concepts=options.drifts + 1,
                         concept_events=options.concept_events, initial_examples=options.initial_examples)


def run_demo(settings: Settings, options: DemoOptions | None = None, *, progress: Callable[[str], None] = print) -> DemoResult:
    """Run the demo (see the module docstring); raises ValueError naming a bad option."""
    options = options or DemoOptions()
    options.check()
    from infra.stack import kafka_stack

    # subprocesses (the processors worker) run from the repository root: give them absolute paths
    settings = settings.replace(data_dir=str(Path(settings.data_dir).resolve()))
    started = time.monotonic()
    scenario = build_scenario(options)
    with kafka_stack(settings) as live:
        return _run(live, options, scenario, progress, started)


FAULTY_TRAINER = "trainer-faulty"
REGULAR_TRAINER = "trainer-1"


@dataclass
class _RunContext:
    """What every step of one demo run shares: the run's settings (topic prefix and data dir of the
    run), options, scenario, run folder, progress printer, metrics and the problems found so far."""

    settings: Settings
    options: DemoOptions
    scenario: Scenario
    run_dir: Path
    say: Callable[[str], None]
    metrics: Metrics
    started: float
    problems: list[str] = field(default_factory=list)

    @property
    def dep_name(self) -> str:
        """The demo's deployment name (``options.deployment``)."""
        return self.options.deployment


@dataclass
class _Loop:
    """The running loop's components (started by ``_start_loop``, stopped by its ExitStack)."""

    processors: ProcessorsProcess
    monitor: LoopMonitor
    client: CtloopClient
    deployment: Deployment
    reviewers: Reviewers
    faulty: TrainerThread
    trainers: list[TrainerThread]
    on_ready: Callable[[str], None]
    regular: TrainerThread | None = None
    clock: _Clock | None = None


@dataclass
class _Served:
    """What was served: the samples in order, their prediction ids, the reviews scheduled and the
    correctness of the last 500 predictions (for the progress lines)."""

    samples: list[Sample] = field(default_factory=list)
    prediction_ids: list[str] = field(default_factory=list)
    reviews: list = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=500))
    feedback_logged: int = 0
    unmatched_feedback: int = 0
    """Feedback given up on by the pacing (still no labeled example after ``max_pace_wait_s``)."""
    paced_s: float = 0.0
    """Seconds the stream waited for the processors (``DemoOptions.max_label_lag``)."""


def _run(settings: Settings, options: DemoOptions, scenario: Scenario, progress: Callable[[str], None],
         started: float) -> DemoResult:
    """One demo run on a live Kafka (``settings``): bootstrap, stream while the phases drive the loop,
    then the summary from the topics, the effectiveness comparison and the report."""
    from streams.sdk import CtloopClient

    ctx = _open_run(settings, options, scenario, progress, started)
    client = CtloopClient(ctx.settings)
    processors, loop_settings, frozen, frozen_labels = _bootstrap(ctx, client)
    # the peers learn from the same delayed reviews: the reviewers' draws do not depend on what was
    # served, so a second Reviewers with the same seed schedules exactly the reviews the loop gets
    scheduled = _new_reviewers(options).schedule(scenario.samples)
    pool, peers_future = _start_peers(ctx, scheduled, frozen_labels)
    phases = DemoPhases(drift_points=list(scenario.known_drifts), concepts=list(scenario.concepts),
                        stream_length=len(scenario), fault_at=options.fault_at, cooldown_s=options.cooldown_seconds,
                        rate=options.rate, min_training_examples=options.min_training_examples,
                        timeout_s=options.timeout_s, started=started)
    with contextlib.ExitStack() as cleanup:  # stops, in reverse: serving, SDK, trainers, monitor, processors
        loop = _start_loop(ctx, cleanup, processors, client)
        served = _stream(ctx, loop, phases)
    _check_served(ctx, loop, served, scheduled)
    summary, closed, served_labels = _loop_figures(ctx, served)
    summary["paced_s"] = round(served.paced_s, 1)
    comparison = _effectiveness(ctx, served, served_labels, pool, peers_future, frozen)
    report_path = _report(ctx) if options.report else None
    import gc

    gc.collect()  # drop clients of finished components before the embedded broker stops
    return DemoResult(ctx.settings, options, summary, comparison, report_path, phases.drift_points,
                      time.monotonic() - started, ctx.problems, closed, loop_settings)


def _open_run(settings: Settings, options: DemoOptions, scenario: Scenario, progress: Callable[[str], None],
              started: float) -> _RunContext:
    """The run's folder, topic prefix (``<prefix>demo-<run id>.``), metrics endpoint and topics."""
    from confluent_kafka.admin import AdminClient

    from streams.topics import Topics, ensure_topics

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_id = f"{stamp}-{uuid.uuid4().hex[:4]}"
    run_dir = Path(settings.data_dir) / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.replace(topic_prefix=f"{settings.topic_prefix}demo-{run_id}.", data_dir=str(run_dir))
    elapsed = lambda: time.monotonic() - started  # noqa: E731
    say = lambda msg: progress(f"[{elapsed():6.1f}s] {msg}")  # noqa: E731
    # one Prometheus registry for the in-process parts (serving app, trainers, sink); the processors
    # worker serves its own
    metrics = Metrics("demo")
    metrics_port = metrics.serve(settings.metrics_port)
    drift_points = list(scenario.known_drifts)
    say(f"kafka {settings.bootstrap_servers}; topics prefix {settings.topic_prefix}; data {run_dir}; "
        f"metrics :{metrics_port}/metrics")
    say(f"scenario {scenario.name} (seed {options.seed}): {scenario.description}; {len(scenario)} events, "
        f"drift points {drift_points or 'none known (gradual or real drift)'}")
    ensure_topics(AdminClient(client_config(settings)), Topics.from_settings(settings))
    return _RunContext(settings, options, scenario, run_dir, say, metrics, started)


def _configure_deployment(ctx: _RunContext, client) -> dict:
    """Publish the deployment's settings (feedback loop, continuous training and deployment); returns
    the LOOP_SETTINGS_SHOWN of the resulting record (printed)."""
    from streams.deployments import DeploymentSettingsClient

    options, dep_name = ctx.options, ctx.dep_name
    settings_client = DeploymentSettingsClient(ctx.settings, producer=client.producer)
    settings_client.setup_feedback_loop(dep_name, model_name=f"{dep_name}-model", min_training_examples=options.min_training_examples)
    settings_client.setup_continuous_training(dep_name, trigger_threshold=options.trigger_threshold,
                                              drift_threshold=options.drift_threshold,
                                              performance_decay_threshold=options.performance_decay_threshold,
                                              cooldown_seconds=options.cooldown_seconds)
    record = settings_client.setup_continuous_deployment(dep_name, promotion_threshold=options.promotion_threshold,
                                                         min_samples=options.promotion_min_samples,
                                                         significance_level=options.significance_level,
                                                         rollback_margin=options.rollback_margin)
    loop_settings = {k: record.get(k) for k in LOOP_SETTINGS_SHOWN if k in record}
    ctx.say(f"deployment {dep_name!r} settings: " + ", ".join(f"{k}={v}" for k, v in loop_settings.items()))
    return loop_settings


def _bootstrap(ctx: _RunContext, client):
    """Deployment settings, the processors worker launched (not waited for), the initial champion
    trained and registered, and its frozen predictions on the whole scenario. Returns (processors,
    loop settings, frozen predictor, frozen labels per sample); on failure stops what it started
    (and closes ``client``) and re-raises."""
    from trainers.artifacts import ArtifactStore
    from trainers.bootstrap import register_initial_model
    from trainers.models import load_predictor

    processors = None
    try:  # until the ExitStack of _run owns the client
        loop_settings = _configure_deployment(ctx, client)
        # the worker starts (tens of seconds on a busy machine) while the initial model trains
        processors = ProcessorsProcess(ctx.settings, ctx.run_dir).launch()
        x0, y0 = ctx.scenario.initial
        initial = register_initial_model(ctx.settings, ctx.dep_name, x0, y0, model_name=f"{ctx.dep_name}-model")
        ctx.say(f"initial champion {initial.version} trained on {len(x0)} examples of the first concept "
                f"(holdout accuracy {initial.metrics.get('accuracy', float('nan')):.3f})")
        frozen = load_predictor(initial, ArtifactStore(ctx.settings.resolved_artifact_store))
        frozen_labels = [o[0] if isinstance(o, tuple) else o
                         for o in frozen.predict_batch([s.features for s in ctx.scenario.samples])]
    except BaseException:
        if processors is not None:
            processors.stop()
        client.close(10)
        raise
    return processors, loop_settings, frozen, frozen_labels


def _new_reviewers(options: DemoOptions) -> Reviewers:
    """The reviewers of the run (seeded by ``options.seed``: two of them schedule the same reviews)."""
    return Reviewers(fraction=options.review_fraction, min_delay=options.min_review_delay,
                     max_delay=options.max_review_delay, seed=options.seed + 7)


def _start_peers(ctx: _RunContext, scheduled: list, frozen_labels: list):
    """Submit the peers' prequential runs to a low-priority subprocess; (None, None) without peers,
    else (the pool, the future of ``compute_peers``)."""
    if not ctx.options.peers:
        return None, None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_lower_priority)
    future = pool.submit(compute_peers, ctx.scenario.samples, scheduled, ctx.scenario.initial, frozen_labels)
    ctx.say(f"peers ({', '.join(PEERS)}) computing on the same events in a low-priority subprocess")
    return pool, future


def _start_loop(ctx: _RunContext, cleanup: contextlib.ExitStack, processors: ProcessorsProcess, client) -> _Loop:
    """Wait for the processors worker, start the monitor, the faulty trainer and the serving app,
    each registered on ``cleanup`` (stopped in reverse order)."""
    from trainers.serving import Deployment

    trainers: list[TrainerThread] = []
    cleanup.callback(processors.stop)
    processors.wait_ready()
    ctx.say(f"processors worker pid {processors.proc.pid} ready (log {processors.log_path})")
    monitor = LoopMonitor(ctx.settings, ctx.dep_name)
    cleanup.callback(monitor.stop)
    monitor.start()
    cleanup.callback(_stop_trainers, ctx, trainers)
    cleanup.callback(client.close, 30)
    on_ready = lambda trainer_id: ctx.say(f"{trainer_id}: trigger partitions assigned")  # noqa: E731
    faulty = TrainerThread(ctx.settings, FAULTY_TRAINER, label_noise=ctx.options.label_noise, on_ready=on_ready,
                           metrics=ctx.metrics).start()
    trainers.append(faulty)
    ctx.say(f"faulty trainer started (label noise {ctx.options.label_noise}); it takes the fault-injection trigger "
            f"(event {ctx.options.fault_at})")
    reviewers = _new_reviewers(ctx.options)
    deployment = Deployment(ctx.settings, ctx.dep_name, client=client, metrics=ctx.metrics)
    cleanup.callback(deployment.close)
    deployment.start(timeout_s=60)
    ctx.say(f"serving app started: primary {deployment.primary_version}; streaming at "
            f"{ctx.options.rate:g} events/s, reviewers label {ctx.options.review_fraction:.0%} after "
            f"{ctx.options.min_review_delay}-{ctx.options.max_review_delay} events")
    return _Loop(processors, monitor, client, deployment, reviewers, faulty, trainers, on_ready)


def _stop_trainers(ctx: _RunContext, trainers: list[TrainerThread]) -> None:
    for t in trainers:
        if not t.stop(90):
            ctx.problems.append(f"{t.trainer_id} did not stop within 90s")


def _start_regular(ctx: _RunContext, loop: _Loop) -> TrainerThread:
    """Hand over: the faulty trainer leaves the group before the regular one joins (a member that
    joins while another leaves was seen waiting for its partitions for over 30 s)."""
    if not loop.faulty.stop(120):
        ctx.problems.append("the faulty trainer did not stop within 120s")
    if loop.faulty.error is not None:
        ctx.problems.append(f"faulty trainer crashed: {loop.faulty.error!r}")
    regular = TrainerThread(ctx.settings, REGULAR_TRAINER, on_ready=loop.on_ready, metrics=ctx.metrics).start()
    loop.trainers.append(regular)
    ctx.say("regular trainer started")
    return regular


def _apply(ctx: _RunContext, loop: _Loop, effects: list[Effect]) -> bool:
    """Carry out the phase machine's ``effects`` in order; True when streaming must stop."""
    stop = False
    for effect in effects:
        if effect.action is Action.SAY:
            ctx.say(effect.text)
        elif effect.action is Action.PROBLEM:
            ctx.problems.append(effect.text)
        elif effect.action is Action.PUBLISH_FAULT_TRIGGER:
            from processors.snapshot import publish_manual_trigger

            publish_manual_trigger(ctx.settings, ctx.dep_name, requested_by="demo (fault injection)")
        elif effect.action is Action.STOP_FAULTY:
            loop.faulty.request_stop()
        elif effect.action is Action.START_REGULAR:
            loop.regular = _start_regular(ctx, loop)
        elif effect.action is Action.STOP_STREAMING:
            stop = True
    return stop


def _stream(ctx: _RunContext, loop: _Loop, phases: DemoPhases) -> _Served:
    """Serve the scenario's events at the options' rate while ``phases`` drives the loop: stops at
    the deadline or when the processors worker dies (a problem each); prints a progress line every
    ``progress_interval_s`` seconds."""
    served = _Served()
    loop.clock = _Clock(ctx.options.rate)
    last_progress = time.monotonic()
    try:
        for sample in ctx.scenario.samples:
            position = sample.index
            now = time.monotonic()
            if _apply(ctx, loop, phases.on_clock(position, now)):
                break
            if not loop.processors.alive():
                proc = loop.processors
                _apply(ctx, loop, phases.on_worker_exit(proc.proc.returncode, str(proc.log_path), proc.crash_excerpt()))
                break
            _phase_control(ctx, loop, phases, sample)
            _serve(ctx, loop, sample, served)
            if now - last_progress >= ctx.options.progress_interval_s:
                last_progress = now
                _apply(ctx, loop, phases.on_promotions(position, loop.monitor.policy_promotions()))
                ctx.say(_progress_line(ctx, loop, sample, served))
        _apply(ctx, loop, phases.on_promotions(len(served.samples), loop.monitor.policy_promotions()))
    finally:
        ctx.say(f"streaming done: {len(served.samples)} events, drift points {phases.drift_points}; "
                "shutting down the loop")
    return served


def _phase_control(ctx: _RunContext, loop: _Loop, phases: DemoPhases, sample: Sample) -> None:
    """Before serving ``sample``: the fault injection's progress, the trainers' hand-over, a drift."""
    if phases.fault_pending:
        outcome, runs = faulty_run_outcome(loop.monitor.snapshot(), FAULTY_TRAINER)
        _apply(ctx, loop, phases.on_fault_progress(sample.index, outcome, runs, loop.monitor.added_to_training))
    _apply(ctx, loop, phases.on_trainers(loop.faulty.alive()))
    _apply(ctx, loop, phases.on_event(sample.index, sample.concept))


def _serve(ctx: _RunContext, loop: _Loop, sample: Sample, served: _Served) -> None:
    """Predict ``sample``, schedule its review, log the reviews due now, pace the stream."""
    p = loop.deployment.predict(sample.features)
    served.samples.append(sample)
    served.prediction_ids.append(p.prediction_id)
    served.recent.append(p.label == sample.label)
    review = loop.reviewers.observe(sample, p.label, p.prediction_id)
    if review is not None:
        served.reviews.append(review)
    for r in loop.reviewers.due(sample.index):
        loop.client.log_feedback(r.prediction_id, ctx.dep_name, label=r.label, feedback_type=r.feedback_type,
                                 verdict=r.verdict, reviewer=r.reviewer)
        served.feedback_logged += 1
    loop.clock.tick()
    served.paced_s += _wait_for_processors(ctx, loop, served)


def _wait_for_processors(ctx: _RunContext, loop: _Loop, served: _Served) -> float:
    """While the processors are more than ``max_label_lag`` labels behind the feedback logged (the serving
    app's labeled-examples feed says how many arrived), wait, up to ``max_pace_wait_s``; returns the
    seconds waited (the wall-clock pace restarts after a wait: no burst to catch up)."""
    limit = ctx.options.max_label_lag
    if limit <= 0 or loop.deployment.online_learner is None:
        return 0.0

    def lag() -> int:
        return served.feedback_logged - served.unmatched_feedback - loop.deployment.online_examples

    if lag() <= limit:
        return 0.0
    started = time.monotonic()
    deadline = started + ctx.options.max_pace_wait_s
    while lag() > limit // 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # pacing the simulated traffic to the loop's throughput, not synchronisation
    if lag() > limit // 2:   # feedback that never became an example (e.g. not joined): stop waiting for it
        served.unmatched_feedback += lag()
    waited = time.monotonic() - started
    loop.clock.restart()
    return waited


def _progress_line(ctx: _RunContext, loop: _Loop, sample: Sample, served: _Served) -> str:
    c = loop.monitor.counts()
    concept = ctx.scenario.concepts[sample.concept]
    return (f"events {len(served.samples):6d} | concept {concept} | acc(last 500) "
            f"{sum(served.recent) / max(1, len(served.recent)):.2f} | primary {loop.deployment.primary_version} shadow "
            f"{loop.deployment.shadow_version or '-'} | triggers {c['triggers']} runs {c['runs']} registered "
            f"{c['registered']} rejected {c['rejected']} promoted {c['promoted']} rolled back {c['rolled_back']}")


def _check_served(ctx: _RunContext, loop: _Loop, served: _Served, scheduled: list) -> None:
    """Problems after streaming: the regular trainer crashed; the reviews served differ from those
    scheduled for the peers (the comparison would not be fair)."""
    if loop.regular is not None and loop.regular.error is not None:
        ctx.problems.append(f"trainer crashed: {loop.regular.error!r}")
    if [(r.sample_index, r.due_index, r.label) for r in served.reviews] != \
            [(r.sample_index, r.due_index, r.label) for r in scheduled if r.sample_index < len(served.samples)]:
        ctx.problems.append("the peers' review schedule differs from the reviews served (the comparison is not fair)")


def _loop_figures(ctx: _RunContext, served: _Served) -> tuple[dict, list[bool], list]:
    """The summary recomputed from the topics (with served accuracy and per-drift latencies), whether
    the loop closed after each drift, and the label served for each sample (None: not on the topic)."""
    from streams import catalog as ev

    events = LoopEvents.read(ctx.settings, timeout_s=60)
    summary = summarise(events, ctx.dep_name)
    by_id = {v["prediction_id"]: v.get("label") for t, v, *_ in events.predictions
             if t == ev.PREDICTION_LOGGED and v.get("role") == "primary"}
    served_labels = [by_id.get(pid) for pid in served.prediction_ids]
    missing = sum(1 for s in served_labels if s is None)
    if missing:
        ctx.problems.append(f"{missing} served predictions not found on the predictions topic")
    drift_points = list(ctx.scenario.known_drifts)
    served_points = [d for d in drift_points if d < len(served.samples)]
    summary.update(_accuracy_summary(served.samples, served_labels, served_points))
    summary["latency"].update(_drift_latencies(served.samples, served.prediction_ids, events, served_points, ctx.dep_name))
    closed = _closed_per_drift(served.prediction_ids, events, drift_points, ctx.dep_name)
    for k, ok in enumerate(closed, 1):
        if not ok:
            ctx.problems.append(f"drift {k}: no model promoted by the policy before the "
                                f"{'next drift' if k < len(drift_points) else 'end of the stream'}")
    return summary, closed, served_labels


def _effectiveness(ctx: _RunContext, served: _Served, served_labels: list, pool, peers_future, frozen) -> Comparison | None:
    """The prequential comparison on the served events (None, with a problem, when it fails); shuts
    the peers' pool down."""
    try:
        peers = None
        if peers_future is not None:
            ctx.say("waiting for the peers' prequential runs")
            peers = {name: correct[:len(served.samples)] for name, correct in peers_future.result(timeout=600).items()}
        served_points = [d for d in ctx.scenario.known_drifts if d < len(served.samples)]
        return compare(served.samples, served_points, served.reviews, frozen_predict_batch=frozen.predict_batch,
                       served_labels=served_labels, peers=peers or {})
    except Exception as exc:  # noqa: BLE001 - the loop's figures stand without the comparison
        log.exception("effectiveness comparison failed")
        ctx.problems.append(f"effectiveness comparison failed: {exc!r}")
        return None
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _report(ctx: _RunContext) -> Path | None:
    """The ClickHouse sink and the HTML report (None, with a problem, when either fails)."""
    try:
        return _sink_and_report(ctx.settings, ctx.run_dir, ctx.say, ctx.metrics)
    except Exception as exc:  # noqa: BLE001
        log.exception("sink/report failed")
        ctx.problems.append(f"ClickHouse sink / report failed: {exc!r}")
        return None


def _accuracy_summary(samples: list[Sample], served_labels: list, drift_points: list[int], width: int = 1000) -> dict:
    """Served accuracy: whole stream; before the first drift (its last ``width`` events), the first
    ``width`` after each drift and the last ``width`` of each post-drift phase (pooled), capped at a
    third of the shortest phase."""
    if not samples:
        return {"accuracy": {}}
    correct = [lbl == s.label for lbl, s in zip(served_labels, samples)]
    bounds = [0, *drift_points, len(samples)]
    w = max(1, min(width, min(b - a for a, b in zip(bounds, bounds[1:])) // 3 or 1))
    kinds = summarise_kinds(correct, phase_windows(len(samples), drift_points, w))
    out = {"overall": sum(correct) / len(correct)}
    if drift_points:
        out.update(before_drift=kinds.get("before_drift"), after_drift=kinds.get("after_drift"),
                   end_of_phase=kinds.get("end_of_phase"))
    return {"accuracy": out}


def _closed_per_drift(prediction_ids: list[str], events: LoopEvents, drift_points: list[int], dep_name: str) -> list[bool]:
    """Per drift point: whether the policy promoted a model between the first prediction after it and
    the first prediction after the next drift (or the end). A drift not reached is not closed."""
    from streams import catalog as ev

    primary = {v["prediction_id"]: v["event_time"] for t, v, *_ in events.predictions
               if t == ev.PREDICTION_LOGGED and v.get("role") == "primary"}
    promoted = [v["event_time"] for t, v, *_ in events.updates
                if t == ev.MODEL_PROMOTED and v["deployment"] == dep_name and v["decided_by"] == "policy"]
    out = []
    if not prediction_ids:
        return [False] * len(drift_points)
    for k, d in enumerate(drift_points):
        t0 = primary.get(prediction_ids[d]) if d < len(prediction_ids) else None
        nxt = drift_points[k + 1] if k + 1 < len(drift_points) else None
        # the bound: the first prediction after the next drift, else the last one served (a promotion
        # after the stream ended served nothing)
        t1 = primary.get(prediction_ids[nxt] if nxt is not None and nxt < len(prediction_ids) else prediction_ids[-1])
        out.append(t0 is not None and t1 is not None and any(t0 <= t < t1 for t in promoted))
    return out


def _drift_latencies(samples, prediction_ids, events: LoopEvents, drift_points, dep_name) -> dict:
    """Per drift, from the event time of the first prediction after it: to the first automatic
    trigger, to the first promotion by the policy, and to the promotion of the champion that served
    the end of that phase (the model that recovered; None when it was not promoted after the drift)."""
    from streams import catalog as ev

    primary = {v["prediction_id"]: v for t, v, *_ in events.predictions
               if t == ev.PREDICTION_LOGGED and v.get("role") == "primary"}
    triggers = sorted(v["event_time"] for t, v, *_ in events.triggers
                      if t == ev.TRAINING_TRIGGERED and v["deployment"] == dep_name and v["reason"] != "manual")
    promoted = sorted((v["event_time"], v["model_version"]) for t, v, *_ in events.updates
                      if t == ev.MODEL_PROMOTED and v["deployment"] == dep_name and v["decided_by"] == "policy")
    to_trigger, to_promotion, to_recovery = [], [], []
    ends = [*drift_points[1:], len(prediction_ids)]
    for d, end in zip(drift_points, ends):
        first = primary.get(prediction_ids[d]) if d < len(prediction_ids) else None
        if first is None:
            continue
        t0 = first["event_time"]
        after = [t for t in triggers if t >= t0]
        to_trigger.append(round((after[0] - t0) / 1000, 2) if after else None)
        after = [t for t, _v in promoted if t >= t0]
        to_promotion.append(round((after[0] - t0) / 1000, 2) if after else None)
        last = primary.get(prediction_ids[end - 1])
        final = [t for t, v in promoted if last is not None and v == last["model_version"] and t >= t0]
        to_recovery.append(round((final[0] - t0) / 1000, 2) if final else None)
    return {"drift_to_first_trigger_s": to_trigger, "drift_to_first_promotion_s": to_promotion,
            "drift_to_recovering_promotion_s": to_recovery}


def _sink_and_report(settings, run_dir: Path, say, metrics=None) -> Path:
    from infra.report import write_report
    from infra.clickhouse_sink import ClickHouseSink

    say("ClickHouse sink: loading every topic")
    sink = ClickHouseSink(settings, metrics=metrics)
    try:
        rows = sink.run_until_caught_up(timeout_s=120)
        say(f"ClickHouse sink caught up ({rows} rows)")
        path = write_report(settings, run_dir / "report.html", client=sink.client)
    finally:
        sink.close()
    say(f"HTML report written: {path}")
    return Path(path)


# --- printing -------------------------------------------------------------------------------------

def _fmt(v, pct=False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else str(v)


def _seconds(values) -> str:
    return ", ".join("-" if v is None else f"{v:.1f}" for v in values) if values else "-"


def render_summary(result: DemoResult) -> str:
    """The run's summary as a plain-text table (rows of name and value), then rejections, deployment
    settings, the effectiveness comparison, the report path, the verdict line and any problems."""
    s = result.summary
    lat = s["latency"]
    acc = s.get("accuracy", {})

    def lat_line(name):
        v = lat.get(name)
        return "-" if not v else f"median {v['median_s']:.1f}s, max {v['max_s']:.1f}s (n={v['count']})"

    rows = [
        ("scenario, seed", f"{result.options.scenario}, {result.options.seed}"),
        ("events logged (predictions, shadow, feedback)", f"{s['events_logged']} ({s['predictions']}, {s['shadow_predictions']}, {s['feedback_events']})"),
        ("predictions reviewed", s["reviewed"]),
        ("triggers by reason", ", ".join(f"{k} {v}" for k, v in s["triggers_by_reason"].items()) or "-"),
        ("training runs (finished, failed)", f"{s['training_runs']} ({s['training_runs_finished']}, {s['training_runs_failed']})"),
        ("models registered", s["models_registered"]),
        ("candidates rejected", f"{s['candidates_rejected']} " + (json.dumps(s["rejected_by_stage"]) if s["rejected_by_stage"] else "")),
        ("promotions by the policy", s["promotions"]),
        ("rollbacks", s["rollbacks"]),
        ("online fallback engaged / retired (predictions)",
         f"{s.get('fallback_engagements', 0)} / {s.get('fallback_retirements', 0)} ({s.get('fallback_predictions', 0)})"),
        ("champions in order", " -> ".join(s["champions"]) or "-"),
        ("drift points (event index)", ", ".join(map(str, result.drift_points)) or "none known"),
        ("served accuracy, whole stream", _fmt(acc.get("overall"), True)),
        ("served accuracy before drift / first events after / end of phase",
         " / ".join(_fmt(acc.get(k), True) for k in ("before_drift", "after_drift", "end_of_phase"))),
        ("latency feedback -> trigger", lat_line("feedback_to_trigger")),
        ("latency trigger -> registered", lat_line("trigger_to_registered")),
        ("latency registered -> promoted", lat_line("registered_to_promoted")),
        ("per drift: -> first trigger (s)", _seconds(lat.get("drift_to_first_trigger_s"))),
        ("per drift: -> first promotion (s)", _seconds(lat.get("drift_to_first_promotion_s"))),
        ("per drift: -> promotion of the model serving its end (s)", _seconds(lat.get("drift_to_recovering_promotion_s"))),
        ("dead letters", s["dead_letters"]),
        ("wall time", f"{result.elapsed_s:.0f}s"),
        ("stream waited for the processors (max_label_lag)", f"{s.get('paced_s', 0.0):.0f}s"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = ["", "ctloop demo summary (from the events on the topics)", "=" * (width + 40)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    for r in s.get("rejections", []):
        lines.append(f"  rejected {r['model_version']} ({r['stage']}): {'; '.join(r['reasons'])[:240]}")
    if result.loop_settings:
        lines.append("deployment settings: " + ", ".join(f"{k}={v}" for k, v in result.loop_settings.items()))
    if result.comparison is not None:
        lines += ["", f"effectiveness: prequential accuracy on the same {len(next(iter(result.comparison.series.values())))} "
                  "served events, every contender fed the same delayed labels (whole stream first)",
                  result.comparison.render()]
    lines.append("")
    lines.append(f"HTML report: {result.report_path}" if result.report_path else "HTML report: not written")
    verdict = "yes" if result.ok else "NO"
    closed = sum(result.closed)
    lines.append(f"loop closed after {closed} of {len(result.closed)} drift(s) (a promotion by the policy), "
                 f"{s['candidates_rejected']} candidate(s) rejected: requirements met: {verdict}")
    for p in result.problems:
        lines.append(f"problem: {p}")
    return "\n".join(lines)
