"""Fit the LSI sigmoid (and optionally the weights) to a landslide inventory; ROC AUC.

The normalised-mode LSI is a logistic model::

    LSI = sigmoid(k * (s - c)),   s = R_m * sum_i w_i x_i

so its centre ``c`` and steepness ``k`` are fitted by logistic regression of the
landslide mask on ``s`` (``a + b*s`` with ``k = b``, ``c = -a/b``), maximising
the Bernoulli likelihood with :func:`scipy.optimize.minimize` (L-BFGS-B,
analytic gradient, a tiny L2 penalty for separable data) on a seeded random
subsample of the valid pixels.

With ``fit_weights=True`` the regression is on the six normalised factors
(times R_m): ``a + sum_i b_i x_i``; weights are reported as ``w_i = b_i / sum|b|``
(so, like the method's weights, their absolute values sum to 1), ``k = sum|b|``
and ``c = -a / k``, which gives exactly the fitted model in LSI form.

:func:`roc_auc` uses the rank (Mann-Whitney U) formula with average ranks for ties.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr
from scipy import optimize

from pipeline.core.stats import roc_auc as core_roc_auc
from pipeline.core.errors import InputDataError, NoValidDataError
from pipeline.core.files import atomic_write_text
from pipeline.factors.lsi import FACTORS, LsiParams

__all__ = [
    "PAPER_AUC",
    "CalibrationResult",
    "calibrate",
    "fit_logistic",
    "format_report",
    "load_calibration",
    "roc_auc",
    "save_calibration",
]

#: AUC reported by the source paper on its own study area and inventory.
PAPER_AUC = 0.968


@dataclass(frozen=True)
class CalibrationResult:
    """Fitted sigmoid (and weights) with the AUC of the fitted LSI on this data set."""

    centre: float
    steepness: float
    auc: float
    n_samples: int
    n_positive: int
    log_loss: float
    converged: bool
    weights: Mapping[str, float] | None = None
    seed: int = 0

    def to_params(self, base: LsiParams = LsiParams()) -> LsiParams:
        """An :class:`LsiParams` with the fitted centre, steepness (and weights)."""
        kw: dict = {"centre": float(self.centre), "steepness": float(self.steepness), "mode": "normalised"}
        if self.weights is not None:
            kw.update({f"w_{k}": float(v) for k, v in self.weights.items()})
        return replace(base, **kw)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (:func:`pipeline.core.stats.roc_auc`: rank formula, ties
    averaged as in sklearn's ``roc_auc_score``); NaN scores are dropped. Raises
    :class:`InputDataError` if only one class is present."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise InputDataError(f"scores {s.shape} and labels {y.shape} differ in size.")
    ok = ~np.isnan(s)
    n_pos = int(y[ok].sum())
    n_neg = int(ok.sum() - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise InputDataError(
            f"AUC needs both classes; got {n_pos} landslide and {n_neg} stable pixels.",
            hint="Use a mask that contains landslide (1) and stable (0) pixels in the scored area.",
        )
    return core_roc_auc(s, y, ok)


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1e-6) -> tuple[float, np.ndarray, bool, float]:
    """Logistic regression ``P(y=1) = sigmoid(a + X @ b)``; returns (a, b, converged, mean log loss).

    Minimises the mean negative log-likelihood plus ``l2/2 * |b|²`` with L-BFGS-B.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y, dtype=np.float64).ravel()
    n, p = X.shape
    A = np.hstack([np.ones((n, 1)), X])

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = A @ theta
        # log(1 + exp(z)) - y z, stably
        loss = np.logaddexp(0.0, z) - y * z
        pr = 0.5 * (1.0 + np.tanh(0.5 * z))
        g = A.T @ (pr - y) / n
        g[1:] += l2 * theta[1:]
        return float(loss.mean() + 0.5 * l2 * theta[1:] @ theta[1:]), g

    theta0 = np.zeros(p + 1)
    ybar = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta0[0] = np.log(ybar / (1 - ybar))
    res = optimize.minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-9})
    return float(res.x[0]), res.x[1:], bool(res.success), float(res.fun)


def _valid_pixels(arrays: Sequence[np.ndarray], labels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    lab = np.asarray(labels, dtype=np.float64).ravel()
    ok = np.isin(lab, (0.0, 1.0))
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    for a in flat:
        ok &= np.isfinite(a)
    return [a[ok] for a in flat], lab[ok]


def calibrate(
    data: xr.DataArray | xr.Dataset,
    landslides: xr.DataArray | np.ndarray,
    *,
    rain_multiplier: float = 1.0,
    fit_weights: bool = False,
    sample_size: int = 200_000,
    seed: int = 0,
) -> CalibrationResult:
    """Fit the LSI sigmoid against a landslide mask (1 landslide, 0 stable, other values ignored).

    Parameters
    ----------
    data:
        Either the score ``s = R_m * sum_i w_i x_i`` as a DataArray (e.g. the sum of
        the ``contrib_*`` variables times R_m), or, with ``fit_weights=True``,
        a Dataset of the six *normalised* factors (:func:`pipeline.factors.lsi.normalise`).
    landslides:
        Mask on the same grid.
    sample_size, seed:
        The fit uses a seeded random subsample of at most ``sample_size`` valid
        pixels; the AUC uses all valid pixels.

    Raises
    ------
    NoValidDataError
        When no pixel has both a finite score and a 0/1 label, or one class is absent.
    """
    lab = landslides.values if isinstance(landslides, xr.DataArray) else np.asarray(landslides)
    if fit_weights:
        if not isinstance(data, xr.Dataset):
            raise InputDataError("fit_weights=True needs a Dataset of the six normalised factors.")
        cols = [np.asarray(data[f].values) * rain_multiplier for f in FACTORS]
    else:
        arr = data.values if isinstance(data, xr.DataArray) else np.asarray(data)
        cols = [np.asarray(arr)]
    cols, y = _valid_pixels(cols, lab)
    n_pos = int(y.sum())
    if y.size == 0 or n_pos == 0 or n_pos == y.size:
        raise NoValidDataError(
            f"Calibration needs landslide and stable pixels with valid factors; got {n_pos} landslide of {y.size}.",
            hint="Check the inventory mask overlaps the scored area and uses 1 for landslides and 0 for stable ground.",
        )
    rng = np.random.default_rng(seed)
    idx = rng.choice(y.size, size=sample_size, replace=False) if y.size > sample_size else np.arange(y.size)
    X = np.stack([c[idx] for c in cols], axis=1)
    a, b, ok, loss = fit_logistic(X, y[idx])
    if fit_weights:
        k = float(np.abs(b).sum())
        if k == 0:
            raise NoValidDataError("The fitted weights are all zero: the factors do not separate the classes.")
        weights = {f: float(v / k) for f, v in zip(FACTORS, b)}
        score = np.stack(cols, axis=1) @ b
    else:
        k = float(b[0])
        weights = None
        score = cols[0]
        if k <= 0:
            raise NoValidDataError(
                f"The fitted sigmoid slope is {k:.3g} <= 0: higher scores are not more often landslides here.",
                hint="Check the weights, the mask polarity (1 = landslide) and the rain multiplier.",
            )
    centre = -a / k
    return CalibrationResult(
        centre=float(centre),
        steepness=k,
        auc=roc_auc(score, y),
        n_samples=int(idx.size),
        n_positive=int(y[idx].sum()),
        log_loss=loss,
        converged=ok,
        weights=weights,
        seed=seed,
    )


def format_report(result: CalibrationResult, data_set: str = "this run's region and inventory") -> str:
    """A short plain-text report: our AUC beside the paper's 0.968 (a different data set)."""
    lines = [
        "LSI calibration",
        f"  sigmoid centre c      : {result.centre:.4f}",
        f"  sigmoid steepness k   : {result.steepness:.4f}",
    ]
    if result.weights is not None:
        lines.append("  weights (sum|w| = 1)  : " + ", ".join(f"{k} {v:+.3f}" for k, v in result.weights.items()))
    lines += [
        f"  fit sample            : {result.n_samples} pixels ({result.n_positive} landslide), seed {result.seed}, "
        f"log loss {result.log_loss:.4f}, {'converged' if result.converged else 'NOT converged'}",
        "",
        f"  AUC, slidewatch on {data_set:<32s}: {result.auc:.3f}",
        f"  AUC, source paper on its own study area     : {PAPER_AUC:.3f}",
        "  (different data sets, inventories and resolutions: the two AUCs are not directly comparable)",
    ]
    return "\n".join(lines)


def save_calibration(result: CalibrationResult, path: str | os.PathLike, data_set: str) -> Path:
    """Write a calibration as JSON (atomically) for ``slidewatch run --calibration FILE``."""
    doc = {"centre": result.centre, "steepness": result.steepness, "weights": dict(result.weights or {}) or None,
           "auc": result.auc, "n_samples": result.n_samples, "n_positive": result.n_positive,
           "log_loss": result.log_loss, "converged": result.converged, "seed": result.seed, "data_set": data_set}
    return atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True))


def load_calibration(path: str | os.PathLike, base: LsiParams = LsiParams()) -> tuple[LsiParams, str]:
    """The LSI parameters of a saved calibration, and a line saying where they come from;
    InputDataError naming the file and the fix for anything else."""
    path = Path(path)
    fix = "give a calibration.json written by `slidewatch demo` or `save_calibration`."
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError(f"Calibration file {path} does not exist.", fix) from None
    except (OSError, ValueError) as exc:
        raise InputDataError(f"Calibration file {path} is not readable JSON ({exc}).", fix) from None
    if not isinstance(doc, dict):
        raise InputDataError(f"Calibration file {path} holds {type(doc).__name__}, not an object.", fix)
    try:
        centre, steepness = float(doc["centre"]), float(doc["steepness"])
        weights = doc.get("weights") or None
        if weights is not None:
            weights = {f: float(weights[f]) for f in FACTORS}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputDataError(f"Calibration file {path} lacks a numeric {exc}.", fix) from None
    numbers = [centre, steepness, *(weights or {}).values()]
    if not all(math.isfinite(v) for v in numbers) or steepness <= 0:
        raise InputDataError(f"Calibration file {path} has a non-finite value or a steepness <= 0 ({steepness}).", fix)
    result = CalibrationResult(centre=centre, steepness=steepness, auc=float(doc.get("auc", math.nan)),
                               n_samples=int(doc.get("n_samples", 0)), n_positive=int(doc.get("n_positive", 0)),
                               log_loss=float(doc.get("log_loss", math.nan)), converged=bool(doc.get("converged", True)),
                               weights=weights)
    auc = f", AUC {result.auc:.3f}" if math.isfinite(result.auc) else ""
    return result.to_params(base), f"{path} (fitted on {doc.get('data_set', 'an unnamed data set')}{auc})"

