"""The promotion policy: promote / reject / wait for a shadow from a ShadowComparison and the deployment
settings (the regular path, early looks of the fast path over a collapsed champion, and the judgement
of a shadow while the online fallback serves). Pure logic, no Kafka: processors/promotion.py applies it
to the shadow-comparisons topic; ``ctloop status`` asks it why it waits.

* :class:`Decision`: a verdict (promote, reject or rollback) with its reason and evidence;
* :class:`PromotionPolicy`: :meth:`~PromotionPolicy.decide`, :meth:`~PromotionPolicy.over_fallback`,
  :meth:`~PromotionPolicy.waiting_reason`.

The rollback watch that guards a promotion is processors/rollback_watch.py; the tests are those of
processors/statistics.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from processors.statistics import binomial_pvalue, champion_collapse


@dataclass(frozen=True)
class Decision:
    """A verdict of the promotion policy or the rollback watch: ``action`` with a one-sentence ``reason``
    (logged and published) and the ``evidence`` figures as strings (the event's evidence map)."""

    action: str
    """"promote", "reject" or "rollback"."""
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

    A fast-path promotion is guarded by the rollback watch
    (:class:`processors.rollback_watch.RollbackWatch`), whose baseline is the collapsed champion's
    accuracy on the same pairs and which judges the new champion already after 2F, 4F, ... labeled
    predictions (not only after a full window)."""

    def __init__(self, max_samples_factor: float = 3.0, early_alpha_fraction: float = 0.1):
        if not 0.0 < early_alpha_fraction < 1.0:
            raise ValueError(f"early_alpha_fraction must be in (0, 1), got {early_alpha_fraction!r}")
        self.max_samples_factor = max_samples_factor
        self.early_alpha_fraction = early_alpha_fraction
        self._early_looks: dict[tuple, int] = {}   # assignment -> early looks taken

    def cap(self, min_samples: int) -> int:
        """The labeled-pair count at which a shadow not yet promoted is rejected:
        ceil(max_samples_factor x min_samples) (min_samples < 1 counts as 1)."""
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
          (H0: shadow accuracy <= baseline; :func:`processors.statistics.binomial_pvalue`), and it is not
          worse than the fallback by T or more (difference >= -T). It has recovered from the change the
          fallback was standing in for; promoting it retires the fallback, and the fallback stage engages
          it again if its learner becomes significantly better than the new champion (that, not a
          rollback to the collapsed champion, is the guard: see
          processors.rollback_watch.RollbackWatch.on_promoted);
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
        p_better = binomial_pvalue(round(shadow_acc * n), n, float(baseline), "greater")
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
