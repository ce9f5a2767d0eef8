"""Landslide Risk Index (LSI): factors, region-wide normalisation, weighted sum, sigmoid, classes.

Six factors on the cube's 10 m grid: ``slope`` (degrees), ``dem`` (m), ``ndvi``,
``ndwi``, ``smi``, ``ndbi``. Each is normalised to [0, 1] with fixed per-region
ranges (robust 2nd/98th percentiles computed once over the whole region, never
per chunk or tile, so mosaics have no seams)::

    x_i = clip((f_i - low_i) / (high_i - low_i), 0, 1)      (0.5 where high_i == low_i)

Two modes (:class:`LsiParams.mode`):

``"normalised"`` (default)::

    S   = sum_i w_i x_i                       (w = slope .25, dem .15, ndvi -.20,
                                                   ndwi .20, smi .10, ndbi .10)
    LSI = sigmoid(k * (R_m * S - c))

  S lies in [-0.20, 0.80] (the sums of the negative and positive weights), so
  the default centre ``c = 0.30`` is the middle of that range and the default
  steepness ``k = 10`` maps its ends to 0.007 and 0.993 when R_m = 1. Both can
  be fitted to an inventory (:mod:`pipeline.calibration`).

``"paper"``: the equation as printed in the source paper, read as::

    LSI = sigmoid(R_m * S / (w4 * NDWI + w5 * SMI + w6 * NDBI))

  on the same normalised factors (no centre/steepness). The denominator can be
  zero (or negative with other weights): where it is ``<= eps`` (default 1e-3)
  the LSI is NaN and the pixel's quality gets ``paper_denominator``.

Outputs (:func:`landslide_susceptibility`): ``lsi`` (0..1), ``contrib_<factor>``
(w_i x_i, so a scientist sees *why* a pixel is high) and ``lsi_quality``, all
float32/uint8, lazy, each with ``units`` and ``long_name``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from pipeline.errors import InputDataError, MissingAssetError, NoValidDataError
from pipeline.indices import normalized_difference
from pipeline.quality import QualityFlag, quality_attrs
from pipeline.soil_moisture import soil_moisture
from pipeline.terrain import Edges, slope as terrain_slope

__all__ = [
    "FACTORS",
    "HISTOGRAM_SPECS",
    "RISK_THRESHOLDS",
    "LsiParams",
    "compute_factors",
    "landslide_susceptibility",
    "lsi_kernel",
    "normalisation_ranges",
    "normalise",
    "risk_classes",
]

#: Factor variable names, in the order of the method's weights w1..w6.
FACTORS: tuple[str, ...] = ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi")

#: Fixed histogram bins (low, high, number of bins) for exact, chunking-independent
#: percentiles. Values outside [low, high] count in the end bins. Bin widths:
#: slope 0.01°, dem 1 m, indices 1e-4, smi 1e-4.
HISTOGRAM_SPECS: Mapping[str, tuple[float, float, int]] = {
    "slope": (0.0, 90.0, 9000),
    "dem": (-500.0, 9000.0, 9500),
    "ndvi": (-1.0, 1.0, 20000),
    "ndwi": (-1.0, 1.0, 20000),
    "ndbi": (-1.0, 1.0, 20000),
    "ndmi": (-1.0, 1.0, 20000),
    "smi": (0.0, 1.0, 10000),
}

#: LSI class boundaries: [0, 1/3) low, [1/3, 2/3) medium, [2/3, 1] high (equal
#: thirds of the LSI scale; re-set them after calibration against an inventory).
RISK_THRESHOLDS: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)

_FACTOR_LONG_NAMES = {
    "slope": "terrain slope",
    "dem": "elevation",
    "ndvi": "NDVI",
    "ndwi": "NDWI",
    "smi": "soil moisture index",
    "ndbi": "NDBI",
}


@dataclass(frozen=True)
class LsiParams:
    """Weights, sigmoid and mode of the LSI (frozen, hashable, deterministic dask token).

    Attributes
    ----------
    w_slope, w_dem, w_ndvi, w_ndwi, w_smi, w_ndbi:
        Factor weights (the method's 0.25, 0.15, -0.20, 0.20, 0.10, 0.10).
    centre:
        Sigmoid centre ``c`` on the R_m·S scale (normalised mode), default 0.30.
    steepness:
        Sigmoid slope ``k`` (normalised mode), default 10; must be > 0.
    mode:
        ``"normalised"`` (default) or ``"paper"``; see the module docstring.
    eps:
        Paper mode: denominators ``<= eps`` give NaN.
    """

    w_slope: float = 0.25
    w_dem: float = 0.15
    w_ndvi: float = -0.20
    w_ndwi: float = 0.20
    w_smi: float = 0.10
    w_ndbi: float = 0.10
    centre: float = 0.30
    steepness: float = 10.0
    mode: Literal["normalised", "paper"] = "normalised"
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.mode not in ("normalised", "paper"):
            raise InputDataError(f"LSI mode {self.mode!r} is unknown.", hint="Use mode='normalised' or mode='paper'.")
        if not (np.isfinite(self.steepness) and self.steepness > 0):
            raise InputDataError(f"LSI sigmoid steepness {self.steepness!r} must be > 0.")
        if not np.isfinite(self.centre):
            raise InputDataError(f"LSI sigmoid centre {self.centre!r} must be finite.")
        if not self.eps > 0:
            raise InputDataError(f"LSI eps {self.eps!r} must be > 0.")

    @property
    def weights(self) -> dict[str, float]:
        """Factor name → weight, in :data:`FACTORS` order."""
        return {f: float(getattr(self, f"w_{f}")) for f in FACTORS}

    def to_attrs(self) -> dict:
        """Plain dict for provenance attributes."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> LsiParams:
        return cls(**{k: attrs[k] for k in cls.__dataclass_fields__ if k in attrs})


# --------------------------------------------------------------------------- factors


def compute_factors(cube: xr.Dataset, *, edges: Edges = "nearest") -> xr.Dataset:
    """The six LSI factors plus a uint8 ``quality`` layer from a cube (all lazy).

    Needs ``dem`` and ``B03``/``B04``/``B08``/``B11``; uses ``vv``/``vv_dry``/``vv_wet``
    for the SMI where present (NDMI proxy elsewhere). Slope uses
    ``edges="nearest"`` by default so the region's outer pixels are not lost.
    Quality bits: ``no_s2`` where a band is NaN, ``no_dem`` where the DEM is NaN,
    ``smi_from_ndmi_proxy`` from the SMI, ``nan_factor`` where any factor is NaN.

    Raises
    ------
    MissingAssetError
        Naming the first missing band or the DEM.
    """
    for name in ("dem", "B03", "B04", "B08", "B11"):
        if name not in cube.data_vars:
            raise MissingAssetError(
                f"The cube lacks {name!r}, needed for the LSI factors (have {sorted(map(str, cube.data_vars))}).",
                hint="Build the cube with the Copernicus DEM and Sentinel-2 B03, B04, B08, B11.",
            )
    dem = cube["dem"].astype(np.float32)
    template = dem

    def grid(name: str) -> xr.DataArray:
        return cube[name].transpose(*template.dims)

    b03, b04, b08, b11 = (grid(n).data for n in ("B03", "B04", "B08", "B11"))
    slope = terrain_slope(dem, edges=edges)
    sm = soil_moisture(cube)

    def wrap(data, name: str, units: str, long_name: str) -> xr.DataArray:
        return xr.DataArray(
            data, dims=template.dims, coords=template.coords, name=name, attrs={"units": units, "long_name": long_name}
        )

    ndvi = wrap(normalized_difference(b08, b04), "ndvi", "1", "normalised difference vegetation index")
    ndwi = wrap(normalized_difference(b03, b08), "ndwi", "1", "normalised difference water index")
    ndbi = wrap(normalized_difference(b11, b08), "ndbi", "1", "normalised difference built-up index")

    def qkernel(b03, b04, b08, b11, dem, slp, smi, smiq):
        q = np.asarray(smiq, dtype=np.uint8) & np.uint8(QualityFlag.SMI_FROM_NDMI_PROXY)
        no_s2 = np.isnan(b03) | np.isnan(b04) | np.isnan(b08) | np.isnan(b11)
        q[no_s2] |= np.uint8(QualityFlag.NO_S2)
        q[np.isnan(dem)] |= np.uint8(QualityFlag.NO_DEM)
        nanf = no_s2 | np.isnan(dem) | np.isnan(slp) | np.isnan(smi)
        q[nanf] |= np.uint8(QualityFlag.NAN_FACTOR)
        return q

    parts = [b03, b04, b08, b11, dem.data, slope.data, sm["smi"].data, sm["smi_quality"].data]
    if any(isinstance(p, da.Array) for p in parts):
        qdata = da.map_blocks(qkernel, *[da.asarray(p) for p in parts], dtype=np.uint8)
    else:
        qdata = qkernel(*[np.asarray(p) for p in parts])
    quality = wrap(qdata, "quality", "1", "factor quality flags (bit field)")
    quality.attrs = quality_attrs("factor quality flags (bit field)")
    dem_out = dem.copy()
    dem_out.attrs = {"units": "m", "long_name": "elevation (Copernicus DEM GLO-30 on the cube grid)"}
    slope.attrs["long_name"] = "terrain slope (Horn)"
    return xr.Dataset(
        {
            "slope": slope,
            "dem": dem_out,
            "ndvi": ndvi,
            "ndwi": ndwi,
            "smi": sm["smi"],
            "ndbi": ndbi,
            "quality": quality,
        }
    )


# --------------------------------------------------------------------------- normalisation


def _hist_kernel(x: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    x = np.asarray(x).ravel()
    x = x[~np.isnan(x)]
    idx = ((x.astype(np.float64) - lo) * (n / (hi - lo))).astype(np.int64)
    np.clip(idx, 0, n - 1, out=idx)
    return np.bincount(idx, minlength=n).astype(np.int64)


def _histogram(data, lo: float, hi: float, n: int):
    """Exact fixed-bin counts; lazy (one task per chunk + a tree sum) for dask input."""
    if not isinstance(data, da.Array):
        return _hist_kernel(data, lo, hi, n)
    nd = data.ndim

    def k(block):
        return _hist_kernel(block, lo, hi, n).reshape((1,) * nd + (n,))

    counts = da.map_blocks(
        k,
        data,
        new_axis=nd,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((n,),),
        dtype=np.int64,
    )
    return counts.sum(axis=tuple(range(nd)))


def _percentile_from_counts(counts: np.ndarray, lo: float, hi: float, q: float) -> float:
    n = counts.size
    total = int(counts.sum())
    cum = np.cumsum(counts)
    target = q / 100.0 * total
    if target <= 0:
        i = int(np.argmax(counts > 0))
        return float(lo + i * (hi - lo) / n)
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, n - 1)
    prev = float(cum[i - 1]) if i > 0 else 0.0
    frac = (target - prev) / float(counts[i]) if counts[i] else 0.0
    return float(lo + (i + frac) * (hi - lo) / n)


def normalisation_ranges(
    factors: xr.Dataset,
    low: float = 2,
    high: float = 98,
    *,
    names: Sequence[str] | None = None,
    specs: Mapping[str, tuple[float, float, int]] | None = None,
) -> dict[str, list[float]]:
    """Robust per-region ranges ``{factor: [p_low, p_high]}`` (plain floats, JSON-ready).

    Percentiles come from exact fixed-bin histograms (:data:`HISTOGRAM_SPECS`)
    summed over all chunks in one pass (``dask.compute`` once), interpolated
    linearly within the bin; integer counts make the result identical for any
    chunking, and accurate to one bin width. NaN pixels are ignored.

    Raises
    ------
    NoValidDataError
        Naming a factor whose every pixel is NaN.
    MissingAssetError
        When a requested factor is not in ``factors``.
    """
    if not (0 <= low < high <= 100):
        raise InputDataError(f"Percentiles low={low}, high={high} are invalid.", hint="Use 0 <= low < high <= 100.")
    specs = {**HISTOGRAM_SPECS, **(specs or {})}
    names = list(names) if names is not None else [f for f in FACTORS if f in factors.data_vars]
    for name in names:
        if name not in factors.data_vars:
            raise MissingAssetError(f"Factor {name!r} is missing from the factors dataset.", hint="Compute it first (compute_factors).")
        if name not in specs:
            raise InputDataError(f"No histogram bins known for factor {name!r}.", hint="Pass specs={name: (low, high, nbins)}.")
    hists = [_histogram(factors[n].data, *specs[n]) for n in names]
    hists = dask.compute(*hists)
    out: dict[str, list[float]] = {}
    for name, counts in zip(names, hists):
        counts = np.asarray(counts)
        if counts.sum() == 0:
            raise NoValidDataError(
                f"Factor {name!r} has no valid pixel in the region (all NaN), so it cannot be normalised.",
                hint="Check its inputs (clouds, missing scenes, nodata) or widen the time window.",
            )
        lo, hi, _ = specs[name]
        out[name] = [
            _percentile_from_counts(counts, lo, hi, low),
            _percentile_from_counts(counts, lo, hi, high),
        ]
    return out


def _scale_of(ranges: Mapping[str, Sequence[float]], name: str) -> tuple[float, float]:
    """(low, 1/(high-low)) or (nan, 0) for a degenerate range (mapped to 0.5)."""
    if name not in ranges:
        raise MissingAssetError(f"No normalisation range for factor {name!r}.", hint="Compute them with normalisation_ranges(factors).")
    lo, hi = (float(v) for v in ranges[name])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NoValidDataError(f"Normalisation range of factor {name!r} is not finite ({lo}, {hi}): it had no valid data.")
    return lo, (1.0 / (hi - lo) if hi > lo else 0.0)


def _norm_kernel(x, lo: float, scale: float, weight: float = 1.0):
    x = np.asarray(x, dtype=np.float32)
    if scale == 0.0:
        out = np.where(np.isnan(x), np.float32(np.nan), np.float32(0.5))
    else:
        out = x - np.float32(lo)
        out *= np.float32(scale)
        np.clip(out, 0.0, 1.0, out=out)
    if weight != 1.0:
        out *= np.float32(weight)
    return out.astype(np.float32, copy=False)


def _lift(kernel, *arrays, dtype=np.float32):
    if any(isinstance(a, da.Array) for a in arrays):
        return da.map_blocks(kernel, *[da.asarray(a) for a in arrays], dtype=dtype)
    return kernel(*[np.asarray(a) for a in arrays])


def _check_factors(factors: xr.Dataset, names: Sequence[str]) -> xr.DataArray:
    for name in names:
        if name not in factors.data_vars:
            raise MissingAssetError(
                f"Factor {name!r} is missing (have {sorted(map(str, factors.data_vars))}).",
                hint="Compute the factors with compute_factors(cube).",
            )
    template = factors[names[0]]
    for name in names[1:]:
        if factors[name].shape != template.shape:
            raise InputDataError(f"Factor {name!r} {factors[name].shape} is not on the grid of {names[0]!r} {template.shape}.")
    return template


def normalise(factors: xr.Dataset, ranges: Mapping[str, Sequence[float]]) -> xr.Dataset:
    """Factors rescaled to [0, 1] with the fixed ``ranges`` (lazy, one task per chunk per factor)."""
    names = [f for f in FACTORS if f in factors.data_vars] or list(ranges)
    template = _check_factors(factors, names)
    out = {}
    for name in names:
        lo, scale = _scale_of(ranges, name)
        data = _lift(lambda x, lo=lo, scale=scale: _norm_kernel(x, lo, scale), factors[name].transpose(*template.dims).data)
        out[name] = xr.DataArray(
            data,
            dims=template.dims,
            coords=template.coords,
            attrs={"units": "1", "long_name": f"normalised {_FACTOR_LONG_NAMES.get(name, name)} (0..1, region range)"},
        )
    return xr.Dataset(out)


# --------------------------------------------------------------------------- LSI


def lsi_kernel(
    *arrays: np.ndarray,
    lows: Sequence[float],
    scales: Sequence[float],
    weights: Sequence[float],
    mode: str,
    centre: float,
    steepness: float,
    eps: float,
    rm: float | None = None,
) -> np.ndarray:
    """LSI of one block from the six raw factor blocks (in :data:`FACTORS` order).

    An optional seventh array is a per-pixel R_m (otherwise the scalar ``rm``).
    Fused in float32 with in-place operations: one pass, few temporaries.
    """
    facs = arrays[:6]
    rm_arr = arrays[6] if len(arrays) > 6 else None
    shape = np.shape(facs[0])
    s = np.zeros(shape, dtype=np.float32)
    den = np.zeros(shape, dtype=np.float32) if mode == "paper" else None
    t = np.empty(shape, dtype=np.float32)
    for i, (x, lo, sc, w) in enumerate(zip(facs, lows, scales, weights)):
        if sc == 0.0:
            t[...] = 0.5
            t[np.isnan(x)] = np.nan
        else:
            np.subtract(x, np.float32(lo), out=t, casting="unsafe")
            t *= np.float32(sc)
            np.clip(t, 0.0, 1.0, out=t)
        t *= np.float32(w)
        s += t
        if den is not None and i >= 3:
            den += t
    r = np.asarray(rm_arr, dtype=np.float32) if rm_arr is not None else np.float32(rm if rm is not None else 1.0)
    if mode == "paper":
        bad = ~(den > eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            s /= den
        s[bad] = np.nan
        s *= r
    else:
        s *= r
        s -= np.float32(centre)
        s *= np.float32(steepness)
    # sigmoid(z) = 1 / (1 + exp(-z)), in place; exp overflow to inf gives 0, fine.
    np.negative(s, out=s)
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)
    return s


def _quality_kernel(*arrays: np.ndarray, lows, scales, weights, mode: str, eps: float) -> np.ndarray:
    facs = arrays[:6]
    q = np.zeros(np.shape(facs[0]), dtype=np.uint8)
    nan = np.zeros(q.shape, dtype=bool)
    for x in facs:
        nan |= np.isnan(x)
    if len(arrays) > 6:
        nan |= np.isnan(arrays[6])
    q[nan] |= np.uint8(QualityFlag.NAN_FACTOR)
    if mode == "paper":
        den = np.zeros(q.shape, dtype=np.float32)
        for x, lo, sc, w in list(zip(facs, lows, scales, weights))[3:]:
            den += _norm_kernel(x, lo, sc, w)
        q[~(den > eps) & ~nan] |= np.uint8(QualityFlag.PAPER_DENOMINATOR)
    return q


def landslide_susceptibility(
    factors: xr.Dataset,
    ranges: Mapping[str, Sequence[float]],
    params: LsiParams = LsiParams(),
    rain_multiplier: float | xr.DataArray = 1.0,
) -> xr.Dataset:
    """LSI (0..1), per-factor contributions and a quality layer, lazily.

    Parameters
    ----------
    factors:
        Dataset with the six raw factors (:data:`FACTORS`) on one ``(y, x)`` grid.
    ranges:
        From :func:`normalisation_ranges` (computed once over the whole region).
    params:
        :class:`LsiParams`.
    rain_multiplier:
        R_m, a float or a DataArray on the factor grid (e.g. from
        :func:`pipeline.rainfall.rainfall_multiplier`).

    Returns
    -------
    xr.Dataset
        ``lsi`` (float32), ``contrib_<factor>`` (float32, w_i x_i) and
        ``lsi_quality`` (uint8; ``nan_factor``, ``paper_denominator``), with
        provenance attrs ``lsi_params`` and ``normalisation_ranges`` (JSON strings).

    Raises
    ------
    MissingAssetError, NoValidDataError, InputDataError
        For a missing factor, a factor without a valid range (all NaN), or an
        R_m that is negative or not on the factor grid.
    """
    template = _check_factors(factors, FACTORS)
    dims = template.dims
    lows, scales = zip(*(_scale_of(ranges, f) for f in FACTORS))
    weights = tuple(params.weights.values())
    datas = [factors[f].transpose(*dims).data for f in FACTORS]
    rm_scalar: float | None = None
    extra = []
    if isinstance(rain_multiplier, xr.DataArray) and rain_multiplier.ndim > 0:
        if not set(rain_multiplier.dims) <= set(dims):
            raise InputDataError(
                f"Rain multiplier has dims {rain_multiplier.dims}, not on the factor grid {dims}.",
                hint="Use the region-mean R_m (a float) or regrid R_m onto the cube grid first.",
            )
        rmd = rain_multiplier.astype(np.float32).broadcast_like(template).transpose(*dims).data
        if isinstance(datas[0], da.Array):
            rmd = da.asarray(rmd).rechunk(datas[0].chunks)
        extra = [rmd]
    else:
        rm_scalar = float(rain_multiplier)
        if not (np.isfinite(rm_scalar) and rm_scalar >= 0):
            raise InputDataError(f"Rain multiplier {rm_scalar!r} must be a finite number >= 0.", hint="Check P, D, P0 and D0.")
    common = dict(lows=lows, scales=scales, weights=weights, mode=params.mode)

    def lsi_k(*blocks):
        return lsi_kernel(
            *blocks, **common, centre=params.centre, steepness=params.steepness, eps=params.eps, rm=rm_scalar
        )

    def q_k(*blocks):
        return _quality_kernel(*blocks, **common, eps=params.eps)

    lsi = _lift(lsi_k, *datas, *extra)
    quality = _lift(q_k, *datas, *extra, dtype=np.uint8)
    coords = template.coords
    formula = (
        "sigmoid(k*(R_m*sum(w_i*x_i) - c))"
        if params.mode == "normalised"
        else "sigmoid(R_m*sum(w_i*x_i)/(w_ndwi*x_ndwi + w_smi*x_smi + w_ndbi*x_ndbi))"
    )
    out = {
        "lsi": xr.DataArray(
            lsi,
            dims=dims,
            coords=coords,
            attrs={"units": "1", "long_name": "landslide susceptibility index", "formula": formula, "mode": params.mode},
        )
    }
    for f, d, lo, sc, w in zip(FACTORS, datas, lows, scales, weights):
        c = _lift(lambda x, lo=lo, sc=sc, w=w: _norm_kernel(x, lo, sc, w), d)
        out[f"contrib_{f}"] = xr.DataArray(
            c,
            dims=dims,
            coords=coords,
            attrs={"units": "1", "long_name": f"LSI contribution of {_FACTOR_LONG_NAMES[f]} (weight x normalised factor)", "weight": w},
        )
    q = xr.DataArray(quality, dims=dims, coords=coords)
    q.attrs = quality_attrs("LSI quality flags (bit field)")
    out["lsi_quality"] = q
    for v in out.values():
        if "grid_mapping" in template.attrs:
            v.attrs["grid_mapping"] = template.attrs["grid_mapping"]
    ds = xr.Dataset(out)
    ds.attrs = {
        "lsi_params": json.dumps(params.to_attrs()),
        "normalisation_ranges": json.dumps({f: [float(v) for v in ranges[f]] for f in FACTORS}),
        "rain_multiplier": rm_scalar if rm_scalar is not None else "per-pixel",
    }
    return ds


# --------------------------------------------------------------------------- classes


def _classes_kernel(x: np.ndarray, t1: float, t2: float) -> np.ndarray:
    x = np.asarray(x)
    out = np.full(x.shape, 255, dtype=np.uint8)
    out[x < t1] = 0
    out[(x >= t1) & (x < t2)] = 1
    out[x >= t2] = 2
    return out


def risk_classes(lsi: xr.DataArray, thresholds: tuple[float, float] = RISK_THRESHOLDS) -> xr.DataArray:
    """uint8 classes: 0 low (LSI < t1), 1 medium (t1 <= LSI < t2), 2 high (LSI >= t2), 255 nodata.

    Default thresholds (:data:`RISK_THRESHOLDS`) are equal thirds of the LSI
    scale. Carries CF ``flag_values``/``flag_meanings``; ``_FillValue`` 255 is
    set in ``encoding``.
    """
    t1, t2 = (float(t) for t in thresholds)
    if not (0 <= t1 < t2 <= 1):
        raise InputDataError(f"Risk thresholds {thresholds} must satisfy 0 <= t1 < t2 <= 1.", hint="e.g. (1/3, 2/3).")
    data = _lift(lambda x: _classes_kernel(x, t1, t2), lsi.data, dtype=np.uint8)
    out = xr.DataArray(data, dims=lsi.dims, coords=lsi.coords, name="risk_class")
    out.attrs = {
        "units": "1",
        "long_name": "landslide risk class",
        "flag_values": [0, 1, 2],
        "flag_meanings": "low medium high",
        "thresholds": [t1, t2],
        "comment": f"low: LSI < {t1:.4g}; medium: {t1:.4g} <= LSI < {t2:.4g}; high: LSI >= {t2:.4g}; 255: no data",
    }
    if "grid_mapping" in lsi.attrs:
        out.attrs["grid_mapping"] = lsi.attrs["grid_mapping"]
    out.encoding["_FillValue"] = np.uint8(255)
    return out
