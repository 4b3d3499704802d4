"""Training commands: ``ctloop train`` runs a trainer; ``ctloop models DEPLOYMENT`` lists the
registered versions of a deployment with alias, metrics and lineage (folded from the topics);
``ctloop artifacts orphans [--delete]`` lists (and removes) artifact files no lifecycle event names."""
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
    """Add the ``train``, ``models`` and ``artifacts orphans`` commands to ``cli``."""
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
        from streams.registry import ModelRegistry

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

    @cli.group("artifacts")
    def artifacts():
        """The model artifact store (CTLOOP_ARTIFACT_STORE, default <data dir>/artifacts)."""

    @artifacts.command("orphans")
    @click.option("--delete", is_flag=True, help="Delete the orphaned files (never a named or recent one).")
    @click.option("--min-age", "min_age_s", type=click.FloatRange(min=0.0), default=None,
                  help="Seconds a file must be old to count as orphaned (default: CTLOOP_TRIGGER_TIMEOUT_S).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option("--timeout", "timeout_s", type=float, default=15.0, show_default=True)
    @click.pass_obj
    def orphans(settings, delete, min_age_s, as_json, timeout_s):
        """List artifact files that no ModelRegistered, TrainingRunFinished or CandidateRejected names
        (left by a killed or superseded training run); with --delete, remove them. Files younger than
        the minimum age may belong to a run in progress and are kept."""
        from trainers.artifacts import RegistryUnavailableError, delete_orphans, find_orphans

        require_bootstrap(settings)
        try:
            found = find_orphans(settings, min_age_s=min_age_s, timeout_s=timeout_s)
        except RegistryUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
        orphaned = [a for a in found if a.status == "orphan"]
        deleted = {str(p) for p in delete_orphans(orphaned)} if delete else set()
        if as_json:
            click.echo(json.dumps([{"path": str(a.path), "deployment": a.deployment, "size_bytes": a.size_bytes,
                                    "age_s": round(a.age_s, 1), "status": a.status,
                                    "deleted": str(a.path) in deleted} for a in found], indent=2))
            return
        for a in orphaned:
            click.echo(f"{'deleted' if str(a.path) in deleted else 'orphan '}  {a.path}  "
                       f"({a.size_bytes} bytes, {a.age_s / 3600:.1f} h old)")
        kept = {s: sum(1 for a in found if a.status == s) for s in ("named", "recent")}
        click.echo(f"{len(orphaned)} orphaned artifact(s){' deleted' if delete else ''}; kept {kept['named']} named "
                   f"by the registry and {kept['recent']} younger than the minimum age"
                   + ("" if delete or not orphaned else " (run with --delete to remove them)"))
