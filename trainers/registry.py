"""The model registry: a fold over the model-lifecycle and model-updates topics.

No database: every process rebuilds the registry by reading both topics to their end
(:meth:`ModelRegistry.load`) and folding the events in time order (:meth:`ModelRegistry.apply`).

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


@dataclass
class RunRecord:
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
        if self.failed is not None:
            return "failed"
        if self.finished is not None:
            return "finished"
        return "running"


@dataclass
class _DeploymentState:
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    champion_history: list[str] = field(default_factory=list)


class ModelRegistry:
    def __init__(self):
        self._deployments: dict[str, _DeploymentState] = {}
        self.runs: dict[str, RunRecord] = {}
        self.done_triggers: set[str] = set()
        self._seen_events: set[str] = set()

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings, timeout_s: float = 15, serde=None) -> "ModelRegistry":
        from streams.consumer import read_to_end
        from streams.topics import Topics

        topics = Topics.from_settings(settings)
        lifecycle = read_to_end(settings, topics.model_lifecycle, serde=serde, timeout_s=timeout_s)
        updates = read_to_end(settings, topics.model_updates, serde=serde, timeout_s=timeout_s)
        registry = cls()
        registry.apply_all(lifecycle, updates)
        return registry

    def apply_all(self, lifecycle_events, update_events=()) -> "ModelRegistry":
        """Fold events of both topics, merged in time order (lifecycle first on ties, each topic in
        its own log order: both have a single partition)."""
        tagged = [(e.timestamp_ms, 0, i, e) for i, e in enumerate(lifecycle_events)]
        tagged += [(e.timestamp_ms, 1, i, e) for i, e in enumerate(update_events)]
        for *_k, e in sorted(tagged, key=lambda t: t[:3]):
            self.apply(e.event_type, e.value)
        return self

    # -- folding ------------------------------------------------------------------------------------
    def _state(self, deployment: str) -> _DeploymentState:
        return self._deployments.setdefault(deployment, _DeploymentState())

    def apply(self, event_type: str, value: dict) -> None:
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
        if handler is not None:
            handler(value)

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

    def _promoted(self, v: dict) -> None:
        state = self._state(v["deployment"])
        if v["model_version"] not in state.versions:
            log.warning("registry: %s promoted unknown version %s; ignored", v["deployment"], v["model_version"])
            return
        self._set_champion(state, v["model_version"])

    def _rolled_back(self, v: dict) -> None:
        state = self._state(v["deployment"])
        if v["to_version"] not in state.versions:
            log.warning("registry: %s rolled back to unknown version %s; ignored", v["deployment"], v["to_version"])
            return
        self._set_champion(state, v["to_version"])
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
            log.warning("registry: %s rejection of the champion %s ignored", v["deployment"], mv.version)
            return
        mv.alias = "rejected"

    # -- queries ------------------------------------------------------------------------------------
    def deployments(self) -> list[str]:
        return sorted(self._deployments)

    def versions(self, deployment: str) -> list[ModelVersion]:
        state = self._deployments.get(deployment)
        return sorted(state.versions.values(), key=lambda m: m.registered_at) if state else []

    def get(self, deployment: str, version: str) -> ModelVersion | None:
        state = self._deployments.get(deployment)
        return state.versions.get(version) if state else None

    def champion(self, deployment: str) -> ModelVersion | None:
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

    def is_trigger_done(self, trigger_id: str) -> bool:
        return trigger_id in self.done_triggers

    def runs_of_trigger(self, trigger_id: str) -> list[RunRecord]:
        return [r for r in self.runs.values() if r.trigger_id == trigger_id]
