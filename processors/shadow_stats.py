"""The paired aggregator of the shadow comparison: join outcomes (processors/shadow_join.py) folded per
(deployment, primary version, shadow version, shadow assignment) into live metrics, latencies and
McNemar counts, and the ShadowComparison records due (rate-limited). Pure logic, no Kafka:
processors/shadow_comparison.py feeds it from the outcomes topic and publishes what it returns.

* :class:`PairStats`: the statistics of one version pair under one shadow assignment;
* :class:`ShadowAssignments`: the fold of DeploymentConfigured into shadow assignments;
* :class:`ComparisonAggregator`: outcomes in, ShadowComparison fields out.

Metrics and tests are those of processors/statistics.py (the same definitions as the live tracker).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from processors.statistics import classification_metrics, mcnemar_pvalue, percentile


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
        """Count one ``pair`` (agreement, latencies in ms) or ``labeled_pair`` (confusions, McNemar's
        discordant pairs) outcome of :class:`processors.shadow_join.PredictionJoin`; other kinds are ignored."""
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
        """Whether ``shadow_version`` is the deployment's current shadow assignment."""
        return self.assignments.get(deployment, (None, None))[0] == shadow_version

    def key_of(self, outcome: dict) -> tuple[str, str, str, int | None]:
        """(deployment, primary_version, shadow_version, revision) of an outcome: the revision of the
        current assignment when the outcome's shadow is the assigned one, else None."""
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
