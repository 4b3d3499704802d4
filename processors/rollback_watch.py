"""The rollback watch: live accuracy per (deployment, version) from the shadow join's ``primary``
outcomes, and a watch on each freshly promoted champion that decides a rollback when it is
significantly below the previous champion's live level. Pure logic, no Kafka: processors/promotion.py
feeds it and publishes its decisions (docs/SERVING.md, "Rollback").
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from processors.promotion_policy import Decision
from processors.statistics import binomial_pvalue


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

    A **fast-path** promotion (evidence ``path`` = fast, see
    :class:`processors.promotion_policy.PromotionPolicy`) replaced a champion
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
        """Count a ``primary`` outcome of role primary (right or wrong) for its (deployment, version);
        canary outcomes and other kinds are ignored."""
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
        """A rollback was folded: stop watching the deployment's champion."""
        self.watches.pop(deployment, None)

    def check(self, deployment: str, config: dict) -> Decision | None:
        """A rollback :class:`~processors.promotion_policy.Decision` when the watched champion is due for a
        look (a complete window, or an early size of a fast-path promotion) and its accuracy on it is below
        baseline - rollback_margin with a one-sided binomial p < significance_level (``config``: the
        deployment settings); else None. Decides at most once per promotion."""
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
        p = binomial_pvalue(round(acc * n), n, watch.baseline, "less")
        if p >= alpha:
            return None
        watch.decided = True
        return Decision("rollback", f"champion {watch.version} live accuracy {acc:.4f} over {n} labeled predictions "
                                    f"is below previous champion {watch.previous_version}'s {watch.baseline:.4f} "
                                    f"minus margin {margin:g} (binomial p={p:.3g})",
                        {"live_accuracy": f"{acc:.6f}", "baseline_accuracy": f"{watch.baseline:.6f}",
                         "rollback_margin": f"{margin:g}", "window": str(n), "pvalue": f"{p:.6g}",
                         "to_version": watch.previous_version})
