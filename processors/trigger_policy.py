"""When to retrain, as plain logic (no Kafka).

Policies: review_threshold (labeled examples added since the last trigger >= trigger_threshold),
drift (a DriftMeasured window with drift_detected), performance_decay (processors/performance.py),
schedule (schedule_seconds since the last trigger), manual (``ctloop trigger``; always allowed).
Automatic triggers need continuous training enabled, and are held back while the deployment has an
outstanding trigger (no TrainingRunFinished/Failed for it yet, and younger than trigger_timeout_s) or
its last trigger is younger than cooldown_seconds: one outstanding trigger per deployment, no storms.
(Drift and decay triggers that wait for post-change labels, processors/training_window.py, are checked
with a cooldown of 0: the doubling of their evidence spaces them, not seconds.)
They are also held back while a shadow awaits the promotion policy's decision (continuous deployment
enabled and a shadow set, for at most trigger_timeout_s since it was set): the trainer sets every new
challenger as the shadow, which discards the evidence gathered on the one before, so retraining at the
cooldown's pace while the comparisons lag behind (a loaded worker) would replace each shadow before the
policy could judge it, and nothing would ever be promoted. The policy decides every shadow (promote, or
reject by max_samples_factor x promotion_min_samples labeled pairs) and then clears it.
State is a fold of the triggers, deployments and model-lifecycle topics, so a restart rebuilds it.

Idempotency: an automatic trigger's id is derived from :meth:`TriggerPolicy.idempotency_key`
(deployment, reason, and the id of the deployment's previous trigger in the fold), so two deciders
with the same fold (e.g. the old and the new owner during a rebalance) emit the same trigger_id, and
the trainer, which skips a trigger_id whose run is done, trains it once.

Clocks: the times folded here (a trigger's or a settings event's ``event_time``) were written by other
processes (another worker, ``ctloop trigger``, a trainer, an app). They are taken as at most this
process's now (``clock``), so a clock running ahead elsewhere cannot hold triggers back for the skew; the
latest trigger of a deployment is the latest in the log (its triggers share one partition), never the one
with the newest ``event_time``.
"""
from __future__ import annotations

import threading
import uuid
from typing import Callable

from streams.serde import now_ms as wall_ms

TRIGGER_NAMESPACE = uuid.UUID("5f0c7a52-3d1e-4a7b-9a55-6b1f0c2d7e11")


def trigger_id_for(idempotency_key: str) -> str:
    """The trigger_id (a UUID, version 5) of an idempotency key: equal keys give equal ids."""
    return str(uuid.uuid5(TRIGGER_NAMESPACE, idempotency_key))


class TriggerPolicy:
    """The trigger fold and rules of every deployment. ``trigger_timeout_s``: how long a trigger without a
    finished run stays outstanding; ``clock``: this process's time in epoch ms (injectable for tests)."""

    def __init__(self, trigger_timeout_s: float, clock: Callable[[], int] = wall_ms):
        self.timeout_ms = int(trigger_timeout_s * 1000)
        self._clock = clock
        self._lock = threading.Lock()
        self.last_trigger_ms: dict[str, int] = {}
        self.outstanding: dict[str, dict[str, int]] = {}   # deployment -> {trigger_id: emitted ms}
        self.baseline_added: dict[str, int] = {}            # added_to_training at the last trigger
        self.first_seen_ms: dict[str, int] = {}
        self.last_trigger_id: dict[str, str] = {}           # the latest trigger per deployment (in log order)
        self.shadow_set: dict[str, tuple[str, int]] = {}    # deployment -> (shadow version, when it was set)
        self._done: set[str] = set()

    # -- folding the logs ---------------------------------------------------------------------------
    def local_ms(self, event_time) -> int:
        """A time written by another process, as at most this process's now (epoch ms)."""
        return min(int(event_time), self._clock())

    def on_trigger(self, value: dict) -> None:
        """Fold a TrainingTriggered value: the deployment's latest trigger and its time (local epoch
        ms), outstanding until its run is done, and the added_to_training baseline of its evidence."""
        dep, tid, t = value["deployment"], value["trigger_id"], self.local_ms(value["event_time"])
        with self._lock:
            self.last_trigger_id[dep] = tid   # the fold reads a deployment's triggers in log order
            self.last_trigger_ms[dep] = max(t, self.last_trigger_ms.get(dep, 0))
            if tid not in self._done:
                self.outstanding.setdefault(dep, {})[tid] = t
            added = (value.get("evidence") or {}).get("added_to_training")
            if added not in (None, ""):
                self.baseline_added[dep] = int(float(added))

    def on_run_done(self, deployment: str, trigger_id: str) -> None:
        """A run of ``trigger_id`` finished or failed: the trigger is no longer outstanding."""
        with self._lock:
            self._done.add(trigger_id)
            self.outstanding.get(deployment, {}).pop(trigger_id, None)

    def seen(self, deployment: str, event_time: int) -> None:
        """The deployment's first event (its schedule counts from there until its first trigger)."""
        self.first_seen_ms.setdefault(deployment, self.local_ms(event_time))

    def on_settings(self, value: dict) -> None:
        """Fold a DeploymentConfigured (the latest revision of each deployment, as the settings view):
        remembers the shadow and when it was set (kept while later revisions leave it unchanged)."""
        dep, shadow = value["deployment"], value.get("shadow_model_version")
        with self._lock:
            if not shadow:
                self.shadow_set.pop(dep, None)
            elif self.shadow_set.get(dep, (None, 0))[0] != shadow:
                self.shadow_set[dep] = (shadow, self.local_ms(value["event_time"]))

    # -- deciding -----------------------------------------------------------------------------------
    def blocked(self, deployment: str, cooldown_s: float, now_ms: int, dep_settings: dict | None = None) -> str | None:
        """Why an automatic trigger may not fire now (None: it may). With ``dep_settings`` (the
        deployment's current settings), also "shadow_undecided" while continuous deployment is enabled
        and the shadow folded by :meth:`on_settings` is still set, for at most trigger_timeout_s."""
        with self._lock:
            live = {tid: t for tid, t in self.outstanding.get(deployment, {}).items() if now_ms - t < self.timeout_ms}
            if live:
                return "outstanding"
            last = self.last_trigger_ms.get(deployment)
            if last is not None and now_ms - last < cooldown_s * 1000:
                return "cooldown"
            shadow = self.shadow_set.get(deployment)
            if dep_settings is not None and dep_settings.get("continuous_deployment_enabled") and shadow is not None \
                    and dep_settings.get("shadow_model_version") == shadow[0] and now_ms - shadow[1] < self.timeout_ms:
                return "shadow_undecided"
        return None

    def idempotency_key(self, deployment: str, reason: str) -> str:
        """``deployment|reason|after=<previous trigger_id or none>``: at most one automatic trigger per
        reason can follow a given trigger (the new one blocks, then becomes the previous one), so the
        key names one decision whichever worker takes it."""
        with self._lock:
            previous = self.last_trigger_id.get(deployment, "none")
        return f"{deployment}|{reason}|after={previous}"

    def reserve(self, deployment: str, trigger_id: str, now_ms: int, added_to_training: int | None) -> None:
        """Record a trigger being emitted (before any await, so concurrent checks see it)."""
        self.on_trigger({"deployment": deployment, "trigger_id": trigger_id, "event_time": now_ms,
                         "evidence": {} if added_to_training is None else {"added_to_training": added_to_training}})

    def review(self, deployment: str, stats: dict, dep_settings: dict) -> dict | None:
        """Evidence of a review-threshold trigger (dict of reviewed_since_last_training, trigger_threshold,
        reviewed, added_to_training; labels) when added_to_training rose by ``trigger_threshold`` since the last
        trigger; None otherwise or when the threshold is 0."""
        threshold = int(dep_settings.get("trigger_threshold") or 0)
        if threshold <= 0:
            return None
        since = stats["added_to_training"] - self.baseline_added.get(deployment, 0)
        if since < threshold:
            return None
        return {"reviewed_since_last_training": since, "trigger_threshold": threshold,
                "reviewed": stats["reviewed"], "added_to_training": stats["added_to_training"]}

    @staticmethod
    def drift(drift: dict, dep_settings: dict) -> dict | None:
        """Evidence of a drift trigger (str fields: drift_share, drift_threshold, drifting_features,
        max_psi; window_size and window_end) when the DriftMeasured value ``drift`` detected drift; else None."""
        if not drift.get("drift_detected"):
            return None
        drifting = [f["feature"] for f in drift["features"] if f["drifted"]]
        return {"drift_share": f"{drift['drift_share']:.4f}", "drift_threshold": f"{drift['drift_threshold']:g}",
                "drifting_features": ",".join(drifting), "window_size": drift["window_size"],
                "window_end": drift["window_end"],
                "max_psi": f"{max((f['psi'] for f in drift['features']), default=0.0):.4f}"}

    def schedule(self, deployment: str, dep_settings: dict, now_ms: int) -> dict | None:
        """Evidence of a scheduled trigger (schedule_seconds, seconds_since_last_trigger) when
        ``schedule_seconds`` passed since the last trigger (or since the deployment was first seen); else None.
        ``now_ms``: epoch ms."""
        every = int(dep_settings.get("schedule_seconds") or 0)
        if every <= 0:
            return None
        with self._lock:
            since_ms = self.last_trigger_ms.get(deployment) or self.first_seen_ms.get(deployment)
        if since_ms is None or now_ms - since_ms < every * 1000:
            return None
        return {"schedule_seconds": every, "seconds_since_last_trigger": (now_ms - since_ms) // 1000}
