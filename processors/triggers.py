"""Stage: retraining triggers (review threshold, drift, performance decay, schedule).

Each deployment's triggers are decided in one place, its owner (processors/ownership.py), whatever
the number of workers: one agent (``forward_pairs``) reads labeled-examples (keyed by prediction id,
so spread over every worker) and re-keys the primary role's (label, predicted, model_version) pairs by
deployment to the internal topic ``<prefix>performance-pairs``; the deciding agent reads
feedback-stats, drift and performance-pairs, all keyed by deployment and co-partitioned, so the
owner of a deployment's partition sees all of its evidence. The timer (schedules, held-back
conditions) acts only for deployments this worker owns. A follower folds deployments, triggers (own
and manual ones), model-lifecycle (runs done, champion metrics) and model-updates (promotions reset
the performance baseline). Decisions are in processors/trigger_policy.py and
processors/performance.py; an automatic trigger's id is derived from its idempotency key
(trigger_policy), so a duplicate decision cannot start a second training. A trigger carries the
dataset snapshot: the end offsets of every labeled-examples partition, taken after flushing this
process's producer.

Training windows (processors/training_window.py): the forwarded items also carry each labeled
example's position (partition, offset), prediction time, event time, role and correctness, so the
owner keeps, per deployment, the positions of its recent labeled examples in the order it sees them, an
ADWIN on the champion's error stream and the change point (ADWIN cut, drift detected, or decay). A
trigger's snapshot is the deployment's window (``training_window``); drift and decay triggers wait for
``min_post_change_labels`` labeled examples after the change point, then fire again each time that
count doubles while the reason holds.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from processors.dead_letters import decode_message
from processors.deployment_view import DeploymentView
from processors.follower import LogFollower
from processors.ownership import Ownership, forward_to_owners
from processors.performance import PerformanceTracker
from processors.snapshot import labeled_examples_snapshot, snapshot_ends, trigger_record, window_from_log
from processors.training_window import LabelWindow, window_settings
from processors.trigger_policy import TriggerPolicy
from streams import catalog as ev
from streams.consumer import end_offset_consumer
from streams.serde import now_ms

log = logging.getLogger(__name__)
COMPONENT = "processors.triggers"
PAIRS_KEY = "performance-pairs"


def register(app, ctx) -> None:
    """The triggers stage: labeled examples, feedback stats and drift in, TrainingTriggered out.
    Declares its faust agents, and the timers, tasks and tables it needs, on ``app`` (``ctx``: the shared
    :class:`processors.app.ProcessorContext`)."""
    settings, topics, m = ctx.settings, ctx.topics, ctx.metrics
    view = DeploymentView()
    policy = TriggerPolicy(settings.trigger_timeout_s)
    perf: dict[str, PerformanceTracker] = {}
    champion_metrics: dict[tuple[str, str], dict] = {}
    latest_stats: dict[str, dict] = {}
    windows: dict[str, LabelWindow] = {}
    lock = threading.Lock()

    def label_window(dep: str) -> LabelWindow:
        w = windows.get(dep)
        if w is None:
            w = windows[dep] = LabelWindow()
        return w

    def tracker(dep: str) -> PerformanceTracker:
        t = perf.get(dep)
        if t is None:
            t = perf[dep] = PerformanceTracker(settings.performance_window)
        return t

    outstanding_g = m.gauge("ctloop_triggers_outstanding", "Triggers without a finished/failed run yet.", ("deployment",))

    def on_log_event(event_type, value, topic):
        dep = value.get("deployment")
        if event_type in (ev.TRAINING_TRIGGERED, ev.TRAINING_RUN_FINISHED, ev.TRAINING_RUN_FAILED):
            try:
                _update_policy(event_type, value, dep)
            finally:
                outstanding_g.labels(dep).set(len(policy.outstanding.get(dep, {})))
            return
        _update_state(event_type, value, dep)

    def _update_policy(event_type, value, dep):
        if event_type == ev.TRAINING_TRIGGERED:
            policy.on_trigger(value)
        else:
            policy.on_run_done(dep, value["trigger_id"])

    def _update_state(event_type, value, dep):
        if event_type == ev.DEPLOYMENT_CONFIGURED:
            view.apply(event_type, value)
            policy.seen(dep, int(value["event_time"]))
            policy.on_settings(view.get(dep))
        elif event_type == ev.MODEL_REGISTERED:
            champion_metrics[(dep, value["model_version"])] = dict(value.get("metrics") or {})
            if value.get("alias") == "champion":
                with lock:
                    tracker(dep).set_champion(value["model_version"], value["metrics"].get("accuracy"))
        elif event_type in (ev.MODEL_PROMOTED, ev.MODEL_ROLLED_BACK):
            version = value["model_version"] if event_type == ev.MODEL_PROMOTED else value["to_version"]
            metrics = champion_metrics.get((dep, version), {})
            with lock:
                t = tracker(dep)
                if version != t.champion_version:
                    label_window(dep).on_promotion()   # another model's errors; the change point stays
                t.set_champion(version, metrics.get("accuracy"))

    LogFollower(settings, [topics.deployments, topics.triggers, topics.model_lifecycle, topics.model_updates],
                on_log_event, serde=ctx.serde, name="triggers-follower").start()

    emitted = m.counter("ctloop_triggers_emitted_total", "Training triggers emitted.", ("deployment", "reason"))
    held = m.counter("ctloop_triggers_held_back_total",
                     "Triggers a policy wanted but that were held back (outstanding trigger, cooldown, disabled).",
                     ("deployment", "reason", "why"))
    latency = m.histogram("ctloop_triggers_snapshot_seconds", "Time to flush outputs and take the dataset snapshot.")
    rolling = m.gauge("ctloop_performance_rolling_accuracy", "Rolling accuracy of the live primary model.", ("deployment",))
    rolling_p = m.gauge("ctloop_performance_rolling_precision", "Rolling macro precision of the live model.", ("deployment",))
    rolling_r = m.gauge("ctloop_performance_rolling_recall", "Rolling macro recall of the live model.", ("deployment",))
    baseline_g = m.gauge("ctloop_performance_baseline_accuracy", "Accuracy the live model is judged against.", ("deployment",))
    seen_g = m.gauge("ctloop_training_window_labels_seen", "Labeled examples of the deployment this owner folded.",
                     ("deployment",))
    post_g = m.gauge("ctloop_training_window_post_change_labels",
                     "Labeled examples after the deployment's change point (-1: none known).", ("deployment",))
    consumer = end_offset_consumer(settings)

    def gated(dep: str, reason: str, s: dict) -> bool:
        """Whether the trigger waits for post-change evidence: drift and decay always, any automatic
        trigger when the window is since_change and a change point is known (min_post_change_labels > 0)."""
        kind, _, _, min_post = window_settings(s)
        if min_post <= 0:
            return False
        with lock:
            known = label_window(dep).change is not None
        return reason in ("drift", "performance_decay") or (kind == "since_change" and known)

    def evidence_needed(s: dict) -> int:
        """Post-change labels a gated trigger needs: min_post_change_labels, and with the since_change
        window at least the deployment's min_training_examples (the trainer refuses fewer)."""
        kind, _, _, min_post = window_settings(s)
        if min_post > 0 and kind == "since_change":
            return max(min_post, int(s.get("min_training_examples") or 0))
        return min_post

    def waiting(dep: str, reason: str, s: dict) -> int | None:
        """Post-change labels the trigger still waits for (None: it may fire)."""
        if not gated(dep, reason, s):
            return None
        min_post = evidence_needed(s)
        with lock:
            w = label_window(dep)
            w.min_post_change_labels = min_post
            if reason == "performance_decay" and (w.change is None or w.decay_restarts):
                w.on_decay(len(tracker(dep).pairs))
            if w.change is None:   # a drift with no label since: the change point is the next one
                return min_post
            # drift and decay fire again as the post-change count doubles; the others need only the minimum
            return w.waiting_for(min_post, doubling=reason in ("drift", "performance_decay"))

    async def window_snapshot(dep: str, s: dict, now: int) -> tuple[list[dict], dict]:
        """The trigger's snapshot per the deployment's training window, and its evidence."""
        loop = asyncio.get_running_loop()
        ends = snapshot_ends(await loop.run_in_executor(None, labeled_examples_snapshot, settings, consumer))
        kind, labels, seconds, _ = window_settings(s)
        stats = latest_stats.get(dep)
        with lock:
            w = label_window(dep)
            # the fold has not seen every counted example (its pairs lag behind the stats, or this worker took
            # over or restarted mid-stream): a sliding window is read from the log, so it holds exactly the
            # last N (a since_change window from a known change point holds every later example anyway)
            missed = stats is not None and w.seen < int(stats["added_to_training"])
            from_log = kind != "all" and missed and not (kind == "since_change" and w.change is not None)
            if not from_log:
                return w.snapshot(kind, ends, labels=labels, seconds=seconds, now_ms=now)
        return await loop.run_in_executor(None, lambda: window_from_log(settings, dep, s, ends))

    async def fire(dep: str, reason: str, evidence: dict) -> bool:
        s = view.get(dep)
        if not s["continuous_training_enabled"]:
            held.labels(dep, reason, "disabled").inc()
            return False
        missing = waiting(dep, reason, s)
        if missing is not None:
            held.labels(dep, reason, "post_change_labels").inc()
            return False
        now = now_ms()
        # drift and decay triggers that wait for evidence are spaced by it (post-change labels doubling),
        # not by a cooldown in seconds
        spaced = reason in ("drift", "performance_decay") and window_settings(s)[3] > 0
        why = policy.blocked(dep, 0 if spaced else s["cooldown_seconds"], now, s)
        if why:
            held.labels(dep, reason, why).inc()
            return False
        stats = latest_stats.get(dep)
        added = stats["added_to_training"] if stats else None
        if added is not None:
            evidence.setdefault("added_to_training", added)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await loop.run_in_executor(None, ctx.producer.flush)
        snapshot, window_evidence = await window_snapshot(dep, s, now)
        evidence.update(window_evidence)
        record = trigger_record(settings, dep, reason, evidence, snapshot, training_mode=s["training_mode"],
                                idempotency_key=policy.idempotency_key(dep, reason))
        policy.reserve(dep, record["trigger_id"], now, added)
        with lock:
            label_window(dep).fired(evidence_needed(s))
        outstanding_g.labels(dep).set(len(policy.outstanding.get(dep, {})))
        latency.observe(time.perf_counter() - started)
        ctx.producer.produce(topics.triggers, ev.TRAINING_TRIGGERED, record, key=dep)
        await loop.run_in_executor(None, ctx.producer.flush)
        emitted.labels(dep, reason).inc()
        log.info("trigger %s for %s: %s %s", record["trigger_id"], dep, reason, record["evidence"])
        return True

    firing = set()

    async def try_fire(dep: str, reason: str, evidence: dict | None) -> None:
        if evidence is None or dep in firing:
            return
        firing.add(dep)  # one trigger decision per deployment at a time
        try:
            await fire(dep, reason, evidence)
        except Exception:  # noqa: BLE001 - e.g. the snapshot timed out: the condition is checked again later
            log.exception("trigger %s for %s failed", reason, dep)
        finally:
            firing.discard(dep)

    def add_pairs(dep: str, pairs: list) -> None:
        """Fold forwarded items (under ``lock``); items of 3 fields (before positions were forwarded)
        feed only the performance tracker."""
        t, w = tracker(dep), label_window(dep)
        for item in pairs:
            label, predicted, version = item[:3]
            role = item[7] if len(item) > 7 else "primary"
            if role == "primary":
                t.add(label, predicted, version)
            if len(item) > 8:
                champion = role == "primary" and (t.champion_version is None or version == t.champion_version)
                w.add(int(item[3]), int(item[4]), prediction_time=int(item[5]), event_time=int(item[6]),
                      champion_correct=bool(item[8]) if champion else None)

    def pending_drift(dep: str) -> dict | None:
        """The drift evidence still wanted for an evidence-gated drift trigger: drift still detected and
        the deployment waits for post-change labels (min_post_change_labels > 0)."""
        if window_settings(view.get(dep))[3] <= 0:
            return None
        with lock:
            found = label_window(dep).drift_evidence
        return dict(found) if found else None

    pairs_topic = f"{settings.topic_prefix}{PAIRS_KEY}"
    n = topics.partitions("feedback-stats")
    owner = Ownership.of_app(app, topics.feedback_stats, n, settings.producer_partitioner)
    examples = app.topic(topics.labeled_examples, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")

    @app.agent(examples, name=f"{COMPONENT}.pairs")
    async def forward_pairs(stream):
        """labeled-examples (any partition) -> performance-pairs, keyed by deployment."""
        def pair_of(_event_type, value, message):
            # [label, predicted, version, partition, offset, prediction_time, event_time, role, correct]
            return [value["label"], value.get("predicted_label"), value["model_version"], message.partition,
                    message.offset, int(value["prediction_time"]), int(value["event_time"]), value["role"],
                    bool(value["correct"])]

        async for events in stream.take_events(2000, within=0.005):
            # a pair over max_message_bytes alone (a huge label) is logged and not counted
            await forward_to_owners(ctx, events, component=COMPONENT, topic=pairs_topic, item_of=pair_of,
                                    field="pairs", what="a performance pair", with_message=True)

    source = app.topic(topics.feedback_stats, topics.drift, pairs_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")

    @app.agent(source, name=COMPONENT)
    async def decide(stream):
        async for events in stream.take_events(2000, within=0.005):   # decisions: small batches, low latency
            wanted: dict[str, tuple[str, dict]] = {}
            touched = set()
            for event in events:
                if event.message.topic == pairs_topic:
                    try:
                        dep = event.message.key.decode()
                        pairs = json.loads(event.message.value)["pairs"]
                        with lock:
                            add_pairs(dep, pairs)
                    except Exception:  # noqa: BLE001 - an internal record we cannot use must not stop decisions
                        log.exception("triggers: performance pairs rejected")
                        continue
                    touched.add(dep)
                    continue
                decoded = decode_message(ctx, event.message, COMPONENT)
                if decoded is None:
                    continue
                etype, value = decoded
                dep = value["deployment"]
                s = view.get(dep)
                if etype == ev.FEEDBACK_LOOP_STATS:
                    latest_stats[dep] = value
                    evidence = policy.review(dep, value, s)
                    if evidence:
                        wanted.setdefault(dep, ("review_threshold", evidence))
                elif etype == ev.DRIFT_MEASURED:
                    evidence = policy.drift(value, s)
                    with lock:
                        label_window(dep).on_drift(bool(evidence), value.get("window_start"), evidence,
                                                   window_end=value.get("window_end"))
                    if evidence:
                        wanted.setdefault(dep, ("drift", evidence))
            for dep in touched:
                with lock:
                    w = label_window(dep)
                    seen_g.labels(dep).set(w.seen)
                    post_g.labels(dep).set(w.change.post_change_labels if w.change is not None else -1)
                    t = tracker(dep)
                    metrics = t.metrics()
                    evidence = t.decay(float(view.get(dep)["performance_decay_threshold"]))
                    baseline = t.baseline
                if metrics:
                    rolling.labels(dep).set(metrics["accuracy"])
                    rolling_p.labels(dep).set(metrics["precision"])
                    rolling_r.labels(dep).set(metrics["recall"])
                if baseline is not None:
                    baseline_g.labels(dep).set(baseline)
                if evidence:
                    wanted.setdefault(dep, ("performance_decay", evidence))
                pending = pending_drift(dep)
                if pending:
                    wanted.setdefault(dep, ("drift", pending))
            for dep, (reason, evidence) in wanted.items():
                await try_fire(dep, reason, evidence)

    def window_growth(dep: str, s: dict) -> tuple[str, str, dict | None]:
        """(deployment, reason, evidence or None) of a window-growth retrain (LabelWindow.growth_due):
        since_change windows only, with the change point's signal as the reason."""
        kind, cap, _, min_post = window_settings(s)
        if kind != "since_change" or min_post <= 0:
            return dep, "drift", None
        with lock:
            w = label_window(dep)
            evidence = w.growth_due(cap)
            reason = w.growth_reason()
        return dep, reason, evidence

    @app.timer(0.5)
    async def scheduled():
        """Schedules, and policies that were held back (outstanding trigger, cooldown) and still hold
        on the latest figures: they fire once the run finished or the cooldown passed. Only for the
        deployments this worker owns (another worker's timer acts for the others)."""
        now = now_ms()
        for dep, s in view.known().items():
            if not s["continuous_training_enabled"] or not owner.owns(dep):
                continue
            stats = latest_stats.get(dep)
            if stats is not None and policy.blocked(dep, s["cooldown_seconds"], now, s) is None:
                await try_fire(dep, "review_threshold", policy.review(dep, stats, s))
            if policy.blocked(dep, 0, now, s) is None:
                with lock:
                    evidence = tracker(dep).decay(float(s["performance_decay_threshold"]))
                await try_fire(dep, "performance_decay", evidence)
                await try_fire(dep, "drift", pending_drift(dep))
                await try_fire(*window_growth(dep, s))
            if s["schedule_seconds"] > 0:
                await try_fire(dep, "schedule", policy.schedule(dep, s, now))
