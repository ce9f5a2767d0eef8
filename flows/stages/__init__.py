"""The stages of a regional run, shared by the CLI, the demo and the Prefect flows.

Wiring only: each stage calls library code and reports progress through ``on_event(kind,
info)``. The order is::

    cube_stage   plan → search → cube_<zone>.zarr          (reused when finished)
    rain         P, D → R_m                                  (pipeline.rain.events.resolve_rain)
    lsi_stage    factors → LSI → lsi_<zone>.zarr + PNG       (rain-dependent)
    risk_stage   U-Net over chunks → risk.zarr + exports     (rain-dependent)

A run triggered by rain reuses the finished cube (keyed by region, window and inputs) and
recomputes only the rain-dependent stages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import xarray as xr

from pipeline import __version__
from pipeline.core.config import INFERENCE_TILE, TimeWindow
from pipeline.core.errors import StoreError
from pipeline.core.layout import RunLayout, run_dir_for, zarr_attrs
from pipeline.core.locking import WriterLock
from pipeline.core.provenance import Rain
from pipeline.core.secrets import unsigned_href
from pipeline.factors.mask import inside_geometry
from pipeline.factors.lsi import LsiParams
from pipeline.factors.ranges import normalisation_ranges
from pipeline.plan.regions import Region
from pipeline.predict.inference import PredictorLike

from flows.stages.cube import RunResult, ZoneResult, cube_stage
from flows.stages.lsi import factors_inside, write_lsi, write_lsi_quicklook

Event = Callable[[str, dict], None]

__all__ = ["RunResult", "ZoneResult", "cube_stage", "load_predictor", "lsi_stage", "risk_stage", "run_lock", "run_record"]


def _quiet(kind: str, info: dict) -> None:
    return None


def lsi_stage(
    result: RunResult, rain: Rain, *, params: LsiParams | None = None, calibration: str | None = None,
    overwrite: bool = False, on_event: Event | None = None,
) -> list[Path]:
    """Factors and LSI of every zone (``lsi_<zone>.zarr`` + PNG); sets ``zone.lsi_path``.
    ``calibration`` says where calibrated ``params`` come from (recorded in the stores)."""
    emit = on_event or _quiet
    cubes = [xr.open_zarr(z.cube_path, decode_coords="all") for z in result.zones]
    geometry = result.region.geometry_json if result.region is not None else None
    computed: dict[str, dict] = {}

    def region_ranges() -> dict:
        """The normalisation ranges of all zones together (pixels inside the region's polygon),
        computed once, and only when a store is written."""
        if "ranges" not in computed:
            insides = [inside_geometry(json.loads(geometry), z.grid) if geometry else None for z in result.zones]
            computed["ranges"] = normalisation_ranges([factors_inside(c, m) for c, m in zip(cubes, insides)])
        return computed["ranges"]

    region_cubes = [c.attrs.get("slidewatch_fingerprint") for c in cubes]
    paths = []
    for z in result.zones:
        prov = result.provenance
        if prov is not None:
            prov = replace(prov, input_items=z.inputs.ids())
        path = write_lsi(z.cube_path, z.grid, params or LsiParams(), rain, provenance=prov, overwrite=overwrite,
                         ranges=region_ranges if len(cubes) > 1 else None, region_cubes=region_cubes,
                         calibration=calibration, geometry=geometry, on_event=emit)
        png = write_lsi_quicklook(path)
        emit("lsi", {"zone": z.grid.zone_name, "path": str(path), "quicklook": str(png)})
        z.lsi_path = path
        paths.append(path)
    return paths


@contextlib.contextmanager
def run_lock(out: Path, region: Region, window: TimeWindow) -> Iterator[None]:
    """Hold the lock of a run folder (taken without waiting) for the whole run: a second run
    on the same folder, with whatever parameters, is refused up front naming the first one,
    instead of rebuilding stores the first is still reading."""
    run_dir = run_dir_for(out, region.slug, window.start, window.end, name=region.name)
    lock = WriterLock(RunLayout(run_dir).lock, target=run_dir)
    lock.acquire(wait_s=0.0)
    try:
        yield
    finally:
        lock.release()


def run_record(
    region: Region, window: TimeWindow, stac_url: str, result: RunResult, rain: Rain, *,
    alert: dict | None = None, extra: dict | None = None,
) -> dict:
    """What ``run.json`` says about a run."""
    return {
        "slidewatch_version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(),
        "region": region.name,
        "region_bbox": list(region.bbox),
        "time_window": [window.start.isoformat(), window.end.isoformat()],
        "stac_url": unsigned_href(stac_url),
        "rain": asdict(rain),
        "alert": alert,
        "zones": {
            z.grid.zone_name: {
                "epsg": z.grid.epsg,
                "cube": str(z.cube_path),
                "cube_reused": z.reused,
                "lsi": str(z.lsi_path) if z.lsi_path else None,
                "input_items": z.inputs.ids(),
            }
            for z in result.zones
        },
        **({"skipped_zones": dict(result.skipped)} if result.skipped else {}),
        **(extra or {}),
    }


def load_predictor(checkpoint: Path, device: str = "auto", batch_size: int = 8) -> PredictorLike:
    """The checkpoint's Predictor, loaded once per process (see :func:`models.predictor.cached_predictor`)."""
    from models.predictor import cached_predictor

    return cached_predictor(str(checkpoint), device, batch_size)


def risk_stage(
    result: RunResult,
    rain: Rain,
    checkpoint: Path | None,
    *,
    overwrite: bool = False,
    on_event: Event | None = None,
    device: str = "auto",
    thresholds: tuple[float, float] | None = None,
    tile: int = INFERENCE_TILE,
    batch_size: int = 8,
) -> Path | None:
    """U-Net over every zone's LSI store → ``RUN/risk.zarr`` → exports (COGs, PNG, STAC item).

    ``checkpoint=None`` skips the stage (returns ``None``). The mosaic is reused when its
    LSI store, checkpoint and settings are unchanged; ``rain`` is recorded through the LSI
    store it reads.
    """
    from flows.stages.risk import open_zone, write_risk
    from pipeline.predict.mosaic import CLASS_THRESHOLDS
    from pipeline.products.stac_item import export_run
    from pipeline.products.quicklook import write_quicklook

    emit = on_event or _quiet
    if checkpoint is None:
        return None
    predictor = load_predictor(checkpoint, device, batch_size)
    emit("model", {"predictor": repr(predictor)})
    zones = [(z.grid, z.lsi_path) for z in result.zones if z.lsi_path is not None]
    if not zones:
        raise StoreError("No LSI store to run the model on.", "run the LSI stage first (drop --cube-only).")
    layout = result.layout
    region = (result.provenance.region if result.provenance else None) \
        or zarr_attrs(zones[0][1]).get("region") or result.run_dir.parent.name
    risk = write_risk(result.run_dir, zones, predictor, region=str(region), thresholds=thresholds or CLASS_THRESHOLDS,
                      tile=tile, batch_size=batch_size, overwrite=overwrite, on_event=emit)
    emit("inference", {"stats": risk.stats.as_dict(), "reused": risk.reused})
    quicklooks = {}
    for grid, _ in zones:
        ds = open_zone(result.run_dir, grid.zone_name)
        quicklooks[grid.zone_name] = write_quicklook(
            ds["probability"], layout.risk_quicklook(grid.zone_name), classes=ds["risk_class"],
            title=f"Landslide probability (U-Net), {ds.attrs.get('region')} {grid.zone_name}", label="probability")
    item = export_run(result.run_dir, quicklooks=quicklooks)
    emit("exported", {"item": str(item), "exports": str(layout.exports)})
    return risk.path
