"""Run the stream-processor worker: ``run_worker(settings)`` / ``python -m processors.worker``.

One worker process runs the faust app with the stages of ``settings.processor_stages`` (all of
``processors.app.STAGES`` when empty), serves Prometheus metrics, and stops cleanly on SIGTERM/SIGINT
(faust's worker installs the handlers). When ``settings.processor_ready_file`` is set, the worker writes
that file (JSON: pid, metrics port, assigned partitions) once its consumers have been assigned partitions
and its tables are recovered, so that tests and supervisors wait on a condition rather than a sleep.
"""
from __future__ import annotations

import json
import logging
import os
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
    from streams.topics import Topics, ensure_topics

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    ensure_topics(admin, Topics.from_settings(settings))
    ensure_internal_topics(admin, settings)   # before the group forms: the assignor co-partitions them
    worker, app, ctx = build_worker(settings)
    port = ctx.metrics.serve(settings.metrics_port)
    log.info("processor worker %d: metrics on :%d", os.getpid(), port)
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


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(settings)


if __name__ == "__main__":
    main()
