"""Deployment settings as events.

Each change publishes the deployment's *full* settings (a DeploymentConfigured event) to the compacted
``deployments`` topic, keyed by deployment; the latest event per key is the configuration, so any
process rebuilds it by reading the topic (``DeploymentSettingsClient.current`` / ``fold``).
Two writers changing one deployment at the same moment: the later revision wins (last writer wins).
"""
from __future__ import annotations

import re

from streams import catalog as ev
from streams.consumer import read_to_end
from streams.producer import EventProducer
from streams.serde import Serde, new_event
from streams.topics import Topics
from streams.validation import InvalidEvent, check_strings

SETTINGS_OPERATIONS = (
    "setup_feedback_loop", "attach_dataset_version", "toggle_feedback_loop", "setup_continuous_training",
    "toggle_continuous_training", "set_shadow_model", "setup_continuous_deployment", "toggle_continuous_deployment",
    "setup_training_window", "setup_online_fallback", "configure",
)
PROMOTION_METRICS = ("accuracy", "f1", "precision", "recall")
TRAINING_WINDOWS = ("all", "sliding", "since_change")
ONLINE_LEARNERS = ("arf", "hat")


def default_settings(deployment: str, catalog=None) -> dict:
    """A deployment's settings before any change (schema defaults)."""
    record = new_event(ev.DEPLOYMENT_CONFIGURED, catalog, deployment=deployment)
    return record


def fold(events) -> dict[str, dict]:
    """Latest settings per deployment from DeploymentConfigured events (in log order)."""
    state: dict[str, dict] = {}
    for e in events:
        value = e.value if hasattr(e, "value") else e
        current = state.get(value["deployment"])
        if current is None or value["revision"] >= current["revision"]:
            state[value["deployment"]] = value
    return state


_SCHEDULE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_schedule(schedule) -> int:
    """Seconds from 3600, "90s", "30m", "1h", "1d"; None/0/"" turns schedules off."""
    if schedule in (None, "", 0):
        return 0
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        if schedule < 0:
            raise InvalidEvent("schedule", "must not be negative")
        return int(schedule)
    m = _SCHEDULE.match(str(schedule))
    if not m:
        raise InvalidEvent("schedule", f"expected seconds or a duration like '30m', '1h', '1d'; got {schedule!r}")
    return int(float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def _fraction(field: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise InvalidEvent(field, f"must be a number in [0, 1], got {value!r}")
    return float(value)


def _count(field: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidEvent(field, f"must be a non-negative integer, got {value!r}")
    return value


class DeploymentSettingsClient:
    """Read and change deployment settings; every change is one DeploymentConfigured event."""

    def __init__(self, settings, *, producer: EventProducer | None = None, serde: Serde | None = None):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.serde = serde or (producer.serde if producer else Serde.from_settings(settings))
        self._owns_producer = producer is None
        self.producer = producer or EventProducer(settings, self.serde)
        self._cache: dict[str, dict] = {}

    def all(self, timeout_s: float = 15.0) -> dict[str, dict]:
        """Current settings of every deployment, folded from the topic."""
        state = fold(read_to_end(self.settings, self.topics.deployments, serde=self.serde, timeout_s=timeout_s))
        for name, value in self._cache.items():  # our own writes not yet read back
            if name not in state or state[name]["revision"] < value["revision"]:
                state[name] = value
        return state

    def current(self, deployment: str) -> dict:
        """The current settings dict of ``deployment`` (schema defaults when it has none). Raises
        TimeoutError when the deployments topic cannot be read to its end within 15 s."""
        return self.all().get(deployment) or default_settings(deployment, self.serde.catalog)

    def configure(self, deployment: str, change: str = "configure", **fields) -> dict:
        """Apply ``fields`` to the current settings and publish the result; returns it."""
        if not isinstance(deployment, str) or not deployment:
            raise InvalidEvent("deployment", "must be a non-empty string")
        base = dict(self.current(deployment))
        schema = self.serde.catalog[ev.DEPLOYMENT_CONFIGURED]
        unknown = set(fields) - set(schema.field_names)
        if unknown:
            raise InvalidEvent(sorted(unknown)[0], "not a deployment setting")
        check_strings({"deployment": deployment, **fields})  # UTF-8 encodable, naming the field
        base.update(fields)
        record = new_event(schema, **{k: v for k, v in base.items() if k not in ("event_id", "event_time")})
        record["revision"] = base.get("revision", 0) + 1
        record["change"] = change
        self.producer.produce(self.topics.deployments, ev.DEPLOYMENT_CONFIGURED, record, key=deployment)
        self.producer.flush()
        self._cache[deployment] = record
        return record

    # -- the named operations ---------------------------------------------------------------------
    def setup_feedback_loop(self, deployment: str, *, model_name: str | None = None, enabled: bool = True,
                            model_factory: str | None = None, min_training_examples: int | None = None) -> dict:
        """Turn the feedback loop on or off and set its model (``model_factory``:
        ``module:function``; ``min_training_examples``: labeled examples, >= 0). Returns the published
        settings dict; raises InvalidEvent naming the field."""
        fields = {"feedback_loop_enabled": bool(enabled)}
        if model_name is not None:
            fields["model_name"] = model_name
        if model_factory is not None:
            if ":" not in model_factory:
                raise InvalidEvent("model_factory", f"expected module:function, got {model_factory!r}")
            fields["model_factory"] = model_factory
        if min_training_examples is not None:
            fields["min_training_examples"] = _count("min_training_examples", min_training_examples)
        return self.configure(deployment, "setup_feedback_loop", **fields)

    def attach_dataset_version(self, deployment: str, uri: str | None) -> dict:
        """Attach the base dataset (URI of a .csv or .parquet file; None
        detaches it): an ``all`` training window adds its rows, drift takes it as its reference. Returns
        the published settings dict; raises InvalidEvent naming the field."""
        if uri is not None and (not isinstance(uri, str) or not uri.lower().endswith((".csv", ".parquet", ".pq"))):
            raise InvalidEvent("dataset_version", f"expected the URI of a .csv or .parquet file, got {uri!r}")
        return self.configure(deployment, "attach_dataset_version", dataset_version=uri)

    def toggle_feedback_loop(self, deployment: str, enabled: bool) -> dict:
        """Turn the feedback loop on or off; returns the published settings dict."""
        return self.configure(deployment, "toggle_feedback_loop", feedback_loop_enabled=bool(enabled))

    def setup_continuous_training(self, deployment: str, *, trigger_threshold: int = 0, drift_threshold: float = 0.0,
                                  schedule=None, performance_decay_threshold: float = 0.0,
                                  cooldown_seconds: int | None = None, training_mode: str | None = None,
                                  enabled: bool = True) -> dict:
        """Configure the retraining triggers: ``trigger_threshold``
        (labels, 0 off), ``drift_threshold`` and ``performance_decay_threshold`` (fractions in [0, 1], 0 off),
        ``schedule`` (see :func:`parse_schedule`), ``cooldown_seconds`` and ``training_mode`` (full or finetune).
        Returns the published settings dict; raises InvalidEvent naming the field."""
        fields = {
            "continuous_training_enabled": bool(enabled),
            "trigger_threshold": _count("trigger_threshold", trigger_threshold),
            "drift_threshold": _fraction("drift_threshold", drift_threshold),
            "schedule_seconds": parse_schedule(schedule),
            "performance_decay_threshold": _fraction("performance_decay_threshold", performance_decay_threshold),
        }
        if cooldown_seconds is not None:
            fields["cooldown_seconds"] = _count("cooldown_seconds", cooldown_seconds)
        if training_mode is not None:
            if training_mode not in ("full", "finetune"):
                raise InvalidEvent("training_mode", f"must be full or finetune, got {training_mode!r}")
            fields["training_mode"] = training_mode
        return self.configure(deployment, "setup_continuous_training", **fields)

    def setup_training_window(self, deployment: str, window: str, *, labels: int | None = None, seconds: int | None = None,
                              min_post_change_labels: int | None = None) -> dict:
        """Choose which labeled examples a retraining trigger compiles (``window``: all, sliding or
        since_change; ``labels``: the sliding window's size, or since_change's cap; ``seconds``: a sliding
        window by time span instead; ``min_post_change_labels``: post-change labels drift and decay
        triggers wait for). Raises InvalidEvent naming the field."""
        if window not in TRAINING_WINDOWS:
            raise InvalidEvent("training_window", f"must be one of {TRAINING_WINDOWS}, got {window!r}")
        fields = {"training_window": window}
        if labels is not None:
            fields["training_window_labels"] = _count("training_window_labels", labels)
        if seconds is not None:
            fields["training_window_seconds"] = _count("training_window_seconds", seconds)
        if min_post_change_labels is not None:
            fields["min_post_change_labels"] = _count("min_post_change_labels", min_post_change_labels)
        return self.configure(deployment, "setup_training_window", **fields)

    def setup_online_fallback(self, deployment: str, learner: str | None) -> dict:
        """Serve an online learner (``learner``: arf or hat; None or "": off) in place of the champion
        while it is significantly better on recent labels. Raises InvalidEvent naming the field."""
        learner = learner or ""
        if learner and learner not in ONLINE_LEARNERS:
            raise InvalidEvent("online_fallback", f"must be one of {ONLINE_LEARNERS} or empty, got {learner!r}")
        return self.configure(deployment, "setup_online_fallback", online_fallback=learner)

    def toggle_continuous_training(self, deployment: str, enabled: bool) -> dict:
        """Turn continuous training on or off; returns the published
        settings dict."""
        return self.configure(deployment, "toggle_continuous_training", continuous_training_enabled=bool(enabled))

    def set_shadow_model(self, deployment: str, version: str | None, *, canary_fraction: float | None = None) -> dict:
        """Serve ``version`` as the shadow (None: no shadow) and optionally set
        ``canary_fraction`` (in [0, 1]). Returns the published settings dict; raises InvalidEvent naming the field."""
        fields = {"shadow_model_version": version}
        if canary_fraction is not None:
            fields["canary_fraction"] = _fraction("canary_fraction", canary_fraction)
        return self.configure(deployment, "set_shadow_model", **fields)

    def setup_continuous_deployment(self, deployment: str, *, promotion_threshold: float = 0.05, min_samples: int = 1000,
                                    metric: str = "accuracy", significance_level: float = 0.05,
                                    rollback_margin: float = 0.05, enabled: bool = True,
                                    fast_promotion_min_samples: int | None = None) -> dict:
        """Configure the promotion policy: ``promotion_threshold``,
        ``significance_level`` and ``rollback_margin`` (fractions in [0, 1]), ``min_samples`` and
        ``fast_promotion_min_samples`` (labeled pairs, >= 0), ``metric`` (one of :data:`PROMOTION_METRICS`).
        Returns the published settings dict; raises InvalidEvent naming the field."""
        if metric not in PROMOTION_METRICS:
            raise InvalidEvent("promotion_metric", f"must be one of {PROMOTION_METRICS}, got {metric!r}")
        return self.configure(
            deployment, "setup_continuous_deployment", continuous_deployment_enabled=bool(enabled),
            promotion_threshold=_fraction("promotion_threshold", promotion_threshold),
            promotion_min_samples=_count("min_samples", min_samples), promotion_metric=metric,
            significance_level=_fraction("significance_level", significance_level),
            rollback_margin=_fraction("rollback_margin", rollback_margin),
            **({} if fast_promotion_min_samples is None else
               {"fast_promotion_min_samples": _count("fast_promotion_min_samples", fast_promotion_min_samples)}))

    def toggle_continuous_deployment(self, deployment: str, enabled: bool) -> dict:
        """Turn continuous deployment on or off; returns the
        published settings dict."""
        return self.configure(deployment, "toggle_continuous_deployment", continuous_deployment_enabled=bool(enabled))

    def close(self) -> None:
        """Close the producer when this client created it."""
        if self._owns_producer:
            self.producer.close()
