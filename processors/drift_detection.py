"""Drift math, no Kafka: per deployment and feature, windows of predictions against a reference.

* reference: the first full window of traffic (or, after a promotion, the first window after it);
  ``set_reference`` takes training data instead when it is known.
* per window, vectorised over samples: PSI on quantile bins of the reference (numpy) and the
  two-sample Kolmogorov-Smirnov test for every feature at once (``scipy.stats.ks_2samp(axis=0)``).
* river ADWIN on each feature's per-window mean (one update per window, ~0.2 us) and on the error
  stream (one update per labeled example). KSWIN is avoided: ~260 us per update per feature.
* PSI uses max(2, min(10, window_size // 50)) bins: ~50 expected samples per bin keeps its sampling
  noise well under the threshold on small windows.
* a feature drifts when PSI >= psi_threshold or the KS p-value < ks_pvalue; drift_share is the
  fraction of drifting features, compared with the deployment's drift_threshold.
"""
from __future__ import annotations

import math

import numpy as np
from river import drift as river_drift
from scipy.stats import ks_2samp

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
        ref = self.reference
        cols = [j for j in range(ref.shape[1]) if not np.isnan(window[:, j]).all()]
        # rows with missing values of a feature are left out of that feature's statistics
        ref_c = np.nan_to_num(ref[:, cols], nan=np.nanmedian(ref[:, cols])) if cols else ref[:, :0]
        win_c = np.nan_to_num(window[:, cols], nan=np.nanmedian(ref[:, cols])) if cols else window[:, :0]
        psis = psi(ref_c, win_c, self.bins) if cols else np.array([])
        if cols:
            ks = ks_2samp(ref_c, win_c, axis=0)
            ks_stat, ks_p = np.atleast_1d(ks.statistic), np.atleast_1d(ks.pvalue)
        else:
            ks_stat = ks_p = np.array([])
        features = []
        for i, j in enumerate(cols):
            name = self.features[j]
            adwin = self._adwin.setdefault(name, river_drift.ADWIN())
            adwin.update(float(np.mean(win_c[:, i])))
            drifted = bool(psis[i] >= self.psi_threshold or ks_p[i] < self.ks_pvalue)
            features.append({"feature": name, "psi": float(psis[i]), "ks_statistic": float(ks_stat[i]),
                             "ks_pvalue": float(ks_p[i]), "adwin_detected": bool(adwin.drift_detected),
                             "drifted": drifted})
        share = sum(f["drifted"] for f in features) / len(features) if features else 0.0
        error_rate = self._errors / self._outcomes if self._outcomes else None
        error_drift, self._error_drift = self._error_drift, False
        self._errors = self._outcomes = 0
        return {"window_start": int(start_ms), "window_end": int(end_ms), "window_size": int(len(window)),
                "reference": self.reference_kind, "features": features, "drift_share": float(share),
                "error_rate": error_rate, "error_drift_detected": error_drift}
