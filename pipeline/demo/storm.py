"""A synthetic storm for the demo region and the tests: an IMERG-shaped precipitation
dataset, and the local Zarr layout :class:`pipeline.rain.sources.LocalZarrSource` reads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.rain.sources import ImergLayout, check_bbox, check_window

__all__ = ["make_synthetic_storm", "write_precipitation_zarr"]


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
    minx, miny, maxx, maxy = check_bbox(bbox_lonlat)
    s, e = check_window(start, end)
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
