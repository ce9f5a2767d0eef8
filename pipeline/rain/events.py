"""A rainfall event: intensity P and duration D from a precipitation source, the
multiplier R_m, and the run's :class:`~pipeline.core.provenance.Rain` record.

Event statistics (:func:`rain_event`) per IMERG cell or as an area mean:
* ``intensity`` P, mm/h: mean precipitation rate over the whole event window
  ``[start, end)`` (dry steps included);
* ``duration`` D, days: total time within the window during which the rate is
  at or above ``wet_threshold_mm_h`` (number of wet steps x step length / 24 h).

The multiplier (:func:`rainfall_multiplier`)::

    R_m = min((P / P0) ** alpha * (D / D0) ** beta, cap)

with alpha = 1.2, beta = 0.8 (the method's exponents), ``D0 = 1 day`` and
``P0 = 2.20 * 24 ** -0.44 ≈ 0.54 mm/h``: the intensity on the *global minimum*
intensity-duration threshold for shallow landslides of Guzzetti et al. (2008,
Landslides 5:3-17, I = 2.20 D^-0.44, I in mm/h and D in hours) at D = 24 h. So
R_m = 1 for a one-day event at the lowest rainfall known to trigger landslides
anywhere; R_m < 1 for weaker or shorter events. (Caine's 1980 threshold,
I = 14.82 D^-0.39, gives a stricter 4.3 mm/h at 24 h; pass ``p0=4.3`` to use it.)
``cap = 5`` keeps R_m·Σwᵢxᵢ within about [-1, 4] for normalised factors, where
the LSI sigmoid is already saturated, so extreme events cannot produce
overflow or meaningless scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.core.config import TimeWindow
from pipeline.core.errors import RainfallError
from pipeline.core.provenance import Rain
from pipeline.rain.sources import LocalZarrSource, PrecipitationSource

__all__ = [
    "ALPHA",
    "BETA",
    "D0_DAYS",
    "GUZZETTI_A",
    "GUZZETTI_B",
    "P0_MM_H",
    "RAIN_LOOKBACK_DAYS",
    "R_M_CAP",
    "WET_THRESHOLD_MM_H",
    "Rain",
    "check_rain_options",
    "explicit_event",
    "rain_event",
    "rainfall_multiplier",
    "resolve_rain",
]

ALPHA = 1.2
BETA = 0.8
#: Guzzetti et al. (2008) global minimum ID threshold, I = 2.20 · D^-0.44 (mm/h, hours).
GUZZETTI_A = 2.20
GUZZETTI_B = 0.44
#: That threshold's intensity at D = 24 h: the P that gives R_m = 1 for a one-day event.
P0_MM_H = GUZZETTI_A * 24.0**-GUZZETTI_B
D0_DAYS = 1.0
R_M_CAP = 5.0
#: A time step is wet when the rate is at or above this (mm/h).
WET_THRESHOLD_MM_H = 0.1
#: Largest event intensity and duration accepted: beyond them a value is a mistake (units?).
MAX_INTENSITY_MM_H = 500.0
MAX_DURATION_DAYS = 60.0
#: Days before the end of a run's window whose precipitation defines its rainfall event.
RAIN_LOOKBACK_DAYS = 3


# --------------------------------------------------------------------------- event statistics


def rain_event(
    source: PrecipitationSource,
    bbox: Sequence[float],
    start: str | np.datetime64,
    end: str | np.datetime64,
    *,
    wet_threshold_mm_h: float = WET_THRESHOLD_MM_H,
    per: str = "region",
) -> xr.Dataset:
    """Event intensity P (mm/h) and duration D (days) from a precipitation source.

    ``per="pixel"`` returns ``(lat, lon)`` fields on the source grid;
    ``per="region"`` (default) returns scalars: P is the cos(lat)-weighted area
    mean of the per-cell P, D the area mean of the per-cell D. Time steps where
    a cell has no data are ignored in P (NaN-aware mean) and count as dry in D.
    The result is lazy where the source is; it is small, so ``.compute()`` it.
    """
    if per not in ("pixel", "region"):
        raise RainfallError(f"per={per!r} is not 'pixel' or 'region'.", hint="Use per='pixel' or per='region'.")
    if not wet_threshold_mm_h > 0:
        raise RainfallError(f"wet_threshold_mm_h={wet_threshold_mm_h} must be > 0.", hint="Use e.g. 0.1 mm/h.")
    rate = source.read(tuple(bbox), start, end)  # type: ignore[arg-type]
    step_days = float(rate.attrs.get("step_minutes", 30.0)) / 1440.0
    intensity = rate.mean("time", skipna=True).astype(np.float32)
    duration = ((rate >= wet_threshold_mm_h).sum("time") * step_days).astype(np.float32)
    if per == "region":
        w = np.cos(np.deg2rad(rate["lat"])).astype(np.float32)
        valid = intensity.notnull()
        wsum = (w * valid).sum()
        intensity = ((intensity.fillna(0) * w).sum() / wsum).astype(np.float32)
        duration = ((duration.where(valid, 0) * w).sum() / wsum).astype(np.float32)
    intensity.attrs = {"units": "mm/h", "long_name": "mean precipitation rate over the event window"}
    duration.attrs = {
        "units": "d",
        "long_name": f"time with precipitation >= {wet_threshold_mm_h:g} mm/h in the event window",
    }
    out = xr.Dataset({"intensity": intensity, "duration": duration})
    out.attrs = {
        "event_start": str(np.datetime64(start, "s")),
        "event_end": str(np.datetime64(end, "s")),
        "wet_threshold_mm_h": float(wet_threshold_mm_h),
        "source": type(source).__name__,
    }
    return out


def explicit_event(intensity_mm_h: float, duration_days: float) -> xr.Dataset:
    """The same result shape as ``rain_event(per="region")`` from user-given P and D (CLI flags)."""
    _check_nonnegative(intensity_mm_h, "intensity P (--rain-intensity)")
    _check_nonnegative(duration_days, "duration D (--rain-duration)")
    out = xr.Dataset(
        {
            "intensity": xr.DataArray(np.float32(intensity_mm_h), attrs={"units": "mm/h", "long_name": "mean precipitation rate (user given)"}),
            "duration": xr.DataArray(np.float32(duration_days), attrs={"units": "d", "long_name": "rain duration (user given)"}),
        }
    )
    out.attrs = {"source": "explicit"}
    return out


def _check_nonnegative(x, what: str) -> None:
    if isinstance(x, xr.DataArray):
        x = x.data
    arr = np.asarray(x.compute() if hasattr(x, "compute") else x, dtype=np.float64)
    if np.any(arr < 0):
        raise RainfallError(
            f"Rainfall {what} has negative values (min {np.nanmin(arr):g}).",
            hint="Intensity (mm/h) and duration (days) must be >= 0; check the source's missing-value handling.",
        )


def rainfall_multiplier(
    P,
    D,
    P0: float = P0_MM_H,
    D0: float = D0_DAYS,
    alpha: float = ALPHA,
    beta: float = BETA,
    cap: float | None = R_M_CAP,
):
    """R_m = min((P/P0)**alpha * (D/D0)**beta, cap), float32 (see the module docstring).

    ``P`` (mm/h) and ``D`` (days) may be floats, numpy arrays or DataArrays
    (a lazy DataArray is checked by computing its sign, which is cheap for
    rainfall grids). NaN P or D gives NaN.

    Raises
    ------
    RainfallError
        For ``P0 <= 0``, ``D0 <= 0``, ``cap <= 0`` or negative ``P``/``D``.
    """
    for name, val in (("P0", P0), ("D0", D0)):
        if not (np.isfinite(val) and val > 0):
            raise RainfallError(
                f"Rainfall reference {name}={val!r} must be a positive number.",
                hint=f"Use the defaults (P0={P0_MM_H:.3f} mm/h, D0={D0_DAYS:g} d) or another positive threshold.",
            )
    if cap is not None and not cap > 0:
        raise RainfallError(f"R_m cap={cap!r} must be positive (or None for no cap).")
    _check_nonnegative(P, "intensity P")
    _check_nonnegative(D, "duration D")
    rm = (P / np.float32(P0)) ** np.float32(alpha) * (D / np.float32(D0)) ** np.float32(beta)
    if cap is not None:
        rm = np.minimum(rm, np.float32(cap)) if not isinstance(rm, xr.DataArray) else rm.clip(max=cap)
    if isinstance(rm, xr.DataArray):
        rm = rm.astype(np.float32)
        rm.name = "rain_multiplier"
        rm.attrs = {
            "units": "1",
            "long_name": "rainfall multiplier R_m = (P/P0)^alpha (D/D0)^beta",
            "P0_mm_h": float(P0),
            "D0_days": float(D0),
            "alpha": float(alpha),
            "beta": float(beta),
            "cap": float(cap) if cap is not None else "none",
        }
        return rm
    out = np.asarray(rm, dtype=np.float32)
    return out[()] if out.ndim == 0 else out


def check_rain_options(intensity: float | None, duration: float | None, precip: Path | None) -> None:
    """Refuse (RainfallError) rain options that cannot make an event, before any pixel is read."""
    if (intensity is None) != (duration is None):
        raise RainfallError("--rain-intensity and --rain-duration go together.", "give both, or neither.")
    if intensity is not None and not (math.isfinite(intensity) and 0 <= intensity <= MAX_INTENSITY_MM_H):
        raise RainfallError(f"--rain-intensity {intensity} mm/h is outside [0, {MAX_INTENSITY_MM_H:g}] "
                            "(the record hourly rainfalls are about 300 mm/h).", "give the event's mean intensity in mm/h.")
    if duration is not None and not (math.isfinite(duration) and 0 < duration <= MAX_DURATION_DAYS):
        raise RainfallError(f"--rain-duration {duration} days is outside (0, {MAX_DURATION_DAYS:g}]: an event lasts "
                            "some time, and R_m would be 0 (an all-low map).", "give the event's duration in days, e.g. 2.")
    if precip is not None and not Path(precip).exists():
        raise RainfallError(f"--precip {precip} does not exist.", "give the path of an IMERG-layout Zarr store.")


def resolve_rain(
    intensity: float | None,
    duration: float | None,
    precip: Path | None,
    bbox: Sequence[float],
    window: TimeWindow,
) -> Rain:
    """A run's rainfall event: explicit P (mm/h) and D (days), a local IMERG-layout Zarr
    (the last :data:`RAIN_LOOKBACK_DAYS` days of the window), or none (R_m = 1)."""
    check_rain_options(intensity, duration, None)
    if intensity is not None and duration is not None:
        return Rain(intensity, duration, float(rainfall_multiplier(intensity, duration)), "explicit")
    if precip is not None:
        start = window.end - timedelta(days=RAIN_LOOKBACK_DAYS)
        ev = rain_event(LocalZarrSource(precip), tuple(bbox), str(start), str(window.end + timedelta(days=1))).compute()
        p, d = float(ev["intensity"]), float(ev["duration"])
        return Rain(p, d, float(rainfall_multiplier(p, d)), f"{precip} {start}..{window.end}")
    return Rain(None, None, 1.0, "none (no rainfall scaling, R_m = 1)")
