"""Rainfall: precipitation sources, event intensity/duration and the multiplier R_m.

Sources follow one :class:`PrecipitationSource` protocol (an I/O seam faked in
tests). Both implementations read the layout of Planetary Computer's
``gpm-imerg-hhr`` collection-level Zarr (GPM IMERG V06 Final, half-hourly,
0.1°): variable ``precipitationCal`` in ``mm/hr`` with dims
``(time, lon, lat)``, ``lat`` ascending, ``time`` the start of each 30-minute
interval. :func:`imerg_layout` reads those facts (asset href, ``xarray:open_kwargs``,
``xarray:storage_options``, variable, dims, step) from the collection JSON.

* :class:`ImergSource` opens the remote store through an injectable ``opener``
  (the default needs ``adlfs`` and, on Planetary Computer, a SAS token passed as
  ``storage_options={"credential": token}`` by the caller).
* :class:`LocalZarrSource` reads a local Zarr with the same layout, e.g. one
  written from :func:`make_synthetic_storm` for the demo region.

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

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from pipeline.errors import RainfallError

__all__ = [
    "ALPHA",
    "BETA",
    "D0_DAYS",
    "IMERG_COLLECTION_ID",
    "ImergLayout",
    "ImergSource",
    "LocalZarrSource",
    "P0_MM_H",
    "R_M_CAP",
    "PrecipitationSource",
    "explicit_event",
    "imerg_layout",
    "make_synthetic_storm",
    "rain_event",
    "rainfall_multiplier",
    "write_precipitation_zarr",
]

IMERG_COLLECTION_ID = "gpm-imerg-hhr"
ALPHA = 1.2
BETA = 0.8
#: Guzzetti et al. (2008) global minimum ID threshold I = 2.20 D^-0.44 at D = 24 h.
P0_MM_H = 2.20 * 24.0**-0.44
D0_DAYS = 1.0
R_M_CAP = 5.0
WET_THRESHOLD_MM_H = 0.1

_RATE_UNITS = {"mm/hr": 1.0, "mm/h": 1.0, "mm h-1": 1.0, "mm hr-1": 1.0, "kg m-2 s-1": 3600.0, "mm/s": 3600.0}

BBox = tuple[float, float, float, float]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ImergLayout:
    """Facts about an IMERG-like precipitation Zarr, as the STAC collection states them."""

    href: str = "abfs://imerg/gpm-imerg-hhr.zarr"
    variable: str = "precipitationCal"
    units: str = "mm/hr"
    dims: tuple[str, ...] = ("time", "lon", "lat")
    lon: str = "lon"
    lat: str = "lat"
    time: str = "time"
    step_minutes: float = 30.0
    open_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"use_cftime": True, "consolidated": True})
    storage_options: Mapping[str, Any] = field(default_factory=lambda: {"account_name": "ai4edataeuwest"})
    asset_key: str = "zarr-abfs"


def _parse_iso_step_minutes(step: str) -> float:
    # e.g. "P0DT0H30M0S"
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", step)
    if not m:
        raise RainfallError(f"Cannot parse the time step {step!r} of the precipitation collection.")
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 1440 + h * 60 + mi + s / 60


def imerg_layout(collection: Mapping[str, Any] | str | os.PathLike, variable: str = "precipitationCal") -> ImergLayout:
    """Read an :class:`ImergLayout` from a ``gpm-imerg-hhr`` STAC collection (dict or JSON path).

    Uses the ``application/vnd+zarr`` asset (href, ``xarray:open_kwargs``,
    ``xarray:storage_options``), ``cube:variables[variable]`` (dims, unit) and
    ``cube:dimensions`` (which dim is x/lon, y/lat, and the time step).
    """
    if not isinstance(collection, Mapping):
        try:
            collection = json.loads(Path(collection).read_text())
        except (OSError, ValueError) as e:
            raise RainfallError(
                f"Cannot read the precipitation collection JSON {collection!s}: {e}.",
                hint="Pass the gpm-imerg-hhr collection document (a dict) or a readable JSON file.",
            ) from e
    assets = collection.get("assets", {})
    zarr_assets = [(k, a) for k, a in assets.items() if "zarr" in str(a.get("type", "")) or "zarr" in a.get("roles", [])]
    if not zarr_assets:
        raise RainfallError(
            f"Collection {collection.get('id')!r} has no Zarr asset (assets: {sorted(assets)}).",
            hint="Use Planetary Computer's gpm-imerg-hhr collection, whose 'zarr-abfs' asset holds the store.",
        )
    key, asset = zarr_assets[0]
    variables = collection.get("cube:variables", {})
    if variable not in variables:
        raise RainfallError(
            f"Variable {variable!r} is not in collection {collection.get('id')!r} "
            f"(data variables: {sorted(k for k, v in variables.items() if v.get('type') == 'data')}).",
            hint="Use 'precipitationCal' (calibrated IMERG precipitation, mm/hr).",
        )
    var = variables[variable]
    dims = tuple(var.get("dimensions", ()))
    cube_dims = collection.get("cube:dimensions", {})
    lon = next((k for k, v in cube_dims.items() if v.get("axis") == "x"), "lon")
    lat = next((k for k, v in cube_dims.items() if v.get("axis") == "y"), "lat")
    time = next((k for k, v in cube_dims.items() if v.get("type") == "temporal"), "time")
    step = cube_dims.get(time, {}).get("step")
    units = var.get("unit") or var.get("attrs", {}).get("units", "")
    if units not in _RATE_UNITS:
        raise RainfallError(f"Variable {variable!r} has unit {units!r}, not a precipitation rate.")
    return ImergLayout(
        href=asset["href"],
        variable=variable,
        units=units,
        dims=dims,
        lon=lon,
        lat=lat,
        time=time,
        step_minutes=_parse_iso_step_minutes(step) if step else 30.0,
        open_kwargs=dict(asset.get("xarray:open_kwargs", {})),
        storage_options=dict(asset.get("xarray:storage_options", {})),
        asset_key=key,
    )


# --------------------------------------------------------------------------- sources


@runtime_checkable
class PrecipitationSource(Protocol):
    """Anything that yields precipitation rate (mm/h) over a bbox and a time window."""

    def read(self, bbox: BBox, start: str | np.datetime64, end: str | np.datetime64) -> xr.DataArray:
        """Rate in mm/h, dims ``(time, lat, lon)``, cells intersecting ``bbox`` (lon/lat),
        times ``start <= t < end``; lazy where the store is."""
        ...


def _xarray_open_kwargs(open_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kw = dict(open_kwargs)
    if "use_cftime" in kw:  # deprecated spelling in recent xarray
        use = kw.pop("use_cftime")
        kw["decode_times"] = xr.coders.CFDatetimeCoder(use_cftime=use)
    return kw


def open_imerg_remote(layout: ImergLayout, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open the remote IMERG Zarr lazily (needs network, ``adlfs``, ``cftime`` and a SAS token).

    ``storage_options`` are merged over the collection's (pass
    ``{"credential": token}`` with a Planetary Computer SAS token).
    """
    so = {**layout.storage_options, **(storage_options or {})}
    try:
        return xr.open_zarr(layout.href, storage_options=so, **_xarray_open_kwargs(layout.open_kwargs))
    except Exception as e:  # pragma: no cover - needs the internet
        raise RainfallError(
            f"Cannot open the IMERG store {layout.href} ({type(e).__name__}: {e}).",
            hint="Check the network, install adlfs and cftime, and pass a Planetary Computer SAS token "
            "as storage_options={'credential': token}; or use --rain-intensity/--rain-duration.",
        ) from e


def _time_values_as_datetime64(t: np.ndarray) -> np.ndarray:
    if np.issubdtype(t.dtype, np.datetime64):
        return t.astype("datetime64[ns]")
    # cftime objects (use_cftime=True): go through ISO strings (the window is small).
    return np.array([np.datetime64(x.isoformat()) for x in t], dtype="datetime64[ns]")


def _subset(ds: xr.Dataset, layout: ImergLayout, bbox: BBox, start, end, name: str) -> xr.DataArray:
    if layout.variable not in ds.data_vars:
        raise RainfallError(
            f"{name}: variable {layout.variable!r} not found (have {sorted(map(str, ds.data_vars))}).",
            hint="Write the store in the gpm-imerg-hhr layout (variable precipitationCal, dims time/lon/lat).",
        )
    da_ = ds[layout.variable]
    for d in (layout.time, layout.lon, layout.lat):
        if d not in da_.dims:
            raise RainfallError(
                f"{name}: {layout.variable!r} has dims {da_.dims}, expected {layout.dims}.",
                hint="Write the store in the gpm-imerg-hhr layout (dims time, lon, lat).",
            )
    minx, miny, maxx, maxy = _check_bbox(bbox)
    start64, end64 = _check_window(start, end)
    lon = np.asarray(da_[layout.lon].values, dtype=np.float64)
    lat = np.asarray(da_[layout.lat].values, dtype=np.float64)
    half_x = 0.5 * (float(np.abs(np.diff(lon)).min()) if lon.size > 1 else 0.1)
    half_y = 0.5 * (float(np.abs(np.diff(lat)).min()) if lat.size > 1 else 0.1)
    ix = np.nonzero((lon + half_x > minx) & (lon - half_x < maxx))[0]
    iy = np.nonzero((lat + half_y > miny) & (lat - half_y < maxy))[0]
    if ix.size == 0 or iy.size == 0:
        raise RainfallError(
            f"{name}: bbox {bbox} is outside the precipitation grid "
            f"(lon {lon.min():g}..{lon.max():g}, lat {lat.min():g}..{lat.max():g}).",
            hint="Check the bbox is (min lon, min lat, max lon, max lat) in degrees.",
        )
    # Narrow by (inclusive) string slicing first; works for datetime64 and cftime indexes.
    s_str = str(start64.astype("datetime64[s]"))
    e_str = str(end64.astype("datetime64[s]"))
    sub = da_.isel({layout.lon: ix, layout.lat: iy}).sel({layout.time: slice(s_str, e_str)})
    t = _time_values_as_datetime64(np.asarray(sub[layout.time].values))
    keep = np.nonzero((t >= start64) & (t < end64))[0]
    if keep.size == 0:
        raise RainfallError(
            f"{name}: no precipitation data between {s_str} and {e_str}.",
            hint="Choose an event window inside the source's time range (IMERG V06 on Planetary "
            "Computer covers 2000-06-01..2021-05-31), or pass --rain-intensity/--rain-duration.",
        )
    sub = sub.isel({layout.time: keep}).assign_coords({layout.time: t[keep]})
    factor = _RATE_UNITS.get(str(sub.attrs.get("units", layout.units)))
    if factor is None:
        raise RainfallError(
            f"{name}: {layout.variable!r} has units {sub.attrs.get('units')!r}, not a precipitation rate.",
            hint="Store precipitation as mm/hr.",
        )
    rate = sub.astype(np.float32)
    rate = rate.where(rate >= 0)  # IMERG missing codes (-9999.9) and negative noise → NaN
    if factor != 1.0:
        rate = rate * np.float32(factor)
    rate = rate.transpose(layout.time, layout.lat, layout.lon).rename(
        {layout.time: "time", layout.lat: "lat", layout.lon: "lon"}
    )
    rate.name = "precipitation"
    rate.attrs = {"units": "mm/h", "long_name": "precipitation rate", "step_minutes": layout.step_minutes}
    return rate


@dataclass(frozen=True)
class ImergSource:
    """GPM IMERG half-hourly precipitation from Planetary Computer's collection-level Zarr.

    ``opener(layout) -> xr.Dataset`` does the (remote) open and is injected, so
    everything else is tested against a local store of the same layout.
    """

    layout: ImergLayout = field(default_factory=ImergLayout)
    opener: Callable[[ImergLayout], xr.Dataset] = open_imerg_remote

    @classmethod
    def from_collection(
        cls,
        collection: Mapping[str, Any] | str | os.PathLike,
        opener: Callable[[ImergLayout], xr.Dataset] | None = None,
    ) -> ImergSource:
        layout = imerg_layout(collection)
        return cls(layout=layout, opener=opener or open_imerg_remote)

    def read(self, bbox: BBox, start, end) -> xr.DataArray:
        return _subset(self.opener(self.layout), self.layout, bbox, start, end, f"IMERG {self.layout.href}")


@dataclass(frozen=True)
class LocalZarrSource:
    """Precipitation from a local Zarr store in the gpm-imerg-hhr layout."""

    path: str | os.PathLike
    layout: ImergLayout = field(default_factory=ImergLayout)

    def open(self) -> xr.Dataset:
        p = Path(self.path)
        if not p.exists():
            raise RainfallError(
                f"Precipitation store {p} does not exist.",
                hint="Generate it (e.g. the demo generator's synthetic storm) or pass --rain-intensity/--rain-duration.",
            )
        try:
            return xr.open_zarr(p, consolidated=None)
        except Exception as e:
            raise RainfallError(f"Cannot open precipitation store {p}: {e}.", hint="Rewrite the store.") from e

    def read(self, bbox: BBox, start, end) -> xr.DataArray:
        return _subset(self.open(), self.layout, bbox, start, end, f"store {self.path}")


# --------------------------------------------------------------------------- validation helpers


def _check_bbox(bbox: Sequence[float]) -> BBox:
    try:
        minx, miny, maxx, maxy = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise RainfallError(f"bbox {bbox!r} is not four numbers.", hint="Use (min lon, min lat, max lon, max lat).") from None
    if not (minx < maxx and miny < maxy and -180 <= minx and maxx <= 360 and -90 <= miny and maxy <= 90):
        raise RainfallError(
            f"bbox {bbox!r} is not a valid lon/lat box.", hint="Use (min lon, min lat, max lon, max lat) in degrees."
        )
    return minx, miny, maxx, maxy


def _check_window(start, end) -> tuple[np.datetime64, np.datetime64]:
    try:
        s = np.datetime64(start, "ns")
        e = np.datetime64(end, "ns")
    except (TypeError, ValueError):
        raise RainfallError(f"Cannot parse the event window {start!r}..{end!r}.", hint="Use ISO dates, e.g. 2021-05-01.") from None
    if not s < e:
        raise RainfallError(f"Event window start {start} is not before end {end}.", hint="Swap or widen the dates.")
    return s, e


# --------------------------------------------------------------------------- synthetic data


def _aligned_centres(lo: float, hi: float, res: float) -> np.ndarray:
    """Cell centres of a grid aligned like IMERG's (edges at multiples of ``res``) covering [lo, hi]."""
    first = np.floor(lo / res + 1e-9) * res
    n = int(np.ceil((hi - first) / res - 1e-9))
    return np.round(first + res / 2 + np.arange(max(n, 1)) * res, 10)


def make_synthetic_storm(
    bbox_lonlat: Sequence[float],
    start: str | np.datetime64,
    end: str | np.datetime64,
    seed: int = 0,
    *,
    peak_mm_h: float = 25.0,
    resolution: float | None = None,
    radius_fraction: float = 0.45,
    layout: ImergLayout | None = None,
) -> xr.Dataset:
    """A deterministic storm in the gpm-imerg-hhr layout (half-hourly, ``(time, lon, lat)``, mm/hr).

    The grid's cells tile ``bbox_lonlat`` (edges at multiples of the resolution, like IMERG); ``resolution`` defaults to
    IMERG's 0.1° or, for small boxes, a tenth of the shorter side. The storm is
    a Gaussian cell centred at a seeded point in the western or southern third
    of the box, truncated to 0 below 2 % of its peak (a wet footprint of radius
    ``radius_fraction`` x the shorter side), so the opposite side stays dry; it rains during a
    seeded sub-window (a sin² pulse lasting 30-60 % of the window) with seeded
    multiplicative noise. The same arguments always give the same dataset.
    """
    layout = layout or ImergLayout()
    minx, miny, maxx, maxy = _check_bbox(bbox_lonlat)
    s, e = _check_window(start, end)
    rng = np.random.default_rng(seed)
    side = min(maxx - minx, maxy - miny)
    res = float(resolution) if resolution else min(0.1, side / 10.0)
    lon = _aligned_centres(minx, maxx, res)
    lat = _aligned_centres(miny, maxy, res)
    step = np.timedelta64(int(layout.step_minutes * 60), "s")
    s = s.astype("datetime64[s]")
    time = np.arange(s, e.astype("datetime64[s]"), step).astype("datetime64[ns]")
    nt = time.size
    # Storm centre in the first third of the box along a seeded axis.
    u, v = rng.uniform(0.1, 0.33), rng.uniform(0.2, 0.8)
    if rng.random() < 0.5:
        cx, cy = minx + u * (maxx - minx), miny + v * (maxy - miny)
    else:
        cx, cy = minx + v * (maxx - minx), miny + u * (maxy - miny)
    radius = radius_fraction * side  # footprint where the rate is >= 2 % of the peak
    sigma = radius / np.sqrt(2.0 * np.log(50.0))
    LON, LAT = np.meshgrid(lon, lat, indexing="ij")
    spatial = np.exp(-0.5 * (((LON - cx) / sigma) ** 2 + ((LAT - cy) / sigma) ** 2))
    spatial[spatial < 0.02] = 0.0
    frac_len = rng.uniform(0.3, 0.6)
    t0 = rng.uniform(0.05, 0.95 - frac_len)
    tt = (np.arange(nt) + 0.5) / max(nt, 1)
    phase = (tt - t0) / frac_len
    temporal = np.where((phase > 0) & (phase < 1), np.sin(np.pi * np.clip(phase, 0, 1)) ** 2, 0.0)
    noise = rng.lognormal(mean=0.0, sigma=0.25, size=(nt, lon.size, lat.size))
    rate = (peak_mm_h * temporal[:, None, None] * spatial[None] * noise).astype(np.float32)
    var = xr.DataArray(
        rate,
        dims=("time", "lon", "lat"),
        coords={"time": time, "lon": lon.astype(np.float64), "lat": lat.astype(np.float64)},
        name=layout.variable,
        attrs={
            "units": layout.units,
            "Units": layout.units,
            "long_name": "synthetic precipitation rate (IMERG-like layout)",
        },
    )
    ds = var.to_dataset()
    ds["lon"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
    ds["lat"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    ds.attrs = {
        "title": "synthetic storm for slidewatch demos (not observed data)",
        "seed": int(seed),
        "storm_centre_lonlat": [float(cx), float(cy)],
        "storm_sigma_deg": float(sigma),
        "storm_radius_deg": float(radius),
        "peak_mm_h": float(peak_mm_h),
    }
    return ds


def write_precipitation_zarr(ds: xr.Dataset, path: str | os.PathLike, *, time_chunk: int = 48) -> Path:
    """Write a precipitation dataset (e.g. :func:`make_synthetic_storm`) as a local store in
    the layout of the IMERG store on Planetary Computer (Zarr format 2, consolidated metadata)."""
    path = Path(path)
    chunks = {d: (time_chunk if d == "time" else -1) for d in ds.dims}
    ds.chunk(chunks).to_zarr(path, mode="w", consolidated=True, zarr_format=2)
    return path


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
