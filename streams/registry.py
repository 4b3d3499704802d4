"""The model registry: a fold over the model-lifecycle and model-updates topics.

No database: every process rebuilds the registry by reading both topics to their end
(:meth:`ModelRegistry.load`) and folding them (:meth:`ModelRegistry.offer` / :meth:`ModelRegistry.apply_all`).

Ordering comes from the log, never from clocks (producer times of different processes are not comparable):
both topics have one partition and are folded each in offset order, merged causally:
* a model-lifecycle event is folded as soon as it is read;
* a model-updates event is folded once every version it names (ModelPromoted ``model_version``,
  ModelRolledBack ``to_version``, CandidateRejected ``model_version``) is known to the registry
  (registered, or refused at evaluation). Until then it is *held*, and every later update is held behind
  it, so updates keep their offset order. A reader that has read model-lifecycle to its end
  (:meth:`ModelRegistry.apply_all`) refuses what is still held ("unknown version"); a live follower keeps
  holding it (its registration may still arrive).
Any interleaving of the two topics that a reader sees therefore gives the same registry.

Decisions are compare-and-set on the log: ModelPromoted, ModelRolledBack and CandidateRejected (stage
shadow) carry ``expected_champion`` (the champion the decider saw) and ``expected_state`` (the alias of
the version decided on when decided). A decision whose precondition no longer holds when it is folded is
*refused*: it changes nothing and is recorded in :attr:`ModelRegistry.refusals` with the reason
(``ctloop status`` shows them). Null preconditions (events of released/1 writers) are not checked, so old
logs fold as before. Every fold (trainers, serving apps, the promotion stage, the CLI) uses this class,
so all reach the same verdict from the same log.

Fold rules:
* ModelRegistered adds a version with its alias (a deployment's first model is registered as champion).
* ModelPromoted makes ``model_version`` the champion; the previous champion becomes ``archived``.
* ModelRolledBack makes ``to_version`` the champion and ``from_version`` ``rolled_back``.
* CandidateRejected (stage evaluation or shadow) marks the version ``rejected``.
* TrainingRunStarted/Finished/Failed are kept per run. A trigger is done once a run of it failed or its
  candidate was decided (ModelRegistered or CandidateRejected of the run); a run that finished without a
  decision (a trainer died between the two events) leaves the trigger to be trained again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from streams import catalog as ev

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger", "archived", "rejected", "rolled_back")


@dataclass
class ModelVersion:
    """One registered model version of a deployment, as the fold sees it: ``alias`` one of
    :data:`ALIASES`; ``metrics`` metric name to value, as registered; ``model_config`` string to string; ``lineage`` the
    registration's lineage dict, else its run's TrainingRunFinished one (None when neither has one);
    ``registered_at`` epoch milliseconds."""
    deployment: str
    model_name: str
    version: str
    alias: str
    metrics: dict[str, float]
    artifact_uri: str
    artifact_sha256: str
    model_factory: str
    model_config: dict[str, str]
    lineage: dict | None
    run_id: str | None
    trigger_id: str | None
    registered_at: int
    """event_time of the registration (the trainer's clock; informational, never used for ordering)."""


@dataclass
class RunRecord:
    """One training run folded from TrainingRunStarted/Finished/Failed: ``started_at`` the start event's
    event_time (epoch ms, None until folded); ``finished``/``failed`` the event's value dict once folded."""
    run_id: str
    deployment: str
    trigger_id: str
    trainer_id: str = ""
    device: str = ""
    started_at: int | None = None
    finished: dict | None = None
    failed: dict | None = None

    @property
    def status(self) -> str:
        """``"failed"``, ``"finished"`` or ``"running"`` (failed wins when both were folded)."""
        if self.failed is not None:
            return "failed"
        if self.finished is not None:
            return "finished"
        return "running"


@dataclass(frozen=True)
class Refusal:
    """A decision event the fold did not apply, and why (deterministic: every fold refuses the same)."""

    deployment: str
    event_type: str
    event_id: str | None
    version: str | None
    decided_by: str
    reason: str
    event_time: int = 0


UPDATE_TYPES = (ev.MODEL_PROMOTED, ev.MODEL_ROLLED_BACK, ev.CANDIDATE_REJECTED)


def named_version(event_type: str, value: dict) -> str | None:
    """The version a model-updates event needs registered before it can be folded (None: nothing)."""
    if event_type == ev.MODEL_PROMOTED:
        return value.get("model_version")
    if event_type == ev.MODEL_ROLLED_BACK:
        return value.get("to_version")
    if event_type == ev.CANDIDATE_REJECTED and value.get("stage") == "shadow":
        return value.get("model_version")
    return None


@dataclass
class _DeploymentState:
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    champion_history: list[str] = field(default_factory=list)


class ModelRegistry:
    """The registry fold. ``on_decision(event_type, value, refusal)``, when given, is called after each
    model-updates event is folded (``refusal`` None when it was applied), in fold order."""

    def __init__(self, on_decision=None):
        self.on_decision = on_decision
        self._deployments: dict[str, _DeploymentState] = {}
        self.runs: dict[str, RunRecord] = {}
        self.done_triggers: set[str] = set()
        self._seen_events: set[str] = set()
        self.refusals: list[Refusal] = []
        self._held: list[tuple[str, dict]] = []   # model-updates events waiting for a registration, in order

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings, timeout_s: float = 15, serde=None) -> "ModelRegistry":
        """Read model-updates, then model-lifecycle, to their end and fold them (what is still held is
        refused as "unknown version"). Raises TimeoutError when a topic's end is not reached within ``timeout_s``
        seconds."""
        from streams.consumer import read_to_end
        from streams.topics import Topics

        topics = Topics.from_settings(settings)
        # model-updates first: every update read was published after its registration was in the log,
        # so model-lifecycle read afterwards holds every registration they name
        updates = read_to_end(settings, topics.model_updates, serde=serde, timeout_s=timeout_s)
        lifecycle = read_to_end(settings, topics.model_lifecycle, serde=serde, timeout_s=timeout_s)
        registry = cls()
        registry.apply_all(lifecycle, updates)
        return registry

    def apply_all(self, lifecycle_events, update_events=()) -> "ModelRegistry":
        """Fold both topics completely read (each in log order: (partition, offset)), merged causally
        (see the module doc); updates still naming an unknown version at the end are refused."""
        for e in sorted(lifecycle_events, key=_log_position):
            self.offer(e.event_type, e.value)
        for e in sorted(update_events, key=_log_position):
            self.offer(e.event_type, e.value)
        self.release_held()
        return self

    def offer(self, event_type: str, value: dict) -> bool:
        """Fold one event as read from model-lifecycle or model-updates (in each topic's log order),
        holding an update until the version it names is known. Returns True when something was folded."""
        if event_type in UPDATE_TYPES and not (event_type == ev.CANDIDATE_REJECTED and value.get("stage") == "evaluation"):
            if self._held or not self._known(value.get("deployment"), named_version(event_type, value)):
                self._held.append((event_type, value))
                return False
            self.apply(event_type, value)
            return True
        self.apply(event_type, value)
        if self._held:
            held, self._held = self._held, []
            for i, (t, v) in enumerate(held):
                if not self._known(v.get("deployment"), named_version(t, v)):
                    self._held = held[i:]
                    break
                self.apply(t, v)
        return True

    @property
    def held(self) -> list[tuple[str, dict]]:
        """Updates waiting for the registration of the version they name (in log order)."""
        return list(self._held)

    def release_held(self, count: int | None = None) -> None:
        """Fold the first ``count`` held updates (default: all) now: those whose version is still unknown
        are refused. Call only once model-lifecycle has been read past the point where their
        registrations would be (see :class:`HeldUpdateRelease`); the rest are offered again."""
        count = len(self._held) if count is None else count
        held, rest, self._held = self._held[:count], self._held[count:], []
        for t, v in held:
            self.apply(t, v)
        for t, v in rest:
            self.offer(t, v)

    def _known(self, deployment: str | None, version: str | None) -> bool:
        return version is None or self.get(deployment or "", version) is not None

    # -- folding ------------------------------------------------------------------------------------
    def _state(self, deployment: str) -> _DeploymentState:
        return self._deployments.setdefault(deployment, _DeploymentState())

    def apply(self, event_type: str, value: dict) -> None:
        """Fold one event (once per ``event_id``: redelivered ones are ignored); other event types are
        ignored. Calls ``on_decision`` after a model-updates decision (not an evaluation-stage rejection)."""
        event_id = value.get("event_id")
        if event_id is not None:
            if event_id in self._seen_events:  # at-least-once delivery: fold each event once
                return
            self._seen_events.add(event_id)
        handler = {
            ev.TRAINING_RUN_STARTED: self._started, ev.TRAINING_RUN_FINISHED: self._finished,
            ev.TRAINING_RUN_FAILED: self._failed, ev.MODEL_REGISTERED: self._registered,
            ev.MODEL_PROMOTED: self._promoted, ev.MODEL_ROLLED_BACK: self._rolled_back,
            ev.CANDIDATE_REJECTED: self._rejected,
        }.get(event_type)
        if handler is None:
            return
        refused = len(self.refusals)
        handler(value)
        if self.on_decision is not None and event_type in UPDATE_TYPES and value.get("stage") != "evaluation":
            self.on_decision(event_type, value, self.refusals[-1] if len(self.refusals) > refused else None)

    def _run(self, value: dict) -> RunRecord:
        run = self.runs.get(value["run_id"])
        if run is None:
            run = self.runs[value["run_id"]] = RunRecord(value["run_id"], value["deployment"], value["trigger_id"])
        return run

    def _started(self, v: dict) -> None:
        run = self._run(v)
        run.trainer_id, run.device, run.started_at = v.get("trainer_id", ""), v.get("device", ""), v.get("event_time")

    def _finished(self, v: dict) -> None:
        self._run(v).finished = v

    def _decided(self, run_id: str | None, trigger_id: str | None = None) -> None:
        run = self.runs.get(run_id or "")
        trigger_id = trigger_id or (run.trigger_id if run else None)
        if trigger_id:
            self.done_triggers.add(trigger_id)

    def _failed(self, v: dict) -> None:
        self._run(v).failed = v
        self.done_triggers.add(v["trigger_id"])

    def _refuse(self, event_type: str, v: dict, version: str | None, reason: str) -> None:
        log.warning("registry: %s %s of %s refused: %s", v.get("deployment"), event_type, version, reason)
        self.refusals.append(Refusal(v.get("deployment", ""), event_type, v.get("event_id"), version,
                                     v.get("decided_by") or "policy", reason, int(v.get("event_time") or 0)))

    def _precondition(self, v: dict, mv: ModelVersion) -> str | None:
        """Why the decision's compare-and-set fails now (None: it holds or it has none)."""
        expected = v.get("expected_champion")
        current = self.champion(v["deployment"])
        current_version = current.version if current else None
        if expected is not None and expected != current_version:
            return (f"it expected champion {expected}, but the champion is {current_version} "
                    f"(a decision made on an older view)")
        state = v.get("expected_state")
        if state is not None and state != mv.alias:
            return f"it expected {mv.version} to be {state}, but it is {mv.alias}"
        return None

    def refusals_of(self, deployment: str) -> list[Refusal]:
        """The refused decisions of ``deployment``, in fold order."""
        return [r for r in self.refusals if r.deployment == deployment]

    def _set_champion(self, state: _DeploymentState, version: str) -> None:
        for other in state.versions.values():
            if other.alias == "champion" and other.version != version:
                other.alias = "archived"
        state.versions[version].alias = "champion"
        state.champion_history.append(version)

    def _registered(self, v: dict) -> None:
        self._decided(v.get("run_id"), v.get("trigger_id"))
        state = self._state(v["deployment"])
        alias = v.get("alias") or "challenger"
        if alias not in ALIASES:
            log.warning("registry: unknown alias %r for %s %s, using challenger", alias, v["deployment"], v["model_version"])
            alias = "challenger"
        run = self.runs.get(v.get("run_id") or "")
        lineage = v.get("lineage") or (run.finished.get("lineage") if run and run.finished else None)
        state.versions[v["model_version"]] = ModelVersion(
            deployment=v["deployment"], model_name=v.get("model_name", ""), version=v["model_version"], alias="challenger",
            metrics=dict(v.get("metrics") or {}), artifact_uri=v["artifact_uri"], artifact_sha256=v["artifact_sha256"],
            model_factory=v.get("model_factory") or "", model_config=dict(v.get("model_config") or {}),
            lineage=lineage, run_id=v.get("run_id"), trigger_id=v.get("trigger_id"), registered_at=v.get("event_time", 0))
        if alias == "champion":
            self._set_champion(state, v["model_version"])
        else:
            state.versions[v["model_version"]].alias = alias

    def _new_champion(self, event_type: str, v: dict, version: str) -> bool:
        """Make ``version`` the champion if the decision's preconditions hold; else record the refusal."""
        state = self._state(v["deployment"])
        mv = state.versions.get(version)
        why = f"unknown version {version}" if mv is None else self._precondition(v, mv)
        if why is not None:
            self._refuse(event_type, v, version, why)
            return False
        self._set_champion(state, version)
        return True

    def _promoted(self, v: dict) -> None:
        self._new_champion(ev.MODEL_PROMOTED, v, v["model_version"])

    def _rolled_back(self, v: dict) -> None:
        if not self._new_champion(ev.MODEL_ROLLED_BACK, v, v["to_version"]):
            return
        state = self._state(v["deployment"])
        demoted = state.versions.get(v["from_version"])
        if demoted is not None and demoted.version != v["to_version"]:
            demoted.alias = "rolled_back"

    def _rejected(self, v: dict) -> None:
        if v.get("stage") == "evaluation":
            self._decided(v.get("run_id"))
        state = self._state(v["deployment"])
        mv = state.versions.get(v["model_version"])
        if mv is None:  # refused by the evaluation gate: never registered, kept for the record
            run = self.runs.get(v.get("run_id") or "")
            finished = run.finished if run and run.finished else {}
            state.versions[v["model_version"]] = ModelVersion(
                deployment=v["deployment"], model_name="", version=v["model_version"], alias="rejected",
                metrics=dict(v.get("metrics") or {}), artifact_uri=finished.get("artifact_uri", ""),
                artifact_sha256=finished.get("artifact_sha256", ""), model_factory="", model_config={},
                lineage=finished.get("lineage"), run_id=v.get("run_id"), trigger_id=run.trigger_id if run else None,
                registered_at=v.get("event_time", 0))
            return
        if mv.alias == "champion":
            self._refuse(ev.CANDIDATE_REJECTED, v, mv.version, f"{mv.version} is the champion")
            return
        why = self._precondition(v, mv) if v.get("stage") == "shadow" else None
        if why is not None:
            self._refuse(ev.CANDIDATE_REJECTED, v, mv.version, why)
            return
        mv.alias = "rejected"

    # -- queries ------------------------------------------------------------------------------------
    def deployments(self) -> list[str]:
        """Names of the deployments the fold has seen, sorted."""
        return sorted(self._deployments)

    def versions(self, deployment: str) -> list[ModelVersion]:
        """Versions of ``deployment`` in the order the log registered them (not by producer time)."""
        state = self._deployments.get(deployment)
        return list(state.versions.values()) if state else []

    def get(self, deployment: str, version: str) -> ModelVersion | None:
        """Version ``version`` of ``deployment``; None when unknown."""
        state = self._deployments.get(deployment)
        return state.versions.get(version) if state else None

    def champion(self, deployment: str) -> ModelVersion | None:
        """The current champion of ``deployment`` (the latest in its champion history still aliased
        champion); None when it has none."""
        state = self._deployments.get(deployment)
        if not state:
            return None
        for version in reversed(state.champion_history):
            mv = state.versions[version]
            if mv.alias == "champion":
                return mv
        return None

    def previous_champion(self, deployment: str) -> ModelVersion | None:
        """The most recent former champion still eligible to come back (alias archived)."""
        state = self._deployments.get(deployment)
        if not state:
            return None
        current = self.champion(deployment)
        for version in reversed(state.champion_history):
            mv = state.versions[version]
            if (current is None or version != current.version) and mv.alias == "archived":
                return mv
        return None

    def challengers_of_trigger(self, trigger_id: str) -> list[ModelVersion]:
        """Registered versions of a trigger still undecided (alias challenger)."""
        return [mv for state in self._deployments.values() for mv in state.versions.values()
                if mv.trigger_id == trigger_id and mv.alias == "challenger"]

    def is_trigger_done(self, trigger_id: str) -> bool:
        """True once a run of the trigger failed or its candidate was decided (registered or
        rejected)."""
        return trigger_id in self.done_triggers

    def runs_of_trigger(self, trigger_id: str) -> list[RunRecord]:
        """The runs started for ``trigger_id`` (RunRecord, in fold order)."""
        return [r for r in self.runs.values() if r.trigger_id == trigger_id]


def _log_position(event) -> tuple[int, int]:
    return (getattr(event, "partition", 0), getattr(event, "offset", 0))


class HeldUpdateRelease:
    """When a *live* fold may refuse updates held for a registration that will never come (a hostile or
    mistaken event naming a version nobody registered), so they cannot stall every later update.

    Causality, no clock: a decider publishes an update only after it read the registration in
    model-lifecycle. So once this fold has read model-lifecycle up to an end offset that was asked of
    the broker *after* the held updates were read, their registrations, if any, have been folded.
    ``position()``: the next model-lifecycle offset this fold will read (everything before it folded);
    ``end_offset()``: model-lifecycle's current end offset from the broker (blocking; called only while
    something is held). Call :meth:`check` after each batch the fold read."""

    def __init__(self, registry: ModelRegistry, position, end_offset):
        self.registry = registry
        self.position = position
        self.end_offset = end_offset
        self._target: tuple[int, int] | None = None   # (end offset asked, held updates it covers)

    def check(self) -> None:
        """Refuse the held updates once model-lifecycle was read to the end offset asked after they
        were held; asks ``end_offset()`` when something is held and no target is set (a failure is logged and
        retried at the next call)."""
        held = len(self.registry.held)
        if not held:
            self._target = None
            return
        if self._target is None:
            try:
                self._target = (int(self.end_offset()), held)
            except Exception as exc:  # noqa: BLE001 - retried after the next batch
                log.warning("registry: end offset of model-lifecycle unknown (%s); held updates wait", exc)
                return
        end, covered = self._target
        if self.position() >= end:
            self._target = None
            log.warning("registry: %d update(s) name versions model-lifecycle never registered; refusing them",
                        min(covered, held))
            self.registry.release_held(min(covered, held))
            if self.registry.held:
                self.check()
