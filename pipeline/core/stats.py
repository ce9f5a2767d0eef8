"""Small statistics every stage shares: NaN-aware quantiles and the ROC AUC.

Pure numpy/scipy kernels. Foundation: imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as _stats

__all__ = ["nan_percentiles", "nanquantile_axis0", "roc_auc"]


def nanquantile_axis0(block: np.ndarray, q: float) -> np.ndarray:
    """NaN-aware quantile ``q`` (0..1) over axis 0 with linear interpolation, like
    ``np.nanquantile`` but vectorised (sort once; NaNs sort last). All-NaN → NaN."""
    srt = np.sort(block, axis=0)
    n = np.isfinite(srt).sum(axis=0)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = (pos - lo).astype(block.dtype)
    vlo = np.take_along_axis(srt, lo[None], axis=0)[0]
    vhi = np.take_along_axis(srt, hi[None], axis=0)[0]
    out = vlo + (vhi - vlo) * frac
    out[n == 0] = np.nan
    return out.astype(block.dtype, copy=False)


def nan_percentiles(x: np.ndarray, qs: Sequence[float], axis: int = 0) -> np.ndarray:
    """NaN-aware percentiles ``qs`` (0..100) along ``axis`` (numpy's 'linear' method) in
    float32, stacked on a new axis 0: :func:`nanquantile_axis0` once per percentile. Equal
    to ``np.nanpercentile`` up to float32 rounding; all-NaN pixels give NaN, no warning."""
    x = np.moveaxis(np.asarray(x, dtype=np.float32), axis, 0)
    out = np.empty((len(qs),) + x.shape[1:], dtype=np.float32)
    if x.shape[0] == 0:
        out[...] = np.nan
        return out
    for k, q in enumerate(qs):
        out[k] = nanquantile_axis0(x, q / 100.0)
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Area under the ROC curve by the rank formula (Mann-Whitney U): ties get average
    ranks, as in sklearn's ``roc_auc_score``. Pixels with a non-finite score, or outside
    ``valid``, are left out. NaN when only one class is left."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size.")
    ok = np.isfinite(s)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).ravel()
    s, y = s[ok], y[ok]
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
