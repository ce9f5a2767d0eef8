"""The regional run: plan → search → lazy cube → tile-by-tile Zarr write. Wiring only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import xarray as xr

from pipeline import __version__
from pipeline.catalog import (
    ItemSource,
    RunInputs,
    StacApiSource,
    install_log_redaction,
    redact,
    refresh_signatures,
    save_items,
    search_inputs,
    sign_for_read,
    unsign_item,
)
from pipeline.collections import COP_DEM, SENTINEL1_GRD, SENTINEL2
from pipeline.config import DEFAULT_CHUNK, CubeConfig, RunSpec, Tile, TimeWindow, ZoneGrid
from pipeline.cube import VARIABLE_ATTRS, build_cube, cube_variables
from pipeline.errors import CatalogError, InputDataError, NoValidDataError, SlidewatchError, StoreError
from pipeline.gdal_settings import ReadFailure, clear_http_cache, read_failure
from pipeline.grid import plan_grids
from pipeline.plan import ZonePlan, estimate_bytes, graph_tasks
from pipeline.regions import Region
from pipeline import store as _store
from pipeline.store import TileStore, blank, template, write_tiles

from flows.dask_context import active_client, compute_context, tile_concurrency

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
    """``OUT/<region slug>/<start>_<end>`` as an absolute path; refuses (StoreError) any run
    folder that would resolve outside ``out`` (odd region names, symlinks under ``out``)."""
    root = Path(out).expanduser().resolve()
    run_dir = root / region.slug / f"{window.start:%Y%m%d}_{window.end:%Y%m%d}"
    resolved = run_dir.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise StoreError(
            f"The run folder of region {region.name!r} resolves to {resolved}, outside the output root {root}.",
            "give the region (or its GeoJSON file) a plain name, and remove symlinks under --out that point elsewhere.",
        )
    return run_dir


def plan_zone(inputs: RunInputs, grid: ZoneGrid, config: CubeConfig) -> ZonePlan:
    """Items, bytes and dask tasks of one zone, without reading pixels."""
    cube = build_cube(inputs, grid, config.s2_bands)
    nbytes = estimate_bytes(inputs.s2, [*config.s2_bands, "SCL"], grid, [2] * (len(config.s2_bands) + 1))
    s1_px = 2 if inputs.s1_collection == SENTINEL1_GRD else 4  # GRD DN are uint16, RTC gamma0 float32
    nbytes += estimate_bytes(inputs.s1_history, ["vv", "vh"], grid, [s1_px, s1_px])
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
    for it in inputs.all_items():
        _item_bbox(it)  # a malformed bbox fails here, not as "no data" later
    install_log_redaction()  # signed URLs and keys never reach the logs
    store.acquire()  # before writing anything: a second run must not touch this run's files
    if store.is_complete() and not overwrite:  # another run finished it while we were searching
        store.release()
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return ZoneResult(grid, store.path, True, inputs)
    try:
        variables = cube_variables(config.s2_bands)
        tmpl = template(grid, variables, VARIABLE_ATTRS)
        # refuses to replace a finished store made from other inputs before anything is written
        store.prepare(tmpl, _provenance(region, window, stac_url, grid, inputs, config), overwrite=overwrite)
        items_dir = run_dir / "items" / grid.zone_name
        try:
            save_items(inputs.s2, items_dir / f"{SENTINEL2}.json")
            save_items(inputs.s1_history, items_dir / f"{inputs.s1_collection}.json")
            save_items(inputs.dem, items_dir / f"{COP_DEM}.json")
        except OSError as exc:
            raise StoreError(f"Cannot save the run's items under {items_dir}: {exc.strerror or exc}.",
                             "choose a writable --out.") from None
        tiles = grid.tiles(CHUNKS_PER_TILE)
        emit("tiles", {"zone": grid.zone_name, "total": len(tiles), "done": len(store.done())})
        current: dict[str, object] = {"tile": None, "attempts": 1}

        def tile_dataset(tile: Tile) -> xr.Dataset:
            if current["tile"] != tile:
                current.update(tile=tile, attempts=1)
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

        def retry_if(exc: BaseException) -> bool:
            failure = read_failure(exc)
            return failure is not None and failure.transient

        def on_retry(tile: Tile, attempt: int, exc: BaseException) -> None:
            failure = read_failure(exc)
            if failure is not None and failure.expired:
                refresh_signatures(stac_url)  # a 403 from storage: usually an expired SAS token
            clear_http_cache()  # GDAL remembers failed URLs; make it ask again ...
            client = active_client()
            if client is not None:  # ... in the dask workers' processes too
                try:
                    client.run(clear_http_cache)  # type: ignore[attr-defined]
                except Exception as err:  # noqa: BLE001 - best effort; the retry still happens
                    log.debug("could not clear the workers' GDAL cache: %s", err)
            current["attempts"] = attempt + 1
            reason = redact(str(failure.reason if failure else exc))
            log.warning("zone %s tile %s: read failed (%s); retry %d of %d",
                        grid.zone_name, tile.key, reason, attempt, _store.TILE_RETRIES)
            emit("retry", {"zone": grid.zone_name, "tile": tile.key, "attempt": attempt, "reason": reason})

        with compute_context():
            try:
                write_tiles(store, grid, tiles, tile_dataset, retry_if=retry_if, on_retry=on_retry,
                            concurrency=tile_concurrency(),
                            on_tile=lambda t, skipped: emit("tile", {"zone": grid.zone_name, "tile": t.key, "skipped": skipped}))
            except SlidewatchError:
                raise
            except Exception as exc:
                failure = read_failure(exc)
                if failure is None:
                    raise
                tile = getattr(exc, "slidewatch_tile", current["tile"])
                attempts = getattr(exc, "slidewatch_attempts", current["attempts"])
                raise _read_error(failure, grid, getattr(tile, "key", "?"), int(attempts),  # type: ignore[call-overload]
                                  len(store.done()), len(tiles)) from None
        _check_has_data(store, grid, window, config, inputs)
        path = store.finalize({"completed": datetime.now(timezone.utc).isoformat()})
    finally:
        store.release()
    emit("written", {"zone": grid.zone_name, "path": str(path)})
    return ZoneResult(grid, path, False, inputs)


def _read_error(failure: ReadFailure, grid: ZoneGrid, tile: str, attempts: int, done: int, total: int) -> SlidewatchError:
    """The SlidewatchError for a read that failed for good (tokens and secrets redacted)."""
    url = redact(failure.url) if failure.url else "an input asset"
    reason = redact(failure.reason)
    where = f"tile {tile} of zone {grid.zone_name}; {done} of {total} tiles are written and kept"
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    resume = "then rerun the same command: finished tiles are kept and only the missing ones are read."
    if not failure.remote:
        return InputDataError(
            f"Cannot read {url}: {reason} ({where}).",
            f"the file is missing, corrupt or truncated: restore or regenerate it (check it with `rio info`), {resume}",
        )
    if failure.status == 403:
        hint = ("storage refused the URL even freshly signed: check your access (PC_SDK_SUBSCRIPTION_KEY) and the "
                f"system clock, {resume}")
    elif failure.status in (404, 410):
        hint = f"the asset is gone from the catalog's storage: report it to the catalog or exclude the item, {resume}"
    else:
        hint = ("check your network, or raise SLIDEWATCH_GDAL_HTTP_TIMEOUT / SLIDEWATCH_GDAL_HTTP_MAX_RETRY for a "
                f"slow or flaky link, {resume}")
    status = f"HTTP {failure.status}: " if failure.status and str(failure.status) not in reason else ""
    return CatalogError(f"Reading {url} failed after {tries} ({status}{reason}) for {where}.", hint)


def _check_has_data(store: TileStore, grid: ZoneGrid, window: TimeWindow, config: CubeConfig, inputs: RunInputs) -> None:
    """Refuse to mark complete a cube whose S2 composite or DEM is empty everywhere."""
    kept = "the partial store was kept but not marked complete."
    if not store.has_data("s2_valid_count"):
        raise NoValidDataError(
            f"No cloud-free Sentinel-2 pixel in zone {grid.zone_name} between {window.start} and {window.end}.",
            f"widen the time window or raise --max-cloud; {kept}",
        )
    empty = [b for b in config.s2_bands if not store.has_data(b)]
    if empty:
        raise NoValidDataError(
            f"Sentinel-2 band(s) {empty} have no valid pixel in zone {grid.zone_name}, although "
            f"{len(inputs.s2)} scene(s) have cloud-free pixels there: their assets hold only nodata.",
            f"check those assets (e.g. `rio info --stats`) or use another time window; {kept}",
        )
    if not store.has_data("dem"):
        raise NoValidDataError(
            f"The Copernicus DEM ({COP_DEM}, {len(inputs.dem)} tile(s)) gives no elevation in zone {grid.zone_name}: "
            "every pixel is nodata.",
            f"check that the DEM items cover the region and their assets hold elevations; {kept}",
        )


def _item_bbox(item) -> tuple[float, float, float, float] | None:  # type: ignore[no-untyped-def]
    """An item's lon/lat bbox (2D), None when it has none; InputDataError when malformed."""
    bbox = item.bbox
    if bbox is None:
        return None
    vals = list(bbox)
    if len(vals) == 6:  # 3D: west, south, min z, east, north, max z
        vals = [vals[0], vals[1], vals[3], vals[4]]
    ok = len(vals) == 4
    try:
        w, s, e, n = (float(v) for v in vals) if ok else (0.0, 0.0, 0.0, 0.0)
    except (TypeError, ValueError):
        ok = False
    ok = ok and all(abs(v) < float("inf") for v in (w, s, e, n))
    ok = ok and -180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90
    if not ok:
        raise InputDataError(
            f"{item.collection_id} item {item.id!r} has an invalid bbox {bbox!r}.",
            "fix the item's bbox (west, south, east, north in degrees) in the catalog, or drop the item.",
        )
    return (w, s, e, n)


def _intersecting(items: list, grid: ZoneGrid) -> list:
    """Items whose bbox intersects the grid's lon/lat footprint (items without one are kept;
    a bbox with west > east crosses the antimeridian)."""
    from pyproj import Transformer

    w, s, e, n = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform_bounds(*grid.bounds, densify_pts=11)
    out = []
    for it in items:
        box = _item_bbox(it)
        if box is None:
            out.append(it)
            continue
        iw, is_, ie, in_ = box
        lon_ok = (iw <= e and ie >= w) if iw <= ie else (iw <= e or ie >= w)
        if lon_ok and is_ <= n and in_ >= s:
            out.append(it)
    return out


def _provenance(region: Region, window: TimeWindow, stac_url: str, grid: ZoneGrid, inputs: RunInputs, config: CubeConfig) -> dict:
    s1 = "Sentinel-1 GRD (uncalibrated, geocoded)" if inputs.s1_collection == SENTINEL1_GRD else "Sentinel-1 RTC"
    return {
        "title": f"slidewatch cube: {region.name} {window.start}..{window.end} ({grid.zone_name})",
        "Conventions": "CF-1.8",
        "institution": "slidewatch",
        "source": f"Sentinel-2 L2A, {s1}, Copernicus DEM GLO-30 via STAC",
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
