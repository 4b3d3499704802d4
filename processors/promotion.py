"""Promotion stage: ShadowComparison -> ModelPromoted / CandidateRejected, live accuracy -> ModelRolledBack.

* Deployment settings, the model registry and decisions are folded by a :class:`streams.follower.TopicFollower`
  reading the deployments, model-lifecycle and model-updates topics from the beginning (no group), with the
  same causal, compare-and-set registry fold as every other process (:class:`streams.registry.ModelRegistry`),
  so a restarted worker knows every earlier decision and agrees with the apps about the champion.
* **One decision per shadow assignment.** An assignment is (deployment, shadow version, the deployments
  revision that set that version as shadow). Each ShadowComparison of the assigned shadow against the
  current champion goes through :class:`PromotionPolicy` until the assignment is decided; the decision
  (ModelPromoted / CandidateRejected stage shadow) carries ``shadow_revision`` (the assignment),
  ``expected_champion`` and ``expected_state`` (compare-and-set: a fold refuses it if another decision
  came first), then the shadow is cleared if it is still that version. A version promoted once and put in
  shadow again later is a new assignment and is decided again, on its own evidence only: a comparison
  is judged only when its ``shadow_revision`` is the current assignment's (the shadow comparison stage
  counts per assignment).
* A worker that died between publishing a decision and clearing the shadow clears it on restart (the
  recheck timer clears every decided assignment still set).
* **Fast path**: with ``fast_promotion_min_samples`` labeled pairs in (before ``promotion_min_samples``),
  a shadow significantly better than a champion that has *collapsed* (significantly below its registered
  holdout accuracy, the ``accuracy`` of its ModelRegistered metrics) is promoted at once, and a
  significantly worse shadow rejected; the policy's docstring says how the error rate stays controlled.
* ``primary`` outcomes of the shadow-comparison join (internal topic) give live accuracy per version;
  after a promotion, :class:`RollbackWatch` compares the new champion with the previous one and
  publishes ModelRolledBack (expecting the new champion) when it falls below by rollback_margin (significantly);
  a fast-path promotion is judged early (after 2x, 4x ... fast_promotion_min_samples labeled predictions).
"""
from __future__ import annotations

import asyncio
import logging
import threading

from processors.ownership import Ownership
from processors.promotion_policy import Decision, PromotionPolicy
from processors.rollback_watch import RollbackWatch
from processors.dead_letters import decode_message
from processors.shadow_comparison import iter_outcomes, outcomes_topic
from streams.fallback_fold import FallbackFold
from streams import catalog as ev
from streams.serde import new_event
from streams.consumer import end_offsets
from streams.registry import HeldUpdateRelease, ModelRegistry, Refusal

log = logging.getLogger(__name__)


class PromotionState:
    """What the promotion stage knows from the deployments, model-lifecycle and model-updates topics
    (thread-safe: the follower thread folds, the agents read under ``lock``)."""

    def __init__(self, watch: RollbackWatch):
        self.lock = threading.Lock()
        self.configs: dict[str, dict] = {}
        self.registry = ModelRegistry(on_decision=self._on_decision)
        self.assignments: dict[str, tuple[str | None, int]] = {}  # deployment -> (shadow version, revision set)
        self.decided: set[tuple[str, str, int | None]] = set()  # (deployment, version, shadow_revision)
        self.rolled_back: set[tuple[str, str]] = set()  # (deployment, from_version)
        self.latest: dict[tuple[str, str], dict] = {}    # (deployment, shadow version) -> latest comparison
        self.settings_changed: set[str] = set()          # deployments whose settings changed since last recheck
        self.watch = watch
        self.fallback = FallbackFold()  # online fallback per deployment (streams.fallback_fold)

    @property
    def champions(self) -> dict[str, str]:
        """Champion per deployment, from the registry fold."""
        return {dep: mv.version for dep in self.registry.deployments()
                if (mv := self.registry.champion(dep)) is not None}

    def assignment(self, deployment: str) -> tuple[str | None, int | None]:
        """(shadow version, revision of the DeploymentConfigured that assigned it) of ``deployment``."""
        return self.assignments.get(deployment, (None, None))

    def is_decided(self, deployment: str, version: str, revision: int | None) -> bool:
        """Whether the shadow assignment (deployment, version, shadow revision) was decided."""
        return (deployment, version, revision) in self.decided

    def apply(self, event_type: str, value: dict, timestamp_ms: int | None = None) -> None:  # noqa: ARG002
        """Fold one event of the deployments, model-lifecycle or model-updates topic (under ``lock``):
        the latest settings revision and shadow assignment, the registry and the online fallback."""
        dep = value.get("deployment")
        with self.lock:
            if event_type == ev.DEPLOYMENT_CONFIGURED:
                current = self.configs.get(dep)
                if current is None or value["revision"] >= current["revision"]:
                    self.configs[dep] = value
                    self.settings_changed.add(dep)
                    shadow = value.get("shadow_model_version")
                    if self.assignments.get(dep, (None, None))[0] != shadow:
                        self.assignments[dep] = (shadow, int(value["revision"]))
            else:
                self.registry.offer(event_type, value)
                self.fallback.apply(event_type, value)

    def _on_decision(self, event_type: str, value: dict, refusal: Refusal | None) -> None:
        """Called by the registry fold (under ``lock``) for every folded model-updates event."""
        dep = value["deployment"]
        if event_type in (ev.MODEL_PROMOTED, ev.CANDIDATE_REJECTED):
            revision = value.get("shadow_revision")
            if revision is None:  # a manual / released-1 decision: it decides the assignment current now
                version, revision = self.assignment(dep)
                if version != value["model_version"]:
                    revision = None
            self.decided.add((dep, value["model_version"], revision))
        if refusal is not None:
            return
        if event_type == ev.MODEL_PROMOTED:
            self.watch.on_promoted(dep, value["model_version"], value.get("previous_version"),
                                   evidence=value.get("evidence") or {})
        elif event_type == ev.MODEL_ROLLED_BACK:
            self.rolled_back.add((dep, value["from_version"]))
            self.watch.on_rolled_back(dep)


def promoted_record(catalog, comparison: dict, decision: Decision, model_name: str = "", *,
                    expected_state: str | None = None, shadow_revision: int | None = None) -> tuple[str, dict]:
    """ModelPromoted of the comparison's shadow, expecting its primary as the champion."""
    return ev.MODEL_PROMOTED, new_event(
        ev.MODEL_PROMOTED, catalog, deployment=comparison["deployment"], model_name=model_name,
        model_version=comparison["shadow_version"], previous_version=comparison["primary_version"],
        decided_by="policy", reason=decision.reason, evidence=decision.evidence,
        expected_champion=comparison["primary_version"], expected_state=expected_state, shadow_revision=shadow_revision)


def rejected_record(catalog, comparison: dict, decision: Decision, *, expected_state: str | None = None,
                    shadow_revision: int | None = None) -> tuple[str, dict]:
    """CandidateRejected (stage shadow) of the comparison's shadow, expecting its primary as the champion."""
    return ev.CANDIDATE_REJECTED, new_event(
        ev.CANDIDATE_REJECTED, catalog, deployment=comparison["deployment"], model_version=comparison["shadow_version"],
        stage="shadow", reasons=[decision.reason], metrics=dict(comparison["shadow_metrics"]),
        champion_version=comparison["primary_version"], champion_metrics=dict(comparison["primary_metrics"]),
        expected_champion=comparison["primary_version"], expected_state=expected_state, shadow_revision=shadow_revision)


def register(app, ctx) -> None:
    """The promotion stage: shadow comparisons and live accuracy in, ModelPromoted, CandidateRejected
    and ModelRolledBack on model-updates out.
    Declares its faust agents, and the timers, tasks and tables it needs, on ``app`` (``ctx``: the shared
    :class:`processors.app.ProcessorContext`)."""
    from streams.deployments import DeploymentSettingsClient
    from streams.follower import TopicFollower

    settings, topics = ctx.settings, ctx.topics
    component = "promotion"
    policy = PromotionPolicy(settings.promotion_max_samples_factor)
    state = PromotionState(RollbackWatch(settings.rollback_window, settings.rollback_watch_windows))
    follower_box: dict = {}
    clearing: set = set()  # assignments whose shadow this worker cleared (or is clearing)
    clear_lock = threading.Lock()
    # several workers: only the owner of a deployment's shadow-comparisons partition clears its stale shadow
    owner = Ownership.of_app(app, topics.shadow_comparisons, topics.partitions("shadow-comparisons"),
                             settings.producer_partitioner)
    m_decisions = ctx.metrics.counter("ctloop_promotion_decisions_total", "Policy decisions published.",
                                      ("deployment", "action"))

    def follower() -> TopicFollower:
        if "f" not in follower_box:  # started with the worker, not when the app is built
            f = follower_box["f"] = TopicFollower(
                settings, [topics.deployments, topics.model_lifecycle, topics.model_updates],
                lambda e: state.apply(e.event_type, e.value), on_batch=lambda: release_check(),
                serde=ctx.serde, name="promotion-state")
            follower_box["release"] = HeldUpdateRelease(
                state.registry, lambda: f.positions.get((topics.model_lifecycle, 0), 0),
                lambda: end_offsets(settings, topics.model_lifecycle).get(0, 0))
            f.start()
        return follower_box["f"]

    def release_check() -> None:
        """In the follower thread: refuse held updates whose registration can no longer come."""
        release = follower_box.get("release")
        if release is not None:
            with state.lock:
                release.check()

    def settings_client():
        if "s" not in follower_box:
            follower_box["s"] = DeploymentSettingsClient(settings, producer=ctx.producer, serde=ctx.serde)
        return follower_box["s"]

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

    def clear_shadow(dep: str, version: str) -> None:
        """Blocking: clear the shadow if it is still ``version`` (never someone else's newer choice)."""
        with clear_lock:
            client = settings_client()
            if client.current(dep).get("shadow_model_version") == version:
                client.configure(dep, "promotion_decided", shadow_model_version=None, canary_fraction=0.0)

    def publish(event_type: str, record: dict, clear_shadow_of: str | None) -> None:
        """Blocking (run in an executor): the decision, durable, then the shadow cleared."""
        ctx.producer.produce(topics.model_updates, event_type, record, key=record["deployment"])
        ctx.producer.flush()
        if clear_shadow_of is not None:
            clear_shadow(record["deployment"], clear_shadow_of)

    async def evaluate(comparison: dict) -> None:
        dep, version = comparison["deployment"], comparison["shadow_version"]
        with state.lock:
            config = dict(state.configs.get(dep) or {})
            champion_mv = state.registry.champion(dep)
            shadow_mv = state.registry.get(dep, version)
            assigned, revision = state.assignment(dep)
            if assigned == version and state.is_decided(dep, version, revision):
                state.latest.pop((dep, version), None)
                return
        if not config or assigned != version:
            return  # not the assigned shadow (any more, or yet: re-evaluated when the settings change)
        if comparison.get("shadow_revision") != revision:
            return  # evidence of another (earlier) assignment of this version, or of none: not this one's
        champion = champion_mv.version if champion_mv else None
        served_primary, fallback_baseline = None, None
        if champion is not None and champion != comparison["primary_version"]:
            with state.lock:
                online = state.fallback.state(dep)
            if online is None or not online.active or online.model_version != comparison["primary_version"]:
                return  # a comparison against a former champion (or an online fallback no longer serving)
            # the online fallback serves in the champion's place: the shadow is judged against it, and
            # the decision still expects (and replaces) the registry champion
            served_primary, comparison = comparison["primary_version"], {**comparison, "primary_version": champion}
            # judged by PromotionPolicy.over_fallback: recovered against the champion's accuracy when the
            # fallback engaged, and not worse than the fallback (a switch without that evidence, e.g. a
            # manual one: chance level of a binary task)
            try:
                fallback_baseline = float((online.evidence or {}).get("champion_accuracy", ""))
            except ValueError:
                fallback_baseline = 0.5
        elif champion is not None:
            with state.lock:
                fallback_serves = state.fallback.active(dep)
            if fallback_serves:
                return  # the online fallback serves: the shadow is judged against it, not the champion it replaced
        # the fast path needs the champion's registered holdout accuracy (has it collapsed since?)
        champion_accuracy = (champion_mv.metrics or {}).get("accuracy") if champion_mv is not None else None
        decision = policy.decide(config, comparison, champion_accuracy, fallback_baseline=fallback_baseline)
        if decision is None:
            return
        if served_primary is not None:
            decision.evidence["primary_served"] = served_primary
        expected_state = shadow_mv.alias if shadow_mv is not None else None
        if decision.action == "promote":
            event_type, record = promoted_record(ctx.serde.catalog, comparison, decision, config.get("model_name", ""),
                                                 expected_state=expected_state, shadow_revision=revision)
        else:
            event_type, record = rejected_record(ctx.serde.catalog, comparison, decision,
                                                 expected_state=expected_state, shadow_revision=revision)
        key = (dep, version, revision)
        with state.lock:
            if key in state.decided:
                return
            state.decided.add(key)
            clearing.add(key)
            state.latest.pop((dep, version), None)
        log.info("promotion: %s %s %s (assignment revision %s): %s", dep, decision.action, version, revision,
                 decision.reason)
        await asyncio.get_running_loop().run_in_executor(None, publish, event_type, record, version)
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
        if not await caught_up():
            return
        with state.lock:
            changed, state.settings_changed = state.settings_changed, set()
            pending = [c for (dep, _v), c in state.latest.items() if dep in changed]
            # decided assignments still set as shadow: a worker died between the decision and the clear
            stale = [(dep, version) for dep, (version, revision) in state.assignments.items()
                     if version is not None and state.is_decided(dep, version, revision) and owner.owns(dep)
                     and (dep, version, revision) not in clearing]
            clearing.update((dep, v, state.assignment(dep)[1]) for dep, v in stale)
        for dep, version in stale:
            log.warning("promotion: %s shadow %s was decided but is still set; clearing it", dep, version)
            await asyncio.get_running_loop().run_in_executor(None, clear_shadow, dep, version)
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
            target = state.registry.get(dep, watch.previous_version)
        record = new_event(ev.MODEL_ROLLED_BACK, ctx.serde.catalog, deployment=dep, model_name=model_name,
                           from_version=watch.version, to_version=watch.previous_version, decided_by="policy",
                           reason=decision.reason, evidence=decision.evidence, expected_champion=watch.version,
                           expected_state=target.alias if target is not None else None)
        log.warning("promotion: %s rollback %s -> %s: %s", dep, watch.version, watch.previous_version, decision.reason)
        await asyncio.get_running_loop().run_in_executor(None, publish, ev.MODEL_ROLLED_BACK, record, None)
        m_decisions.labels(dep, "rollback").inc()
