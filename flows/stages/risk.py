"""The risk stage: U-Net over the LSI stores' chunks → ``risk.zarr`` (one group per UTM
zone, written tile by tile as results finish, resumable). Wiring only: the inference maths
is :mod:`pipeline.predict.inference`, the variables and attributes :mod:`pipeline.predict.mosaic`.

Each zone is one Dask graph (:mod:`flows.stages.inference_workers`): every inference tile
of the zone runs once, in a task of a group of tiles, and one task per pending write tile
blends its tiles' outputs and writes its region, on the active distributed client's
workers (or on threads here without one); this process checks the input stores'
generations, enters each finished tile in the ledger and reports progress, in the order
the tiles finish."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from flows.dask_context import TaskPool, task_pool
from flows.stages.inference_workers import (
    TileJob,
    TileOutcome,
    checkpoint_ref,
    collect_counters,
    inference_resources,
    parse_device,
    run_counters,
    run_writes,
    zone_graph,
)
from pipeline import __version__
from pipeline.core.config import CHUNKS_PER_TILE, INFERENCE_TILE, Tile, ZoneGrid
from pipeline.core.errors import CheckpointError, StoreError
from pipeline.core.layout import RunLayout
from pipeline.core.provenance import Rain, RunProvenance
from pipeline.predict.hazard import check_hazard_mode
from pipeline.predict.inference import PredictionStats, PredictorLike
from pipeline.predict.mosaic import (
    CLASS_THRESHOLDS,
    RISK_VARIABLES,
    risk_attrs,
    risk_fingerprint,
    risk_root_attrs,
    risk_tile,
    risk_zone_attrs,
    tile_dataset,
)
from pipeline.predict.uncertainty import FlipEnsemble
from pipeline.store.tiles import COMPLETE_ATTR, GenerationGuard, TileStore, open_parent_group, template

#: The zone attribute naming the device(s) the model ran on (``cpu (float32)``, ``cuda:0 ...``).
DEVICE_ATTR = "inference_device"

Event = Callable[[str, dict], None]


@dataclass
class RiskResult:
    """Where the mosaic went and what the inference did."""

    path: Path
    zones: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    stats: PredictionStats = field(default_factory=PredictionStats)
    #: the devices the model ran on in this call (``cpu (float32)``, ``cuda:0 ... (bfloat16 autocast)``)
    devices: set[str] = field(default_factory=set)


def _quiet(kind: str, info: dict) -> None:
    return None


def write_zone_risk(
    root: Path,
    grid: ZoneGrid,
    lsi_path: Path,
    predictor: PredictorLike,
    *,
    rain: Rain | None = None,
    mode: str = "decoupled",
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    thresholds_source: str = "default",
    uncertainty: bool = True,
    extra_attrs: dict | None = None,
    cube_path: Path | None = None,
    tile: int = INFERENCE_TILE,
    batch_size: int = 8,
    overwrite: bool = False,
    on_event: Event | None = None,
    stats: PredictionStats | None = None,
    device: str | None = None,
    pool: TaskPool | None = None,
    source: object | None = None,
    devices: set[str] | None = None,
) -> tuple[Path, bool]:
    """Write (or reuse) one zone's group of the risk mosaic. Returns ``(path, reused)``.

    A finished group made from the same LSI store, checkpoint and settings is reused; one
    made from other inputs (LSI, checkpoint, settings) is replaced. An unfinished group is
    resumed: only the tiles missing from its ledger are predicted. ``overwrite`` is kept for
    symmetry with the other stages.

    ``rain`` is the event the hazard is computed for (``decoupled``: R_m of ``rain``, the
    reference event R_m = 1 when ``None``; ``paper``: the rain already in the LSI store).
    ``uncertainty`` runs the model on 4 flips of every tile (4× the model time) and writes
    their mean as the susceptibility and their spread as ``uncertainty``.

    The zone is one graph (:func:`flows.stages.inference_workers.zone_graph`: each inference
    tile runs once, in groups of about ``batch_size`` tiles, whatever write tiles it
    straddles; one write task per pending tile) run on ``pool`` (default:
    :func:`flows.dask_context.task_pool`, i.e. the active distributed client, else a thread
    here) with the model from ``source`` (default: :func:`_model_source`; ``device`` is the
    device option the workers load a checkpoint with, default the predictor's own). The
    graph's inference counters are added to ``stats`` (summed over every process that ran
    part of it); the devices the model ran on are added to ``devices`` and recorded in the
    group's ``inference_device`` attribute.
    """
    with contextlib.ExitStack() as stack:
        if pool is None:  # the active distributed client, else a thread here
            pool = stack.enter_context(task_pool())
        emit = on_event or _quiet
        lsi_guard = GenerationGuard(lsi_path)  # checked after every tile: the LSI must not change under us
        lsi_lazy = xr.open_zarr(lsi_path, decode_coords="all")
        from_cube = check_model_channels(lsi_lazy, lsi_path, predictor, cube_path)
        cube_source = GenerationGuard(cube_path) if from_cube and cube_path is not None else None
        mode = check_hazard_mode(mode)
        prov = RunProvenance.from_attrs(lsi_lazy.attrs)
        if mode == "decoupled":
            prov = prov.with_rain(rain) if rain is not None else prov
        elif prov.rain is None:
            raise StoreError(f"{lsi_path} holds a rain-free LSI, but --hazard paper needs the rain-scaled one.",
                             "rerun the LSI stage with --hazard paper (it rebuilds the LSI store).")
        rm = float(prov.rain.multiplier) if prov.rain is not None else 1.0
        model = FlipEnsemble(predictor) if uncertainty else predictor
        lsi_fp = lsi_lazy.attrs.get("slidewatch_fingerprint")
        store = TileStore(root / grid.zone_name,
                          risk_fingerprint(lsi_fp, model, thresholds, tile, __version__, rain=prov.rain, mode=mode))
        if store.is_complete():  # same LSI store, checkpoint and settings: nothing to redo
            emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
            return store.path, True
        # the susceptibility does not depend on the rain: the key of everything but the hazard
        sus_fp = risk_fingerprint(lsi_fp, model, thresholds, tile, __version__, rain=None, mode=mode)
        previous = _same_susceptibility(store.path, sus_fp) if mode == "decoupled" else None
        device = parse_device(device or getattr(predictor, "requested_device", None) or "auto")
        seen: set[str] = set()

        def verify() -> None:
            lsi_guard.check()
            if cube_source is not None:
                cube_source.check()

        store.acquire()
        try:
            attrs = risk_zone_attrs(prov, grid.zone_name, grid.epsg, str(lsi_path), model, thresholds, __version__,
                                    mode=mode, thresholds_source=thresholds_source)
            attrs.update(extra_attrs or {})
            attrs["susceptibility_fingerprint"] = sus_fp
            # derived: a group made from other inputs is replaced
            store.prepare(template(grid, RISK_VARIABLES, risk_attrs(thresholds, mode)), attrs, overwrite=True)
            tiles = grid.tiles(CHUNKS_PER_TILE)
            done = store.done()
            emit("tiles", {"zone": f"{grid.zone_name} risk", "stage": "risk", "total": len(tiles), "done": len(done)})
            for t in tiles:
                if t.key in done:
                    emit("tile", {"zone": f"{grid.zone_name} risk", "tile": t.key, "skipped": True})
            pending = [t for t in tiles if t.key not in done]
            if previous is not None:  # only the rain changed: the hazard from the stored susceptibility
                emit("note", {"text": f"{grid.zone_name}: same inputs, model and settings, other rain: the hazard is "
                                      "recomputed from the stored susceptibility (no model run)"})
                _rehazard(store, previous, pending, thresholds, rm, mode, uncertainty, verify, grid.zone_name,
                          emit)
                pending = []
                seen.update(_recorded_devices(previous.path))  # its susceptibility is the one kept
            run = uuid.uuid4().hex[:12]
            jobs = [TileJob(grid.zone_name, t, str(lsi_path), str(store.partial),
                            (float(thresholds[0]), float(thresholds[1])), rm, mode, uncertainty, run)
                    for t in pending]
            if jobs:
                resources, _ = inference_resources(pool, device)
                if source is None:
                    source = _model_source(pool, predictor, device, batch_size)
                step = grid.chunk * CHUNKS_PER_TILE  # the write tiles: the graph's output chunks

                def finished(outcome: TileOutcome) -> None:
                    store.record([outcome.key], verify=verify)
                    emit("tile", {"zone": f"{grid.zone_name} risk", "tile": outcome.key, "skipped": False})

                try:
                    writes = zone_graph(jobs, predictor, source, run_counters(run), lsi_path=lsi_path,
                                        tile_shape=(step, step), tile=tile, batch_size=batch_size,
                                        uncertainty=uncertainty, cube_path=cube_path if from_cube else None,
                                        cube_vars=tuple(from_cube), resources=resources)
                    run_writes(pool, writes, finished, run=run, check=verify)
                except BaseException:
                    with contextlib.suppress(Exception):  # drop the run's counters in every process
                        collect_counters(pool, run)
                    raise
                counts, ran_on = collect_counters(pool, run)
                if stats is not None:
                    stats.add(**counts.as_dict())
                for label in sorted(ran_on - seen):
                    announced = label in (devices or ())  # once per run, not per zone
                    seen.add(label)
                    if device == "auto" and label.startswith("cpu") and not announced:
                        emit("note", {"text": "no CUDA GPU where the model runs: inference on the CPU in float32 "
                                              f"(--device auto; recorded as {DEVICE_ATTR})"})
            if devices is not None:
                devices.update(seen)
            path = store.finalize({DEVICE_ATTR: ", ".join(sorted(seen))} if seen else None)
        finally:
            store.release()
        emit("written", {"zone": f"{grid.zone_name} risk", "stage": "risk", "path": str(path)})
        return path, False


def _same_susceptibility(path: Path, sus_fp: str) -> GenerationGuard | None:
    """A guard on the finished group at ``path`` when its susceptibility was made from the
    same inputs, model and settings (``sus_fp``), else None."""
    if not path.exists():
        return None
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable: predict afresh
        return None
    if attrs.get(COMPLETE_ATTR) is not True or attrs.get("susceptibility_fingerprint") != sus_fp:
        return None
    return GenerationGuard(path)


def _recorded_devices(path: Path) -> set[str]:
    """The ``inference_device`` recorded in the finished group at ``path`` (empty when none)."""
    try:
        value = zarr.open_group(str(path), mode="r").attrs.get(DEVICE_ATTR)
    except Exception:  # noqa: BLE001 - unreadable: nothing to carry over
        return set()
    return {str(value)} if value else set()


def _model_source(pool: TaskPool, predictor: PredictorLike, device: str, batch_size: int) -> object:
    """What the model's tasks on ``pool`` resolve the predictor from (see
    :class:`~flows.stages.inference_workers.WorkerModel`): on a cluster a
    :class:`~flows.stages.inference_workers.CheckpointRef` for a checkpoint-backed predictor
    (each worker loads the file once); else the predictor itself (in the graph once)."""
    ref = checkpoint_ref(predictor, device, batch_size) if pool.client is not None else None
    return ref if ref is not None else predictor


def _rehazard(store: TileStore, previous: GenerationGuard, pending: list[Tile], thresholds: tuple,
              rm: float, mode: str, uncertainty: bool, verify: Callable[[], None], zone: str, emit: Event) -> None:
    """Write the pending tiles from the previous group's susceptibility with this rain's hazard."""
    old = xr.open_zarr(previous.path, chunks=None, decode_coords="all", consolidated=False)

    def verify_both() -> None:
        verify()
        previous.check()

    for t in pending:
        sub = old.isel(y=slice(t.row0, t.row1), x=slice(t.col0, t.col1))
        arrays = risk_tile(np.asarray(sub["susceptibility"].values), np.asarray(sub["lsi"].values),
                           np.asarray(sub["quality"].values), thresholds, rain_multiplier=rm, mode=mode,
                           uncertainty=np.asarray(sub["uncertainty"].values) if uncertainty else None)
        store.write_tile(t, tile_dataset(arrays, sub[["lsi", "quality"]]), verify=verify_both)
        emit("tile", {"zone": f"{zone} risk", "tile": t.key, "skipped": False})


def check_model_channels(lsi: xr.Dataset, lsi_path: Path, predictor: PredictorLike,
                         cube_path: Path | None = None) -> list[str]:
    """Refuse (before anything is written) a model whose channels neither the LSI store nor
    the zone's cube holds. Returns the channels to read from the cube."""
    missing = [c for c in predictor.channels if c not in lsi.data_vars]
    cube_vars: set[str] = set()
    if missing and cube_path is not None and Path(cube_path).exists():
        cube_vars = set(map(str, xr.open_zarr(cube_path).data_vars))
    lacking = [c for c in missing if c not in cube_vars]
    if lacking:
        where = f"{lsi_path}" + (f" or {cube_path}" if cube_path is not None else "")
        raise CheckpointError(
            f"the model needs channels {list(predictor.channels)} but {where} lacks {lacking}.",
            "use a checkpoint trained on slidewatch factors or cube bands (slidewatch train), or rebuild the LSI store.",
        )
    return [c for c in missing if c in cube_vars]


def write_risk(
    run_dir: Path,
    zones: Sequence[tuple[ZoneGrid, Path]],
    predictor: PredictorLike,
    *,
    region: str,
    rain: Rain | None = None,
    mode: str = "decoupled",
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    thresholds_source: str = "default",
    uncertainty: bool = True,
    zone_attrs: dict[str, dict] | None = None,
    cube_paths: dict[str, Path] | None = None,
    tile: int = INFERENCE_TILE,
    batch_size: int = 8,
    overwrite: bool = False,
    on_event: Event | None = None,
    device: str | None = None,
) -> RiskResult:
    """The region's mosaic: one group per zone in ``RUN/risk.zarr``, marked complete only
    when every zone is.

    Each zone is one graph on the active distributed client (else a thread here), the model
    in it once (see :func:`write_zone_risk`); ``device`` is the device option the workers
    load a checkpoint with (default: the predictor's own)."""
    device = parse_device(device or getattr(predictor, "requested_device", None) or "auto")
    root = RunLayout(run_dir).risk
    result = RiskResult(root)
    cubes = cube_paths or {}
    for grid, lsi_path in zones:  # every zone's inputs checked before the store is touched
        check_model_channels(xr.open_zarr(lsi_path, decode_coords="all"), lsi_path, predictor, cubes.get(grid.zone_name))
    group = open_parent_group(root)  # in the zone groups' format (an old v3 root is converted)
    group.attrs.update({**risk_root_attrs(region, [g.zone_name for g, _ in zones], __version__), COMPLETE_ATTR: False})
    with task_pool() as pool:
        source = _model_source(pool, predictor, device, batch_size)  # the same for every zone
        for grid, lsi_path in zones:
            _, reused = write_zone_risk(root, grid, lsi_path, predictor, rain=rain, mode=mode, thresholds=thresholds,
                                        thresholds_source=thresholds_source, uncertainty=uncertainty, tile=tile,
                                        extra_attrs=(zone_attrs or {}).get(grid.zone_name),
                                        cube_path=cubes.get(grid.zone_name),
                                        batch_size=batch_size, overwrite=overwrite, on_event=on_event,
                                        stats=result.stats, device=device, pool=pool, source=source,
                                        devices=result.devices)
            result.zones.append(grid.zone_name)
            if reused:
                result.reused.append(grid.zone_name)
    zarr.open_group(str(root), mode="r+").attrs[COMPLETE_ATTR] = True
    return result


def open_zone(run_dir: Path, zone: str) -> xr.Dataset:
    """One zone of a run's mosaic, georeferenced."""
    return xr.open_zarr(RunLayout(run_dir).risk, group=zone, decode_coords="all", consolidated=False)
