"""Serving commands: ``ctloop status DEPLOYMENT``, ``ctloop promote DEPLOYMENT VERSION``,
``ctloop rollback DEPLOYMENT [--to VERSION]``.

Everything is read from the topics (registry, settings, shadow comparisons, model updates); manual
decisions are events on model-updates with ``decided_by manual``, exactly like the policy's.
"""
from __future__ import annotations

import json

import click

from infra.commands.core import require_bootstrap
from infra.settings import Settings
from streams import catalog as ev


class DecisionError(ValueError):
    """A manual decision that cannot be made (unknown version, nothing to roll back to...)."""


def deployment_status(settings: Settings, deployment: str, *, decisions: int = 10, timeout_s: float = 15.0) -> dict:
    """Champion, shadow, canary fraction, latest live comparison, feedback-loop counters (the latest
    FeedbackLoopStats by offset in the deployment's feedback-stats partition, see
    :mod:`processors.latest_stats`) and recent decisions of a deployment."""
    from processors.latest_stats import latest_feedback_stats
    from processors.promotion_policy import PromotionPolicy
    from processors.shadow_stats import ShadowAssignments
    from streams.consumer import read_to_end
    from streams.deployments import DeploymentSettingsClient
    from streams.fallback_fold import fold_events
    from streams.topics import Topics
    from streams.registry import ModelRegistry

    topics = Topics.from_settings(settings)
    feedback = latest_feedback_stats(settings, deployment, timeout_s=timeout_s)
    registry = ModelRegistry.load(settings, timeout_s=timeout_s)
    settings_client = DeploymentSettingsClient(settings)
    try:
        config = settings_client.current(deployment)
    finally:
        settings_client.close()
    champion = registry.champion(deployment)
    assignments = ShadowAssignments()  # the revision of the current shadow assignment, as the policy folds it
    for e in read_to_end(settings, topics.deployments, timeout_s=timeout_s):
        if e.event_type == ev.DEPLOYMENT_CONFIGURED and e.value.get("deployment") == deployment:
            assignments.apply(e.value)
    assignment_revision = assignments.current.get(deployment, (None, None))[1]
    comparisons = [e.value for e in read_to_end(settings, topics.shadow_comparisons, timeout_s=timeout_s)
                   if e.value.get("deployment") == deployment]
    updates = [e for e in read_to_end(settings, topics.model_updates, timeout_s=timeout_s)
               if e.value.get("deployment") == deployment]
    refused = {r.event_id: r.reason for r in registry.refusals_of(deployment)}
    fallback = fold_events(updates)   # the one fold rule (streams/fallback_fold.py)
    fallback_refused = {v.get("event_id") for v in fallback.refused}
    recent = []
    for e in updates[-decisions:]:
        v = e.value
        if e.event_type == ev.MODEL_PROMOTED:
            what = f"promoted {v['model_version']} (was {v.get('previous_version')})"
            reason = v["reason"]
        elif e.event_type == ev.MODEL_ROLLED_BACK:
            what = f"rolled back {v['from_version']} -> {v['to_version']}"
            reason = v["reason"]
        elif e.event_type == ev.ONLINE_FALLBACK_SWITCHED:
            what = (f"online fallback {v['model_version']} engaged (champion {v.get('champion_version')})"
                    if v["active"] else f"online fallback {v['model_version']} retired")
            reason = v["reason"]
            if v.get("event_id") in fallback_refused:
                what = f"REFUSED {what}: not the latest decision it expected ({v.get('expected_decision')});"
        else:
            what = f"rejected {v['model_version']} ({v['stage']})"
            reason = "; ".join(v.get("reasons") or [])
        if v.get("event_id") in refused:
            what = f"REFUSED {what}: {refused[v['event_id']]};"
        recent.append({"time": v["event_time"], "decision": what, "decided_by": v.get("decided_by", "policy"),
                       "reason": reason})
    return {
        "deployment": deployment,
        "champion": champion.version if champion else None,
        "shadow": config.get("shadow_model_version"),
        "canary_fraction": config.get("canary_fraction", 0.0),
        "continuous_deployment_enabled": config.get("continuous_deployment_enabled", False),
        "policy": {k: config.get(k) for k in ("promotion_metric", "promotion_threshold", "promotion_min_samples",
                                              "significance_level", "rollback_margin")},
        "versions": [{"version": m.version, "alias": m.alias} for m in registry.versions(deployment)],
        "live_comparison": comparisons[-1] if comparisons else None,
        "shadow_revision": assignment_revision,
        "policy_waiting": policy_waiting(config, champion.version if champion else None,
                                         comparisons[-1] if comparisons else None, assignment_revision,
                                         policy=PromotionPolicy(settings.promotion_max_samples_factor),
                                         fallback_version=(fallback.state(deployment).model_version
                                                           if fallback.active(deployment) else None)),
        "feedback_loop": _feedback_loop(feedback),
        "online_fallback": _online_fallback(config, fallback.state(deployment)),
        "recent_decisions": recent,
        "refused_decisions": [{"time": r.event_time, "event": r.event_type, "version": r.version,
                               "decided_by": r.decided_by, "reason": r.reason}
                              for r in registry.refusals_of(deployment)][-decisions:],
    }


def policy_waiting(config: dict, champion: str | None, comparison: dict | None, assignment_revision: int | None = None,
                   *, policy=None, fallback_version: str | None = None) -> str | None:
    """Why the promotion policy does not decide on the latest comparison now (None: it decides on it,
    or there is none). The same conditions as ``processors.promotion``, then the policy's own
    (:meth:`processors.promotion_policy.PromotionPolicy.waiting_reason`). ``assignment_revision``: the revision
    of the current shadow assignment (a comparison of another one is not judged). ``fallback_version``:
    the online fallback serving in the champion's place (online:<learner>), if it is active: the shadow is
    then judged against it, with promotion_threshold 0."""
    from processors.promotion_policy import PromotionPolicy
    if comparison is None:
        return None
    if not config.get("continuous_deployment_enabled"):
        return "continuous deployment is off: the policy decides nothing"
    shadow = config.get("shadow_model_version")
    if comparison["shadow_version"] != shadow:
        return (f"the latest comparison is of {comparison['shadow_version']}, not of the shadow "
                f"({shadow or 'none'}): it is not judged")
    if fallback_version and champion is not None and comparison["primary_version"] == fallback_version:
        comparison = {**comparison, "primary_version": champion}
        config = {**config, "promotion_threshold": 0.0}
    elif fallback_version and champion is not None:
        return (f"the online fallback {fallback_version} serves in place of the champion {champion}: the shadow is "
                f"judged against it; waiting for a comparison against {fallback_version}")
    elif champion is not None and comparison["primary_version"] != champion:
        return (f"the latest comparison is against {comparison['primary_version']}, not the champion {champion}: "
                f"waiting for a comparison against the champion")
    revision = comparison.get("shadow_revision")
    if revision != assignment_revision:
        counted = ("does not name its shadow assignment" if revision is None
                   else f"counts an earlier assignment of {shadow} (revision {revision})")
        return (f"the latest comparison {counted}, not the current one (revision {assignment_revision}): it is not "
                f"judged; waiting for a comparison of the current assignment")
    return (policy or PromotionPolicy()).waiting_reason(config, comparison)


def _publish(settings: Settings, event_type: str, record: dict) -> dict:
    from streams.producer import EventProducer
    from streams.topics import Topics

    with EventProducer(settings) as producer:
        producer.produce(Topics.from_settings(settings).model_updates, event_type, record, key=record["deployment"])
    return record


class DecisionRefused(RuntimeError):
    """The decision was published but the fold refused it: its precondition no longer held when it
    reached the log (another decision came first). Nothing changed."""


def _check_applied(settings: Settings, record: dict, timeout_s: float) -> None:
    """Compare-and-set on the log: read the registry back and raise DecisionRefused if the fold refused
    the decision just published (another decision reached the log in between)."""
    from streams.registry import ModelRegistry

    registry = ModelRegistry.load(settings, timeout_s=timeout_s)
    for refusal in registry.refusals_of(record["deployment"]):
        if refusal.event_id == record["event_id"]:
            raise DecisionRefused(f"the decision reached the log but was refused: {refusal.reason}")


def unservable_reason(settings: Settings, mv) -> str | None:
    """Why serving apps could not load ``mv`` (missing or tampered artifact, no model factory), or None."""
    from trainers.artifacts import ArtifactStore
    from trainers.models import load_predictor

    if not mv.artifact_uri:
        return "it has no artifact"
    try:
        load_predictor(mv, ArtifactStore(settings.resolved_artifact_store))
    except Exception as exc:  # noqa: BLE001 - whatever stops an app from loading it
        return f"apps cannot load it ({type(exc).__name__}: {exc})"
    return None


def _safety(settings: Settings, mv, force: bool, option: str) -> list[str]:
    """The safety checks a manual decision overrides with --force; raises DecisionError without it."""
    problems = []
    if mv.alias == "rejected":
        problems.append(f"{mv.version} was rejected")
    why = unservable_reason(settings, mv)
    if why is not None:
        problems.append(f"{mv.version} is unservable: {why}")
    if problems and not force:
        raise DecisionError(f"{option}: " + "; ".join(problems) + " (use --force to decide it anyway)")
    return problems


def manual_promote(settings: Settings, deployment: str, version: str, *, reason: str = "manual promotion",
                   force: bool = False, timeout_s: float = 15.0) -> dict:
    """Publish ModelPromoted (decided_by manual) making ``version`` the champion; clears it as shadow.

    The event expects the current champion and the version's current alias (compare-and-set): a
    decision that reaches the log after another one changed them is refused by every fold, and this
    raises DecisionRefused. A rejected or unservable version raises DecisionError unless ``force``
    (then the event has ``forced`` true and the overridden checks in its evidence)."""
    from streams.deployments import DeploymentSettingsClient
    from streams.serde import new_event
    from streams.registry import ModelRegistry

    registry = ModelRegistry.load(settings, timeout_s=timeout_s)
    mv = registry.get(deployment, version)
    if mv is None:
        known = ", ".join(m.version for m in registry.versions(deployment)) or "none"
        raise DecisionError(f"version: {deployment} has no version {version!r} (known: {known})")
    champion = registry.champion(deployment)
    if champion is not None and champion.version == version:
        raise DecisionError(f"version: {version} is already the champion of {deployment}")
    overridden = _safety(settings, mv, force, "version")
    evidence = {"forced": "; ".join(overridden)} if overridden else {}
    record = _publish(settings, ev.MODEL_PROMOTED, new_event(
        ev.MODEL_PROMOTED, deployment=deployment, model_name=mv.model_name, model_version=version,
        previous_version=champion.version if champion else None, decided_by="manual", reason=reason,
        evidence=evidence, expected_champion=champion.version if champion else None, expected_state=mv.alias,
        forced=bool(overridden)))
    _check_applied(settings, record, timeout_s)
    client = DeploymentSettingsClient(settings)
    try:
        if client.current(deployment).get("shadow_model_version") == version:
            client.configure(deployment, "promotion_decided", shadow_model_version=None, canary_fraction=0.0)
    finally:
        client.close()
    return record


def manual_rollback(settings: Settings, deployment: str, to_version: str | None = None, *,
                    reason: str = "manual rollback", force: bool = False, timeout_s: float = 15.0) -> dict:
    """Publish ModelRolledBack (decided_by manual) from the champion to ``to_version`` (default: the
    previous champion), expecting that champion (compare-and-set, see :func:`manual_promote`)."""
    from streams.serde import new_event
    from streams.registry import ModelRegistry

    registry = ModelRegistry.load(settings, timeout_s=timeout_s)
    champion = registry.champion(deployment)
    if champion is None:
        raise DecisionError(f"deployment: {deployment!r} has no champion to roll back")
    if to_version is None:
        target = registry.previous_champion(deployment)
        if target is None:
            raise DecisionError(f"to: {deployment} has no previous champion; name a version with --to")
    else:
        target = registry.get(deployment, to_version)
        if target is None:
            known = ", ".join(m.version for m in registry.versions(deployment))
            raise DecisionError(f"to: {deployment} has no version {to_version!r} (known: {known})")
    if target.version == champion.version:
        raise DecisionError(f"to: {target.version} is already the champion")
    overridden = _safety(settings, target, force, "to")
    record = _publish(settings, ev.MODEL_ROLLED_BACK, new_event(
        ev.MODEL_ROLLED_BACK, deployment=deployment, model_name=champion.model_name, from_version=champion.version,
        to_version=target.version, decided_by="manual", reason=reason,
        evidence={"forced": "; ".join(overridden)} if overridden else {}, expected_champion=champion.version,
        expected_state=target.alias, forced=bool(overridden)))
    _check_applied(settings, record, timeout_s)
    return record


_FEEDBACK_FIELDS = ("predictions_logged", "feedback_received", "reviewed", "added_to_training",
                    "reviewed_since_last_training", "trigger_threshold", "progress", "feedback_dead_lettered")


def _feedback_loop(found: dict | None) -> dict | None:
    """The status's ``feedback_loop`` entry from :func:`processors.latest_stats.latest_feedback_stats`:
    the counters of the latest FeedbackLoopStats (``progress`` is a ratio 0..1), when it was published
    (``event_time``, ms) and where it is (``partition``, ``offset``); None when there are none."""
    if found is None:
        return None
    stats = found["stats"] or {}
    loop = {k: stats.get(k) for k in _FEEDBACK_FIELDS}
    loop.update(event_time=stats.get("event_time"), partition=found["partition"], offset=found["offset"],
                other_partitions=found["other_partitions"])
    return loop


def _online_fallback(config: dict, state) -> dict:
    """The status's ``online_fallback`` entry: the setting (``learner``, "" off), whether the fallback
    serves now (``active``), since when (``since``, ms: the time of the latest decision), its
    ``model_version``, the ``champion_version`` it stands in for, ``reason`` and ``evidence``; from a
    :class:`streams.fallback_fold.FallbackState` (None: no decision yet)."""
    out = {"learner": config.get("online_fallback") or "", "active": False, "since": None, "model_version": None,
           "champion_version": None, "reason": None, "evidence": {}}
    if state is not None:
        out.update(active=state.active, since=state.since_ms or None, model_version=state.model_version or None,
                   champion_version=state.champion_version, reason=state.reason or None,
                   evidence=dict(state.evidence or {}))
    return out


def _format_online_fallback(fb: dict | None) -> list[str]:
    if fb is None:
        return []
    if fb["active"]:
        return [f"fallback     ACTIVE since {fb['since']}: {fb['model_version']} serves in place of champion "
                f"{fb['champion_version']}: {fb['reason']}"]
    setting = f"learner {fb['learner']}" if fb["learner"] else "off (online_fallback not set)"
    return [f"fallback     not serving ({setting})" + (f"; last: {fb['reason']}" if fb.get("reason") else "")]


def _format_feedback_loop(loop: dict | None) -> list[str]:
    if loop is None:
        return ["feedback loop  (no feedback-stats yet)"]
    if loop["offset"] is None:
        return [f"feedback loop  (none on its key partition {loop['partition']}; "
                f"stats on partitions {loop['other_partitions']}: check CTLOOP_PRODUCER_PARTITIONER)"]
    threshold = loop["trigger_threshold"]
    progress = (f"{loop['reviewed_since_last_training']}/{threshold} ({loop['progress']:.0%}) to the next training"
                if threshold else f"{loop['reviewed_since_last_training']} since the last training (no threshold)")
    return [f"feedback loop  logged {loop['predictions_logged']}, feedback {loop['feedback_received']}, "
            f"reviewed {loop['reviewed']}, added to training {loop['added_to_training']}, "
            f"dead-lettered {loop['feedback_dead_lettered']}",
            f"  threshold progress {progress}  (feedback-stats[{loop['partition']}]@{loop['offset']})"]


def _format_status(status: dict) -> str:
    lines = [f"deployment   {status['deployment']}",
             f"champion     {status['champion'] or '(none)'}",
             f"shadow       {status['shadow'] or '(none)'}"
             + (f"  (canary {status['canary_fraction']:.0%})" if status["canary_fraction"] else ""),
             f"auto deploy  {'on' if status['continuous_deployment_enabled'] else 'off'}  "
             + ", ".join(f"{k}={v}" for k, v in status["policy"].items()),
             "versions     " + (", ".join(f"{v['version']}:{v['alias']}" for v in status["versions"]) or "(none)")]
    c = status["live_comparison"]
    if c:
        lines.append(f"live comparison  {c['primary_version']} vs {c['shadow_version']}: "
                     f"{c['labeled_samples']} labeled / {c['paired_samples']} paired, agreement {c['agreement_rate']:.3f}, "
                     f"McNemar p={c['mcnemar_pvalue'] if c['mcnemar_pvalue'] is not None else float('nan'):.3g}")
        lines.append(f"  {'metric':<10} {'primary':>9} {'shadow':>9}")
        for m in ("accuracy", "precision", "recall", "f1"):
            lines.append(f"  {m:<10} {c['primary_metrics'].get(m, 0.0):>9.4f} {c['shadow_metrics'].get(m, 0.0):>9.4f}")
        lines.append(f"  {'p50 ms':<10} {c['primary_latency_p50_ms']:>9.3f} {c['shadow_latency_p50_ms']:>9.3f}")
        lines.append(f"  {'p95 ms':<10} {c['primary_latency_p95_ms']:>9.3f} {c['shadow_latency_p95_ms']:>9.3f}")
    else:
        lines.append("live comparison  (none yet)")
    if status.get("policy_waiting"):
        lines.append(f"policy       {status['policy_waiting']}")
    lines.extend(_format_feedback_loop(status.get("feedback_loop")))
    lines.extend(_format_online_fallback(status.get("online_fallback")))
    lines.append("recent decisions" + ("" if status["recent_decisions"] else "  (none)"))
    for d in status["recent_decisions"]:
        lines.append(f"  {d['time']}  {d['decided_by']:<6} {d['decision']}: {d['reason']}")
    return "\n".join(lines)


def register(cli: click.Group) -> None:
    """Add the ``status``, ``promote`` and ``rollback`` commands to ``cli``."""
    @cli.command("status")
    @click.argument("deployment")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.pass_obj
    def status_cmd(settings: Settings, deployment: str, as_json: bool) -> None:
        """Champion, shadow, live comparison, feedback-loop counters, online fallback and recent decisions of DEPLOYMENT."""
        require_bootstrap(settings)
        status = deployment_status(settings, deployment)
        click.echo(json.dumps(status, indent=2, default=str) if as_json else _format_status(status))

    @cli.command("promote")
    @click.argument("deployment")
    @click.argument("version")
    @click.option("--reason", default="manual promotion", show_default=True)
    @click.option("--force", is_flag=True, help="Promote even a rejected or unservable version (recorded as forced).")
    @click.pass_obj
    def promote_cmd(settings: Settings, deployment: str, version: str, reason: str, force: bool) -> None:
        """Make VERSION the champion of DEPLOYMENT (a ModelPromoted event, decided_by manual)."""
        require_bootstrap(settings)
        try:
            record = manual_promote(settings, deployment, version, reason=reason, force=force)
        except DecisionError as exc:
            raise click.BadParameter(str(exc)) from None
        except DecisionRefused as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"promoted {deployment} {record['model_version']} (was {record['previous_version']})"
                   + (" [forced]" if record["forced"] else ""))

    @cli.command("rollback")
    @click.argument("deployment")
    @click.option("--to", "to_version", default=None, help="Version to restore (default: the previous champion).")
    @click.option("--reason", default="manual rollback", show_default=True)
    @click.option("--force", is_flag=True, help="Restore even a rejected or unservable version (recorded as forced).")
    @click.pass_obj
    def rollback_cmd(settings: Settings, deployment: str, to_version: str | None, reason: str, force: bool) -> None:
        """Restore the previous champion of DEPLOYMENT (a ModelRolledBack event, decided_by manual)."""
        require_bootstrap(settings)
        try:
            record = manual_rollback(settings, deployment, to_version, reason=reason, force=force)
        except DecisionError as exc:
            raise click.BadParameter(str(exc)) from None
        except DecisionRefused as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"rolled back {deployment} {record['from_version']} -> {record['to_version']}")
