"""The statistics of the processors, one definition each: classification metrics, McNemar's test, the
champion-collapse test and percentiles. Pure functions, no Kafka.

Every stage that reports or compares a metric calls these (the live performance tracker,
processors/performance.py; the shadow comparison, processors/shadow_stats.py; the promotion policy and the
online fallback), so "macro precision" means the same number wherever it is shown or compared.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

from scipy.stats import binomtest

METRICS = ("accuracy", "precision", "recall", "f1")
"""The keys of :func:`classification_metrics` (the values ``promotion_metric`` may name)."""


def classification_metrics(confusion: Mapping[tuple[str, str | None], int]) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 of a confusion count.

    ``confusion``: {(true label, predicted label): count}; counts >= 0. A predicted label of None (the
    model gave no label) is a wrong prediction that belongs to no class. Returns
    {"accuracy", "precision", "recall", "f1"}, each in [0, 1]; all 0.0 when the count is empty.

    Formulas, with the classes K = the labels present as a true or a predicted label (None excluded),
    and per class k: TP_k = count(k, k), P_k = predictions of k, A_k = true labels k, n = all pairs::

        accuracy  = sum_k TP_k / n
        precision = 1/|K| sum_k TP_k / P_k        (0 for a class never predicted)
        recall    = 1/|K| sum_k TP_k / A_k        (0 for a class never true)
        f1        = 1/|K| sum_k 2 prec_k rec_k / (prec_k + rec_k)   (0 when both are 0)

    This is scikit-learn's definition: ``accuracy_score`` and ``precision_score`` / ``recall_score`` /
    ``f1_score`` with ``average="macro", zero_division=0`` and the default ``labels`` (the sorted union
    of the labels in y_true and y_pred; https://scikit-learn.org/stable/modules/model_evaluation.html
    #multiclass-and-multilabel-classification). It is the definition readers know, and it never rewards
    a model for the classes it stops predicting. Example: two predictions, (true a, predicted a) and
    (true b, predicted a): precision (1/2 + 0) / 2 = 0.25, recall (1 + 0) / 2 = 0.5, F1 (2/3 + 0) / 2 = 1/3.
    Averaging precision only over the classes that were predicted would give 0.5 and make a model that
    predicts one class for everything look precise.
    """
    total = sum(confusion.values())
    if total == 0:
        return {m: 0.0 for m in METRICS}
    classes = sorted(({t for t, _ in confusion} | {p for _, p in confusion}) - {None})
    predicted: Counter = Counter()
    actual: Counter = Counter()
    for (t, p), c in confusion.items():
        predicted[p] += c
        actual[t] += c
    correct = sum(c for (t, p), c in confusion.items() if t == p and p is not None)
    precisions, recalls, f1s = [], [], []
    for k in classes:
        tp = confusion.get((k, k), 0)
        prec = tp / predicted[k] if predicted[k] else 0.0
        rec = tp / actual[k] if actual[k] else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    n = len(classes)
    if n == 0:  # only missing predictions of missing truths: nothing is right
        return {m: 0.0 for m in METRICS}
    return {"accuracy": correct / total, "precision": sum(precisions) / n, "recall": sum(recalls) / n,
            "f1": sum(f1s) / n}


def confusion_of(pairs: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str | None], int]:
    """{(true, predicted): count} of (true label, predicted label) pairs, the input of
    :func:`classification_metrics`."""
    return dict(Counter((t, p) for t, p in pairs))


def mcnemar_pvalue(primary_only: int, shadow_only: int) -> float:
    """Exact (binomial) McNemar test on paired predictions.

    ``primary_only``: pairs where only the primary was right; ``shadow_only``: pairs where only the
    shadow was (counts >= 0). Under H0 (both models equally accurate) each discordant pair is a fair
    coin, so with b = shadow_only, n = b + primary_only::

        p = P(|B - n/2| >= |b - n/2|),  B ~ Binomial(n, 1/2)   (two-sided)

    computed by ``scipy.stats.binomtest(b, n, 0.5)``. Returns 1.0 when n = 0 (no discordance, no
    evidence). Source: McNemar, Psychometrika 12 (1947); the exact form as in Fagerland, Lydersen and
    Laake, BMC Medical Research Methodology 13:91 (2013); Dietterich, Neural Computation 10 (1998)
    recommends it for comparing two classifiers on the same examples.
    """
    n = primary_only + shadow_only
    if n == 0:
        return 1.0
    return float(binomtest(shadow_only, n, 0.5).pvalue)


def binomial_pvalue(successes: int, n: int, reference: float, alternative: str) -> float:
    """One-sided exact binomial test of an accuracy against a reference level.

    ``successes``: right predictions out of ``n``; ``reference``: the level p0 in [0, 1] (clipped to
    [1e-9, 1 - 1e-9] so a perfect or null reference still gives a finite test); ``alternative``:
    "less" (H1: accuracy < p0, p = P(X <= successes)) or "greater" (H1: accuracy > p0,
    p = P(X >= successes)), X ~ Binomial(n, p0). Returns the p-value in [0, 1]; 1.0 when n = 0.
    ``scipy.stats.binomtest``; raises ValueError for another ``alternative`` or successes outside [0, n].
    """
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative: must be 'less' or 'greater', got {alternative!r}")
    if n == 0:
        return 1.0
    p0 = min(max(float(reference), 1e-9), 1 - 1e-9)
    return float(binomtest(int(successes), int(n), p0, alternative=alternative).pvalue)


def champion_collapse(accuracy: float, n: int, registered_accuracy: float | None, *, margin: float,
                      alpha: float) -> tuple[bool, float | None]:
    """Whether a champion has **collapsed** on ``n`` recent labeled predictions.

    ``accuracy``: its live accuracy on them, in [0, 1]; ``registered_accuracy``: its ModelRegistered
    holdout accuracy a0, in (0, 1]; ``margin`` (accuracy points) and ``alpha`` (a level in (0, 1)) are
    the deployment's rollback_margin and significance_level. Collapsed iff::

        accuracy <= a0 - margin   and   p < alpha,
        p = P(X <= round(accuracy n)),  X ~ Binomial(n, a0)   (one-sided exact test of H0: live >= a0)

    by :func:`binomial_pvalue` (a0 clipped to [1e-9, 1 - 1e-9]; p = 1 when n = 0). Returns
    (collapsed, p); (False, None) when a0 is unknown or outside (0, 1]. Used by the shadow
    fast path (processors/promotion_policy.py) and the online fallback's engagement
    (processors/online_fallback.py).
    """
    if registered_accuracy is None or not 0.0 < float(registered_accuracy) <= 1.0:
        return False, None
    p = binomial_pvalue(round(accuracy * n), n, float(registered_accuracy), "less")
    return accuracy <= float(registered_accuracy) - margin and p < alpha, p


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (q in [0, 100]) of ``values``, same unit as the values; 0.0 when empty.

    Linear interpolation between the closest ranks: with the sorted values x_0..x_{m-1} and
    h = (m - 1) q / 100, the result is x_floor(h) + (h - floor(h)) (x_ceil(h) - x_floor(h)). This is
    ``numpy.percentile``'s default method ("linear", Hyndman and Fan (1996) definition 7).
    """
    data = sorted(values)
    if not data:
        return 0.0
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))
