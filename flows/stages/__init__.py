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
from pipeline.core.config import INFERENCE_TILE, CubeConfig, TimeWindow
from pipeline.core.errors import StoreError
from pipeline.core.layout import RunLayout, run_dir_for, zarr_attrs
from pipeline.core.locking import WriterLock
from pipeline.core.provenance import Rain
from pipeline.core.secrets import unsigned_href
from pipeline.factors.mask import inside_geometry
from pipeline.factors.lsi import LsiParams
from pipeline.factors.ranges import normalisation_ranges
from pipeline.plan.regions import Region
from pipeline.predict.hazard import check_hazard_mode
from pipeline.predict.inference import PredictorLike

from flows.stages.cube import RunResult, ZoneResult, cube_stage
from flows.stages.lsi import factors_inside, write_lsi, write_lsi_quicklook

Event = Callable[[str, dict], None]

__all__ = ["RunResult", "ZoneResult", "check_input_drift", "check_model_inputs", "cube_stage", "deployable_channels",
           "finish_run", "load_predictor", "lsi_stage", "risk_stage", "run_lock", "run_record"]


def _quiet(kind: str, info: dict) -> None:
    return None


def lsi_stage(
    result: RunResult, rain: Rain, *, params: LsiParams | None = None, calibration: str | None = None,
    overwrite: bool = False, on_event: Event | None = None, hazard: str = "decoupled",
) -> list[Path]:
    """Factors and LSI of every zone (``lsi_<zone>.zarr`` + PNG); sets ``zone.lsi_path``.
    ``calibration`` says where calibrated ``params`` come from (recorded in the stores).
    ``hazard="decoupled"`` (default) writes the rain-free LSI, the same whatever ``rain``;
    ``"paper"`` scales it by ``rain``'s R_m as the source paper does."""
    lsi_rain = rain if check_hazard_mode(hazard) == "paper" else None
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
        path = write_lsi(z.cube_path, z.grid, params or LsiParams(), lsi_rain, provenance=prov, overwrite=overwrite,
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


def finish_run(run_dir: Path, record: dict) -> Path:
    """Write ``run.json`` (stamped ``finished`` now). Call it last, under the run's lock, once
    every output is written: a stage that refused its input or failed leaves the previous
    ``run.json``, which still describes the outputs on disk."""
    from pipeline.core.layout import write_run_json

    return write_run_json(run_dir, {**record, "finished": datetime.now(timezone.utc).isoformat()})


def deployable_channels(config: CubeConfig) -> tuple[str, ...]:
    """Every variable a run can feed a model: the cube's bands (Sentinel-2 bands, DEM, SAR
    unless ``--sar none``, the valid-scene count) and the LSI store's factors, LSI and
    contributions."""
    from pipeline.factors.lsi import FACTORS

    sar = () if config.sar == "none" else ("vv", "vh", "vv_dry", "vv_wet")
    return (*config.s2_bands, "dem", *sar, "s2_valid_count", *FACTORS, "lsi", *(f"contrib_{f}" for f in FACTORS))


def check_model_inputs(channels: tuple[str, ...], config: CubeConfig, checkpoint: Path) -> None:
    """Refuse, before the cube stage, a model whose channels no store of the run will hold."""
    from pipeline.core.errors import CheckpointError

    known = deployable_channels(config)
    unknown = [c for c in channels if c not in known]
    if unknown:
        raise CheckpointError(
            f"{checkpoint} needs channels {unknown} that a run does not produce (it produces {', '.join(known)}).",
            "train on variables of the cube or LSI store (slidewatch train --channels), "
            "or map your own rasters with the model outside `run`.",
        )


def _class_thresholds(predictor: PredictorLike, given: tuple[float, float] | None) -> tuple[tuple[float, float], str]:
    """The class thresholds and where they come from: given, the checkpoint's calibration,
    or the defaults."""
    from pipeline.predict.mosaic import CLASS_THRESHOLDS

    if given is not None:
        return (float(given[0]), float(given[1])), "given"
    cal = getattr(getattr(predictor, "metadata", None), "calibration", None) or {}
    if cal.get("class_thresholds"):
        t1, t2 = cal["class_thresholds"]
        return (float(t1), float(t2)), f"checkpoint calibration: {cal.get('method', 'validation data')}"
    return CLASS_THRESHOLDS, "default (the checkpoint has no calibration)"


def check_input_drift(lsi_paths: list[Path], predictor: PredictorLike, *, strict: bool = False,
                      on_event: Event | None = None, cube_paths: list[Path | None] | None = None) -> dict[str, list[dict]]:
    """Compare every model channel's values in the LSI stores with the checkpoint's
    training ranges; announce (or, ``strict``, refuse in one line) channels far outside.
    Returns ``{store: [drift, ...]}`` for the drifted channels (recorded by the caller)."""
    from pipeline.core.errors import InputDataError
    from pipeline.predict.drift import channel_drift, drifted

    from flows.dask_context import compute_context

    emit = on_event or _quiet
    inputs = getattr(getattr(predictor, "metadata", None), "inputs", None) or {}
    ranges = {c: r for c, r in (inputs.get("ranges") or {}).items() if c in predictor.channels}
    if not ranges:
        emit("note", {"text": "the checkpoint records no training input ranges: inputs not compared with training"})
        return {}
    found: dict[str, list[dict]] = {}
    for path, cube_path in zip(lsi_paths, cube_paths or [None] * len(lsi_paths)):
        ds = xr.open_zarr(path)
        from_cube = [c for c in ranges if c not in ds.data_vars]
        if from_cube and cube_path is not None and Path(cube_path).exists():
            cube = xr.open_zarr(cube_path)
            ds = xr.merge([ds, cube[[c for c in from_cube if c in cube.data_vars]]], join="exact", compat="override",
                          combine_attrs="drop_conflicts")
        with compute_context():
            bad = drifted(channel_drift(ds, ranges))
        if not bad:
            continue
        found[str(path)] = [d.to_attrs() for d in bad]
        text = f"inputs unlike the model's training data in {path.name}: " + "; ".join(d.describe() for d in bad)
        if strict:
            raise InputDataError(text + ".", "check the region, season and processing of the inputs, retrain the "
                                 "model on data like them, or drop --strict to map anyway (the drift is recorded).")
        emit("note", {"text": text + " (recorded in risk.zarr; --strict refuses)"})
    return found


def load_predictor(checkpoint: Path, device: str = "auto", batch_size: int = 8) -> PredictorLike:
    """The checkpoint's Predictor, loaded once per process (see :func:`models.predictor.cached_predictor`).
    ``device``: ``auto``, ``cpu``, ``cuda`` (``gpu`` is an alias); a misspelt one, or CUDA
    where there is none, is refused in one line."""
    from flows.stages.inference_workers import parse_device
    from models.predictor import cached_predictor

    return cached_predictor(str(checkpoint), parse_device(device), batch_size)


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
    record: dict | None = None,
    hazard: str = "decoupled",
    uncertainty: bool = True,
    strict: bool = False,
) -> Path | None:
    """U-Net over every zone's LSI store → ``RUN/risk.zarr`` → exports (COGs, PNG, STAC item).

    ``checkpoint=None`` skips the stage (returns ``None``). The mosaic is reused when its
    LSI store, checkpoint and settings are unchanged; ``rain`` is recorded through the LSI
    store it reads. ``record`` (the run's :func:`run_record`) describes the run in the STAC
    item; the caller writes it to ``run.json`` once this stage has succeeded.

    ``hazard`` (``decoupled``/``paper``) as in :func:`lsi_stage`; ``rain`` is the event of the
    hazard layer. Class thresholds: ``thresholds`` when given, else the checkpoint's
    calibrated ones, else the defaults (announced). Every model channel's values are
    compared with its training range first (:func:`pipeline.predict.drift.channel_drift`):
    a channel far outside is announced, or refused with ``strict``.

    The tiles run as Dask tasks on the active client's workers (GPU workers when some
    advertise a ``GPU`` resource), or on a thread here without a client; each worker loads
    the checkpoint once (:mod:`flows.stages.inference_workers`). ``device``: ``auto`` (CUDA where
    the model runs, else the CPU: announced, and recorded as ``inference_device``),
    ``cpu``, or ``cuda`` (alias ``gpu``; refused in one line where there is no CUDA).
    """
    from flows.dask_context import task_pool
    from flows.stages.inference_workers import driver_device, parse_device
    from flows.stages.risk import open_zone, write_risk
    from pipeline.products.stac_item import export_run
    from pipeline.products.quicklook import write_quicklook

    emit = on_event or _quiet
    if checkpoint is None:
        return None
    device = parse_device(device)
    with task_pool() as pool:
        here = driver_device(device, pool)  # cuda without CUDA nor GPU workers: refused in one line
    predictor = load_predictor(checkpoint, here, batch_size)
    emit("model", {"predictor": repr(predictor)})
    zones = [(z.grid, z.lsi_path) for z in result.zones if z.lsi_path is not None]
    if not zones:
        raise StoreError("No LSI store to run the model on.", "run the LSI stage first (drop --cube-only).")
    layout = result.layout
    region = (result.provenance.region if result.provenance else None) \
        or zarr_attrs(zones[0][1]).get("region") or result.run_dir.parent.name
    cube_of = {z.grid.zone_name: z.cube_path for z in result.zones}
    drift = check_input_drift([p for _, p in zones], predictor, strict=strict, on_event=emit,
                              cube_paths=[cube_of.get(g.zone_name) for g, _ in zones])
    thresholds, source = _class_thresholds(predictor, thresholds)
    if source.startswith("default"):
        emit("note", {"text": f"the checkpoint has no calibrated class thresholds: using the defaults {thresholds} "
                              "(retrain with this version to calibrate them on validation data)"})
    risk = write_risk(result.run_dir, zones, predictor, region=str(region), rain=rain, mode=hazard,
                      thresholds=thresholds, thresholds_source=source, uncertainty=uncertainty,
                      zone_attrs={g.zone_name: {"input_drift": drift.get(str(p), [])} for g, p in zones},
                      cube_paths={z.grid.zone_name: z.cube_path for z in result.zones},
                      tile=tile, batch_size=batch_size, overwrite=overwrite, on_event=emit, device=device)
    emit("inference", {"stats": risk.stats.as_dict(), "reused": risk.reused, "devices": sorted(risk.devices)})
    quicklooks = {}
    for grid, _ in zones:
        ds = open_zone(result.run_dir, grid.zone_name)
        quicklooks[grid.zone_name] = write_quicklook(
            ds["hazard"], layout.risk_quicklook(grid.zone_name), classes=ds["risk_class"],
            title=f"Landslide hazard for the event, {ds.attrs.get('region')} {grid.zone_name}", label="hazard")
    item = export_run(result.run_dir, quicklooks=quicklooks, run_info=record, checkpoint=checkpoint)
    emit("exported", {"item": str(item), "exports": str(layout.exports)})
    return risk.path
