"""Susceptibility and hazard kept apart: where the rain enters.

The source paper scales the LSI by the rain multiplier R_m and feeds that to the U-Net, so
its output mixes terrain and weather: the same slope changes "susceptibility" with the
rain, and a model trained under one rain sees, under another, inputs it never saw. Here
(the default, ``decoupled``) the model sees only rain-free inputs (the six factors and the
LSI at R_m = 1), and its output is the **susceptibility** ``s``: the probability that a
pixel fails under the reference event (P = P₀, D = D₀, i.e. R_m = 1). The rain enters
afterwards, in one documented step, the **hazard** for the event at hand::

    hazard = 1 − (1 − s) ** R_m

This is the complementary log-log link with the rain as exposure: if failures under the
reference event arrive as a Poisson process with rate λ = −ln(1 − s), an event worth R_m
reference events has rate λ·R_m, so the chance of at least one failure is
1 − exp(−λ·R_m) = 1 − (1 − s)^R_m. It is

* the susceptibility itself when R_m = 1 (the reference event);
* monotone: never lower for more rain (R_m larger) or a more susceptible pixel;
* 0 when R_m = 0 (no trigger) and tends to 1 as R_m grows, for any s > 0;
* pixel-wise and chunk-free (no seams).

The paper's own form is kept as ``paper``: the LSI is rain-scaled inside the model's input
(``σ(k(R_m·S − c))``), and the model's output is taken as the hazard; there the
susceptibility is the same number, recorded as such.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.core.errors import InputDataError

__all__ = ["HAZARD_FORMULA", "HAZARD_MODES", "HazardMode", "check_hazard_mode", "hazard"]

HazardMode = Literal["decoupled", "paper"]
#: ``decoupled``: rain-free model, hazard afterwards (default); ``paper``: rain inside the LSI.
HAZARD_MODES: tuple[str, ...] = ("decoupled", "paper")
#: The hazard step, as recorded in the outputs' attributes.
HAZARD_FORMULA = "hazard = 1 - (1 - susceptibility) ** R_m (complementary log-log link, rain as exposure)"


def check_hazard_mode(mode: str) -> HazardMode:
    """``mode`` if it is one of :data:`HAZARD_MODES`, else a one-line :class:`InputDataError`."""
    if mode not in HAZARD_MODES:
        raise InputDataError(f"hazard mode {mode!r} is unknown.", f"use one of {', '.join(HAZARD_MODES)}.")
    return mode  # type: ignore[return-value]


def hazard(susceptibility: np.ndarray, rain_multiplier: float) -> np.ndarray:
    """The event's hazard from the rain-free susceptibility (float32, NaN stays NaN).

    ``rain_multiplier`` is R_m = (P/P₀)^α · (D/D₀)^β (finite, ≥ 0); see the module docstring.
    """
    rm = float(rain_multiplier)
    if not (np.isfinite(rm) and rm >= 0):
        raise InputDataError(f"rain multiplier {rain_multiplier!r} must be a finite number >= 0.",
                             "check the rainfall intensity and duration.")
    s = np.clip(np.asarray(susceptibility, dtype=np.float64), 0.0, 1.0)
    # 1 - (1 - s)^R_m, computed as -expm1(R_m * log1p(-s)) for accuracy near 0 and 1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.expm1(rm * np.log1p(-s))
    out = np.where(s >= 1.0, 1.0 if rm > 0 else 0.0, out)
    return np.where(np.isnan(s), np.nan, out).astype(np.float32)
