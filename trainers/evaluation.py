"""The evaluation gate: plain functions, no Kafka.

The candidate and the champion are scored on the same holdout (and regression set). The candidate
passes when every check holds; otherwise every failed check is listed in words.

Checks:
* **minimum metrics**: candidate holdout metrics at or above configured floors;
* **recent holdout** (``recent_accuracy``, ``recent_macro_f1``): on the *current* holdout rows, accuracy
  and macro F1 no worse than the champion by more than ``holdout_tolerance``. Under concept drift the
  current data is what the model will see, so this is the main "better" criterion. Which rows are
  current depends on the trigger's training window (trainers/dataset.py): for ``sliding`` /
  ``since_change`` the whole window (after a change point: the post-change rows); for ``all`` the rows
  that reached the log after the champion's snapshot;
* **segments**: per class F1 on the current holdout, no class worse than the champion by more than
  ``segment_tolerance``. F1 rather than recall: a champion that a drift has made predict one class for
  almost everything has a high recall on that class, and a recall check would then refuse every
  candidate that recovers the other classes;
* **forgetting**: on *historical* holdout rows accuracy no worse than the champion by more than
  ``forgetting_tolerance``. Historical means data still valid under the current concept: for a windowed
  trigger the window's rows the champion's snapshot also held (rows before a change point and the base
  dataset never count against a candidate that learned the new rule); for ``all`` the base dataset and
  the examples below the champion's snapshot end;
* **regression set** (when attached): accuracy no worse than the champion by more than ``holdout_tolerance``
  (a curated set applies whatever the window).

Every reason names the rows that decided it: how many, which subset, and its offsets / change point
(:class:`GateRows`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

METRIC_NAMES = ("accuracy", "macro_f1")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The fraction of ``y_pred`` equal to ``y_true`` (same length); NaN for no rows."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of F1 = 2TP / (2TP + FP + FN) (0 when TP is 0); NaN for
    no rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = sorted(set(y_true.tolist()))
    if not classes:
        return float("nan")
    scores = []
    for c in classes:
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        fp = float(np.sum((y_true != c) & (y_pred == c)))
        fn = float(np.sum((y_true == c) & (y_pred != c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, tuple[float, int]]:
    """{class: (recall TP / (TP + FN), support)} over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = {}
    for c in sorted(set(y_true.tolist())):
        mask = y_true == c
        out[str(c)] = (float(np.mean(y_pred[mask] == c)), int(mask.sum()))
    return out


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, tuple[float, int]]:
    """{class: (F1 of that class, support)} over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = {}
    for c in sorted(set(y_true.tolist())):
        tp = int(np.sum((y_true == c) & (y_pred == c)))
        support = int(np.sum(y_true == c))
        predicted = int(np.sum(y_pred == c))
        out[str(c)] = (2 * tp / (support + predicted) if support + predicted else 0.0, support)
    return out


def score(y_true, y_pred) -> dict[str, float]:
    """accuracy, macro_f1, n and recall.<class> of one prediction set."""
    metrics = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred), "n": float(len(y_true))}
    for c, (recall, _support) in per_class_recall(y_true, y_pred).items():
        metrics[f"recall.{c}"] = recall
    return metrics


def parse_min_metrics(text: str) -> dict[str, float]:
    """"accuracy=0.7,macro_f1=0.6" -> {"accuracy": 0.7, "macro_f1": 0.6}; errors name the entry."""
    floors: dict[str, float] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in METRIC_NAMES:
            raise ValueError(f"gate_min_metrics: expected metric=value with metric in {METRIC_NAMES}, got {part!r}")
        try:
            floors[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"gate_min_metrics: {part!r} has no numeric value") from None
    return floors


@dataclass(frozen=True)
class GatePolicy:
    """The evaluation gate's settings: metric floors on the holdout (``min_metrics``), tolerances (absolute
    metric differences, metrics in [0, 1]) against the champion on the recent holdout, per class and on
    historical rows, and the least support (rows) a class or the historical rows need to be checked."""
    min_metrics: dict[str, float] = field(default_factory=dict)
    holdout_tolerance: float = 0.01
    segment_tolerance: float = 0.05
    forgetting_tolerance: float = 0.05
    min_segment_support: int = 10
    min_historical_rows: int = 20

    @classmethod
    def from_settings(cls, settings) -> "GatePolicy":
        """The policy of the ``gate_*`` settings (other fields at their defaults); raises
        ValueError naming a malformed ``gate_min_metrics`` entry."""
        return cls(parse_min_metrics(settings.gate_min_metrics), settings.gate_holdout_tolerance,
                   settings.gate_segment_tolerance, settings.gate_forgetting_tolerance)


@dataclass(frozen=True)
class GateRows:
    """Words naming the row subsets the checks run on, quoted in every reason: ``current`` (the "better"
    checks), ``historical`` (forgetting), ``holdout`` (the floors). trainers.dataset fills them from the
    trigger's window (offset ranges, change point)."""

    current: str = "recent holdout rows"
    historical: str = "historical examples"
    holdout: str = "the holdout"

    @classmethod
    def of(cls, scope: dict | None) -> "GateRows":
        """From a Dataset's ``scope`` dict (None: the generic words)."""
        scope = scope or {}
        return cls(scope.get("current", cls.current), scope.get("historical", cls.historical),
                   scope.get("holdout", cls.holdout))


@dataclass
class GateDecision:
    """The gate's verdict: ``passed``, the ``reasons`` it failed (empty when it passed), candidate and
    champion metrics (name to value; the champion's empty without one) and every check that ran."""
    passed: bool
    reasons: list[str]
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    checks: list[str]            # every check that ran (passed or not), for the record


def _f(x: float) -> str:
    return f"{x:.3f}"


def evaluate_gate(policy: GatePolicy, y_true: Sequence[str], candidate_pred: Sequence[str],
                  champion_pred: Sequence[str] | None = None, *, historical: Sequence[bool] | None = None,
                  regression: tuple[Sequence[str], Sequence[str], Sequence[str] | None] | None = None,
                  current: Sequence[bool] | None = None, rows: GateRows | None = None) -> GateDecision:
    """Decide on a candidate. ``y_true``/``*_pred``: labels of the holdout rows (length n);
    ``historical``: bool[n], the rows of the forgetting check; ``current``: bool[n], the rows "better" is
    judged on (None: the rows not historical; all rows when none or no such row);
    ``regression``: (true, candidate, champion) labels of a regression set; ``rows``: words naming the
    subsets in the reasons. Metrics are fractions in [0, 1]."""
    y_true = np.asarray(y_true, dtype=object)
    cand = np.asarray(candidate_pred, dtype=object)
    champ = None if champion_pred is None else np.asarray(champion_pred, dtype=object)
    hist = np.zeros(len(y_true), dtype=bool) if historical is None else np.asarray(historical, dtype=bool)
    rows = rows or GateRows()
    reasons: list[str] = []
    checks: list[str] = []

    cm = score(y_true, cand)
    chm = score(y_true, champ) if champ is not None else {}

    for name, floor in policy.min_metrics.items():
        checks.append(f"min_{name}")
        if not cm[name] >= floor:
            reasons.append(f"min_{name}: candidate {name} {_f(cm[name])} on {rows.holdout} ({len(y_true)} rows) is "
                           f"below the minimum {_f(floor)}")

    recent = ~hist if current is None else np.asarray(current, dtype=bool)
    if not recent.any():
        recent = np.ones(len(y_true), dtype=bool)
    cm["recent_accuracy"] = accuracy(y_true[recent], cand[recent])
    cm["recent_macro_f1"] = macro_f1(y_true[recent], cand[recent])
    if hist.sum() >= policy.min_historical_rows:
        cm["historical_accuracy"] = accuracy(y_true[hist], cand[hist])

    if champ is not None:
        chm["recent_accuracy"] = accuracy(y_true[recent], champ[recent])
        chm["recent_macro_f1"] = macro_f1(y_true[recent], champ[recent])
        for name in ("accuracy", "macro_f1"):
            checks.append(f"recent_{name}")
            c, h = cm[f"recent_{name}"], chm[f"recent_{name}"]
            if c < h - policy.holdout_tolerance:
                reasons.append(f"recent_{name}: candidate {_f(c)} is worse than the champion's {_f(h)} on "
                               f"{int(recent.sum())} holdout rows ({rows.current}; tolerance "
                               f"{_f(policy.holdout_tolerance)})")
        cand_seg, champ_seg = per_class_f1(y_true[recent], cand[recent]), per_class_f1(y_true[recent], champ[recent])
        for cls, (c, support) in cand_seg.items():
            if support < policy.min_segment_support:
                continue
            checks.append(f"segment[{cls}]")
            h = champ_seg[cls][0]
            if c < h - policy.segment_tolerance:
                reasons.append(f"segment[{cls}]: candidate F1 {_f(c)} is worse than the champion's {_f(h)} on class "
                               f"{cls!r} ({support} holdout rows of it among {rows.current}; tolerance "
                               f"{_f(policy.segment_tolerance)})")
        if hist.sum() >= policy.min_historical_rows:
            checks.append("forgetting")
            chm["historical_accuracy"] = accuracy(y_true[hist], champ[hist])
            c, h = cm["historical_accuracy"], chm["historical_accuracy"]
            if c < h - policy.forgetting_tolerance:
                reasons.append(f"forgetting: candidate accuracy {_f(c)} is worse than the champion's {_f(h)} on "
                               f"{int(hist.sum())} historical holdout rows ({rows.historical}; tolerance "
                               f"{_f(policy.forgetting_tolerance)})")

    if regression is not None:
        r_true, r_cand, r_champ = (np.asarray(a, dtype=object) if a is not None else None for a in regression)
        cm["regression_accuracy"] = accuracy(r_true, r_cand)
        if r_champ is not None:
            checks.append("regression_set")
            chm["regression_accuracy"] = accuracy(r_true, r_champ)
            c, h = cm["regression_accuracy"], chm["regression_accuracy"]
            if c < h - policy.holdout_tolerance:
                reasons.append(f"regression_set: candidate accuracy {_f(c)} is worse than the champion's {_f(h)} on the "
                               f"curated regression set ({len(r_true)} rows; tolerance {_f(policy.holdout_tolerance)})")
    cm = {k: v for k, v in cm.items() if v == v}       # drop NaN (empty subsets)
    chm = {k: v for k, v in chm.items() if v == v}
    return GateDecision(not reasons, reasons, cm, chm, checks)
