"""Drift math, no Kafka: per deployment and feature, windows of predictions against a reference.

* reference: the first full window of traffic (or, after a promotion, the first window after it);
  ``set_reference`` takes training data instead when it is known.
* per window, vectorised over samples: PSI on quantile bins of the reference (numpy) and the
  two-sample Kolmogorov-Smirnov test for every feature at once (``scipy.stats.ks_2samp(axis=0)``).
* river ADWIN on each feature's per-window mean (one update per window, ~0.2 us) and on the error
  stream (one update per labeled example). KSWIN is avoided: ~260 us per update per feature.
* PSI uses max(2, min(10, window_size // 50)) bins (~50 expected samples per bin).
* a feature drifts when its KS p-value < ks_pvalue, or when PSI >= max(psi_threshold, PSI's critical
  value at level ks_pvalue for the window and reference sizes: :func:`psi_critical`); PSI takes part
  only when both samples have PSI_MIN_ROWS values of the feature (below, KS decides alone). So the
  false-alarm rate on stationary data stays near ks_pvalue per feature at every window size the
  settings accept (10 and up; ``tests/test_drift_calibration.py`` measures it). drift_share is the
  fraction of drifting features, compared with the deployment's drift_threshold.
* missing values are handled per feature: each feature is tested on its present values, and its
  missing-value rates (window, reference) are reported apart, with ``missing_rate_changed``.
"""
from __future__ import annotations

import math

import numpy as np
from river import drift as river_drift
from scipy.stats import chi2, ks_2samp, norm

EPS = 1e-4


def psi(reference: np.ndarray, window: np.ndarray, bins: int = 10) -> np.ndarray:
    """Population stability index per column of ``window`` (n x F) against ``reference`` (m x F),
    on the reference's quantile bins."""
    ref = np.asarray(reference, dtype=float)
    win = np.asarray(window, dtype=float)
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.quantile(ref, qs, axis=0)                       # (bins-1) x F
    out = np.empty(ref.shape[1])
    for j in range(ref.shape[1]):
        e = np.unique(edges[:, j])
        ref_counts = np.bincount(np.searchsorted(e, ref[:, j], side="right"), minlength=len(e) + 1)
        win_counts = np.bincount(np.searchsorted(e, win[:, j], side="right"), minlength=len(e) + 1)
        p = np.maximum(ref_counts / max(1, len(ref)), EPS)
        q = np.maximum(win_counts / max(1, len(win)), EPS)
        out[j] = float(np.sum((q - p) * np.log(q / p)))
    return out


PSI_MIN_ROWS = 100
"""PSI takes part in a feature's drift flag only when the window and the reference both have this many
values of it: below, quantile-bin counts are too small for PSI's sampling distribution to be known
(with 2 bins and 10 rows, all 10 window values fall on one side of the reference median in ~3 % of
stationary windows, a PSI of ~4.6), and the KS test, exact at small sizes, decides alone."""


def psi_critical(n: int, m: int, bins: int, alpha: float) -> float:
    """The PSI a window of ``n`` values reaches with probability ``alpha`` when it comes from the same
    continuous distribution as a reference of ``m`` values, on ``bins`` quantile bins of the reference.

    PSI is a symmetrised Kullback-Leibler divergence; for two samples from one distribution,
    ``PSI / (1/n + 1/m)`` is asymptotically chi-square with ``bins - 1`` degrees of freedom (Yurdakul,
    B. (2018), "Statistical Properties of Population Stability Index", PhD dissertation, Western
    Michigan University, ch. 3; the same result as for Jeffreys' J-divergence of multinomial samples).
    So the critical value is ``chi2.ppf(1 - alpha, bins - 1) * (1/n + 1/m)``. A fixed threshold such
    as 0.2 is below it on small windows (window 10, 2 bins: 2.2 at alpha 0.001): there PSI flags
    stationary data in 6-15 % of windows. ``tests/test_drift_calibration.py`` measures the resulting
    false-alarm rate down to the smallest window. Returns +inf when n or m is 0."""
    if n <= 0 or m <= 0:
        return math.inf
    return float(chi2.ppf(1.0 - alpha, max(1, bins - 1)) * (1.0 / n + 1.0 / m))


def missing_rate_changed(rate_ref: np.ndarray, m: int, rate_win: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Per feature: whether the missing-value rate of a window (``rate_win`` of ``n`` rows) differs from
    the reference's (``rate_ref`` of ``m`` rows) at significance ``alpha`` (two-sided two-proportion
    z-test with the pooled rate); False where both are 0 or both are 1."""
    rate_ref, rate_win = np.asarray(rate_ref, dtype=float), np.asarray(rate_win, dtype=float)
    if n <= 0 or m <= 0:
        return np.zeros(rate_ref.shape, dtype=bool)
    pooled = (rate_ref * m + rate_win * n) / (m + n)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / m + 1.0 / n))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, np.abs(rate_win - rate_ref) / se, 0.0)
    return 2.0 * norm.sf(z) < alpha


LABEL_COLUMNS = ("label", "target", "y", "class")


def load_reference(uri: str, max_rows: int = 5000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Numeric feature columns of a base dataset (.csv or .parquet; a path or file:// URI), at most
    ``max_rows`` rows sampled: the drift reference when a deployment has one attached. Label columns
    (label, target, y, class) are left out."""
    import pandas as pd

    path = uri[len("file://"):] if uri.startswith("file://") else uri
    frame = pd.read_parquet(path) if path.lower().endswith((".parquet", ".pq")) else pd.read_csv(path)
    numeric = frame.select_dtypes("number").drop(columns=[c for c in LABEL_COLUMNS if c in frame.columns], errors="ignore")
    if numeric.shape[1] == 0:
        raise ValueError(f"dataset_version: {uri} has no numeric feature columns")
    if len(numeric) > max_rows:
        numeric = numeric.sample(max_rows, random_state=seed)
    return [str(c) for c in numeric.columns], numeric.to_numpy(dtype=float)


class DeploymentDrift:
    """Windows of one deployment's predictions; ``add`` returns a measurement when a window closes."""

    def __init__(self, window_size: int, psi_threshold: float = 0.2, ks_pvalue: float = 0.001, bins: int | None = None):
        if window_size < 10:
            raise ValueError(f"drift_window_size: must be at least 10, got {window_size}")
        self.window_size = window_size
        self.psi_threshold = psi_threshold
        self.ks_pvalue = ks_pvalue
        # PSI's sampling noise grows with bins/n: keep ~50 expected samples per bin (2..10 bins), so
        # that a stationary small window stays well under the usual 0.2 threshold
        self.bins = bins or max(2, min(10, window_size // 50))
        self.reset()

    def reset(self) -> None:
        """Forget the reference (the next window becomes it) and the detectors' history."""
        self.features: list[str] | None = None
        self.reference: np.ndarray | None = None
        self.reference_kind = "first_window"
        self._rows: list[list[float]] = []
        self._start_ms: int | None = None
        self._end_ms = 0
        self._adwin: dict[str, river_drift.ADWIN] = {}
        self._error_adwin = river_drift.ADWIN()
        self._errors = 0
        self._outcomes = 0
        self._error_drift = False
        self.windows = 0

    def set_reference(self, features: list[str], rows: np.ndarray, kind: str = "training_data") -> None:
        """Use ``rows`` ([n, len(features)] floats, NaN for missing) as the reference the windows are
        measured against; ``kind`` names where it came from (e.g. training_data)."""
        self.features = list(features)
        self.reference = np.asarray(rows, dtype=float)
        self.reference_kind = kind

    def add_outcome(self, correct: bool) -> None:
        """One labeled example of the live model: feeds ADWIN on the error stream."""
        err = 0.0 if correct else 1.0
        self._errors += int(err)
        self._outcomes += 1
        self._error_adwin.update(err)
        if self._error_adwin.drift_detected:
            self._error_drift = True

    def add(self, features: dict[str, float], time_ms: int) -> dict | None:
        """Add one primary prediction's features (name to float; missing: NaN) at ``time_ms`` (epoch ms);
        once ``window_size`` rows are in, returns the window's drift measurement (see :meth:`measure`), or None
        when that window became the reference; None before."""
        if self.features is None:
            self.features = sorted(features)
        self._rows.append([features.get(f, math.nan) for f in self.features])
        self._start_ms = time_ms if self._start_ms is None else min(self._start_ms, time_ms)
        self._end_ms = max(self._end_ms, time_ms)
        if len(self._rows) < self.window_size:
            return None
        window = np.asarray(self._rows, dtype=float)
        start, end = self._start_ms, self._end_ms
        self._rows, self._start_ms, self._end_ms = [], None, 0
        self.windows += 1
        if self.reference is None:
            self.reference = window
            self.reference_kind = "first_window"
            for j, f in enumerate(self.features):
                self._adwin.setdefault(f, river_drift.ADWIN()).update(float(np.nanmean(window[:, j])))
            return None  # the reference window is not measured against itself
        return self.measure(window, start, end)

    def measure(self, window: np.ndarray, start_ms: int = 0, end_ms: int = 0) -> dict:
        """Drift statistics of ``window`` (n x F, NaN = missing) against the reference (m x F).

        Missing values are handled per feature: a feature's PSI and KS test use the rows where it is
        present, in the reference and in the window, and its missing-value rates (reference and window)
        are reported separately with ``missing_rate_changed`` (a two-proportion z-test at ``ks_pvalue``),
        which does not count as drift. A feature absent from the whole window, or from the whole
        reference, has no distribution statistics (psi 0, KS p 1)."""
        ref = self.reference
        present_ref, present_win = ~np.isnan(ref), ~np.isnan(window)
        m_all, n_all = present_ref.sum(axis=0), present_win.sum(axis=0)
        measurable = (m_all > 0) & (n_all > 0)
        complete = present_ref.all(axis=0) & present_win.all(axis=0)
        n_features = ref.shape[1]
        psis, ks_stat, ks_p = np.zeros(n_features), np.zeros(n_features), np.ones(n_features)
        full = np.flatnonzero(complete)  # vectorised over the features present in every row
        if len(full):
            psis[full] = psi(ref[:, full], window[:, full], self.bins)
            ks = ks_2samp(ref[:, full], window[:, full], axis=0)
            ks_stat[full], ks_p[full] = np.atleast_1d(ks.statistic), np.atleast_1d(ks.pvalue)
        for j in np.flatnonzero(measurable & ~complete):  # each on its present values
            r, w = ref[present_ref[:, j], j], window[present_win[:, j], j]
            psis[j] = psi(r[:, None], w[:, None], self.bins)[0]
            ks = ks_2samp(r, w)
            ks_stat[j], ks_p[j] = float(ks.statistic), float(ks.pvalue)
        # PSI counts only where both samples have PSI_MIN_ROWS values (its chi-square approximation holds),
        # against the larger of the configured threshold and its critical value; elsewhere KS alone decides
        psi_used = measurable & (n_all >= PSI_MIN_ROWS) & (m_all >= PSI_MIN_ROWS)
        thresholds = np.array([max(self.psi_threshold, psi_critical(int(n_all[j]), int(m_all[j]), self.bins,
                                                                    self.ks_pvalue)) if psi_used[j] else math.inf
                               for j in range(n_features)])
        rate_ref, rate_win = 1.0 - m_all / max(1, len(ref)), 1.0 - n_all / max(1, len(window))
        rate_changed = missing_rate_changed(rate_ref, len(ref), rate_win, len(window), self.ks_pvalue)
        features = []
        for j in range(n_features):
            if not measurable[j] and not rate_changed[j]:
                continue  # absent from the window (and as absent before): nothing to say
            name = self.features[j]
            adwin_detected = False
            if measurable[j]:
                adwin = self._adwin.setdefault(name, river_drift.ADWIN())
                adwin.update(float(np.mean(window[present_win[:, j], j])))
                adwin_detected = bool(adwin.drift_detected)
            drifted = bool(measurable[j] and (psis[j] >= thresholds[j] or ks_p[j] < self.ks_pvalue))
            features.append({"feature": name, "psi": float(psis[j]), "ks_statistic": float(ks_stat[j]),
                             "ks_pvalue": float(ks_p[j]), "adwin_detected": adwin_detected, "drifted": drifted,
                             "psi_threshold": float(thresholds[j]) if psi_used[j] else 0.0,
                             "missing_rate": float(rate_win[j]), "reference_missing_rate": float(rate_ref[j]),
                             "missing_rate_changed": bool(rate_changed[j])})
        n_measured = int(measurable.sum())
        share = sum(f["drifted"] for f in features) / n_measured if n_measured else 0.0
        error_rate = self._errors / self._outcomes if self._outcomes else None
        error_drift, self._error_drift = self._error_drift, False
        self._errors = self._outcomes = 0
        return {"window_start": int(start_ms), "window_end": int(end_ms), "window_size": int(len(window)),
                "reference": self.reference_kind, "features": features, "drift_share": float(share),
                "error_rate": error_rate, "error_drift_detected": error_drift}
