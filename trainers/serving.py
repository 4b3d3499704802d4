"""The serving SDK: what an app uses to serve a deployment's model (``from trainers.serving import Deployment``).

It lives with the models (trainers: train, store, load, serve) because it loads torch predictors and
river learners; the folds it follows (:mod:`streams.registry`, :mod:`streams.fallback_fold`, the
deployments topic) are in the torch-free floor ``streams/`` (docs/ARCHITECTURE.md, "Floors").

>>> with Deployment(settings, "fraud") as dep:                        # doctest: +SKIP
...     dep.start(timeout_s=30)
...     p = dep.predict({"amount": 12.5, "age": 41})
...     p.label, p.model_version, p.prediction_id

* ``start()`` folds the model registry (model-lifecycle + model-updates) and the deployment settings
  (deployments) from the beginning, loads the champion and the configured shadow, and keeps following
  those topics in a background thread (its own group-less consumer, no commits).
* ``predict()`` runs the primary on the calling thread and logs it through the SDK; when a shadow is
  set, the same input is queued (bounded; dropped and counted when full, never blocking) for one
  background thread that runs the shadow and logs it with the same prediction id and role shadow.
  With ``canary_fraction`` > 0 that fraction of requests (deterministic by a hash of the prediction id)
  is served by the candidate instead, with role canary.
* Hot swap: new predictors are built in the follower thread, then one reference is replaced; a
  request reads that reference once, so it finishes on the models it started with.
* Online fallback: when the deployment's ``online_fallback`` setting names a learner (arf, hat), the
  app keeps its own :class:`streams.online_learner.OnlineLearner` learning the deployment's labeled examples
  (:class:`streams.labeled_feed.LabeledExampleFeed`: warm-started from the last records of each
  labeled-examples partition, then following). While the fold of model-updates says the fallback is
  active (:mod:`streams.fallback_fold`), ``predict()`` serves that learner as the primary (model
  version ``online:<learner>``); shadows and canaries run as before.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Callable

from streams import catalog as ev
from streams.consumer import Event, end_offsets
from streams.fallback_fold import FallbackFold
from streams.follower import TopicFollower
from streams.topics import Topics
from streams.validation import InvalidEvent, ModelOutputError, check_features

log = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """The deployment has no champion model (nothing registered yet, or it could not be loaded)."""


# --- serving --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """What :class:`Deployment` served for one request: the prediction id, the label, ``probabilities``
    (class label to probability), the serving model version, its role and the latency (ms)."""
    prediction_id: str
    label: str
    probabilities: dict
    model_version: str
    role: str
    """primary or canary."""
    latency_ms: float = 0.0


@dataclass(frozen=True)
class _Served:
    """What is served right now; replaced as a whole (one reference) on every change."""

    primary: object            # Predictor
    primary_name: str
    candidate: object | None   # Predictor of the shadow / canary version
    candidate_name: str
    canary_fraction: float


def canary_bucket(prediction_id: str) -> float:
    """A deterministic number in [0, 1) from a prediction id (routes canary traffic)."""
    return zlib.crc32(prediction_id.encode()) / 4294967296.0


class Deployment:
    """Serve one deployment: champion (+ shadow or canary candidate), hot-swapped on model updates."""

    def __init__(self, settings, deployment: str, *, client=None, metrics=None, device: str = "cpu",
                 shadow_queue_size: int | None = None):
        if not isinstance(deployment, str) or not deployment:
            raise InvalidEvent("deployment", "must be a non-empty string")
        from streams.sdk import CtloopClient
        from trainers.artifacts import ArtifactStore
        from streams.registry import ModelRegistry

        self.settings = settings
        self.deployment = deployment
        self.topics = Topics.from_settings(settings)
        self._owns_client = client is None
        self.client = client or CtloopClient(settings)
        self.store = ArtifactStore(settings.resolved_artifact_store)
        self.device = device
        self.registry = ModelRegistry()
        self.config: dict | None = None
        self._predictors: dict[str, object] = {}  # version -> Predictor (loaded ones)
        self._served: _Served | None = None
        self._swap_lock = threading.Lock()
        self._changed = threading.Condition()
        self.swaps = 0
        self.load_errors = 0
        self.shadow_dropped = 0
        self.shadow_logged = 0
        self.shadow_errors = 0
        size = shadow_queue_size or getattr(settings, "serving_shadow_queue_size", 1000)
        self._shadow_queue: queue.Queue = queue.Queue(maxsize=size)
        self.shadow_batch_size = 32
        self._stop = threading.Event()
        self._shadow_thread: threading.Thread | None = None
        self._follower: TopicFollower | None = None
        self._release = None  # HeldUpdateRelease, set by start()
        self._initial: list[Event] | None = None  # events read before catching up, folded once caught up
        self.fallback = FallbackFold()   # model-updates in log order: is the online fallback serving?
        self._learner = None             # streams.online_learner.OnlineLearner while online_fallback names one
        self._feed = None                # its streams.labeled_feed.LabeledExampleFeed
        self._online = None              # the learner while it serves (one reference, read once per request)
        self._metrics(metrics)

    def _metrics(self, metrics) -> None:
        self._m_predictions = self._m_latency = self._m_dropped = self._m_swaps = self._m_fallback = None
        if metrics is None:
            return
        self._m_fallback = metrics.gauge("ctloop_serving_online_fallback_active",
                                         "1 while the online fallback serves in place of the champion.", ("deployment",))
        self._m_predictions = metrics.counter("ctloop_serving_predictions_total", "Predictions served.",
                                              ("deployment", "role"))
        self._m_latency = metrics.histogram("ctloop_serving_predict_latency_seconds",
                                            "predict() latency on the request path.", ("deployment",),
                                            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1))
        self._m_dropped = metrics.counter("ctloop_serving_shadow_dropped_total",
                                          "Shadow inferences dropped because the shadow queue was full.",
                                          ("deployment",))
        self._m_swaps = metrics.counter("ctloop_serving_model_swaps_total", "Hot swaps of the served models.",
                                        ("deployment",))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> "Deployment":
        """Fold the registry and settings, load the champion (waiting up to ``timeout_s`` for one to
        be registered) and start following updates."""
        if self._follower is not None:
            return self
        from streams.registry import HeldUpdateRelease

        self._stop.clear()
        self._shadow_thread = threading.Thread(target=self._shadow_loop, name=f"ctloop-shadow-{self.deployment}",
                                               daemon=True)
        self._shadow_thread.start()
        self._follower = TopicFollower(
            self.settings, [self.topics.model_lifecycle, self.topics.model_updates, self.topics.deployments],
            self._on_event, on_batch=self._reconcile, serde=self.client.serde, name=f"serving-{self.deployment}")
        self._initial: list[Event] | None = []
        lifecycle = self.topics.model_lifecycle
        self._release = HeldUpdateRelease(
            self.registry, lambda: self._follower.positions.get((lifecycle, 0), 0) if self._follower else 0,
            lambda: end_offsets(self.settings, lifecycle).get(0, 0))
        self._follower.start()
        deadline = time.monotonic() + timeout_s
        self._follower.wait_caught_up(timeout_s)
        with self._changed:
            while self._served is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoChampionError(f"deployment {self.deployment!r}: no champion model could be loaded within "
                                          f"{timeout_s}s (is a model registered? load errors: {self.load_errors})")
                self._changed.wait(min(remaining, 0.5))
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop following, let the shadow thread finish what is queued (up to ``timeout_s``), flush."""
        if self._follower is not None:
            self._follower.stop(timeout_s)
            self._follower = None
        if self._feed is not None:
            self._feed.stop(timeout_s)
            self._feed = None
        deadline = time.monotonic() + timeout_s
        while not self._shadow_queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a condition with a deadline
        self._stop.set()
        if self._shadow_thread is not None:
            self._shadow_thread.join(timeout_s)
            self._shadow_thread = None
        if self._owns_client:
            self.client.close()
        else:
            self.client.flush()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------------
    @property
    def primary_version(self) -> str | None:
        """The version serving role primary: the online learner's (online:arf) while the fallback
        serves, else the champion's."""
        online = self._online
        if online is not None:
            return online.version
        served = self._served
        return served.primary.version if served else None

    @property
    def champion_version(self) -> str | None:
        """The registry champion loaded (also while the online fallback serves in its place)."""
        served = self._served
        return served.primary.version if served else None

    @property
    def online_learner(self):
        """The deployment's :class:`streams.online_learner.OnlineLearner` while its settings name one (None otherwise)."""
        return self._learner

    @property
    def online_examples(self) -> int:
        """Labeled examples the online learner's feed has delivered (0 without a learner)."""
        feed = self._feed
        return feed.examples if feed is not None else 0

    @property
    def fallback_active(self) -> bool:
        """Whether the online fallback serves now (the fold says active and the settings name a learner;
        a learner that has learned nothing yet leaves a request to the champion)."""
        return self._online is not None

    @property
    def shadow_version(self) -> str | None:
        """The version served as the shadow now; None without one."""
        served = self._served
        return served.candidate.version if served and served.candidate is not None else None

    @property
    def canary_fraction(self) -> float:
        """The share of requests (0 to 1) served by the canary now; 0.0 before anything is served."""
        served = self._served
        return served.canary_fraction if served else 0.0

    def wait_for(self, condition: Callable[["Deployment"], bool], timeout_s: float) -> None:
        """Wait until ``condition(self)`` holds (checked on every model change)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"deployment {self.deployment!r}: condition not met within {timeout_s}s "
                                       f"(primary {self.primary_version}, shadow {self.shadow_version})")
                self._changed.wait(min(remaining, 0.2))

    # -- following (follower thread) ------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        value = event.value
        if value.get("deployment") != self.deployment:
            return
        if self._initial is not None and not self._follower.caught_up.is_set():
            self._initial.append(event)  # folded in log order once caught up
            return
        self._apply(event)

    def _apply(self, event: Event) -> None:
        if event.event_type == ev.DEPLOYMENT_CONFIGURED:
            if self.config is None or event.value["revision"] >= self.config["revision"]:
                self.config = event.value
            return
        if event.topic == self.topics.model_updates:
            self.fallback.apply(event.event_type, event.value)   # log order of model-updates
        # the registry's causal fold: an update naming a version not registered yet is held (with every
        # later update) until its registration is read; preconditions are checked as it is folded
        self.registry.offer(event.event_type, event.value)

    def _reconcile(self) -> None:
        if self._initial is not None:
            # events read before catching up, each topic in its log order (the follower delivers each
            # partition in offset order); no clock decides anything: the registry holds an update
            # until the registration it names is folded
            initial, self._initial = self._initial, None
            for e in initial:
                if e.topic == self.topics.model_lifecycle:
                    self._apply(e)
            for e in initial:
                if e.topic != self.topics.model_lifecycle:
                    self._apply(e)
        self._release.check()  # updates naming a version never registered must not stall the ones after them
        self._reconcile_fallback()
        champion = self.registry.champion(self.deployment)
        if champion is None:
            return
        config = self.config or {}
        candidate_version = config.get("shadow_model_version")
        if candidate_version == champion.version:
            candidate_version = None
        fraction = float(config.get("canary_fraction") or 0.0) if candidate_version else 0.0
        current = self._served
        if current is not None and current.primary.version == champion.version \
                and (current.candidate.version if current.candidate else None) == candidate_version \
                and current.canary_fraction == fraction:
            return
        primary = self._load(champion)
        if primary is None:
            return
        candidate = None
        if candidate_version:
            mv = self.registry.get(self.deployment, candidate_version)
            candidate = self._load(mv) if mv is not None else None
            if candidate is None:
                fraction = 0.0
        served = _Served(primary, champion.model_name, candidate,
                         self.registry.get(self.deployment, candidate.version).model_name if candidate else "",
                         fraction)
        with self._changed:
            self._served = served  # the swap: one reference
            self.swaps += 1
            self._changed.notify_all()
        if self._m_swaps is not None:
            self._m_swaps.labels(self.deployment).inc()
        log.info("serving %s: primary %s, %s %s (canary fraction %.2f)", self.deployment, primary.version,
                 "candidate", candidate.version if candidate else None, fraction)
        keep = {primary.version} | ({candidate.version} if candidate else set())
        for version in [v for v in self._predictors if v not in keep]:
            self._predictors.pop(version)

    def _reconcile_fallback(self) -> None:
        """Keep a learner (and its feed) while the settings name one; serve it while the fold says the
        fallback is active."""
        name = (self.config or {}).get("online_fallback") or ""
        if self._learner is not None and self._learner.name != name:
            if self._feed is not None:
                self._feed.stop(5.0)
            self._learner = self._feed = None
        if name and self._learner is None:
            from streams.labeled_feed import LabeledExampleFeed
            from streams.online_learner import OnlineLearner

            learner = self._learner = OnlineLearner(name)
            self._feed = LabeledExampleFeed(self.settings, self.deployment,
                                            lambda v: learner.learn(v["features"], v["label"]),
                                            serde=self.client.serde, name=f"serving-feed-{self.deployment}").start()
        serve = self._learner if self.fallback.active(self.deployment) else None
        if serve is not self._online:
            with self._changed:
                self._online = serve
                self._changed.notify_all()
            if self._m_fallback is not None:
                self._m_fallback.labels(self.deployment).set(1 if serve is not None else 0)
            log.info("serving %s: online fallback %s", self.deployment,
                     f"serves ({serve.version})" if serve is not None else "off")

    def _load(self, mv):
        predictor = self._predictors.get(mv.version)
        if predictor is not None:
            return predictor
        from trainers.models import load_predictor

        try:
            predictor = load_predictor(mv, self.store, device=self.device)
        except Exception as exc:  # noqa: BLE001 - keep serving what we have
            self.load_errors += 1
            log.error("serving %s: cannot load version %s (%s: %s); keeping the current models",
                      self.deployment, mv.version, type(exc).__name__, exc)
            return None
        self._predictors[mv.version] = predictor
        return predictor

    # -- the request path -----------------------------------------------------------------------
    def predict(self, features: dict) -> Prediction:
        """Serve one request: the primary (or canary) result, logged; the shadow runs off this path."""
        served = self._served  # read once: this request finishes on these models
        if served is None:
            raise NoChampionError(f"deployment {self.deployment!r} has no model loaded (call start())")
        check_features(features)
        prediction_id = str(uuid.uuid4())
        if served.candidate is not None and served.canary_fraction > 0 \
                and canary_bucket(prediction_id) < served.canary_fraction:
            model, name, role = served.candidate, served.candidate_name, "canary"
        else:
            model, name, role = served.primary, served.primary_name, "primary"
            online = self._online  # read once, like the served models
            if online is not None:
                model, name = online, online.version
        start = time.perf_counter()
        label, probabilities = model.predict(features)
        if label is None:  # an online learner that has learned nothing usable yet: the champion serves
            model, name = served.primary, served.primary_name
            label, probabilities = model.predict(features)
        latency_ms = (time.perf_counter() - start) * 1000.0
        try:  # a refused label/probabilities is the model's output (e.g. NaN probabilities), not the request's
            self.client.log_prediction(self.deployment, features, label=label, probabilities=probabilities,
                                       model_version=model.version, model_name=name, role=role,
                                       prediction_id=prediction_id, latency_ms=latency_ms)
        except InvalidEvent as exc:
            if not exc.field.startswith(("label", "probabilities", "score")):
                raise  # the request's (e.g. a feature name that is not UTF-8)
            raise ModelOutputError(exc.field, f"deployment {self.deployment!r}: model version {model.version} "
                                              f"returned output that cannot be logged ({exc})") from exc
        if role == "primary" and served.candidate is not None:
            try:
                self._shadow_queue.put_nowait((prediction_id, features, served.candidate, served.candidate_name))
            except queue.Full:
                self.shadow_dropped += 1
                if self._m_dropped is not None:
                    self._m_dropped.labels(self.deployment).inc()
        if self._m_predictions is not None:
            self._m_predictions.labels(self.deployment, role).inc()
            self._m_latency.labels(self.deployment).observe((time.perf_counter() - start))
        return Prediction(prediction_id, label, probabilities, model.version, role, latency_ms)

    def _shadow_loop(self) -> None:
        """Run queued shadow inferences in batches (one model call per batch and model): the less
        Python this thread runs per request, the less it competes with request threads for the GIL."""
        while not self._stop.is_set():
            try:
                batch = [self._shadow_queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < self.shadow_batch_size:
                try:
                    batch.append(self._shadow_queue.get_nowait())
                except queue.Empty:
                    break
            by_model: dict[int, list] = {}
            for item in batch:
                by_model.setdefault(id(item[2]), []).append(item)
            for items in by_model.values():
                model, name = items[0][2], items[0][3]
                try:
                    start = time.perf_counter()
                    outputs = model.predict_batch([item[1] for item in items])
                    latency_ms = (time.perf_counter() - start) * 1000.0 / len(items)
                    for (prediction_id, features, _m, _n), (label, probabilities) in zip(items, outputs):
                        self.client.log_prediction(self.deployment, features, label=label, probabilities=probabilities,
                                                   model_version=model.version, model_name=name, role="shadow",
                                                   prediction_id=prediction_id, latency_ms=latency_ms)
                        self.shadow_logged += 1
                        time.sleep(0)  # yield the GIL to waiting request threads (bounds their wait to one item)
                except Exception:  # noqa: BLE001 - the shadow never hurts serving
                    self.shadow_errors += len(items)
                    log.exception("serving %s: shadow inference failed", self.deployment)
