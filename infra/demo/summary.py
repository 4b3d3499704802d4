"""The demo summary, computed from the events on the topics (not from in-process counters).

``LoopEvents`` holds the decoded events of each topic of interest (``LoopEvents.read(settings)`` reads
them to their end); ``summarise(events, deployment)`` folds them into the figures the demo prints.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from streams import catalog as ev
from streams.consumer import read_to_end
from streams.fallback_fold import fold_events, is_online_version
from streams.topics import Topics


@dataclass
class LoopEvents:
    """Every event of the loop's topics, per topic: lists of (event type, value dict, partition, offset)."""
    predictions: list = field(default_factory=list)
    shadow_predictions: list = field(default_factory=list)
    feedback: list = field(default_factory=list)
    labeled_examples: list = field(default_factory=list)
    triggers: list = field(default_factory=list)
    lifecycle: list = field(default_factory=list)
    updates: list = field(default_factory=list)
    drift: list = field(default_factory=list)
    dead_letters: list = field(default_factory=list)

    TOPIC_ATTRS = {"predictions": "predictions", "shadow_predictions": "shadow_predictions", "feedback": "feedback",
                   "labeled_examples": "labeled_examples", "triggers": "triggers", "lifecycle": "model_lifecycle",
                   "updates": "model_updates", "drift": "drift", "dead_letters": "dead_letters"}

    @classmethod
    def read(cls, settings, *, timeout_s: float = 60.0, serde=None) -> "LoopEvents":
        """Read every topic of :attr:`TOPIC_ATTRS` to its end. Raises TimeoutError when one is not read within
        ``timeout_s`` seconds."""
        topics = Topics.from_settings(settings)
        out = cls()
        for attr, topic_attr in cls.TOPIC_ATTRS.items():
            events = read_to_end(settings, getattr(topics, topic_attr), serde=serde, timeout_s=timeout_s)
            setattr(out, attr, [(e.event_type, e.value, e.partition, e.offset) for e in events])
        return out


def _of(events, *types):
    return [item[1] for item in events if item[0] in types]


def _stats_s(values_ms: list[float]) -> dict | None:
    if not values_ms:
        return None
    vals = sorted(v / 1000.0 for v in values_ms)
    return {"count": len(vals), "median_s": round(statistics.median(vals), 3), "max_s": round(vals[-1], 3),
            "min_s": round(vals[0], 3)}


def summarise(events: LoopEvents, deployment: str) -> dict:
    """Counts and loop latencies of one deployment (with the online fallback's engagements, retirements,
    refused switches, whether it serves at the end and how many predictions it served). Latencies: feedback->trigger (trigger time minus
    the newest feedback in its snapshot; manual triggers left out), trigger->registered (per registered
    model), registered->promoted (per promotion by the policy)."""
    mine = lambda vs: [v for v in vs if v.get("deployment") == deployment]  # noqa: E731
    preds = mine(_of(events.predictions, ev.PREDICTION_LOGGED))
    shadow = mine(_of(events.shadow_predictions, ev.PREDICTION_LOGGED))
    feedback = mine(_of(events.feedback, ev.FEEDBACK_RECEIVED))
    labeled = mine(_of(events.labeled_examples, ev.LABELED_EXAMPLE))
    triggers = mine(_of(events.triggers, ev.TRAINING_TRIGGERED))
    started = mine(_of(events.lifecycle, ev.TRAINING_RUN_STARTED))
    finished = mine(_of(events.lifecycle, ev.TRAINING_RUN_FINISHED))
    failed = mine(_of(events.lifecycle, ev.TRAINING_RUN_FAILED))
    registered = mine(_of(events.lifecycle, ev.MODEL_REGISTERED))
    rejected = mine(_of(events.lifecycle, ev.CANDIDATE_REJECTED) + _of(events.updates, ev.CANDIDATE_REJECTED))
    promoted = mine(_of(events.updates, ev.MODEL_PROMOTED))
    rolled_back = mine(_of(events.updates, ev.MODEL_ROLLED_BACK))
    # the online fallback: the one fold rule over model-updates in log order (streams/fallback_fold.py)
    fallback = fold_events([(t, v) for t, v, *_ in events.updates if v.get("deployment") == deployment])
    fallback_served = _online_served(preds)
    drift = mine(_of(events.drift, ev.DRIFT_MEASURED))

    # dedupe by event_id (at-least-once delivery may repeat events)
    def dedupe(vs):
        seen, out = set(), []
        for v in vs:
            if v["event_id"] not in seen:
                seen.add(v["event_id"])
                out.append(v)
        return out

    triggers, registered, rejected, promoted, rolled_back = map(dedupe, (triggers, registered, rejected, promoted, rolled_back))
    started, finished, failed = map(dedupe, (started, finished, failed))
    policy_promotions = [p for p in promoted if p["decided_by"] == "policy"]

    # loop latencies
    trigger_time = {t["trigger_id"]: t["event_time"] for t in triggers}
    registered_time = {r["model_version"]: r["event_time"] for r in registered}
    newest_feedback = _snapshot_feedback_times([t for t in triggers if t["reason"] != "manual"], events.labeled_examples)
    feedback_to_trigger = [trigger_time[tid] - ft for tid, ft in newest_feedback.items() if tid in trigger_time]
    trigger_to_registered = [r["event_time"] - trigger_time[r["trigger_id"]] for r in registered
                             if r.get("trigger_id") in trigger_time]
    registered_to_promoted = [p["event_time"] - registered_time[p["model_version"]] for p in policy_promotions
                              if p["model_version"] in registered_time]
    return {
        "deployment": deployment,
        "events_logged": len(preds) + len(shadow) + len(feedback),
        "predictions": len(preds),
        "shadow_predictions": len(shadow),
        "feedback_events": len(feedback),
        "reviewed": len({f["prediction_id"] for f in feedback}),
        "labeled_examples": len({e["prediction_id"] for e in labeled if e.get("role") == "primary"}),
        "drift_windows": len(drift),
        "drift_detected_windows": sum(1 for d in drift if d.get("drift_detected")),
        "dead_letters": len(events.dead_letters),
        "triggers": len(triggers),
        "triggers_by_reason": dict(sorted(Counter(t["reason"] for t in triggers).items())),
        "training_runs": len(started),
        "training_runs_finished": len(finished),
        "training_runs_failed": len(failed),
        "models_registered": len([r for r in registered if r.get("run_id")]),
        "candidates_rejected": len(rejected),
        "rejected_by_stage": dict(sorted(Counter(r["stage"] for r in rejected).items())),
        "rejections": [{"model_version": r["model_version"], "stage": r["stage"],
                        "reasons": [str(x)[:200] for x in (r.get("reasons") or [])[:3]]} for r in rejected],
        "promotions": len(policy_promotions),
        "promotions_all": len(promoted),
        "rollbacks": len(rolled_back),
        "champions": [p["model_version"] for p in promoted],
        "fallback_engagements": fallback.engagements.get(deployment, 0),
        "fallback_retirements": fallback.retirements.get(deployment, 0),
        "fallback_switches_refused": len(fallback.refused),
        "fallback_active_at_end": fallback.active(deployment),
        "fallback_predictions": fallback_served,
        "latency": {
            "feedback_to_trigger": _stats_s(feedback_to_trigger),
            "trigger_to_registered": _stats_s(trigger_to_registered),
            "registered_to_promoted": _stats_s(registered_to_promoted),
        },
    }


def _online_served(predictions: list[dict]) -> int:
    """Primary predictions served by an online learner (model version online:<learner>)."""
    return sum(1 for p in predictions if p.get("role") == "primary" and is_online_version(p.get("model_version")))


def _snapshot_feedback_times(triggers: list[dict], labeled_events: list) -> dict[str, int]:
    """For each trigger: the feedback time of the newest labeled example inside its snapshot (the
    freshest feedback the trigger's training set holds); feedback->trigger is the trigger time minus it."""
    newest: dict[str, int] = {}
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for item in labeled_events:
        if len(item) < 4 or item[0] != ev.LABELED_EXAMPLE:
            continue
        _t, value, partition, offset = item[:4]
        by_partition.setdefault(partition, []).append((offset, int(value.get("feedback_time") or 0)))
    for t in triggers:
        best = 0
        for po in t.get("snapshot") or ():
            for offset, ft in by_partition.get(po["partition"], ()):
                if po.get("start_offset", 0) <= offset < po["end_offset"] and ft > best:
                    best = ft
        if best:
            newest[t["trigger_id"]] = best
    return newest
