"""Processing commands: ``ctloop process`` (the stream-processor worker) and ``ctloop trigger``
(a manual training trigger)."""
from __future__ import annotations

import getpass
import json

import click

from infra.commands.core import require_bootstrap


def register(cli: click.Group) -> None:
    """Add the ``process`` and ``trigger`` commands to ``cli``."""
    @cli.command("process")
    @click.option("--stages", default=None, help="Comma-separated stage modules (default: CTLOOP_PROCESSOR_STAGES, else all).")
    @click.option("--metrics-port", type=int, default=None, help="Prometheus port (default: CTLOOP_METRICS_PORT; 0 picks one).")
    @click.option("--workers", type=click.IntRange(min=1), default=None,
                  help="Worker processes in one consumer group (default: CTLOOP_PROCESSOR_WORKERS).")
    @click.pass_obj
    def process(settings, stages, metrics_port, workers):
        """Run stream-processor workers (feedback join, counters, drift, performance, triggers...)
        until SIGTERM/SIGINT: CTLOOP_PROCESSOR_WORKERS of them, supervised (a worker that exits non-zero
        stops the set with its exit code). Each serves Prometheus metrics and /healthz."""
        from processors.worker import run_workers

        require_bootstrap(settings)
        if stages is not None:
            settings = settings.replace(processor_stages=stages)
        if metrics_port is not None:
            settings = settings.replace(metrics_port=metrics_port)
        if workers is not None:
            settings = settings.replace(processor_workers=workers)
        code = run_workers(settings)
        if code:
            raise SystemExit(code)

    @cli.command("trigger")
    @click.argument("deployment")
    @click.option("--mode", "training_mode", type=click.Choice(["full", "finetune"]), default=None,
                  help="Training mode (default: the deployment's setting).")
    @click.option("--requested-by", default=None, help="Who asks (default: the current user).")
    @click.pass_obj
    def trigger(settings, deployment, training_mode, requested_by):
        """Publish a manual training trigger for DEPLOYMENT (snapshot: its training window of the labeled
        examples so far: all, the sliding window, or since the latest change point a trigger named)."""
        from processors.snapshot import publish_manual_trigger

        require_bootstrap(settings)
        try:
            user = requested_by or getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in some containers
            user = "cli"
        record = publish_manual_trigger(settings, deployment, requested_by=user, training_mode=training_mode)
        click.echo(json.dumps({k: record[k] for k in ("trigger_id", "deployment", "reason", "snapshot", "evidence")}))
