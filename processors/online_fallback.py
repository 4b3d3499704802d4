"""Stage: the online fallback (LabeledExample -> OnlineFallbackSwitched on model-updates).

While a deployment's champion is significantly worse on recent labels than an online learner
(river, :mod:`streams.online_learner`) trained in-stream on the same labeled examples, the learner serves in
its place; a retrained champion promoted over it retires it (the fold rule: :mod:`streams.fallback_fold`).

* ``forward`` (every worker, any partition of labeled-examples): each non-shadow LabeledExample of a
  deployment whose ``online_fallback`` setting names a learner is re-keyed by deployment to the internal
  topic ``<prefix>fallback-examples`` as ``[features, label, predicted_label, model_version, role]``
  (processors.ownership.forward_to_owners), so each deployment's examples are folded in one place,
  in one order.
* ``decide`` (the worker assigned the deployment's partition of fallback-examples): a
  :class:`FallbackTracker` per deployment predicts each example with the learner BEFORE learning it
  (prequential) and keeps, over the last ``performance_window`` examples served by the registry
  champion (role primary), the paired correctness (champion vs truth, learner vs truth).
  :class:`FallbackPolicy` engages the fallback (``active`` true) when continuous deployment is on, at
  least ``fast_promotion_min_samples`` pairs are in (a floor of 10 when that is 0), the learner is better
  by >= ``promotion_threshold`` and the exact McNemar p-value is below ``significance_level``.
* Retirement: ``active`` false when the setting is turned off or continuous deployment is disabled
  while the fallback is active (a timer, owner only); otherwise a promotion retires it (a shadow that
  overtakes the serving learner is promoted: ``PromotionPolicy.over_fallback``). No rollback watch
  on the learner (see :meth:`FallbackPolicy.retire`).
* Every switch names the latest decision it saw (``expected_decision``): a duplicate decision by two
  owners during a rebalance is refused by every fold. A switch emitted is not repeated until the fold
  has read it back (applied or refused).
* **State rebuild.** A tracker is built when the first record of its deployment arrives at a worker, or
  again when records of its partition were processed elsewhere in between (an offset gap, i.e. a
  rebalance): it replays prequentially the deployment's items of the last ``REBUILD_RECORDS`` records of
  the partition before that record (at most ``REBUILD_EXAMPLES`` examples), so the learner and the
  window are a function of the recent log, whichever worker owns the deployment.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass

from processors.ownership import Ownership, forward_to_owners
from processors.statistics import champion_collapse, mcnemar_pvalue
from streams import catalog as ev
from streams.fallback_fold import FallbackFold, online_version
from streams.serde import new_event
from streams.online_learner import OnlineLearner

log = logging.getLogger(__name__)
COMPONENT = "processors.online_fallback"
EXAMPLES_KEY = "fallback-examples"
REBUILD_RECORDS = 5000
"""Records of a fallback-examples partition read back to rebuild a deployment's tracker."""
REBUILD_EXAMPLES = 5000
"""Most examples of one deployment replayed into a rebuilt tracker (the latest ones)."""
MIN_PAIRS_FLOOR = 10
"""Fewest paired labels an engagement is judged on when fast_promotion_min_samples is 0."""


# --- pure logic (no Kafka) --------------------------------------------------------------------------
class FallbackTracker:
    """One deployment's online learner and the paired correctness of the champion and the learner over
    the last ``window`` examples the champion served (role primary).

    ``add(features, label, predicted, model_version, role, champion)``: shadow examples are ignored; the
    learner predicts the example, then learns it; when ``model_version`` is ``champion`` and the role
    primary, the pair (champion right, learner right) enters the window. A new champion restarts the
    window (pairs of the previous one say nothing about it)."""

    def __init__(self, learner: str, window: int = 200, seed: int = 42):
        self.learner = OnlineLearner(learner, seed)
        self.window = max(1, int(window))
        self.pairs: deque = deque(maxlen=self.window)
        self.champion: str | None = None
        self.examples = 0
        self.learner_correct: deque = deque(maxlen=self.window)   # the learner's prequential hits, any role

    def add(self, features: dict, label: str, predicted: str | None, model_version: str, role: str,
            champion: str | None) -> None:
        """Fold one labeled example (see the class docstring): shadow examples are ignored; a new
        ``champion`` restarts the window of pairs."""
        if role == "shadow":
            return
        if champion != self.champion:
            self.champion = champion
            self.pairs.clear()
        learner_label = self.learner.prequential(features, label)
        self.examples += 1
        self.learner_correct.append(learner_label == label)
        if role == "primary" and champion is not None and model_version == champion:
            self.pairs.append((predicted == label, learner_label == label))

    def evidence(self) -> dict:
        """Figures of the window: n, champion and learner accuracy, discordant counts, McNemar p."""
        n = len(self.pairs)
        champ = sum(c for c, _ in self.pairs)
        learn = sum(x for _, x in self.pairs)
        champion_only = sum(1 for c, x in self.pairs if c and not x)
        learner_only = sum(1 for c, x in self.pairs if x and not c)
        return {"n": n, "champion_accuracy": champ / n if n else 0.0, "learner_accuracy": learn / n if n else 0.0,
                "champion_only": champion_only, "learner_only": learner_only,
                "mcnemar_pvalue": mcnemar_pvalue(champion_only, learner_only)}

    def learner_accuracy(self) -> float | None:
        """The learner's prequential accuracy over its last ``window`` examples (any role); None before any."""
        return sum(self.learner_correct) / len(self.learner_correct) if self.learner_correct else None


@dataclass(frozen=True)
class Switch:
    """A decision of :class:`FallbackPolicy`: ``active`` (engage or retire), why, and the figures."""

    active: bool
    reason: str
    evidence: dict[str, str]


class FallbackPolicy:
    """Engage or retire the online fallback of a deployment from its settings, the fold and a tracker."""

    def engage(self, config: dict, tracker: FallbackTracker, active: bool,
               champion_accuracy: float | None = None) -> Switch | None:
        """Engage when the fallback is off, the deployment's ``online_fallback`` names a learner,
        continuous deployment is on, at least ``need`` = ``fast_promotion_min_samples`` (a floor of
        MIN_PAIRS_FLOOR when 0) champion-served pairs are in the window, and either

        * **collapse**: on the last ``need`` pairs the champion has collapsed against its baseline (the lower
          of ``champion_accuracy``, its registered holdout accuracy, and its accuracy on the window's older
          pairs when there are ``need`` of them; :func:`processors.statistics.champion_collapse` with
          rollback_margin, at a per-look level significance_level / window: the test runs on every batch,
          and this bounds a false engagement within any window of pairs by significance_level) and the
          learner's accuracy on the same pairs beats
          the champion's by >= promotion_threshold (an abrupt drift is served by the learner after a few
          dozen post-change labels, not after enough discordant pairs to move a whole window); or
        * **window**: over the whole window the learner's accuracy beats the champion's by >=
          promotion_threshold and McNemar's p < significance_level.

        Else None."""
        if active or not config.get("online_fallback") or not config.get("continuous_deployment_enabled"):
            return None
        e = tracker.evidence()
        need = int(config.get("fast_promotion_min_samples") or 0) or MIN_PAIRS_FLOOR
        need = min(max(need, MIN_PAIRS_FLOOR), tracker.window)
        if e["n"] < need:
            return None
        threshold = float(config.get("promotion_threshold", 0.05))
        alpha = float(config.get("significance_level", 0.05))
        collapsed = self._collapse(config, tracker, need, champion_accuracy, threshold, alpha)
        if collapsed is not None:
            return collapsed
        diff = e["learner_accuracy"] - e["champion_accuracy"]
        if diff < threshold or e["mcnemar_pvalue"] >= alpha:
            return None
        evidence = {"rule": "window", "window": str(e["n"]), "min_pairs": str(need),
                    "champion_version": str(tracker.champion),
                    "champion_accuracy": f"{e['champion_accuracy']:.6f}",
                    "learner_accuracy": f"{e['learner_accuracy']:.6f}", "difference": f"{diff:.6f}",
                    "champion_only": str(e["champion_only"]), "learner_only": str(e["learner_only"]),
                    "mcnemar_pvalue": f"{e['mcnemar_pvalue']:.6g}", "threshold": f"{threshold:g}",
                    "significance_level": f"{alpha:g}", "learner_examples": str(tracker.examples)}
        return Switch(True, f"online learner accuracy {e['learner_accuracy']:.4f} beats champion {tracker.champion} "
                            f"{e['champion_accuracy']:.4f} by {diff:+.4f} (>= {threshold:g}), McNemar "
                            f"p={e['mcnemar_pvalue']:.3g} < {alpha:g} on the last {e['n']} labeled predictions",
                      evidence)

    @staticmethod
    def _collapse(config: dict, tracker: FallbackTracker, need: int, champion_accuracy: float | None,
                  threshold: float, alpha: float) -> Switch | None:
        """The collapse clause of :meth:`engage` on the last ``need`` pairs, or None."""
        if champion_accuracy is None:
            return None
        pairs = list(tracker.pairs)
        recent, older = pairs[-need:], pairs[:-need]
        n = len(recent)
        champ = sum(c for c, _ in recent) / n
        learn = sum(x for _, x in recent) / n
        # the baseline: the registered holdout accuracy, or the champion's live accuracy on the older pairs of
        # the window when that is lower (holdout figures are often optimistic; a live level calibrates them)
        baseline = float(champion_accuracy)
        live = sum(c for c, _ in older) / len(older) if len(older) >= need else None
        if live is not None and live < baseline:
            baseline = live
        # this test looks at every batch: a per-look level alpha / window bounds the chance of a false
        # engagement within any `window` consecutive pairs by alpha (Bonferroni over at most `window` looks)
        alpha_look = alpha / max(1, tracker.window)
        margin = float(config.get("rollback_margin", 0.05))
        collapsed, p = champion_collapse(champ, n, baseline, margin=margin, alpha=alpha_look)
        if not collapsed or learn - champ < threshold:
            return None
        evidence = {"rule": "collapse", "window": str(n), "min_pairs": str(need),
                    "champion_version": str(tracker.champion), "champion_accuracy": f"{champ:.6f}",
                    "champion_registered_accuracy": f"{float(champion_accuracy):.6f}",
                    "champion_live_accuracy": "" if live is None else f"{live:.6f}",
                    "champion_baseline_accuracy": f"{baseline:.6f}",
                    "champion_collapse_pvalue": f"{p:.6g}", "collapse_level": f"{alpha_look:.6g}",
                    "rollback_margin": f"{margin:g}",
                    "learner_accuracy": f"{learn:.6f}", "difference": f"{learn - champ:.6f}",
                    "threshold": f"{threshold:g}", "significance_level": f"{alpha:g}",
                    "learner_examples": str(tracker.examples)}
        return Switch(True, f"champion {tracker.champion} collapsed: accuracy {champ:.4f} on the last {n} labeled "
                            f"predictions vs its baseline {baseline:.4f} (binomial p={p:.3g} < {alpha_look:.3g}); "
                            f"the online learner had {learn:.4f} on them ({learn - champ:+.4f} >= {threshold:g})",
                      evidence)

    def retire(self, config: dict, active: bool) -> Switch | None:
        """Retire an active fallback whose setting was turned off or whose continuous deployment was
        disabled. Else None: a promoted champion retires it (the fold rule, no switch), and a shadow that
        overtakes it is promoted (``PromotionPolicy.over_fallback``).

        There is no rollback watch on the learner: while it serves, the champion's predictions are not
        made, so nothing says the champion would do better, and the figure the champion had at
        engagement is stale after the next change (a demo run retired a learner 500 events into a new
        concept and served the champion that had collapsed on it)."""
        if not active:
            return None
        if not config.get("online_fallback"):
            return Switch(False, "online_fallback turned off", {"online_fallback": ""})
        if not config.get("continuous_deployment_enabled"):
            return Switch(False, "continuous deployment disabled", {"continuous_deployment_enabled": "false"})
        return None


def switch_record(catalog, deployment: str, switch: Switch, *, learner: str, champion: str | None,
                  expected_decision: str | None) -> dict:
    """The OnlineFallbackSwitched of ``switch`` (decided_by policy), naming the decision it expects latest."""
    return new_event(ev.ONLINE_FALLBACK_SWITCHED, catalog, deployment=deployment, active=switch.active,
                     learner=learner, model_version=online_version(learner), champion_version=champion,
                     decided_by="policy", reason=switch.reason, evidence=switch.evidence,
                     expected_decision=expected_decision)


def example_item(event_type: str, value: dict) -> list | None:  # noqa: ARG001 - forward_to_owners' signature
    """The forwarded item of a LabeledExample: [features, label, predicted_label, model_version, role]
    (None for a shadow example: its prediction id was served by the primary)."""
    if value["role"] == "shadow":
        return None
    return [value["features"], value["label"], value.get("predicted_label"), value["model_version"], value["role"]]


def read_partition_range(settings, topic: str, partition: int, start: int, end: int, timeout_s: float = 30.0) -> list:
    """Raw records (confluent-kafka Messages) of ``topic`` partition ``partition`` with offsets in
    [start, end), in offset order, without a consumer group. TimeoutError after ``timeout_s``."""
    import time

    from confluent_kafka import KafkaError, TopicPartition

    from streams.consumer import end_offset_consumer

    if end <= start:
        return []
    consumer = end_offset_consumer(settings)
    try:
        low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        start = max(start, low)
        if end <= start:
            return []
        consumer.assign([TopicPartition(topic, partition, start)])
        out, deadline = [], time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] {start}..{end} took more than {timeout_s}s")
            for msg in consumer.consume(1000, 0.2):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        return out   # the end of the partition came first (records removed by retention)
                    continue
                if msg.offset() < end:
                    out.append(msg)
                if msg.offset() + 1 >= end:
                    return out
    finally:
        consumer.close()


# --- the stage --------------------------------------------------------------------------------------
def register(app, ctx) -> None:
    """The online-fallback stage: labeled examples in, OnlineFallbackSwitched on model-updates out.
    Declares its faust agents, and the timers, tasks and tables it needs, on ``app`` (``ctx``: the shared
    :class:`processors.app.ProcessorContext`)."""
    from streams.consumer import end_offsets
    from streams.follower import TopicFollower
    from streams.registry import HeldUpdateRelease, ModelRegistry

    settings, topics, m = ctx.settings, ctx.topics, ctx.metrics
    examples_topic = f"{settings.topic_prefix}{EXAMPLES_KEY}"
    lock = threading.Lock()
    configs: dict[str, dict] = {}
    registry = ModelRegistry()
    fold = FallbackFold()
    trackers: dict[str, FallbackTracker] = {}
    tracker_partition: dict[str, int] = {}
    next_offset: dict[int, int] = {}    # fallback-examples partition -> next offset this worker expects
    pending: dict[str, str] = {}        # deployment -> event id of a switch emitted, not read back yet
    policy = FallbackPolicy()
    owner = Ownership.of_app(app, examples_topic, settings.default_partitions, settings.producer_partitioner)

    m_active = m.gauge("ctloop_online_fallback_active", "1 while the deployment's online fallback serves.",
                       ("deployment",))
    m_acc = m.gauge("ctloop_online_fallback_learner_accuracy",
                    "Prequential accuracy of the online learner over its last performance_window examples.",
                    ("deployment",))
    m_champ = m.gauge("ctloop_online_fallback_champion_accuracy",
                      "Accuracy of the champion over the same window of champion-served labeled examples.",
                      ("deployment",))
    m_examples = m.counter("ctloop_online_fallback_examples_total",
                           "Labeled examples the online learner folded (prequential), rebuilds not counted.",
                           ("deployment",))
    m_switches = m.counter("ctloop_online_fallback_switches_total", "OnlineFallbackSwitched events published.",
                           ("deployment", "active"))

    def on_log_event(event_type, value, topic):  # noqa: ARG001
        dep = value.get("deployment")
        with lock:
            if event_type == ev.DEPLOYMENT_CONFIGURED:
                current = configs.get(dep)
                if current is None or value["revision"] >= current["revision"]:
                    configs[dep] = value
                return
            registry.offer(event_type, value)
            if event_type == ev.ONLINE_FALLBACK_SWITCHED or event_type in (ev.MODEL_PROMOTED, ev.MODEL_ROLLED_BACK):
                fold.apply(event_type, value)
                if pending.get(dep) == value.get("event_id"):
                    pending.pop(dep, None)
                m_active.labels(dep).set(1 if fold.active(dep) else 0)

    def release_check() -> None:
        """In the follower thread: refuse held updates whose registration can no longer come (as the
        promotion stage does), so one bad update does not hold the champion fold back."""
        with lock:
            release.check()

    follower = TopicFollower(settings, [topics.deployments, topics.model_lifecycle, topics.model_updates],
                             lambda e: on_log_event(e.event_type, e.value, e.topic), on_batch=release_check,
                             serde=ctx.serde, name="online-fallback-follower", poll_timeout_s=0.1)
    release = HeldUpdateRelease(registry, lambda: follower.positions.get((topics.model_lifecycle, 0), 0),
                                lambda: end_offsets(settings, topics.model_lifecycle).get(0, 0))
    follower.start()
    follower.wait_caught_up(30.0)

    def learner_of(dep: str) -> str:
        with lock:
            return (configs.get(dep) or {}).get("online_fallback") or ""

    def champion_of(dep: str) -> str | None:
        with lock:
            mv = registry.champion(dep)
        return mv.version if mv is not None else None

    def champion_accuracy_of(dep: str) -> float | None:
        """The champion's registered holdout accuracy (ModelRegistered metrics), None when unknown."""
        with lock:
            mv = registry.champion(dep)
        raw = (mv.metrics or {}).get("accuracy") if mv is not None else None
        return float(raw) if raw is not None else None

    @app.agent(ctx.faust_topics["labeled-examples"], name=f"{COMPONENT}.forward")
    async def forward(stream):
        """labeled-examples (any partition) -> fallback-examples, keyed by deployment."""
        def item_of(event_type, value):
            return example_item(event_type, value) if learner_of(value["deployment"]) else None

        async for events in stream.take_events(2000, within=0.005):
            await forward_to_owners(ctx, events, component=COMPONENT, topic=examples_topic, item_of=item_of,
                                    field="examples", what="a fallback example")

    def rebuild(dep: str, partition: int, offset: int, learner: str) -> FallbackTracker:
        """Blocking: a tracker replaying the deployment's items of the records before ``offset``."""
        tracker = FallbackTracker(learner, settings.performance_window)
        items = []
        for msg in read_partition_range(settings, examples_topic, partition, max(0, offset - REBUILD_RECORDS), offset):
            if msg.key() is None or msg.key().decode(errors="replace") != dep:
                continue
            try:
                items.extend(json.loads(msg.value())["examples"])
            except Exception:  # noqa: BLE001 - an internal record we cannot use is skipped
                log.exception("online fallback: fallback-examples record %s unusable", msg.offset())
        champion = champion_of(dep)
        for item in items[-REBUILD_EXAMPLES:]:
            tracker.add(item[0], item[1], item[2], item[3], item[4], champion)
        log.info("online fallback: %s tracker rebuilt from %d examples before %s[%d]@%d", dep,
                 min(len(items), REBUILD_EXAMPLES), examples_topic, partition, offset)
        return tracker

    def fold_batch(batch: list[tuple[str, int, int, list]]) -> set[str]:
        """Blocking (executor): fold (deployment, partition, offset, items) records in order."""
        touched = set()
        for dep, partition, offset, items in batch:
            expected = next_offset.get(partition)
            if expected is not None and offset != expected:  # processed elsewhere in between: rebuild
                for d in [d for d, p in tracker_partition.items() if p == partition]:
                    trackers.pop(d, None)
            next_offset[partition] = offset + 1
            learner = learner_of(dep)
            if not learner:
                trackers.pop(dep, None)
                continue
            tracker = trackers.get(dep)
            if tracker is None or tracker.learner.name != learner:
                tracker = trackers[dep] = rebuild(dep, partition, offset, learner)
                tracker_partition[dep] = partition
            champion = champion_of(dep)
            before = tracker.examples
            for item in items:
                tracker.add(item[0], item[1], item[2], item[3], item[4], champion)
            touched.add(dep)
            m_examples.labels(dep).inc(tracker.examples - before)
            if tracker.examples // 500 > before // 500:
                e = tracker.evidence()
                log.info("online fallback: %s: %d examples learned; champion %s %.3f vs learner %.3f on %d pairs "
                         "(McNemar p=%.3g); learner's last %d: %.3f", dep, tracker.examples, champion,
                         e["champion_accuracy"], e["learner_accuracy"], e["n"], e["mcnemar_pvalue"],
                         len(tracker.learner_correct), tracker.learner_accuracy() or 0.0)
        return touched

    def publish(record: dict) -> None:
        ctx.producer.produce(topics.model_updates, ev.ONLINE_FALLBACK_SWITCHED, record, key=record["deployment"])
        ctx.producer.flush()

    async def emit(dep: str, switch: Switch, learner: str) -> None:
        with lock:
            if dep in pending:
                return   # our earlier switch is not read back yet: the fold decides first
            if fold.active(dep) == switch.active:
                return   # decided on a state read before our earlier switch was read back: nothing to change
            expected = fold.latest_decision(dep)
        record = switch_record(ctx.serde.catalog, dep, switch, learner=learner or "arf", champion=champion_of(dep),
                               expected_decision=expected)
        with lock:
            pending[dep] = record["event_id"]
        log.info("online fallback: %s %s: %s", dep, "engaged" if switch.active else "retired", switch.reason)
        try:
            await asyncio.get_running_loop().run_in_executor(None, publish, record)
        except Exception:
            with lock:
                pending.pop(dep, None)   # not sent: decide again on the next example / tick
            raise
        m_switches.labels(dep, str(switch.active).lower()).inc()

    source = app.topic(examples_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name=COMPONENT)
    async def decide(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(500, within=0.005):
            batch = []
            for event in events:
                try:
                    batch.append((event.message.key.decode(), event.message.partition, event.message.offset,
                                  json.loads(event.message.value)["examples"]))
                except Exception:  # noqa: BLE001 - an internal record we cannot use must not stop the stage
                    log.exception("online fallback: fallback-examples record rejected")
            try:
                touched = await loop.run_in_executor(None, fold_batch, batch)
            except Exception:  # noqa: BLE001 - e.g. a rebuild read timed out: the next batch rebuilds again
                log.exception("online fallback: batch failed")
                trackers.clear()
                continue
            for dep in touched:
                tracker = trackers.get(dep)
                if tracker is None:
                    continue
                e = tracker.evidence()
                acc = tracker.learner_accuracy()
                if acc is not None:
                    m_acc.labels(dep).set(acc)
                if e["n"]:
                    m_champ.labels(dep).set(e["champion_accuracy"])
                with lock:
                    config = dict(configs.get(dep) or {})
                    active = fold.active(dep)
                if active:
                    tracker.pairs.clear()   # a later engagement is judged on champion-served pairs after this one
                switch = policy.engage(config, tracker, active, champion_accuracy_of(dep)) or \
                    policy.retire(config, active)
                if switch is not None:
                    try:
                        await emit(dep, switch, config.get("online_fallback") or "")
                    except Exception:  # noqa: BLE001 - logged; the next example decides again
                        log.exception("online fallback: publishing the switch of %s failed", dep)

    @app.timer(interval=1.0)
    async def retire():
        """Retire an active fallback whose setting was turned off (no examples are forwarded then)."""
        with lock:
            candidates = [(dep, dict(configs.get(dep) or {})) for dep in list(configs) if fold.active(dep)]
        for dep, config in candidates:
            if not owner.owns(dep):
                continue
            switch = policy.retire(config, True)
            if switch is not None:
                state = fold.state(dep)
                try:
                    await emit(dep, switch, config.get("online_fallback") or (state.learner if state else "arf"))
                except Exception:  # noqa: BLE001 - logged; the timer tries again
                    log.exception("online fallback: publishing the retirement of %s failed", dep)

    @app.on_before_shutdown.connect
    async def stop_follower(sender, **kwargs):  # noqa: ARG001 - faust signal signature
        follower.stop(5)
