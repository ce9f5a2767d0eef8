"""The regional run: plan → search → lazy cube → tile-by-tile Zarr write. Wiring only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import dask  # noqa: F401

from flows.dask_context import compute_context
import xarray as xr

from pipeline import __version__
from pipeline.catalog import RunInputs, StacApiSource, ItemSource, save_items, search_inputs, sign_for_read, unsign_item
from pipeline.collections import COP_DEM, SENTINEL2
from pipeline.config import DEFAULT_CHUNK, CubeConfig, RunSpec, Tile, TimeWindow, ZoneGrid
from pipeline.cube import VARIABLE_ATTRS, build_cube, cube_variables
from pipeline.errors import NoValidDataError
from pipeline.grid import plan_grids
from pipeline.plan import ZonePlan, estimate_bytes, graph_tasks
from pipeline.regions import Region
from pipeline.store import TileStore, blank, template, write_tiles

log = logging.getLogger(__name__)

#: Chunks per write tile edge: a tile is (CHUNKS_PER_TILE × chunk)² pixels.
CHUNKS_PER_TILE = 2


@dataclass
class ZoneResult:
    grid: ZoneGrid
    cube_path: Path
    reused: bool
    inputs: RunInputs
    lsi_path: Path | None = None


@dataclass
class RunResult:
    run_dir: Path
    zones: list[ZoneResult] = field(default_factory=list)
    plans: list[ZonePlan] = field(default_factory=list)


def run_dir_for(out: Path, region: Region, window: TimeWindow) -> Path:
    return out / region.slug / f"{window.start:%Y%m%d}_{window.end:%Y%m%d}"


def plan_zone(inputs: RunInputs, grid: ZoneGrid, config: CubeConfig) -> ZonePlan:
    """Items, bytes and dask tasks of one zone, without reading pixels."""
    cube = build_cube(inputs, grid, config.s2_bands)
    nbytes = estimate_bytes(inputs.s2, [*config.s2_bands, "SCL"], grid, [2] * (len(config.s2_bands) + 1))
    nbytes += estimate_bytes(inputs.s1_history, ["vv", "vh"], grid, [4, 4])
    nbytes += estimate_bytes(inputs.dem, ["data"], grid, [4])
    return ZonePlan(grid=grid, items=inputs.counts(), bytes_read=nbytes, tasks=graph_tasks(cube), notes=list(inputs.notes))


def regional_run(
    region: Region,
    window: TimeWindow,
    stac_url: str,
    out: Path,
    config: CubeConfig = CubeConfig(),
    *,
    source: ItemSource | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    on_event: Callable[[str, dict], None] | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> RunResult:
    """Run a region end to end; ``on_event(kind, info)`` reports progress to the caller."""
    emit = on_event or (lambda kind, info: None)
    grids = plan_grids(region, chunk=chunk)
    src = source or StacApiSource.open(stac_url)
    run_dir = run_dir_for(out, region, window)
    result = RunResult(run_dir=run_dir)
    for grid in grids:
        emit("search", {"zone": grid.zone_name})
        inputs = search_inputs(src, grid.lonlat_bounds, window, config)
        emit("searched", {"zone": grid.zone_name, "counts": inputs.counts(), "notes": inputs.notes})
        if dry_run:
            result.plans.append(plan_zone(inputs, grid, config))
            continue
        result.zones.append(_write_zone(region, window, stac_url, run_dir, grid, inputs, config, overwrite, emit))
    return result


def _write_zone(
    region: Region, window: TimeWindow, stac_url: str, run_dir: Path, grid: ZoneGrid,
    inputs: RunInputs, config: CubeConfig, overwrite: bool, emit: Callable[[str, dict], None],
) -> ZoneResult:
    spec = RunSpec(region=region.name, window=window, stac_url=stac_url, cube=config)
    fingerprint = spec.fingerprint(extra={"grid": grid.__dict__, "items": inputs.ids()})
    store = TileStore(run_dir / f"cube_{grid.zone_name}.zarr", fingerprint)
    if store.is_complete() and not overwrite:
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return ZoneResult(grid, store.path, True, inputs)
    items_dir = run_dir / "items" / grid.zone_name
    save_items(inputs.s2, items_dir / f"{SENTINEL2}.json")
    save_items(inputs.s1_history, items_dir / f"{inputs.s1_collection}.json")
    save_items(inputs.dem, items_dir / f"{COP_DEM}.json")
    store.acquire()
    try:
        variables = cube_variables(config.s2_bands)
        tmpl = template(grid, variables, VARIABLE_ATTRS)
        store.prepare(tmpl, _provenance(region, window, stac_url, grid, inputs, config), overwrite=overwrite)
        tiles = grid.tiles(CHUNKS_PER_TILE)
        emit("tiles", {"zone": grid.zone_name, "total": len(tiles), "done": len(store.done())})

        def tile_dataset(tile: Tile) -> xr.Dataset:
            sub = grid.subgrid(tile)
            signed = RunInputs(
                s2=_intersecting(sign_for_read(inputs.s2, stac_url), sub),
                s1=_intersecting(sign_for_read(inputs.s1, stac_url), sub),
                s1_history=_intersecting(sign_for_read(inputs.s1_history, stac_url), sub),
                dem=_intersecting(sign_for_read(inputs.dem, stac_url), sub),
                s1_collection=inputs.s1_collection,
            )
            if not signed.s2 or not signed.dem:
                return blank(sub, variables)
            return build_cube(signed, sub, config.s2_bands)

        with compute_context():
            write_tiles(store, grid, tiles, tile_dataset,
                        on_tile=lambda t, skipped: emit("tile", {"zone": grid.zone_name, "tile": t.key, "skipped": skipped}))
        valid = int(xr.open_zarr(str(store.partial), consolidated=False)["s2_valid_count"].astype("int64").sum().compute())
        if valid == 0:
            raise NoValidDataError(
                f"No cloud-free Sentinel-2 pixel in zone {grid.zone_name} between {window.start} and {window.end}.",
                "widen the time window or raise --max-cloud; the partial store was kept but not marked complete.",
            )
        path = store.finalize({"completed": datetime.now(timezone.utc).isoformat()})
    finally:
        store.release()
    emit("written", {"zone": grid.zone_name, "path": str(path)})
    return ZoneResult(grid, path, False, inputs)


def _intersecting(items: list, grid: ZoneGrid) -> list:
    """Items whose bbox intersects the grid's lon/lat footprint."""
    from pyproj import Transformer

    w, s, e, n = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform_bounds(*grid.bounds, densify_pts=11)
    out = []
    for it in items:
        if it.bbox is None:
            out.append(it)
            continue
        iw, is_, ie, in_ = it.bbox
        if iw <= e and ie >= w and is_ <= n and in_ >= s:
            out.append(it)
    return out


def _provenance(region: Region, window: TimeWindow, stac_url: str, grid: ZoneGrid, inputs: RunInputs, config: CubeConfig) -> dict:
    return {
        "title": f"slidewatch cube: {region.name} {window.start}..{window.end} ({grid.zone_name})",
        "Conventions": "CF-1.8",
        "institution": "slidewatch",
        "source": "Sentinel-2 L2A, Sentinel-1 RTC, Copernicus DEM GLO-30 via STAC",
        "history": f"{datetime.now(timezone.utc).isoformat()} slidewatch {__version__} run",
        "slidewatch_version": __version__,
        "region": region.name,
        "region_bbox": list(region.bbox),
        "time_start": window.start.isoformat(),
        "time_end": window.end.isoformat(),
        "stac_url": stac_url,
        "query": {"datetime": window.stac_datetime(), "bbox": list(grid.lonlat_bounds), "max_cloud_cover": config.max_cloud_cover},
        "cube_config": config.as_dict(),
        "epsg": grid.epsg,
        "s1_collection": inputs.s1_collection,
        "input_items": inputs.ids(),
        "notes": inputs.notes,
    }
