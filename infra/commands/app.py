"""``ctloop app``: the production stack's serving app on the shared topics (infra/traffic.py)."""
from __future__ import annotations

import signal
import threading

import click

from infra.commands.core import require_bootstrap


def register(cli: click.Group) -> None:
    """Add the ``app`` command to ``cli``."""
    @cli.command("app")
    @click.option("--deployment", default="app", show_default=True, help="Deployment name.")
    @click.option("--rate", type=click.FloatRange(0.0), default=50.0, show_default=True,
                  help="Predictions per second (0: as fast as it can).")
    @click.option("--events", type=click.IntRange(0), default=0, show_default=True,
                  help="Stop after N predictions (0: until SIGTERM/SIGINT).")
    @click.option("--drift-every", type=click.IntRange(0), default=20_000, show_default=True,
                  help="The simulated world drifts every N events (0: never).")
    @click.option("--review-fraction", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
                  help="Share of predictions that reviewers label (20-200 events later).")
    @click.option("--metrics-port", type=int, default=None, help="Prometheus port (default: CTLOOP_METRICS_PORT; 0 picks one).")
    @click.pass_obj
    def app(settings, deployment, rate, events, drift_every, review_fraction, metrics_port):
        """Serve simulated traffic on the shared topics: the deployment's settings, an initial champion
        when there is none, predictions through the serving Deployment (following promotions) and the
        reviewers' labels. The stack's processors, trainer and sink do the rest. Runs until SIGTERM."""
        from infra.metrics import Metrics
        from infra.traffic import AppOptions, run_app

        require_bootstrap(settings)
        try:
            options = AppOptions(deployment=deployment, rate=rate, events=events, drift_every=drift_every,
                                 review_fraction=review_fraction)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        metrics = Metrics("app")
        port = metrics.serve(settings.metrics_port if metrics_port is None else metrics_port)
        click.echo(f"app: deployment {deployment!r}, topics {settings.topic_prefix}*, metrics :{port}/metrics")
        result = run_app(settings, options, stop=stopping.is_set, metrics=metrics)
        click.echo(f"app stopped: {result.predictions} predictions, {result.feedback} feedback, {result.drifts} drifts; "
                   f"primary {result.primary_version}")
