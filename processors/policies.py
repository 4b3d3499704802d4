"""Pure logic of shadow comparison, promotion and rollback (no Kafka, no faust): unit tests reach it
directly; ``processors/shadow_comparison.py`` and ``processors/promotion.py`` wire it to streams.

* :class:`PredictionJoin` joins primary predictions, shadow predictions and feedback by prediction id
  and emits small *outcomes* (plain dicts, JSON-serialisable).
* :class:`ComparisonAggregator` folds outcomes per (deployment, primary_version, shadow_version) into
  live metrics and McNemar counts and says when a ShadowComparison is due.
* :class:`PromotionPolicy` decides promote / reject / wait from a comparison and the deployment settings.
* :class:`RollbackWatch` watches a freshly promoted champion against the previous champion's live level.
"""
from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from scipy.stats import binomtest

METRICS = ("accuracy", "precision", "recall", "f1")


# --- statistics -----------------------------------------------------------------------------------
def mcnemar_pvalue(primary_only: int, shadow_only: int) -> float:
    """Exact (binomial) McNemar test on the discordant pairs: ``primary_only`` pairs where only the
    primary was right, ``shadow_only`` where only the shadow was. Two-sided; 1.0 without discordance."""
    n = primary_only + shadow_only
    if n == 0:
        return 1.0
    return float(binomtest(shadow_only, n, 0.5).pvalue)


def champion_collapse(accuracy: float, n: int, registered_accuracy: float | None, *, margin: float,
                      alpha: float) -> tuple[bool, float | None]:
    """Whether a champion has **collapsed**: its ``accuracy`` on ``n`` recent labeled predictions is at
    least ``margin`` below ``registered_accuracy`` (its ModelRegistered holdout accuracy, in (0, 1]) and
    a one-sided exact binomial test rejects H0 "live accuracy >= registered accuracy" at ``alpha``
    (scipy.stats.binomtest, alternative "less", on round(accuracy * n) successes).

    Returns (collapsed, p-value); (False, None) when the registered accuracy is unknown or outside
    (0, 1]. Used by the shadow fast path (PromotionPolicy) and the online fallback's engagement."""
    if registered_accuracy is None or not 0.0 < float(registered_accuracy) <= 1.0:
        return False, None
    reference = min(max(float(registered_accuracy), 1e-9), 1 - 1e-9)
    p = float(binomtest(round(accuracy * n), n, reference, alternative="less").pvalue) if n else 1.0
    return accuracy <= float(registered_accuracy) - margin and p < alpha, p


def classification_metrics(confusion: dict[tuple[str, str], int]) -> dict[str, float]:
    """accuracy and macro precision / recall / F1 from {(true, predicted): count}. Classes are those
    seen as a true or predicted label; a class never predicted has precision 0 (likewise recall)."""
    total = sum(confusion.values())
    if total == 0:
        return {m: 0.0 for m in METRICS}
    classes = sorted({t for t, _ in confusion} | {p for _, p in confusion})
    correct = sum(c for (t, p), c in confusion.items() if t == p)
    precisions, recalls, f1s = [], [], []
    for k in classes:
        tp = confusion.get((k, k), 0)
        predicted = sum(c for (_, p), c in confusion.items() if p == k)
        actual = sum(c for (t, _), c in confusion.items() if t == k)
        prec = tp / predicted if predicted else 0.0
        rec = tp / actual if actual else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    n = len(classes)
    return {"accuracy": correct / total, "precision": sum(precisions) / n, "recall": sum(recalls) / n,
            "f1": sum(f1s) / n}


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence; 0.0 when empty."""
    data = sorted(values)
    if not data:
        return 0.0
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


# --- the join -------------------------------------------------------------------------------------
@dataclass
class _Joined:
    primary: dict | None = None      # {deployment, version, label, latency_ms, time, role}
    shadow: dict | None = None
    truth: str | None = None         # the true label, once known
    primary_incorrect: bool = False  # review said "incorrect" without giving the label
    verdict_correct: bool = False    # review said "correct" before the primary arrived
    pair_emitted: bool = False
    labeled_pair_emitted: bool = False
    primary_emitted: bool = False


class PredictionJoin:
    """Join by prediction id, bounded: the oldest open entries are evicted past ``max_entries``.

    Methods return the outcomes that became complete:

    * ``{"kind": "pair", deployment, primary_version, shadow_version, agree, primary_latency_ms,
      shadow_latency_ms}`` once a primary and a shadow result are both in;
    * ``{"kind": "labeled_pair", ..., truth, primary_label, shadow_label}`` once feedback is in too;
    * ``{"kind": "primary", deployment, version, role, correct, time}`` once a primary (or canary)
      prediction has feedback (drives live accuracy per version, hence rollback).

    The first usable feedback decides; later corrections of an already counted prediction are ignored.
    """

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Joined] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, pid: str) -> _Joined:
        entry = self._entries.get(pid)
        if entry is None:
            entry = self._entries[pid] = _Joined()
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evicted += 1
        return entry

    def on_prediction(self, value: dict) -> list[dict]:
        entry = self._entry(value["prediction_id"])
        side = {"deployment": value["deployment"], "version": value["model_version"], "label": value.get("label"),
                "latency_ms": float(value.get("latency_ms") or 0.0), "time": int(value["event_time"]),
                "role": value["role"]}
        if value["role"] == "shadow":
            if entry.shadow is None:
                entry.shadow = side
        elif entry.primary is None:
            entry.primary = side
            if entry.verdict_correct and entry.truth is None:
                entry.truth = side["label"]
        return self._complete(value["prediction_id"], entry)

    def on_feedback(self, value: dict) -> list[dict]:
        entry = self._entry(value["prediction_id"])
        if not (entry.primary_emitted or entry.labeled_pair_emitted):
            ftype, label = value["feedback_type"], value.get("label")
            if ftype in ("label", "correction"):
                entry.truth = label
            elif value.get("verdict") == "correct":
                if entry.primary is not None:
                    entry.truth = entry.primary["label"]
                else:
                    entry.verdict_correct = True
            elif label is not None:  # review "incorrect" with the right label
                entry.truth = label
            else:
                entry.primary_incorrect = True
        return self._complete(value["prediction_id"], entry)

    def _complete(self, pid: str, e: _Joined) -> list[dict]:
        out = []
        p, s = e.primary, e.shadow
        if p is not None and s is not None and not e.pair_emitted and p["role"] == "primary":
            e.pair_emitted = True
            out.append({"kind": "pair", "prediction_id": pid, "deployment": p["deployment"],
                        "primary_version": p["version"],
                        "shadow_version": s["version"], "agree": p["label"] == s["label"],
                        "primary_latency_ms": p["latency_ms"], "shadow_latency_ms": s["latency_ms"]})
        if p is not None and s is not None and e.truth is not None and not e.labeled_pair_emitted \
                and p["role"] == "primary":
            e.labeled_pair_emitted = True
            out.append({"kind": "labeled_pair", "prediction_id": pid, "deployment": p["deployment"],
                        "primary_version": p["version"],
                        "shadow_version": s["version"], "truth": e.truth, "primary_label": p["label"],
                        "shadow_label": s["label"]})
        if p is not None and not e.primary_emitted and (e.truth is not None or e.primary_incorrect):
            e.primary_emitted = True
            correct = False if e.truth is None else p["label"] == e.truth
            out.append({"kind": "primary", "deployment": p["deployment"], "version": p["version"],
                        "role": p["role"], "correct": correct, "time": p["time"]})
        if e.primary_emitted and e.labeled_pair_emitted:  # nothing more can come of it
            self._entries.pop(pid, None)
        return out


# --- aggregation ----------------------------------------------------------------------------------
@dataclass
class PairStats:
    """Live statistics of one (deployment, primary_version, shadow_version, shadow assignment revision)."""

    deployment: str
    primary_version: str
    shadow_version: str
    shadow_revision: int | None = None
    """The deployments revision that assigned ``shadow_version`` as shadow (None: not the assigned shadow)."""
    paired: int = 0
    agree: int = 0
    labeled: int = 0
    primary_confusion: dict = field(default_factory=dict)
    shadow_confusion: dict = field(default_factory=dict)
    primary_only: int = 0   # primary right, shadow wrong
    shadow_only: int = 0    # shadow right, primary wrong
    primary_latencies: deque = field(default_factory=lambda: deque(maxlen=2000))
    shadow_latencies: deque = field(default_factory=lambda: deque(maxlen=2000))
    labeled_at_last_emit: int = 0
    paired_at_last_emit: int = 0
    last_emit_s: float = 0.0

    def add(self, outcome: dict) -> None:
        if outcome["kind"] == "pair":
            self.paired += 1
            self.agree += bool(outcome["agree"])
            self.primary_latencies.append(float(outcome["primary_latency_ms"]))
            self.shadow_latencies.append(float(outcome["shadow_latency_ms"]))
        elif outcome["kind"] == "labeled_pair":
            self.labeled += 1
            t, p, s = outcome["truth"], outcome["primary_label"], outcome["shadow_label"]
            self.primary_confusion[(t, p)] = self.primary_confusion.get((t, p), 0) + 1
            self.shadow_confusion[(t, s)] = self.shadow_confusion.get((t, s), 0) + 1
            if p == t and s != t:
                self.primary_only += 1
            elif s == t and p != t:
                self.shadow_only += 1

    def comparison(self) -> dict:
        """The fields of a ShadowComparison event (without event_id / event_time)."""
        return {
            "deployment": self.deployment, "primary_version": self.primary_version,
            "shadow_version": self.shadow_version, "shadow_revision": self.shadow_revision,
            "paired_samples": self.paired, "labeled_samples": self.labeled,
            "primary_metrics": classification_metrics(self.primary_confusion),
            "shadow_metrics": classification_metrics(self.shadow_confusion),
            "agreement_rate": self.agree / self.paired if self.paired else 0.0,
            "primary_latency_p50_ms": percentile(self.primary_latencies, 50),
            "primary_latency_p95_ms": percentile(self.primary_latencies, 95),
            "shadow_latency_p50_ms": percentile(self.shadow_latencies, 50),
            "shadow_latency_p95_ms": percentile(self.shadow_latencies, 95),
            "mcnemar_pvalue": mcnemar_pvalue(self.primary_only, self.shadow_only) if self.labeled else None,
        }


class ShadowAssignments:
    """Fold of DeploymentConfigured into shadow assignments: (shadow version, the revision that set it)
    per deployment. The same rule as the promotion stage: a new assignment starts when the latest
    settings name another shadow version than the current assignment (so the same version set again
    after a clear, or after another shadow, is a new assignment)."""

    def __init__(self):
        self._revisions: dict[str, int] = {}
        self.current: dict[str, tuple[str | None, int]] = {}

    def apply(self, value: dict) -> tuple[str, str | None, int] | None:
        """Fold one DeploymentConfigured; returns (deployment, shadow, revision) when the assignment changed."""
        dep, revision = value["deployment"], int(value["revision"])
        if revision < self._revisions.get(dep, -1):
            return None
        self._revisions[dep] = revision
        shadow = value.get("shadow_model_version")
        if dep in self.current and self.current[dep][0] == shadow:
            return None
        self.current[dep] = (shadow, revision)
        return dep, shadow, revision


class ComparisonAggregator:
    """Outcomes in, ShadowComparison records out, rate-limited: one every ``every`` new labeled pairs
    of a version pair, or after ``interval_s`` seconds when something changed (see :meth:`due`).

    **Evidence belongs to one shadow assignment.** :meth:`assign` (fed from the deployments topic) tells
    the current (shadow version, revision) of a deployment; statistics are kept per assignment and a new
    assignment of a deployment drops the statistics of the earlier ones, so a version put in shadow again
    starts from zero. A ``pair`` outcome counts for the assignment current when it arrives; its
    ``labeled_pair`` (same ``prediction_id``, always after it) counts for the same assignment only, so
    feedback arriving late for a prediction shadowed under an earlier assignment is never evidence for a
    later one. Outcomes without ``prediction_id`` (written by an older join) count where they arrive."""

    def __init__(self, every: int = 100, interval_s: float = 10.0, max_open_pairs: int = 200_000):
        self.every = max(1, int(every))
        self.interval_s = interval_s
        self.stats: dict[tuple[str, str, str, int | None], PairStats] = {}
        self.assignments: dict[str, tuple[str | None, int]] = {}
        self.max_open_pairs = max_open_pairs
        self._open: OrderedDict[str, tuple] = OrderedDict()  # prediction id -> stats key of its pair outcome

    def assign(self, deployment: str, shadow_version: str | None, revision: int) -> None:
        """A new shadow assignment of ``deployment``: forget the statistics of its earlier assignments."""
        if self.assignments.get(deployment) == (shadow_version, revision):
            return
        self.assignments[deployment] = (shadow_version, revision)
        for key in [k for k in self.stats if k[0] == deployment]:
            del self.stats[key]

    def is_assigned(self, deployment: str, shadow_version: str) -> bool:
        return self.assignments.get(deployment, (None, None))[0] == shadow_version

    def key_of(self, outcome: dict) -> tuple[str, str, str, int | None]:
        dep, shadow = outcome["deployment"], outcome["shadow_version"]
        assigned, revision = self.assignments.get(dep, (None, None))
        return dep, outcome["primary_version"], shadow, revision if assigned == shadow else None

    def add(self, outcome: dict, now_s: float) -> list[dict]:
        """Fold one outcome; returns the comparisons due because of it (0 or 1)."""
        if outcome["kind"] not in ("pair", "labeled_pair"):
            return []
        pid = outcome.get("prediction_id")
        if outcome["kind"] == "labeled_pair" and pid is not None:
            key = self._open.pop(pid, None)
            if key is None or key not in self.stats:
                return []  # its pair counted for an earlier assignment (or was never seen): not evidence now
        else:
            key = self.key_of(outcome)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = PairStats(*key, last_emit_s=now_s)
        stats.add(outcome)
        if outcome["kind"] == "pair" and pid is not None:
            self._open[pid] = key
            if len(self._open) > self.max_open_pairs:
                self._open.popitem(last=False)
        if stats.labeled - stats.labeled_at_last_emit >= self.every:
            return [self._emit(stats, now_s)]
        return []

    def due(self, now_s: float) -> list[dict]:
        """Comparisons of pairs that changed and were not emitted for ``interval_s`` seconds."""
        out = []
        for stats in self.stats.values():
            changed = stats.labeled != stats.labeled_at_last_emit or stats.paired != stats.paired_at_last_emit
            if changed and now_s - stats.last_emit_s >= self.interval_s:
                out.append(self._emit(stats, now_s))
        return out

    @staticmethod
    def _emit(stats: PairStats, now_s: float) -> dict:
        stats.labeled_at_last_emit, stats.paired_at_last_emit, stats.last_emit_s = stats.labeled, stats.paired, now_s
        return stats.comparison()


# --- promotion ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    action: str
    """"promote" or "reject"."""
    reason: str
    evidence: dict[str, str]


class PromotionPolicy:
    """Promote a shadow that beats the primary by ``promotion_threshold`` on ``promotion_metric`` with a
    McNemar p-value below the per-look level, once ``promotion_min_samples`` labeled pairs are in.
    Reject it when it is worse by the threshold with significance, or when it is still not better after
    ``max_samples_factor`` x min_samples labeled pairs. Otherwise wait (so noise is never promoted).

    **Fast path** (``fast_promotion_min_samples`` F > 0 in the deployment settings, default 30). Before
    min_samples, the policy takes *early looks* at F, 2F, 4F, ... labeled pairs (the first comparison
    at or past each point; at most L = the number of those points below min_samples, counted per shadow
    assignment). An early look promotes only when the shadow beats the primary by the threshold with a
    McNemar p-value below ``alpha_early / L`` **and the champion has collapsed**: its accuracy on those
    pairs is at least ``rollback_margin`` below its *registered holdout accuracy* (the ``accuracy`` of its
    ModelRegistered metrics, passed as ``champion_accuracy``) and a one-sided binomial test against that
    accuracy gives p < significance_level. An early look rejects a shadow worse by the threshold with
    McNemar p < ``alpha_early / L`` (whether or not the champion collapsed: a bad candidate, e.g. one
    trained on noisy labels, is refused after the same few pairs). Decisions say "fast path".

    Error control (Bonferroni over every look): ``alpha_early = significance_level x early_alpha_fraction``
    (default 1/10) is split evenly over the L early looks; the regular looks (at 1x .. cap x min_samples,
    K = ceil(max_samples_factor) of them) share the rest, ``(significance_level - alpha_early) / K`` each
    (``significance_level / K`` when the fast path is off). So the chance of promoting (or rejecting) on
    noise stays below significance_level over all looks together. A restarted worker starts counting
    early looks again (at most L more per restart).

    A fast-path promotion is guarded by the rollback watch (:class:`RollbackWatch`), whose baseline is the
    collapsed champion's accuracy on the same pairs and which judges the new champion already after 2F,
    4F, ... labeled predictions (not only after a full window)."""

    def __init__(self, max_samples_factor: float = 3.0, early_alpha_fraction: float = 0.1):
        if not 0.0 < early_alpha_fraction < 1.0:
            raise ValueError(f"early_alpha_fraction must be in (0, 1), got {early_alpha_fraction!r}")
        self.max_samples_factor = max_samples_factor
        self.early_alpha_fraction = early_alpha_fraction
        self._early_looks: dict[tuple, int] = {}   # assignment -> early looks taken

    def cap(self, min_samples: int) -> int:
        return int(math.ceil(self.max_samples_factor * max(1, int(min_samples))))

    @staticmethod
    def fast_min_samples(config: dict) -> int:
        """The deployment's ``fast_promotion_min_samples`` (absent: the default 30; 0: fast path off)."""
        value = config.get("fast_promotion_min_samples", 30)
        return max(0, int(value or 0))

    @staticmethod
    def early_look_points(fast_min: int, min_samples: int) -> list[int]:
        """Labeled-pair counts of the early looks: fast_min, 2 fast_min, 4 fast_min, ... below min_samples."""
        points, n = [], int(fast_min)
        while 0 < n < min_samples:
            points.append(n)
            n *= 2
        return points

    def levels(self, config: dict) -> dict[str, float]:
        """{"alpha": significance_level, "early": alpha per early look (0: no fast path), "regular": alpha per
        regular look, "early_looks": L} for ``config``."""
        alpha = float(config.get("significance_level", 0.05))
        min_samples = max(1, int(config.get("promotion_min_samples", 1000)))
        fast_min = self.fast_min_samples(config)
        looks = max(1, math.ceil(self.max_samples_factor))
        points = self.early_look_points(fast_min, min_samples) if fast_min > 0 else []
        if not points:
            return {"alpha": alpha, "early": 0.0, "regular": alpha / looks, "early_looks": 0}
        early_total = alpha * self.early_alpha_fraction
        return {"alpha": alpha, "early": early_total / len(points), "regular": (alpha - early_total) / looks,
                "early_looks": len(points)}

    def decide(self, config: dict, comparison: dict, champion_accuracy: float | None = None, *,
               record: bool = True, fallback_baseline: float | None = None) -> Decision | None:
        """promote / reject / None (wait) on ``comparison`` (a ShadowComparison's fields) under ``config``
        (the deployment settings). ``champion_accuracy``: the champion's registered holdout accuracy in
        [0, 1] (None: unknown, no fast-path promotion). ``record``: count an early look (False: only ask,
        e.g. ``ctloop status``). ``fallback_baseline``: set when the comparison's primary is an online
        fallback serving in the champion's place (streams/fallback_fold.py): the champion's accuracy on the
        pairs that engaged the fallback, in [0, 1]; the shadow is then judged by :meth:`over_fallback`."""
        if not config.get("continuous_deployment_enabled"):
            return None
        min_samples = max(1, int(config.get("promotion_min_samples", 1000)))
        n = int(comparison["labeled_samples"])
        if fallback_baseline is not None:
            return self.over_fallback(config, comparison, fallback_baseline)
        if n < min_samples:
            return self._early(config, comparison, champion_accuracy, record)
        metric = config.get("promotion_metric", "accuracy")
        threshold = float(config.get("promotion_threshold", 0.05))
        levels = self.levels(config)
        alpha, alpha_look = levels["alpha"], levels["regular"]
        primary, shadow, diff, pvalue = self._figures(comparison, metric)
        evidence = self._evidence(comparison, metric, threshold, alpha, primary, shadow, diff, pvalue, min_samples)
        evidence["alpha_per_look"] = f"{alpha_look:.4g}"
        evidence["path"] = "regular"
        if diff >= threshold and pvalue < alpha_look:
            return Decision("promote", f"shadow {metric} {shadow:.4f} beats primary {primary:.4f} by {diff:+.4f} "
                                       f"(>= {threshold:g}), McNemar p={pvalue:.3g} < {alpha_look:.3g} on {n} labeled pairs",
                            evidence)
        if diff <= -threshold and pvalue < alpha_look:
            return Decision("reject", f"shadow {metric} {shadow:.4f} is worse than primary {primary:.4f} by "
                                      f"{-diff:.4f} (McNemar p={pvalue:.3g}) on {n} labeled pairs", evidence)
        cap = self.cap(min_samples)
        if n >= cap:
            return Decision("reject", f"shadow not significantly better after {n} labeled pairs "
                                      f"(cap {cap}): {metric} difference {diff:+.4f}, McNemar p={pvalue:.3g}", evidence)
        return None

    def over_fallback(self, config: dict, comparison: dict, baseline: float) -> Decision | None:
        """Judge a shadow while the online fallback serves (the comparison's primary is the fallback).

        From ``fast_promotion_min_samples`` labeled pairs on (``promotion_min_samples`` when the fast path
        is off), with T = promotion_threshold and a = the per-look level of :meth:`levels` (early when the
        fast path is on, else regular):

        * **promote** when the shadow's accuracy beats ``baseline`` (the collapsed champion's accuracy on the
          pairs that engaged the fallback) by >= T with a one-sided exact binomial p < a
          (H0: shadow accuracy <= baseline; scipy.stats.binomtest), and it is not worse than the fallback
          by T or more (difference >= -T). It has recovered from the change the fallback was standing in
          for; promoting it retires the fallback, and the fallback stage engages it again if its learner
          becomes significantly better than the new champion (that, not a rollback to the collapsed
          champion, is the guard: see RollbackWatch.on_promoted);
        * **promote** (it **overtakes** the fallback) when, on at least ``promotion_min_samples`` pairs, its
          accuracy is not below the fallback's on the same pairs (difference >= 0): a registered, versioned
          model as good as the learner serves again (after a fallback engaged on a champion that was worse,
          not collapsed, the bar above can stay out of reach while both serve the concept equally well);
        * **reject** when it is worse than the fallback by >= T with McNemar p < a, or, at the cap, when
          it was never promoted;
        * else wait."""
        min_samples = max(1, int(config.get("promotion_min_samples", 1000)))
        fast_min = self.fast_min_samples(config)
        first = min(fast_min, min_samples) if fast_min > 0 else min_samples
        n = int(comparison["labeled_samples"])
        if n < first:
            return None
        metric = config.get("promotion_metric", "accuracy")
        threshold = float(config.get("promotion_threshold", 0.05))
        levels = self.levels(config)
        alpha_look = levels["early"] or levels["regular"]
        primary, shadow, diff, pvalue = self._figures(comparison, metric)
        shadow_acc = float(comparison["shadow_metrics"].get("accuracy", 0.0))
        reference = min(max(float(baseline), 1e-9), 1 - 1e-9)
        p_better = float(binomtest(round(shadow_acc * n), n, reference, alternative="greater").pvalue)
        evidence = self._evidence(comparison, metric, threshold, levels["alpha"], primary, shadow, diff, pvalue,
                                  min_samples)
        evidence.update({"path": "over_fallback", "alpha_per_look": f"{alpha_look:.4g}",
                         "champion_accuracy_at_engagement": f"{baseline:.6f}",
                         "binomial_pvalue_vs_champion": f"{p_better:.6g}"})
        if diff <= -threshold and pvalue < alpha_look:
            return Decision("reject", f"shadow {metric} {shadow:.4f} is worse than the serving online fallback's "
                                      f"{primary:.4f} by {-diff:.4f} (McNemar p={pvalue:.3g}) on {n} labeled pairs",
                            evidence)
        if shadow_acc - baseline >= threshold and p_better < alpha_look and diff >= -threshold:
            return Decision("promote", f"over the online fallback: shadow accuracy {shadow_acc:.4f} beats the collapsed "
                                       f"champion's {baseline:.4f} (at the fallback's engagement) by "
                                       f"{shadow_acc - baseline:+.4f} (binomial p={p_better:.3g} < {alpha_look:.3g}) and "
                                       f"is within {threshold:g} of the serving fallback's {primary:.4f} on {n} labeled "
                                       f"pairs: it takes over from the fallback", evidence)
        shadow_vs_fallback = shadow_acc - float(comparison["primary_metrics"].get("accuracy", 0.0))
        if n >= min_samples and shadow_vs_fallback >= 0:
            return Decision("promote", f"over the online fallback: shadow accuracy {shadow_acc:.4f} overtakes the serving "
                                       f"fallback's {shadow_acc - shadow_vs_fallback:.4f} ({shadow_vs_fallback:+.4f}) on "
                                       f"{n} labeled pairs (>= promotion_min_samples {min_samples})", evidence)
        cap = self.cap(min_samples)
        if n >= cap:
            return Decision("reject", f"shadow not promoted over the online fallback after {n} labeled pairs (cap {cap}): "
                                      f"{metric} {shadow:.4f} vs fallback {primary:.4f}, binomial p vs the champion's "
                                      f"{baseline:.4f} = {p_better:.3g}", evidence)
        return None

    @staticmethod
    def _figures(comparison: dict, metric: str) -> tuple[float, float, float, float]:
        primary = float(comparison["primary_metrics"].get(metric, 0.0))
        shadow = float(comparison["shadow_metrics"].get(metric, 0.0))
        pvalue = comparison.get("mcnemar_pvalue")
        return primary, shadow, shadow - primary, 1.0 if pvalue is None else float(pvalue)

    @staticmethod
    def _evidence(comparison, metric, threshold, alpha, primary, shadow, diff, pvalue, min_samples) -> dict[str, str]:
        return {"metric": metric, "primary": f"{primary:.6f}", "shadow": f"{shadow:.6f}",
                "difference": f"{diff:.6f}", "threshold": f"{threshold:g}", "mcnemar_pvalue": f"{pvalue:.6g}",
                "significance_level": f"{alpha:g}", "labeled_samples": str(int(comparison["labeled_samples"])),
                "min_samples": str(min_samples),
                "primary_accuracy": f"{float(comparison['primary_metrics'].get('accuracy', 0.0)):.6f}",
                "shadow_accuracy": f"{float(comparison['shadow_metrics'].get('accuracy', 0.0)):.6f}"}

    def collapse(self, config: dict, comparison: dict, champion_accuracy: float | None) -> tuple[bool, float | None]:
        """(collapsed, one-sided binomial p) of the champion (the comparison's primary) on the labeled
        pairs: :func:`champion_collapse` with the deployment's rollback_margin and significance_level."""
        return champion_collapse(float(comparison["primary_metrics"].get("accuracy", 0.0)),
                                 int(comparison["labeled_samples"]), champion_accuracy,
                                 margin=float(config.get("rollback_margin", 0.05)),
                                 alpha=float(config.get("significance_level", 0.05)))

    def _early(self, config: dict, comparison: dict, champion_accuracy: float | None, record: bool) -> Decision | None:
        """An early look (fast path) on fewer than min_samples labeled pairs, or None (wait)."""
        levels = self.levels(config)
        if not levels["early_looks"]:
            return None
        min_samples = max(1, int(config.get("promotion_min_samples", 1000)))
        points = self.early_look_points(self.fast_min_samples(config), min_samples)
        n = int(comparison["labeled_samples"])
        key = (comparison.get("deployment"), comparison.get("shadow_version"), comparison.get("shadow_revision"))
        taken = self._early_looks.get(key, 0)
        if taken >= len(points) or n < points[taken]:
            return None                       # no early look due (or all taken): wait
        if record:                            # this comparison is look number `taken`; skip points already passed
            self._early_looks[key] = sum(1 for point in points if point <= n)
        metric = config.get("promotion_metric", "accuracy")
        threshold = float(config.get("promotion_threshold", 0.05))
        alpha_look = levels["early"]
        primary, shadow, diff, pvalue = self._figures(comparison, metric)
        collapsed, collapse_p = self.collapse(config, comparison, champion_accuracy)
        evidence = self._evidence(comparison, metric, threshold, levels["alpha"], primary, shadow, diff, pvalue,
                                  min_samples)
        evidence.update({"path": "fast", "alpha_per_look": f"{alpha_look:.4g}", "early_look": str(taken + 1),
                         "early_looks": str(len(points)),
                         "fast_promotion_min_samples": str(points[0]),
                         "champion_registered_accuracy": "" if champion_accuracy is None else f"{champion_accuracy:.6f}",
                         "champion_collapse_pvalue": "" if collapse_p is None else f"{collapse_p:.6g}"})
        if diff >= threshold and pvalue < alpha_look and collapsed:
            return Decision("promote", f"fast path: the champion has collapsed ({metric} {primary:.4f} on {n} labeled "
                                       f"pairs against its registered holdout accuracy {champion_accuracy:.4f}, "
                                       f"binomial p={collapse_p:.3g}); shadow {shadow:.4f} beats it by {diff:+.4f} "
                                       f"(>= {threshold:g}), McNemar p={pvalue:.3g} < {alpha_look:.3g} (early look "
                                       f"{taken + 1} of {len(points)}) before the {min_samples} labeled pairs of the "
                                       f"regular path", evidence)
        if diff <= -threshold and pvalue < alpha_look:
            return Decision("reject", f"fast path: shadow {metric} {shadow:.4f} is worse than primary {primary:.4f} by "
                                      f"{-diff:.4f} (McNemar p={pvalue:.3g} < {alpha_look:.3g}, early look {taken + 1} "
                                      f"of {len(points)}) on {n} labeled pairs", evidence)
        return None

    def waiting_reason(self, config: dict, comparison: dict, champion_accuracy: float | None = None) -> str | None:
        """Why :meth:`decide` waits on ``comparison`` (None: it decides, or continuous deployment is off)."""
        if not config.get("continuous_deployment_enabled") or \
                self.decide(config, comparison, champion_accuracy, record=False) is not None:
            return None
        min_samples = max(1, int(config.get("promotion_min_samples", 1000)))
        n = int(comparison["labeled_samples"])
        if n < min_samples:
            return f"too few labeled pairs: {n} of {min_samples}"
        metric = config.get("promotion_metric", "accuracy")
        threshold = float(config.get("promotion_threshold", 0.05))
        alpha_look = self.levels(config)["regular"]
        _primary, _shadow, diff, pvalue = self._figures(comparison, metric)
        return (f"no significant difference yet on {n} labeled pairs: {metric} difference {diff:+.4f} "
                f"(promote at >= {threshold:g}, reject at <= {-threshold:g}), McNemar p={pvalue:.3g} "
                f"(needs < {alpha_look:.3g}); rejected at {self.cap(min_samples)} labeled pairs if not better by then")


# --- rollback -------------------------------------------------------------------------------------
@dataclass
class _Watch:
    deployment: str
    version: str
    previous_version: str
    since_index: int
    """How many outcomes of ``version`` this watch had seen when the promotion was folded (arrival order)."""
    baseline: float
    decided: bool = False
    checked_windows: int = 0
    early_sizes: tuple[int, ...] = ()
    """Counts of labeled predictions (below ``window``) at which a fast-path promotion is judged early."""
    checked_early: int = 0


class RollbackWatch:
    """Live accuracy per (deployment, version) from ``primary`` outcomes, and a watch on each freshly
    promoted champion: at each complete ``window`` of its labeled primary-role predictions that arrived after
    the promotion was folded (for ``watch_windows`` windows), if its accuracy over the last ``window`` is
    below the previous champion's live level minus ``rollback_margin`` and a one-sided binomial test against
    that level has p < significance_level, the watch decides a rollback (once per promotion).

    No clock is compared: outcome times are the apps' clocks, the promotion time the policy's, so
    "before" and "after" the promotion come from arrival order (an outcome is counted once, in the order
    the single-partition outcomes topic delivers it) and from the role (a version serves role primary
    only while champion). The baseline is the previous champion's last ``window`` primary outcomes.

    A **fast-path** promotion (evidence ``path`` = fast, see :class:`PromotionPolicy`) replaced a champion
    that had collapsed: its baseline is the collapsed champion's accuracy on the promotion's labeled pairs
    (evidence ``primary_accuracy``; its older live outcomes predate the collapse), and it is judged early,
    after 2F, 4F, ... labeled predictions below ``window`` (F = evidence ``fast_promotion_min_samples``),
    then at each window as usual: a fast-promoted model worse than the one it replaced is served for at
    most 2F labeled predictions once the evidence is significant, and never past the watch."""

    def __init__(self, window: int = 200, watch_windows: int = 5):
        self.window = max(1, int(window))
        self.watch_windows = max(1, int(watch_windows))
        self._outcomes: dict[tuple[str, str], deque] = {}
        self._counts: dict[tuple[str, str], int] = {}   # primary-role outcomes ever seen per version
        self._history = max(5000, self.window * (self.watch_windows + 1))
        self.watches: dict[str, _Watch] = {}

    def add_outcome(self, outcome: dict) -> None:
        if outcome.get("kind") != "primary" or outcome.get("role", "primary") != "primary":
            return  # canary predictions of a candidate say nothing about it as champion
        key = (outcome["deployment"], outcome["version"])
        dq = self._outcomes.get(key)
        if dq is None:
            dq = self._outcomes[key] = deque(maxlen=self._history)
        dq.append(bool(outcome["correct"]))
        self._counts[key] = self._counts.get(key, 0) + 1

    def live_accuracy(self, deployment: str, version: str) -> tuple[float | None, int]:
        """(accuracy over the last ``window`` primary outcomes of ``version``, count); (None, 0) if none."""
        rows = list(self._outcomes.get((deployment, version), ()))[-self.window:]
        if not rows:
            return None, 0
        return sum(rows) / len(rows), len(rows)

    def on_promoted(self, deployment: str, version: str, previous_version: str | None, promoted_ms: int | None = None,
                    evidence: dict | None = None, min_baseline_samples: int = 20) -> _Watch | None:
        """Start watching ``version`` from the next outcome on. The baseline is the previous champion's
        live accuracy (or the ``primary_accuracy`` evidence of the promotion when fewer than
        ``min_baseline_samples`` are known). ``promoted_ms`` is ignored (kept for callers; never compared
        with outcome times)."""
        self.watches.pop(deployment, None)
        if not previous_version or previous_version == version:
            return None
        evidence = evidence or {}
        if evidence.get("path") == "over_fallback":
            # promoted over a serving online fallback: the previous champion had collapsed, so rolling back
            # to it would serve a worse model; the fallback stage's engage rule guards this champion instead
            return None
        baseline, n = self.live_accuracy(deployment, previous_version)
        fast = evidence.get("path") == "fast" and evidence.get("primary_accuracy") not in (None, "")
        if n < min_baseline_samples or fast:
            raw = evidence.get("primary_accuracy")
            baseline = float(raw) if raw not in (None, "") else (baseline if n else None)
        if baseline is None:
            return None
        early: tuple[int, ...] = ()
        if fast:
            try:
                size = 2 * int(evidence.get("fast_promotion_min_samples") or 0)
            except ValueError:
                size = 0
            sizes = []
            while 0 < size < self.window:
                sizes.append(size)
                size *= 2
            early = tuple(sizes)
        since = self._counts.get((deployment, version), 0)
        watch = self.watches[deployment] = _Watch(deployment, version, previous_version, since, baseline,
                                                  early_sizes=early)
        return watch

    def on_rolled_back(self, deployment: str) -> None:
        self.watches.pop(deployment, None)

    def check(self, deployment: str, config: dict) -> Decision | None:
        watch = self.watches.get(deployment)
        if watch is None or watch.decided or not config.get("continuous_deployment_enabled"):
            return None
        key = (deployment, watch.version)
        new = self._counts.get(key, 0) - watch.since_index
        since = list(self._outcomes.get(key, ()))[-new:] if new > 0 else []
        windows = len(since) // self.window
        due_early = [size for size in watch.early_sizes[watch.checked_early:] if len(since) >= size]
        if windows <= watch.checked_windows and not due_early:
            return None  # judged once per complete window (and once per early size of a fast-path promotion)
        if due_early and windows == 0:
            watch.checked_early += len(due_early)
            last = since
        else:
            watch.checked_early = len(watch.early_sizes)
            watch.checked_windows = windows
            if windows > self.watch_windows:
                self.watches.pop(deployment, None)  # watched long enough: confirmed
                return None
            last = since[-self.window:]
        acc, n = sum(last) / len(last), len(last)
        margin = float(config.get("rollback_margin", 0.05))
        alpha = float(config.get("significance_level", 0.05))
        level = watch.baseline - margin
        if acc >= level:
            return None
        p = float(binomtest(round(acc * n), n, min(max(watch.baseline, 1e-9), 1 - 1e-9), alternative="less").pvalue)
        if p >= alpha:
            return None
        watch.decided = True
        return Decision("rollback", f"champion {watch.version} live accuracy {acc:.4f} over {n} labeled predictions "
                                    f"is below previous champion {watch.previous_version}'s {watch.baseline:.4f} "
                                    f"minus margin {margin:g} (binomial p={p:.3g})",
                        {"live_accuracy": f"{acc:.6f}", "baseline_accuracy": f"{watch.baseline:.6f}",
                         "rollback_margin": f"{margin:g}", "window": str(n), "pvalue": f"{p:.6g}",
                         "to_version": watch.previous_version})
