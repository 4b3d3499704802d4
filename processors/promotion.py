"""Promotion stage: ShadowComparison -> ModelPromoted / CandidateRejected, live accuracy -> ModelRolledBack.

* Deployment settings and decisions are folded by a :class:`streams.serving.TopicFollower` reading the
  deployments and model-updates topics from the beginning (no group), so a restarted worker knows every
  earlier decision: one decision per shadow version, whatever is replayed.
* Each ShadowComparison of the configured (champion, shadow) pair goes through :class:`PromotionPolicy`;
  a promotion or rejection is published on model-updates and the shadow is cleared
  (``configure(dep, "promotion_decided", shadow_model_version=None)``).
* ``primary`` outcomes of the shadow-comparison join (internal topic) give live accuracy per version;
  after a promotion, :class:`RollbackWatch` compares the new champion with the previous one and
  publishes ModelRolledBack when it falls below by rollback_margin (significantly).
"""
from __future__ import annotations

import asyncio
import logging
import threading

from processors.policies import Decision, PromotionPolicy, RollbackWatch
from processors.dead_letters import decode_message
from processors.shadow_comparison import iter_outcomes, outcomes_topic
from streams import catalog as ev
from streams.serde import new_event

log = logging.getLogger(__name__)


class PromotionState:
    """What the promotion stage knows from the deployments and model-updates topics (thread-safe)."""

    def __init__(self, watch: RollbackWatch):
        self.lock = threading.Lock()
        self.configs: dict[str, dict] = {}
        self.champions: dict[str, str] = {}
        self.decided: set[tuple[str, str]] = set()   # (deployment, version): promoted or rejected in shadow
        self.rolled_back: set[tuple[str, str]] = set()  # (deployment, from_version)
        self.latest: dict[tuple[str, str], dict] = {}    # (deployment, shadow version) -> latest comparison
        self.settings_changed: set[str] = set()          # deployments whose settings changed since last recheck
        self.watch = watch

    def apply(self, event_type: str, value: dict, timestamp_ms: int | None = None) -> None:
        dep = value.get("deployment")
        with self.lock:
            if event_type == ev.DEPLOYMENT_CONFIGURED:
                current = self.configs.get(dep)
                if current is None or value["revision"] >= current["revision"]:
                    self.configs[dep] = value
                    self.settings_changed.add(dep)
            elif event_type == ev.MODEL_PROMOTED:
                self.decided.add((dep, value["model_version"]))
                previous = value.get("previous_version") or self.champions.get(dep)
                self.champions[dep] = value["model_version"]
                self.watch.on_promoted(dep, value["model_version"], previous, int(value["event_time"]),
                                       value.get("evidence") or {})
            elif event_type == ev.MODEL_ROLLED_BACK:
                self.rolled_back.add((dep, value["from_version"]))
                self.decided.add((dep, value["from_version"]))
                self.champions[dep] = value["to_version"]
                self.watch.on_rolled_back(dep)
            elif event_type == ev.CANDIDATE_REJECTED and value.get("stage") == "shadow":
                self.decided.add((dep, value["model_version"]))


def promoted_record(catalog, comparison: dict, decision: Decision, model_name: str = "") -> tuple[str, dict]:
    return ev.MODEL_PROMOTED, new_event(
        ev.MODEL_PROMOTED, catalog, deployment=comparison["deployment"], model_name=model_name,
        model_version=comparison["shadow_version"], previous_version=comparison["primary_version"],
        decided_by="policy", reason=decision.reason, evidence=decision.evidence)


def rejected_record(catalog, comparison: dict, decision: Decision) -> tuple[str, dict]:
    return ev.CANDIDATE_REJECTED, new_event(
        ev.CANDIDATE_REJECTED, catalog, deployment=comparison["deployment"], model_version=comparison["shadow_version"],
        stage="shadow", reasons=[decision.reason], metrics=dict(comparison["shadow_metrics"]),
        champion_version=comparison["primary_version"], champion_metrics=dict(comparison["primary_metrics"]))


def register(app, ctx) -> None:
    from streams.deployments import DeploymentSettingsClient
    from streams.serving import TopicFollower

    settings, topics = ctx.settings, ctx.topics
    component = "promotion"
    policy = PromotionPolicy(settings.promotion_max_samples_factor)
    state = PromotionState(RollbackWatch(settings.rollback_window, settings.rollback_watch_windows))
    follower_box: dict = {}
    m_decisions = ctx.metrics.counter("ctloop_promotion_decisions_total", "Policy decisions published.",
                                      ("deployment", "action"))

    def follower() -> TopicFollower:
        if "f" not in follower_box:  # started with the worker, not when the app is built
            follower_box["f"] = TopicFollower(
                settings, [topics.deployments, topics.model_updates],
                lambda e: state.apply(e.event_type, e.value, e.timestamp_ms), serde=ctx.serde,
                name="promotion-state").start()
        return follower_box["f"]

    @app.task
    async def start_promotion_state():
        follower()

    @app.on_before_shutdown.connect
    async def stop_promotion_state(sender, **kwargs):  # noqa: ARG001 - faust signal signature
        f = follower_box.pop("f", None)
        if f is not None:
            f.stop(5)

    async def caught_up() -> bool:
        f = follower()
        if f.caught_up.is_set():
            return True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, f.wait_caught_up, 30.0)
            return True
        except TimeoutError as exc:
            log.error("promotion: %s; skipping decisions until it has", exc)
            return False

    def publish(event_type: str, record: dict, clear_shadow: bool) -> None:
        """Blocking (run in an executor): the decision, durable, then the shadow cleared."""
        ctx.producer.produce(topics.model_updates, event_type, record, key=record["deployment"])
        ctx.producer.flush()
        if clear_shadow:
            DeploymentSettingsClient(settings, producer=ctx.producer, serde=ctx.serde).configure(
                record["deployment"], "promotion_decided", shadow_model_version=None, canary_fraction=0.0)

    async def evaluate(comparison: dict) -> None:
        dep = comparison["deployment"]
        key = (dep, comparison["shadow_version"])
        with state.lock:
            config = dict(state.configs.get(dep) or {})
            champion = state.champions.get(dep)
            if key in state.decided:
                state.latest.pop(key, None)
                return
        if not config or config.get("shadow_model_version") != comparison["shadow_version"]:
            return  # not the configured shadow (any more, or yet: re-evaluated when the settings change)
        if champion is not None and champion != comparison["primary_version"]:
            return  # a comparison against a former champion
        decision = policy.decide(config, comparison)
        if decision is None:
            return
        if decision.action == "promote":
            event_type, record = promoted_record(ctx.serde.catalog, comparison, decision, config.get("model_name", ""))
        else:
            event_type, record = rejected_record(ctx.serde.catalog, comparison, decision)
        with state.lock:
            if key in state.decided:
                return
            state.decided.add(key)
            state.latest.pop(key, None)
        log.info("promotion: %s %s %s: %s", dep, decision.action, comparison["shadow_version"], decision.reason)
        await asyncio.get_running_loop().run_in_executor(None, publish, event_type, record, True)
        m_decisions.labels(dep, decision.action).inc()

    @app.agent(ctx.faust_topics["shadow-comparisons"], name=f"{topics.prefix}promotion-policy")
    async def promotion_policy(stream):
        async for event in stream.events():
            decoded = decode_message(ctx, event.message, component)  # the topic allows ShadowComparison only
            if decoded is None or not await caught_up():
                continue
            comparison = decoded[1]
            with state.lock:  # the latest comparison of each pair is judged again when settings change
                state.latest[(comparison["deployment"], comparison["shadow_version"])] = comparison
            await guarded(evaluate, comparison)

    @app.timer(interval=1.0)
    async def promotion_recheck():
        """Judge the latest comparison of undecided pairs whose deployment settings changed since
        (e.g. the settings event was read after the comparison, or continuous deployment was enabled)."""
        with state.lock:
            changed, state.settings_changed = state.settings_changed, set()
            pending = [c for (dep, _v), c in state.latest.items() if dep in changed]
        for comparison in pending:
            await guarded(evaluate, comparison)

    async def guarded(step, value: dict) -> None:
        """One failing decision must not crash the worker (faust stops on an exception in a timer)."""
        try:
            await step(value)
        except Exception:  # noqa: BLE001 - logged; the next comparison / outcome retries
            log.exception("promotion: %s failed on %s", step.__name__, value.get("deployment"))

    @app.agent(outcomes_topic(app, ctx), name=f"{topics.prefix}promotion-rollback")
    async def rollback_watch(stream):
        async for message in stream:
            for outcome in iter_outcomes(message):
                await guarded(judge, outcome)

    async def judge(outcome: dict) -> None:
        if outcome.get("kind") != "primary":
            return
        dep = outcome["deployment"]
        with state.lock:
            state.watch.add_outcome(outcome)
            watch = state.watch.watches.get(dep)
            if watch is None or watch.version != outcome["version"]:
                return
            decision = state.watch.check(dep, state.configs.get(dep) or {})
            if decision is None or (dep, watch.version) in state.rolled_back:
                return
            state.rolled_back.add((dep, watch.version))
            model_name = (state.configs.get(dep) or {}).get("model_name", "")
        record = new_event(ev.MODEL_ROLLED_BACK, ctx.serde.catalog, deployment=dep, model_name=model_name,
                           from_version=watch.version, to_version=watch.previous_version, decided_by="policy",
                           reason=decision.reason, evidence=decision.evidence)
        log.warning("promotion: %s rollback %s -> %s: %s", dep, watch.version, watch.previous_version, decision.reason)
        await asyncio.get_running_loop().run_in_executor(None, publish, ev.MODEL_ROLLED_BACK, record, False)
        m_decisions.labels(dep, "rollback").inc()
