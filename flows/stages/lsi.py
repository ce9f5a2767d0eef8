"""The LSI stage: cube → factors → region ranges → LSI, contributions, classes, quality →
``lsi_<zone>.zarr`` (tile by tile, resumable) + quick-look PNG. Wiring only."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import xarray as xr

from pipeline import __version__
from pipeline.core.config import CHUNKS_PER_TILE, ZoneGrid
from pipeline.core.layout import RunLayout, zarr_metadata_file
from pipeline.core.provenance import Rain, RunProvenance
from pipeline.factors.layers import compute_factors
from pipeline.factors.mask import inside_geometry
from pipeline.factors.lsi import LsiParams, lsi_attrs, lsi_dataset, lsi_fingerprint
from pipeline.factors.ranges import normalisation_ranges
from pipeline.products.quicklook import write_quicklook
from pipeline.store.tiles import GenerationGuard, TileStore, template, write_tiles

from flows.dask_context import compute_context, tile_concurrency


def write_lsi(
    cube_path: Path, grid: ZoneGrid, params: LsiParams, rain: Rain | None, *, provenance: RunProvenance | None = None,
    ranges: Callable[[], dict] | None = None, region_cubes: list[str] | None = None, calibration: str | None = None,
    geometry: str | None = None,
    overwrite: bool = False, on_event: Callable[[str, dict], None] | None = None,
) -> Path:
    """Write the zone's LSI store next to its cube; reuse it when inputs are unchanged.

    The LSI store is derived (cheap next to the cube): when the cube, parameters or rain
    differ from the finished store's, it is recomputed and replaced. ``overwrite`` forces a
    recompute even when nothing changed. ``provenance`` (the run's region, window and
    items) defaults to the cube store's. ``ranges`` gives the region's normalisation ranges
    (called only when the store is written; default: this cube's own), and
    ``region_cubes`` the fingerprints of every zone's cube they come from, which key the store.
    ``geometry`` (a GeoJSON region's polygon, lon/lat JSON) masks the pixels outside it.
    ``rain=None`` (the default, ``decoupled`` hazard mode) writes the rain-free LSI (R_m = 1)
    and records no rain: the store is then the same whatever the event; a ``Rain`` scales
    the LSI by its R_m as the source paper does (``paper`` mode).
    """
    emit = on_event or (lambda kind, info: None)
    source = GenerationGuard(cube_path)  # checked after every tile: the cube must not change under us
    cube = xr.open_zarr(cube_path, decode_coords="all")
    path = RunLayout(cube_path.parent).lsi(grid.zone_name)
    store = TileStore(path, lsi_fingerprint(cube.attrs.get("slidewatch_fingerprint"), params, rain, region_cubes, geometry))
    if store.is_complete() and not overwrite:
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return store.path
    inside = inside_geometry(json.loads(geometry), grid) if geometry is not None else None
    with compute_context():
        region_ranges = ranges() if ranges is not None else normalisation_ranges(factors_inside(cube, inside))
    ds = lsi_dataset(cube, region_ranges, params, rain.multiplier if rain is not None else 1.0, inside)
    variables = {name: str(v.dtype) for name, v in ds.data_vars.items()}
    attrs = {name: dict(v.attrs) for name, v in ds.data_vars.items()}
    prov = replace(provenance or RunProvenance.from_attrs(cube.attrs), rain=rain)
    store.acquire()
    try:
        # a derived store: replaced when its inputs (cube, params, rain) change
        store.prepare(template(grid, variables, attrs),
                      {**lsi_attrs(prov, grid.zone_name, str(cube_path), region_ranges, params, __version__, calibration),
                       "hazard_mode": "decoupled" if rain is None else "paper"}, overwrite=True)
        tiles = grid.tiles(CHUNKS_PER_TILE)
        emit("tiles", {"zone": f"{grid.zone_name} LSI", "stage": "LSI", "total": len(tiles), "done": len(store.done())})

        def tile_ds(t):  # type: ignore[no-untyped-def]
            return ds.isel(y=slice(t.row0, t.row1), x=slice(t.col0, t.col1))

        with compute_context():
            write_tiles(store, grid, tiles, tile_ds, concurrency=tile_concurrency(), verify=source.check,
                        on_tile=lambda t, s: emit("tile", {"zone": f"{grid.zone_name} LSI", "tile": t.key, "skipped": s}))
        path = store.finalize()
    finally:
        store.release()
    emit("written", {"zone": f"{grid.zone_name} LSI", "stage": "LSI", "path": str(path)})
    return path


def factors_inside(cube: xr.Dataset, inside: xr.DataArray | None) -> xr.Dataset:
    """The cube's factors, NaN outside the region's polygon (what its ranges are taken from)."""
    factors = compute_factors(cube)
    return factors if inside is None else factors.where(inside)


def write_lsi_quicklook(lsi_path: Path) -> Path:
    """The LSI store's quick-look PNG beside it (LSI and classes); kept when it is newer
    than the store (a reused store leaves its files as they were)."""
    png = lsi_path.with_suffix(".png")
    meta = zarr_metadata_file(lsi_path)
    if png.is_file() and meta.is_file() and png.stat().st_mtime_ns >= meta.stat().st_mtime_ns:
        return png
    ds = xr.open_zarr(lsi_path)
    return write_quicklook(ds["lsi"], lsi_path.with_suffix(".png"), classes=ds["risk_class"],
                           title=f"Landslide susceptibility, {ds.attrs.get('region')}")
