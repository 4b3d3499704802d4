"""Training commands: ``ctloop train`` runs a trainer; ``ctloop models DEPLOYMENT`` lists the
registered versions of a deployment with alias, metrics and lineage (folded from the topics)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from infra.commands.core import require_bootstrap


def model_rows(registry, deployment: str) -> list[dict]:
    """One dict per version of ``deployment``, oldest first (what `ctloop models` prints)."""
    rows = []
    for mv in registry.versions(deployment):
        lineage = mv.lineage or {}
        offsets = ",".join(f"{p['partition']}:{p['start_offset']}-{p['end_offset']}" for p in lineage.get("partitions", []))
        rows.append({
            "version": mv.version, "alias": mv.alias,
            "registered": datetime.fromtimestamp(mv.registered_at / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "accuracy": mv.metrics.get("accuracy"), "macro_f1": mv.metrics.get("macro_f1"),
            "rows": lineage.get("row_count"), "offsets": offsets, "content_hash": lineage.get("content_hash", ""),
            "base_dataset": lineage.get("base_dataset"), "trigger_id": mv.trigger_id, "run_id": mv.run_id,
            "artifact_uri": mv.artifact_uri, "artifact_sha256": mv.artifact_sha256, "metrics": mv.metrics,
        })
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def register(cli: click.Group) -> None:
    @cli.command("train")
    @click.option("--trainer-id", default=None, help="Name of this trainer in run events (default: host-random).")
    @click.option("--label-noise", type=click.FloatRange(0.0, 1.0), default=0.0,
                  help="Flip this fraction of training labels (fault injection: makes deliberately bad candidates).")
    @click.option("--device", default=None, help="auto, cpu or cuda:N (default: CTLOOP_TRAINER_DEVICE).")
    @click.option("--metrics-port", type=int, default=None, help="Prometheus port (default: CTLOOP_METRICS_PORT; 0 picks one).")
    @click.pass_obj
    def train(settings, trainer_id, label_noise, device, metrics_port):
        """Run a trainer: consume training triggers (group <prefix>trainers) until SIGTERM/SIGINT."""
        from trainers.worker import serve

        require_bootstrap(settings)
        if device is not None:
            settings = settings.replace(trainer_device=device)
        if metrics_port is not None:
            settings = settings.replace(metrics_port=metrics_port)
        handled = serve(settings, trainer_id=trainer_id, label_noise=label_noise)
        click.echo(f"trainer stopped after {handled} trigger(s)")

    @cli.command("models")
    @click.argument("deployment")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option("--timeout", "timeout_s", type=float, default=15.0, show_default=True)
    @click.pass_obj
    def models(settings, deployment, as_json, timeout_s):
        """List the model versions of DEPLOYMENT with alias, metrics and lineage."""
        from trainers.registry import ModelRegistry

        require_bootstrap(settings)
        registry = ModelRegistry.load(settings, timeout_s=timeout_s)
        rows = model_rows(registry, deployment)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            known = ", ".join(registry.deployments()) or "none"
            click.echo(f"no model versions for {deployment!r} (deployments with models: {known})")
            return
        header = ("VERSION", "ALIAS", "REGISTERED (UTC)", "ACC", "F1", "ROWS", "OFFSETS (partition:start-end)", "CONTENT HASH")
        table = [header] + [(r["version"], r["alias"], r["registered"], _fmt(r["accuracy"]), _fmt(r["macro_f1"]),
                             _fmt(r["rows"]), r["offsets"] or "-", (r["content_hash"] or "-")[:12]) for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        for row in table:
            click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        for r in rows:
            if r["base_dataset"]:
                click.echo(f"{r['version']}: base dataset {r['base_dataset']}")
