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
  be fitted to an inventory (:mod:`pipeline.factors.calibration`).

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

import dask.array as da
import numpy as np
import xarray as xr

from pipeline.core.classes import LSI_THRESHOLDS, check_thresholds, class_attrs, classify
from pipeline.core.errors import InputDataError, MissingAssetError, NoValidDataError
from pipeline.core.files import fingerprint
from pipeline.core.provenance import Rain, RunProvenance
from pipeline.factors.kernels import lift as _lift
from pipeline.factors.layers import FACTORS, compute_factors
from pipeline.core.quality import QualityFlag, quality_attrs

__all__ = [
    "FACTORS",
    "LSI_LAYOUT",
    "RISK_THRESHOLDS",
    "LsiParams",
    "landslide_susceptibility",
    "lsi_attrs",
    "lsi_dataset",
    "lsi_fingerprint",
    "lsi_kernel",
    "lsi_score",
    "lsi_stage_tasks",
    "mask_outside",
    "normalise",
    "risk_classes",
]


#: LSI class boundaries: [0, 1/3) low, [1/3, 2/3) medium, [2/3, 1] high (equal
#: thirds of the LSI scale; re-set them after calibration against an inventory).
RISK_THRESHOLDS: tuple[float, float] = LSI_THRESHOLDS

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
        :func:`pipeline.rain.sources.rainfall_multiplier`).

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


def risk_classes(lsi: xr.DataArray, thresholds: tuple[float, float] = RISK_THRESHOLDS) -> xr.DataArray:
    """uint8 classes: 0 low (LSI < t1), 1 medium (t1 <= LSI < t2), 2 high (LSI >= t2), 255 nodata.

    Default thresholds (:data:`RISK_THRESHOLDS`) are equal thirds of the LSI
    scale. Carries CF ``flag_values``/``flag_meanings``; ``_FillValue`` 255 is
    set in ``encoding``.
    """
    t1, t2 = check_thresholds(thresholds, "LSI")
    data = _lift(lambda x: classify(x, t1, t2), lsi.data, dtype=np.uint8)
    out = xr.DataArray(data, dims=lsi.dims, coords=lsi.coords, name="risk_class")
    out.attrs = class_attrs((t1, t2), "LSI")
    if "grid_mapping" in lsi.attrs:
        out.attrs["grid_mapping"] = lsi.attrs["grid_mapping"]
    out.encoding["_FillValue"] = np.uint8(255)
    return out


# --------------------------------------------------------------------------- the LSI store

#: Bumped when the LSI store's variables or attributes change, so older stores are rebuilt.
LSI_LAYOUT = 3  # 3: rain-free by default (hazard_mode), no rain recorded then


def mask_outside(ds: xr.Dataset, inside: xr.DataArray) -> xr.Dataset:
    """``ds`` with every pixel outside ``inside`` masked: NaN in float layers, class 255,
    and :attr:`QualityFlag.OUTSIDE_REGION` in the quality layers (lazy; attributes kept)."""
    out = ds.copy()
    outside = np.uint8(QualityFlag.OUTSIDE_REGION)
    for name, var in ds.data_vars.items():
        if name in ("quality", "lsi_quality"):
            masked = xr.where(inside, var, var | outside)
        elif name == "risk_class":
            masked = xr.where(inside, var, np.uint8(255))
        elif var.dtype.kind == "f":
            masked = var.where(inside)
        else:
            continue
        masked = masked.astype(var.dtype)
        masked.attrs, masked.encoding = dict(var.attrs), dict(var.encoding)
        out[name] = masked
    return out


def lsi_dataset(cube: xr.Dataset, ranges: Mapping[str, Sequence[float]], params: LsiParams, rain_multiplier: float,
                inside: xr.DataArray | None = None) -> xr.Dataset:
    """What an LSI store holds (lazy): the six factors, their quality, the LSI with its
    contributions and quality, and the risk classes; pixels outside ``inside`` (a region's
    polygon) masked and flagged."""
    factors = compute_factors(cube)
    out = landslide_susceptibility(factors, ranges, params, rain_multiplier)
    ds = xr.Dataset({name: factors[name] for name in FACTORS})
    ds["quality"] = factors["quality"]
    for name, var in out.data_vars.items():
        ds[name] = var
    ds["risk_class"] = risk_classes(out["lsi"])
    return mask_outside(ds, inside) if inside is not None else ds


def lsi_fingerprint(cube_fingerprint: str | None, params: LsiParams, rain: Rain | None,
                    region_cubes: Sequence[str | None] | None = None, geometry: str | None = None) -> str:
    """The key of an LSI store: its cube, parameters, rain and :data:`LSI_LAYOUT`, for a
    region of several zones the cubes of all zones (their pixels set the shared ranges), and
    the region's polygon when it has one (GeoJSON)."""
    doc: dict = {"cube": cube_fingerprint, "params": params.__dict__, "rain": rain.__dict__ if rain is not None else None,
                 "layout": LSI_LAYOUT}
    if region_cubes is not None and len(region_cubes) > 1:
        doc["region_cubes"] = sorted(str(c) for c in region_cubes)
    if geometry is not None:
        doc["geometry"] = fingerprint(geometry)
    return fingerprint(doc)


def lsi_attrs(prov: RunProvenance, zone: str, cube_path: str, ranges: Mapping, params: LsiParams, version: str,
              calibration: str | None = None) -> dict:
    """The LSI store's CF and provenance attributes (``lsi_calibration`` says where a
    calibrated centre and steepness come from)."""
    extra = {"lsi_calibration": calibration} if calibration else {}
    return {
        "title": f"slidewatch LSI: {prov.region} ({zone})",
        "Conventions": "CF-1.8",
        "slidewatch_version": version,
        "cube": cube_path,
        **prov.to_attrs("lsi"),
        "normalisation_ranges": dict(ranges),
        "lsi_params": params.__dict__,
        **extra,
    }


def lsi_score(lsi: xr.Dataset) -> xr.DataArray:
    """R_m · Σ wᵢxᵢ from an LSI store's contributions (what calibration fits)."""
    contrib = sum(lsi[v] for v in lsi.data_vars if str(v).startswith("contrib_"))
    rm = lsi.attrs.get("rain_multiplier")
    return (contrib * float(1.0 if rm is None else rm)).astype(np.float32)


def lsi_stage_tasks(shape: tuple[int, int], chunk: int, bands: Sequence[str], resolution: float = 10.0) -> int:
    """Dask tasks of one zone's LSI stage on a grid of ``shape`` pixels in ``chunk`` chunks,
    counted on a template cube (no pixels read): what a dry run can tell without the STAC API."""
    names = [*bands, "s2_valid_count", "vv", "vh", "vv_dry", "vv_wet", "dem"]
    coords = {"y": -resolution * np.arange(shape[0]), "x": resolution * np.arange(shape[1])}
    cube = xr.Dataset({n: (("y", "x"), da.zeros(shape, chunks=chunk, dtype=np.float32)) for n in names}, coords=coords)
    unit = {f: [0.0, 1.0] for f in FACTORS}
    ds = lsi_dataset(cube, unit, LsiParams(), 1.0)
    return len(ds.__dask_graph__())

