"""Run the stream-processor worker: ``run_worker(settings)`` / ``python -m processors.worker``.

One worker process runs the faust app with the stages of ``settings.processor_stages`` (all of
``processors.app.STAGES`` when empty), serves Prometheus metrics, and stops cleanly on SIGTERM/SIGINT
(faust's worker installs the handlers). When ``settings.processor_ready_file`` is set, the worker writes
that file (JSON: pid, metrics port, assigned partitions) once its consumers have been assigned partitions
and its tables are recovered, so that tests and supervisors wait on a condition rather than a sleep.

A worker watches its broker (processors/liveness.py): ``/healthz`` on the metrics port, the gauge
``ctloop_processor_last_progress_seconds``, and an exit with code 75 at once when its topics are gone or
recreated (a broker that restarted empty), after ``processor_stall_timeout_s`` without the broker or
with a table recovery that receives nothing. On start it makes its own topics that the broker cannot
serve again (processors/topic_repair.py). ``run_workers`` (``ctloop process``, ``python -m processors.worker``)
runs ``processor_workers`` such workers as child processes in one consumer group and supervises them.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.metrics import Metrics
from infra.settings import Settings

log = logging.getLogger(__name__)


def stage_names(settings: Settings) -> tuple[str, ...]:
    """The stage modules a worker runs: settings.processor_stages, else every stage of the app."""
    from processors.app import STAGES

    names = tuple(s.strip() for s in settings.processor_stages.split(",") if s.strip())
    if not names:
        return STAGES
    resolved = []
    for name in names:
        resolved.append(name if "." in name else f"processors.{name}")
    return tuple(resolved)


def _tune(app, settings: Settings) -> None:
    """Faust settings for quick starts and quick joins against a small cluster."""
    app.conf.stream_recovery_delay = 0.0       # recover tables right after assignment (default waits 3 s)
    app.conf.broker_commit_interval = 0.5       # commit often: fewer events replayed after a crash
    app.conf.broker_rebalance_timeout = max(settings.session_timeout_ms / 1000, 10.0)
    app.conf.stream_buffer_maxsize = 8192
    app.conf.producer_linger = 0.005            # batch changelog records (seconds)
    # faust's producer (changelogs, internal topics) has the same record limit as ctloop's producers; rows
    # are sized against it before they are sent (processors/tables.py)
    app.conf.producer_max_request_size = settings.max_message_bytes
    app.conf.consumer_max_fetch_size = max(4 * 1024 * 1024, settings.fetch_max_partition_bytes)
    _short_fetch_wait(settings.processor_fetch_wait_ms)


def _short_fetch_wait(max_wait_ms: int) -> None:
    """faust hard-codes aiokafka's fetch_max_wait_ms=1500 for worker consumers. A broker that does
    not answer a long poll early when records arrive (the embedded Tansu) then adds up to 1.5 s per
    hop. Cap it, in this worker process only (faust offers no setting for it)."""
    from faust.transport.drivers import aiokafka as driver

    thread_cls = driver.AIOKafkaConsumerThread
    if getattr(thread_cls, "_ctloop_fetch_wait_ms", None) == max_wait_ms:
        return
    original = getattr(thread_cls, "_ctloop_original_create", thread_cls._create_worker_consumer)

    def _create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    thread_cls._ctloop_original_create = original
    thread_cls._create_worker_consumer = _create_worker_consumer
    thread_cls._ctloop_fetch_wait_ms = max_wait_ms


def _write_ready(path: str, payload: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, target)  # atomic: a reader never sees half a file


def build_worker(settings: Settings, *, loglevel: str | None = None):
    """The faust Worker (not started), its app and context."""
    from faust.worker import Worker

    from processors.app import build_app

    metrics = Metrics("processors")
    app, ctx = build_app(settings, stages=stage_names(settings), metrics=metrics)
    _tune(app, settings)
    state = {"ready": False}

    def assigned() -> list[str]:
        try:
            tps = app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer (no agents)
            tps = ()
        return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)

    def mark_ready() -> None:
        if state["ready"]:
            return
        state["ready"] = True
        log.info("processor worker ready (stages: %s; %d partitions assigned)",
                 ", ".join(stage_names(settings)), len(assigned()))
        if settings.processor_ready_file:
            _write_ready(settings.processor_ready_file,
                         {"pid": os.getpid(), "metrics_port": metrics.port, "assigned": assigned()})

    @app.on_rebalance_complete.connect
    async def _on_rebalance_complete(sender, **kwargs) -> None:  # noqa: ARG001 - faust signal signature
        mark_ready()

    async def _on_startup_finished() -> None:
        # An app without agents never joins a group: it is ready as soon as it has started.
        if not app.agents:
            mark_ready()

    app.on_startup_finished = _on_startup_finished
    worker = Worker(app, loglevel=loglevel or settings.log_level, quiet=True, redirect_stdouts=False)
    return worker, app, ctx


def run_worker(settings: Settings) -> None:
    """Run a processor worker in the foreground until SIGTERM/SIGINT."""
    if not settings.bootstrap_servers:
        raise ValueError("bootstrap_servers: a processor worker needs a Kafka cluster (CTLOOP_BOOTSTRAP_SERVERS)")
    from confluent_kafka.admin import AdminClient

    from processors.ownership import ensure_internal_topics
    from streams.kafka_config import client_config
    from streams.topics import Topics, ensure_topics

    admin = AdminClient(client_config(settings))
    ensure_topics(admin, Topics.from_settings(settings))
    ensure_internal_topics(admin, settings)   # before the group forms: the assignor co-partitions them
    worker, app, ctx = build_worker(settings)
    _repair_own_topics(settings, app)         # before the watch records the topic ids
    watch = _watch_broker(settings, ctx.metrics, app)

    def health() -> tuple[bool, dict]:
        healthy, details = watch.health()
        try:
            details["assigned"] = sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment())
        except Exception:  # noqa: BLE001 - no consumer yet
            details["assigned"] = []
        return healthy, details

    ctx.metrics.set_health(health)
    port = ctx.metrics.serve(settings.metrics_port)
    log.info("processor worker %d: metrics on :%d", os.getpid(), port)
    watch.start()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        try:
            ctx.producer.close(timeout_s=10)
        except Exception as exc:  # noqa: BLE001 - shutting down; report, do not mask the exit
            log.warning("processor worker: output producer close failed: %s", exc)


def _repair_own_topics(settings: Settings, app=None) -> list[str]:
    """Make the worker's own topics (table changelogs, internal topics) that a broker cannot serve
    again (processors/topic_repair.py: records a previous worker wrote into a restarted empty broker
    before the topic existed made faust's table recovery wait forever). ``app``: the worker's faust
    app, else a process of its own builds one for the table names (the supervisor, which runs none)."""
    from processors.topic_repair import own_topic_specs, repair_own_topics

    if app is None:
        # building the app starts its followers' threads: do it in a short-lived process of its own
        proc = subprocess.run([sys.executable, "-m", "processors.topic_repair"], env=child_environment(settings),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"topic repair failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        made = [line for line in proc.stdout.splitlines() if line.strip()]
        if made:
            log.warning("processor supervisor %d: made again: %s", os.getpid(), ", ".join(made))
        return made
    made = repair_own_topics(settings, own_topic_specs(settings, app))
    if made:
        log.warning("processor worker %d: made again: %s", os.getpid(), ", ".join(made))
    return made


def _watch_broker(settings: Settings, metrics: Metrics, app=None):
    """The worker's BrokerWatch: every topic of the registry and the internal ones must stay on the
    broker, and a table recovery of ``app`` must not wait for records that never come."""
    from processors.liveness import EXIT_BROKER_LOST, BrokerWatch, broker_check, recovery_problem
    from processors.ownership import INTERNAL_TOPICS
    from streams.topics import Topics

    required = Topics.from_settings(settings).all_names() + [f"{settings.topic_prefix}{t}" for t in INTERNAL_TOPICS]

    def on_stall(problem: str) -> None:
        log.critical("processor worker %d: no usable broker for %gs (%s); exiting with %d for a restart",
                     os.getpid(), settings.processor_stall_timeout_s, problem, EXIT_BROKER_LOST)
        logging.shutdown()
        os._exit(EXIT_BROKER_LOST)   # nothing to flush: the broker that would take it is gone

    check = broker_check(settings, required)

    def probe():
        problem = check()
        if problem is None and app is not None:
            # the manager's _recovery, not .recovery: that would create it, from this thread
            problem = recovery_problem(getattr(getattr(app, "tables", None), "_recovery", None))
        return problem

    return BrokerWatch(probe, settings.processor_stall_timeout_s, on_stall, metrics=metrics)


def child_environment(settings: Settings, base: dict | None = None) -> dict[str, str]:
    """Environment with every field of ``settings`` as ``CTLOOP_<FIELD>`` (for child processes)."""
    env = dict(os.environ if base is None else base)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[f"CTLOOP_{f.name.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


def child_settings(settings: Settings, index: int) -> Settings:
    """Settings of the ``index``-th child of a supervisor: one worker, metrics on metrics_port + index
    (0 stays 0: a free port), ready file ``<processor_ready_file>.<index>`` when one is set."""
    return settings.replace(processor_workers=1,
                            metrics_port=settings.metrics_port + index if settings.metrics_port else 0,
                            processor_ready_file=f"{settings.processor_ready_file}.{index}"
                            if settings.processor_ready_file else "")


def run_workers(settings: Settings, poll_s: float = 0.2) -> int:
    """Run ``settings.processor_workers`` processor workers (1: in this process, ``run_worker``).

    More than one: each is a child process (``python -m processors.worker`` with :func:`child_settings`)
    in the consumer group ``<prefix>processors``. SIGTERM/SIGINT are passed on to the children. A child
    that exits non-zero stops the others (SIGTERM, then SIGKILL after 30 s) and the supervisor returns
    its exit code, so that the supervisor's own supervisor (systemd, Kubernetes) restarts the set;
    returns 0 once every child exited cleanly. When ``processor_ready_file`` is set, it is written
    (JSON: pid, workers: the children's ready files) once every child is ready.
    ValueError when processor_workers < 1."""
    n = settings.processor_workers
    if n < 1:
        raise ValueError(f"processor_workers: must be at least 1, got {n}")
    if n == 1:
        run_worker(settings)
        return 0
    if not settings.bootstrap_servers:
        raise ValueError("bootstrap_servers: a processor worker needs a Kafka cluster (CTLOOP_BOOTSTRAP_SERVERS)")
    from confluent_kafka.admin import AdminClient

    from processors.ownership import ensure_internal_topics
    from streams.kafka_config import client_config
    from streams.topics import Topics, ensure_topics

    admin = AdminClient(client_config(settings))
    ensure_topics(admin, Topics.from_settings(settings))
    ensure_internal_topics(admin, settings)
    _repair_own_topics(settings)              # once, before the children start (they would race)
    children = []
    for i in range(n):
        cs = child_settings(settings, i)
        if cs.processor_ready_file:
            Path(cs.processor_ready_file).unlink(missing_ok=True)
        children.append((cs, subprocess.Popen([sys.executable, "-m", "processors.worker"], env=child_environment(cs))))
    log.info("processor supervisor %d: %d workers (pids %s)", os.getpid(), n, ", ".join(str(p.pid) for _, p in children))
    stopping = {"signal": None}

    def _forward(signum, _frame):
        stopping["signal"] = signum
        for _, proc in children:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, _forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    ready_written = False
    code = 0
    try:
        while True:
            done = [(cs, p) for cs, p in children if p.poll() is not None]
            failed = [p for _, p in done if p.returncode != 0]
            if failed and stopping["signal"] is None:
                code = _exit_code(failed[0].returncode)
                log.error("processor supervisor: worker %d exited with %d; stopping the others", failed[0].pid, code)
                _stop_children(children)
                break
            if len(done) == len(children):
                code = _exit_code(failed[0].returncode) if failed else 0
                break
            if not ready_written and settings.processor_ready_file and all(
                    Path(cs.processor_ready_file).exists() for cs, _ in children):
                _write_ready(settings.processor_ready_file, {
                    "pid": os.getpid(), "workers": [json.loads(Path(cs.processor_ready_file).read_text())
                                                    for cs, _ in children]})
                ready_written = True
            time.sleep(poll_s)   # supervising children: poll their exit status
    finally:
        _stop_children(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _exit_code(returncode: int) -> int:
    """A child's exit status as a process exit code: killed by signal N -> 128 + N, as a shell reports it."""
    return returncode if returncode >= 0 else 128 - returncode


def _stop_children(children, timeout_s: float = 30.0) -> None:
    for _, proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for _, proc in children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    """``python -m processors.worker``: settings from the environment; exits with the workers' exit code."""
    faulthandler.enable()   # a crash inside a C extension (librdkafka, ...) prints every thread's Python stack
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run_workers(settings))


if __name__ == "__main__":
    main()
