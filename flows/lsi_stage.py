"""The LSI stage of a run: cube → factors → region ranges → LSI, contributions, classes,
quality → ``lsi_<zone>.zarr`` (tile by tile, resumable) + quick-look PNG. Wiring only."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.config import ZoneGrid
from pipeline.lsi import LsiParams, compute_factors, landslide_susceptibility, normalisation_ranges, risk_classes
from pipeline.quicklook import write_quicklook
from pipeline.store import TileStore, georeference, template, write_tiles
from flows.dask_context import compute_context, tile_concurrency
from flows.regional_run import CHUNKS_PER_TILE


#: Bumped when the LSI store's variables or attributes change, so older stores are rebuilt.
LSI_LAYOUT = 2


@dataclass(frozen=True)
class Rain:
    """The rainfall event a run is scaled by: intensity P (mm/h), duration D (days), R_m."""

    intensity_mm_h: float | None
    duration_days: float | None
    multiplier: float
    source: str


def lsi_dataset(cube: xr.Dataset, ranges: dict, params: LsiParams, rain: Rain) -> xr.Dataset:
    factors = compute_factors(cube)
    out = landslide_susceptibility(factors, ranges, params, rain.multiplier)
    ds = xr.Dataset({name: factors[name] for name in ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi")})
    ds["quality"] = factors["quality"]
    for name, var in out.data_vars.items():
        ds[name] = var
    ds["risk_class"] = risk_classes(out["lsi"])
    return ds


def write_lsi(
    cube_path: Path, grid: ZoneGrid, params: LsiParams, rain: Rain, *, overwrite: bool = False,
    on_event: Callable[[str, dict], None] | None = None,
) -> Path:
    """Write the zone's LSI store next to its cube; reuse it when inputs are unchanged.

    The LSI store is derived (cheap next to the cube): when the cube, parameters or rain
    differ from the finished store's, it is recomputed and replaced. ``overwrite`` forces a
    recompute even when nothing changed.
    """
    emit = on_event or (lambda kind, info: None)
    cube = xr.open_zarr(cube_path, decode_coords="all")
    fingerprint = json.dumps({"cube": cube.attrs.get("slidewatch_fingerprint"), "params": params.__dict__,
                              "rain": rain.__dict__, "layout": LSI_LAYOUT}, sort_keys=True, default=str)
    import hashlib

    store = TileStore(cube_path.with_name(f"lsi_{grid.zone_name}.zarr"), hashlib.sha256(fingerprint.encode()).hexdigest()[:16])
    if store.is_complete() and not overwrite:
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return store.path
    factors = compute_factors(cube)
    with compute_context():
        ranges = normalisation_ranges(factors)
    ds = lsi_dataset(cube, ranges, params, rain)
    variables = {name: str(v.dtype) for name, v in ds.data_vars.items()}
    attrs = {name: dict(v.attrs) for name, v in ds.data_vars.items()}
    tmpl = template(grid, variables, attrs)
    store.acquire()
    try:
        store.prepare(tmpl, {
            "title": f"slidewatch LSI: {cube.attrs.get('region')} ({grid.zone_name})",
            "Conventions": "CF-1.8",
            "slidewatch_version": __version__,
            "cube": str(cube_path),
            "region": cube.attrs.get("region"),
            "time_start": cube.attrs.get("time_start"),
            "time_end": cube.attrs.get("time_end"),
            "input_items": cube.attrs.get("input_items"),
            "normalisation_ranges": ranges,
            "lsi_params": params.__dict__,
            "rain_intensity_mm_h": rain.intensity_mm_h,
            "rain_duration_days": rain.duration_days,
            "rain_multiplier": rain.multiplier,
            "rain_source": rain.source,
        }, overwrite=True)  # a derived store: replaced when its inputs (cube, params, rain) change
        tiles = grid.tiles(CHUNKS_PER_TILE)
        emit("tiles", {"zone": f"{grid.zone_name} LSI", "stage": "LSI", "total": len(tiles), "done": len(store.done())})

        def tile_ds(t):  # type: ignore[no-untyped-def]
            return ds.isel(y=slice(t.row0, t.row1), x=slice(t.col0, t.col1))

        with compute_context():
            write_tiles(store, grid, tiles, tile_ds, concurrency=tile_concurrency(),
                        on_tile=lambda t, s: emit("tile", {"zone": f"{grid.zone_name} LSI", "tile": t.key, "skipped": s}))
        path = store.finalize()
    finally:
        store.release()
    emit("written", {"zone": f"{grid.zone_name} LSI", "stage": "LSI", "path": str(path)})
    return path


def write_lsi_quicklook(lsi_path: Path) -> Path:
    ds = xr.open_zarr(lsi_path)
    return write_quicklook(ds["lsi"], lsi_path.with_suffix(".png"), classes=ds["risk_class"],
                           title=f"Landslide susceptibility, {ds.attrs.get('region')}")


def lsi_score(lsi_path: Path) -> xr.DataArray:
    """R_m · Σ wᵢxᵢ from the stored contributions (what calibration fits)."""
    ds = xr.open_zarr(lsi_path)
    contrib = sum(ds[v] for v in ds.data_vars if str(v).startswith("contrib_"))
    return (contrib * float(ds.attrs.get("rain_multiplier", 1.0))).astype(np.float32)
