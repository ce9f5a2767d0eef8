"""Shared helpers for the factor/LSI tests: fixture paths and small seeded synthetic cubes."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def fixture_path(*parts: str) -> Path:
    """Path under the shared fixtures, or skip the test with a clear reason."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared fixture {p} is absent (expected under {FIXTURES})")
    return p


def grid_coords(ny: int, nx: int, res: float = 10.0, x0: float = 500_000.0, y0: float = 5_000_000.0):
    x = x0 + res / 2 + np.arange(nx) * res
    y = y0 - res / 2 - np.arange(ny) * res
    return {"y": y, "x": x}


def synthetic_cube(ny: int = 96, nx: int = 80, seed: int = 0, chunks: int | tuple = 32) -> xr.Dataset:
    """A small seeded cube in the cube contract: S2 bands 0..1, S1 dB, dry/wet refs, DEM (m)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    coords = grid_coords(ny, nx)

    def mk(a: np.ndarray) -> xr.DataArray:
        return xr.DataArray(da.from_array(a.astype(np.float32), chunks=chunks), dims=("y", "x"), coords=coords)

    dem = 800 + 150 * np.sin(xx / 9.0) + 90 * np.cos(yy / 13.0) + rng.normal(0, 0.5, (ny, nx))
    ds = xr.Dataset({"dem": mk(dem)})
    for band, (lo, hi) in {"B02": (0.02, 0.1), "B03": (0.03, 0.15), "B04": (0.02, 0.2), "B08": (0.1, 0.5), "B11": (0.05, 0.35), "B12": (0.03, 0.25)}.items():
        ds[band] = mk(rng.uniform(lo, hi, (ny, nx)))
    ds["vv_dry"] = mk(np.full((ny, nx), -16.0) + rng.normal(0, 0.3, (ny, nx)))
    ds["vv_wet"] = mk(np.full((ny, nx), -7.0) + rng.normal(0, 0.3, (ny, nx)))
    vv = rng.uniform(-17, -6, (ny, nx))
    vv[:, : nx // 4] = np.nan  # no S1 on the western quarter → NDMI proxy there
    ds["vv"] = mk(vv)
    ds["vh"] = mk(vv - 6)
    return ds
