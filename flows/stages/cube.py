"""The cube stage: plan → search → lazy cube → tile-by-tile Zarr write, per UTM zone. Wiring only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import xarray as xr

from pipeline.acquire.catalog import ItemSource, RunInputs, StacApiSource, search_inputs
from pipeline.acquire.items import item_bbox, save_items
from pipeline.acquire.cube import (
    VARIABLE_ATTRS,
    build_cube,
    check_cube_has_data,
    cube_attrs,
    cube_variables,
    is_transient_read,
    prepare_read_retry,
    tile_inputs,
    zone_plan,
)
from pipeline.acquire.gdal import clear_http_cache
from pipeline.acquire.failures import ReadRetryBudget, read_error, read_failure
from pipeline.core.collections import COP_DEM, SENTINEL2
from pipeline.core.config import CHUNKS_PER_TILE, DEFAULT_CHUNK, CubeConfig, RunSpec, Tile, TimeWindow, ZoneGrid
from pipeline.core.errors import CatalogError, EmptySearchError, NoValidDataError, SlidewatchError, StoreError
from pipeline.core.layout import RunLayout, run_dir_for
from pipeline.factors.lsi import lsi_stage_tasks
from pipeline.core.provenance import RunProvenance
from pipeline.core.secrets import install_log_redaction, unsigned_href
from pipeline.plan.estimate import ZonePlan
from pipeline.plan.grid import plan_grids
from pipeline.plan.regions import Region
from pipeline.store import tiles as _store
from pipeline.store.tiles import TileStore, blank, template, write_tiles

from flows.dask_context import active_client, compute_context, tile_concurrency

log = logging.getLogger(__name__)

Event = Callable[[str, dict], None]


@dataclass
class ZoneResult:
    grid: ZoneGrid
    cube_path: Path
    reused: bool
    inputs: RunInputs
    lsi_path: Path | None = None


@dataclass
class RunResult:
    """A run's folder, zones and (dry run) plans, and the provenance later stages carry on."""

    run_dir: Path
    zones: list[ZoneResult] = field(default_factory=list)
    plans: list[ZonePlan] = field(default_factory=list)
    provenance: RunProvenance | None = None
    #: Zones left out because they have no scenes or no valid pixel, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)
    #: The region the run maps (its polygon masks the LSI and risk stores).
    region: Region | None = None

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)


def _quiet(kind: str, info: dict) -> None:
    return None


def cube_stage(
    region: Region,
    window: TimeWindow,
    stac_url: str,
    out: Path,
    config: CubeConfig = CubeConfig(),
    *,
    source: ItemSource | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    on_event: Event | None = None,
    chunk: int | None = None,
) -> RunResult:
    """Search and write (or reuse) the cube of every UTM zone of the region; ``on_event(kind,
    info)`` reports progress to the caller."""
    emit = on_event or _quiet
    grids = plan_grids(region, chunk=chunk or DEFAULT_CHUNK)
    run_dir = run_dir_for(out, region.slug, window.start, window.end, name=region.name)  # a bad --out fails first
    try:
        src = source or StacApiSource.open(stac_url)
    except CatalogError as exc:
        if not dry_run:
            raise
        # the grid plan needs no catalog: show it, and say what needs the STAC API
        return RunResult(run_dir=run_dir, plans=[_offline_plan(g, config, str(exc)) for g in grids])
    result = RunResult(run_dir=run_dir, provenance=RunProvenance.for_run(region.name, region.bbox, window), region=region)
    first_error: SlidewatchError | None = None
    for grid in grids:
        emit("search", {"zone": grid.zone_name})
        try:
            inputs = search_inputs(src, grid.lonlat_bounds, window, config)
            emit("searched", {"zone": grid.zone_name, "counts": inputs.counts(), "notes": inputs.notes})
            if dry_run:
                result.plans.append(zone_plan(inputs, grid, config))
                continue
            result.zones.append(_write_zone(result, region, window, stac_url, grid, inputs, config, overwrite, emit))
        except (EmptySearchError, NoValidDataError) as exc:
            if len(grids) == 1:
                raise
            # one zone of several without scenes: the region goes on with the others
            first_error = first_error or exc
            result.skipped[grid.zone_name] = str(exc)
            emit("zone-skipped", {"zone": grid.zone_name, "reason": str(exc)})
    if first_error is not None and not (result.zones or result.plans):
        raise first_error  # no zone of the region has data
    return result


def _offline_plan(grid: ZoneGrid, config: CubeConfig, reason: str) -> ZonePlan:
    return ZonePlan(grid=grid, items={}, bytes_read=0, offline=reason,
                    tasks=lsi_stage_tasks(grid.shape, grid.chunk, config.s2_bands, grid.resolution))


def _write_zone(
    result: RunResult, region: Region, window: TimeWindow, stac_url: str, grid: ZoneGrid,
    inputs: RunInputs, config: CubeConfig, overwrite: bool, emit: Event,
) -> ZoneResult:
    spec = RunSpec(region=region.name, window=window, stac_url=unsigned_href(stac_url), cube=config)
    fingerprint = spec.fingerprint(extra={"grid": grid.__dict__, "items": inputs.ids()})
    layout = result.layout
    store = TileStore(layout.cube(grid.zone_name), fingerprint)
    if store.is_complete() and not overwrite:
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return ZoneResult(grid, store.path, True, inputs)
    for it in inputs.all_items():
        item_bbox(it)  # a malformed bbox fails here, not as "no data" later
    install_log_redaction()  # signed URLs and keys never reach the logs
    store.acquire()  # before writing anything: a second run must not touch this run's files
    if store.is_complete() and not overwrite:  # another run finished it while we were searching
        store.release()
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return ZoneResult(grid, store.path, True, inputs)
    try:
        variables = cube_variables(config.s2_bands)
        prov = RunProvenance.for_run(region.name, region.bbox, window, inputs.ids())
        # refuses to replace a finished store made from other inputs before anything is written
        store.prepare(template(grid, variables, VARIABLE_ATTRS),
                      cube_attrs(prov, window, stac_url, grid, inputs, config), overwrite=overwrite)
        items_dir = layout.items(grid.zone_name)
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
            signed = tile_inputs(inputs, stac_url, sub)
            if not signed.s2 or not signed.dem:
                return blank(sub, variables)
            return build_cube(signed, sub, config.s2_bands)

        budget = ReadRetryBudget()  # SLIDEWATCH_READ_RETRY_SECONDS per tile; a 403 is re-signed once

        def on_retry(tile: Tile, attempt: int, exc: BaseException) -> None:
            pause = min(_store.TILE_RETRY_DELAY_S * 2 ** (attempt - 1), getattr(_store, "TILE_RETRY_MAX_DELAY_S", 60.0))
            if budget.stop(read_failure(exc), tile.key, pause) is not None:
                exc.slidewatch_retried_s = budget.elapsed_s(tile.key)  # type: ignore[attr-defined]
                exc.slidewatch_stopped_after = attempt  # type: ignore[attr-defined]  # (tenacity counts one ahead here)
                raise exc  # no further attempt; reported as the read error below
            reason = prepare_read_retry(exc, stac_url)
            client = active_client()
            if client is not None:  # the dask workers' GDAL caches too
                try:
                    client.run(clear_http_cache)  # type: ignore[attr-defined]
                except Exception as err:  # noqa: BLE001 - best effort; the retry still happens
                    log.debug("could not clear the workers' GDAL cache: %s", err)
            current["attempts"] = attempt + 1
            log.warning("zone %s tile %s: read failed (%s); retry %d of %d",
                        grid.zone_name, tile.key, reason, attempt, _store.TILE_RETRIES)
            emit("retry", {"zone": grid.zone_name, "tile": tile.key, "attempt": attempt, "reason": reason})

        with compute_context():
            try:
                write_tiles(store, grid, tiles, tile_dataset, retry_if=is_transient_read, on_retry=on_retry,
                            concurrency=tile_concurrency(),
                            on_tile=lambda t, skipped: emit("tile", {"zone": grid.zone_name, "tile": t.key, "skipped": skipped}))
            except SlidewatchError:
                raise
            except Exception as exc:
                failure = read_failure(exc)
                if failure is None:
                    raise
                tile = getattr(exc, "slidewatch_tile", current["tile"])
                attempts = getattr(exc, "slidewatch_stopped_after", None) or getattr(exc, "slidewatch_attempts", current["attempts"])
                key = getattr(tile, "key", "?")
                raise read_error(failure, grid.zone_name, key, int(attempts),  # type: ignore[call-overload]
                                 len(store.done()), len(tiles),
                                 retried_s=getattr(exc, "slidewatch_retried_s", budget.elapsed_s(key)),
                                 budget_s=budget.seconds) from None
        check_cube_has_data(store.has_data, grid, window, config, inputs)
        path = store.finalize({"completed": datetime.now(timezone.utc).isoformat()})
    finally:
        store.release()
    emit("written", {"zone": grid.zone_name, "path": str(path)})
    return ZoneResult(grid, path, False, inputs)
