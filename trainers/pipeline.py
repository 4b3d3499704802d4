"""One training run, from a TrainingTriggered event to a registered or rejected candidate.

Events (all on model-lifecycle, keyed by deployment): TrainingRunStarted, then TrainingRunFailed, or
TrainingRunFinished followed by ModelRegistered (challenger; champion for a deployment's first model,
then also ModelPromoted on model-updates) or CandidateRejected (stage evaluation). A challenger is put
in shadow with a DeploymentConfigured change "auto_shadow".
"""
from __future__ import annotations

import functools
import logging
import platform
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streams import catalog as ev
from streams.deployments import DeploymentSettingsClient
from streams.producer import EventProducer
from streams.serde import Serde, new_event
from streams.topics import Topics
from trainers.artifacts import ArtifactStore, TamperedArtifactError
from trainers.dataset import DatasetError, compile_dataset, read_base_dataset
from trainers.evaluation import GatePolicy, GateRows, evaluate_gate
from trainers.models import DEFAULT_FACTORY, Predictor, load_predictor, resolve_factory
from streams.registry import ModelRegistry
from trainers.training import resolve_device, train_classifier

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``"ctloop <package version> git <short commit>"`` (``unknown`` for a part that cannot be read); cached."""
    try:
        from importlib.metadata import version

        pkg = version("ctloop")
    except Exception:  # noqa: BLE001
        pkg = "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return f"ctloop {pkg} git {rev}"


def environment(device: str) -> dict[str, str]:
    """The run's environment for TrainingRunFinished (str to str): torch, device, python, platform,
    torch_threads; on CUDA also gpu, cuda and precision (bf16-autocast)."""
    env = {"torch": torch.__version__, "device": device, "python": platform.python_version(),
           "platform": platform.platform(terse=True), "torch_threads": str(torch.get_num_threads())}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = str(torch.version.cuda)
        env["precision"] = "bf16-autocast"
    return env


class ConfigurationError(ValueError):
    """The deployment's training configuration is unusable (e.g. a model factory that does not import)."""


@dataclass
class RunOutcome:
    """How one trigger's run ended: ``status`` registered, rejected, failed, skipped, superseded or resumed;
    the run id and candidate version when there were some; the rejection or failure ``reasons``."""
    status: str                 # registered, rejected, failed, skipped, superseded, resumed
    run_id: str | None = None
    version: str | None = None
    reasons: tuple[str, ...] = ()


class TrainingPipeline:
    """Runs the training of one trigger at a time (:meth:`run`) and publishes its lifecycle events; a
    context manager closing the producer it created. Raises ValueError when ``label_noise`` is outside [0, 1]."""
    def __init__(self, settings, *, producer: EventProducer | None = None, serde: Serde | None = None,
                 trainer_id: str | None = None, label_noise: float = 0.0, metrics=None):
        self.settings = settings
        self.serde = serde or (producer.serde if producer else Serde.from_settings(settings))
        self._owns_producer = producer is None
        self.producer = producer or EventProducer(settings, self.serde)
        self.topics = Topics.from_settings(settings)
        self.store = ArtifactStore.from_settings(settings)
        self.deployments = DeploymentSettingsClient(settings, producer=self.producer, serde=self.serde)
        self.trainer_id = trainer_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {label_noise!r}")
        self.label_noise = label_noise
        self.policy = GatePolicy.from_settings(settings)
        self.device = resolve_device(settings.trainer_device)
        self._runs = self._duration = self._throughput = None
        if metrics is not None:
            self._runs = metrics.counter("ctloop_trainer_runs_total", "Training runs by outcome.", ("deployment", "outcome"))
            self._duration = metrics.histogram("ctloop_trainer_run_duration_seconds", "Trigger-to-decision time of runs.",
                                               ("deployment",), buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
            self._throughput = metrics.gauge("ctloop_trainer_samples_per_second", "Training throughput of the last run.",
                                             ("deployment",))

    def close(self) -> None:
        """Close the producer when this pipeline created it."""
        if self._owns_producer:
            self.producer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- publishing -----------------------------------------------------------------------------------
    def _emit(self, topic: str, event_type: str, deployment: str, **fields) -> dict:
        """Publish one event and wait for it: each event is its own batch, so a reader that stops at the
        high watermark sees it (the embedded broker reports the watermark of a multi-record batch as
        its base offset + 1), and the events of a run are durable in order."""
        record = new_event(event_type, self.serde.catalog, deployment=deployment, **fields)
        self.producer.produce(topic, event_type, record, key=deployment)
        self.producer.flush()
        return record

    def _fail(self, run_id: str, trigger: dict, reason: str, error_type: str, started: float) -> RunOutcome:
        self._emit(self.topics.model_lifecycle, ev.TRAINING_RUN_FAILED, trigger["deployment"], run_id=run_id,
                   trigger_id=trigger["trigger_id"], reason=reason, error_type=error_type)
        self.producer.flush()
        log.warning("run %s of %s failed (%s): %s", run_id, trigger["deployment"], error_type, reason)
        self._count(trigger["deployment"], "failed", started)
        return RunOutcome("failed", run_id, reasons=(reason,))

    def _count(self, deployment: str, outcome: str, started: float) -> None:
        if self._runs is not None:
            self._runs.labels(deployment, outcome).inc()
            self._duration.labels(deployment).observe(time.monotonic() - started)

    # -- the run --------------------------------------------------------------------------------------
    def run(self, trigger: dict) -> RunOutcome:
        """Train, gate and register (or reject) a candidate for ``trigger`` (a TrainingTriggered value);
        a trigger already done is resumed or skipped. Errors of the run end it as TrainingRunFailed (status failed);
        raises TimeoutError when the registry topics cannot be read before it starts."""
        started = time.monotonic()
        dep, trigger_id = trigger["deployment"], trigger["trigger_id"]
        registry = ModelRegistry.load(self.settings, serde=self.serde)
        if registry.is_trigger_done(trigger_id):
            resumed = self.resume(trigger, registry)
            if resumed is not None:
                return resumed
            log.info("trigger %s of %s already trained; skipped", trigger_id, dep)
            return RunOutcome("skipped")
        run_id = str(uuid.uuid4())
        self._emit(self.topics.model_lifecycle, ev.TRAINING_RUN_STARTED, dep, run_id=run_id, trigger_id=trigger_id,
                   trainer_id=self.trainer_id, device=self.device)
        self.producer.flush()
        log.info("run %s: training %s for trigger %s on %s", run_id, dep, trigger_id, self.device)
        if self.settings.trainer_run_delay_s > 0:  # fault injection: a window in which to kill the trainer
            time.sleep(self.settings.trainer_run_delay_s)
        try:
            return self._train_and_decide(trigger, run_id, registry, started)
        except DatasetError as exc:
            return self._fail(run_id, trigger, exc.reason, exc.error_type, started)
        except TamperedArtifactError as exc:
            return self._fail(run_id, trigger, f"the champion's artifact failed verification: {exc}",
                              "champion_artifact_invalid", started)
        except ConfigurationError as exc:
            return self._fail(run_id, trigger, str(exc), "invalid_configuration", started)
        except Exception as exc:  # noqa: BLE001 - the run fails, the trainer lives on
            log.exception("run %s crashed", run_id)
            return self._fail(run_id, trigger, f"{type(exc).__name__}: {exc}", "exception", started)

    def _train_and_decide(self, trigger: dict, run_id: str, registry: ModelRegistry, started: float) -> RunOutcome:
        dep = trigger["deployment"]
        dep_settings = self.deployments.current(dep)
        champion_mv = registry.champion(dep)
        compile_started = time.monotonic()
        dataset = compile_dataset(self.settings, trigger, dep_settings, serde=self.serde,
                                  champion_lineage=champion_mv.lineage if champion_mv else None)
        compile_seconds = time.monotonic() - compile_started
        holdout_mask = dataset.holdout_mask()
        train, holdout = dataset.subset(~holdout_mask), dataset.subset(holdout_mask)

        champion = load_predictor(champion_mv, self.store) if champion_mv is not None else None
        factory = dep_settings.get("model_factory") or DEFAULT_FACTORY
        try:
            resolve_factory(factory)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        mode = trigger.get("training_mode") or dep_settings.get("training_mode") or "full"
        init_from = None
        if mode == "finetune" and champion is not None and (champion_mv.model_factory or DEFAULT_FACTORY) == factory:
            init_from = (champion.module, champion.feature_names, champion.classes)
        result = train_classifier(train, factory=factory, device=self.device, max_epochs=self.settings.trainer_max_epochs,
                                  init_from=init_from, label_noise=self.label_noise,
                                  seed=int(uuid.UUID(run_id).int % 2**31))
        version = f"v{len(registry.versions(dep)) + 1}-{run_id[:8]}"
        uri, sha = self.store.save(dep, version, result.module.state_dict())

        candidate = Predictor(result.module, result.feature_names, result.classes, version)
        cand_pred = candidate.predict_labels(holdout.x)
        champ_pred = champion.predict_labels(champion.align(holdout.x, holdout.feature_names)) if champion else None
        regression = self._regression_predictions(dep, candidate, champion)
        decision = evaluate_gate(self.policy, holdout.y, cand_pred, champ_pred, historical=holdout.historical,
                                 current=holdout.current, regression=regression, rows=GateRows.of(dataset.scope))
        metrics = dict(decision.candidate_metrics)
        metrics["compile_seconds"] = compile_seconds
        metrics["train_seconds"] = result.train_seconds
        metrics["epochs"] = float(result.epochs)

        # a duplicate delivery may have raced us (rebalance mid-run): the first finisher wins
        if self._trigger_done(trigger["trigger_id"]):
            self._fail(run_id, trigger, "another trainer finished this trigger first; result discarded",
                       "superseded", started)
            return RunOutcome("superseded", run_id)

        env = environment(result.device)
        env["training_mode"] = result.mode
        env["trainer_id"] = self.trainer_id
        duration_ms = int((time.monotonic() - started) * 1000)
        self._emit(self.topics.model_lifecycle, ev.TRAINING_RUN_FINISHED, dep, run_id=run_id,
                   trigger_id=trigger["trigger_id"], model_version=version, metrics=metrics, lineage=dataset.lineage,
                   code_version=code_version(), environment=env, artifact_uri=uri, artifact_sha256=sha,
                   duration_ms=duration_ms, samples_per_second=float(result.samples_per_second))
        model_name = dep_settings.get("model_name") or dep
        champ_version = champion_mv.version if champion_mv else None
        if not decision.passed:
            self._emit(self.topics.model_lifecycle, ev.CANDIDATE_REJECTED, dep, model_version=version, run_id=run_id,
                       stage="evaluation", reasons=decision.reasons, metrics=metrics, champion_version=champ_version,
                       champion_metrics=decision.champion_metrics)
            self.producer.flush()
            log.info("run %s: candidate %s of %s rejected: %s", run_id, version, dep, "; ".join(decision.reasons))
            self._count(dep, "rejected", started)
            return RunOutcome("rejected", run_id, version, tuple(decision.reasons))
        alias = "challenger" if champion_mv is not None else "champion"
        self._emit(self.topics.model_lifecycle, ev.MODEL_REGISTERED, dep, model_name=model_name, model_version=version,
                   run_id=run_id, trigger_id=trigger["trigger_id"], alias=alias, metrics=metrics,
                   champion_version=champ_version, champion_metrics=decision.champion_metrics, lineage=dataset.lineage,
                   artifact_uri=uri, artifact_sha256=sha, model_factory=factory, model_config=result.config)
        if alias == "champion":
            self.producer.flush()
            self._emit(self.topics.model_updates, ev.MODEL_PROMOTED, dep, model_name=model_name, model_version=version,
                       previous_version=None, decided_by="policy", reason="first model of the deployment",
                       evidence={"run_id": run_id, "accuracy": f"{metrics.get('accuracy', 0):.4f}"})
        self.producer.flush()
        if alias == "challenger":
            self.deployments.configure(dep, "auto_shadow", shadow_model_version=version)
        log.info("run %s: registered %s of %s as %s (accuracy %.3f, champion %s)", run_id, version, dep, alias,
                 metrics.get("accuracy", float("nan")), champ_version)
        if self._throughput is not None:
            self._throughput.labels(dep).set(result.samples_per_second)
        self._count(dep, "registered", started)
        return RunOutcome("registered", run_id, version)

    def resume(self, trigger: dict, registry: ModelRegistry) -> RunOutcome | None:
        """Finish the steps a crashed run left undone, from what the log shows is missing: a registered,
        undecided challenger of this trigger that was never set as shadow is set as shadow now
        (DeploymentConfigured "auto_shadow"). Returns the outcome, or None when nothing was missing.

        "Never set as shadow": no DeploymentConfigured on the deployments topic names it as
        ``shadow_model_version`` (so a shadow an operator replaced since is not put back). The topic is
        compacted: once compaction has dropped the revision that set it, a challenger that is still
        undecided and not the shadow is set again (the policy then judges it; nothing is lost)."""
        from streams.consumer import read_to_end

        pending = [mv for mv in registry.challengers_of_trigger(trigger["trigger_id"])
                   if mv.deployment == trigger["deployment"]]
        if not pending:
            return None
        dep = trigger["deployment"]
        ever_shadow = {e.value.get("shadow_model_version")
                       for e in read_to_end(self.settings, self.topics.deployments, serde=self.serde)
                       if e.value.get("deployment") == dep}
        for mv in pending:
            if mv.version in ever_shadow:
                continue
            log.warning("trigger %s of %s: challenger %s was registered but never set as shadow (a run died "
                        "between the two); setting it now", trigger["trigger_id"], dep, mv.version)
            self.deployments.configure(dep, "auto_shadow", shadow_model_version=mv.version)
            return RunOutcome("resumed", mv.run_id, mv.version)
        return None

    def _trigger_done(self, trigger_id: str) -> bool:
        """Whether the lifecycle topic (alone: decisions are there) marks the trigger done."""
        from streams.consumer import read_to_end

        return ModelRegistry().apply_all(read_to_end(self.settings, self.topics.model_lifecycle, serde=self.serde)) \
            .is_trigger_done(trigger_id)

    def _regression_predictions(self, dep: str, candidate: Predictor, champion: Predictor | None):
        directory = self.settings.trainer_regression_dir
        if not directory:
            return None
        for suffix in (".csv", ".parquet"):
            path = Path(directory) / f"{dep}{suffix}"
            if path.exists():
                frame = read_base_dataset(str(path))
                names = [c for c in frame.columns if c not in ("label", "prediction_id")]
                x = frame[names].to_numpy(dtype=float)
                if np.isnan(x).any():
                    raise DatasetError(f"regression set {path} has NaN values", "invalid_dataset")
                y = [str(v) for v in frame["label"].tolist()]
                cand = candidate.predict_labels(candidate.align(x, names))
                champ = champion.predict_labels(champion.align(x, names)) if champion else None
                return y, cand, champ
        return None
