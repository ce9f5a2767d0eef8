"""The risk stage of a run: U-Net over the LSI store's chunks → ``risk.zarr`` (one group
per UTM zone, written tile by tile as results finish, resumable) → exports. Wiring only:
the inference maths is :mod:`pipeline.inference`, the variables :mod:`pipeline.mosaic`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from pipeline import __version__
from pipeline.config import Tile, ZoneGrid
from pipeline.errors import CheckpointError
from pipeline.inference import PredictionStats, iter_chunk_predictions
from pipeline.mosaic import CLASS_THRESHOLDS, RISK_VARIABLES, risk_attrs, risk_tile, tile_dataset
from pipeline.store import COMPLETE_ATTR, TileStore, template

from flows.regional_run import CHUNKS_PER_TILE

Event = Callable[[str, dict], None]

RISK_STORE = "risk.zarr"


@dataclass
class RiskResult:
    """Where the mosaic went and what the inference did."""

    path: Path
    zones: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    stats: PredictionStats = field(default_factory=PredictionStats)


def _quiet(kind: str, info: dict) -> None:
    return None


def _fingerprint(lsi: xr.Dataset, predictor: Any, thresholds: Sequence[float], tile: int) -> str:
    doc = {
        "lsi": lsi.attrs.get("slidewatch_fingerprint"),
        "checkpoint": getattr(predictor, "checkpoint_sha256", None),
        "channels": list(predictor.channels),
        "thresholds": list(thresholds),
        "tile": tile,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _model_info(predictor: Any) -> dict:
    meta = getattr(predictor, "metadata", None)
    info: dict[str, Any] = {"channels": list(predictor.channels), "halo": int(predictor.halo)}
    if meta is not None:
        info["architecture"] = getattr(meta, "architecture", None)
        info["config"] = getattr(meta, "hyperparameters", None)
        prov = getattr(meta, "provenance", None) or {}
        info["trained_on"] = prov.get("cube") if isinstance(prov, dict) else None
    return info


def _open_root(path: Path, attrs: dict) -> None:
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    root.attrs.update({**attrs, COMPLETE_ATTR: False})


def write_zone_risk(
    root: Path,
    grid: ZoneGrid,
    lsi_path: Path,
    predictor: Any,
    *,
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    tile: int = 256,
    batch_size: int = 8,
    overwrite: bool = False,
    on_event: Event | None = None,
    stats: PredictionStats | None = None,
) -> tuple[Path, bool]:
    """Write (or reuse) one zone's group of the risk mosaic. Returns ``(path, reused)``.

    A finished group made from the same LSI store, checkpoint and settings is reused; one
    made from other inputs (LSI, checkpoint, settings) is replaced. An unfinished group is
    resumed: only the tiles missing from its ledger are predicted. ``overwrite`` is kept for
    symmetry with the other stages.
    """
    emit = on_event or _quiet
    lsi_lazy = xr.open_zarr(lsi_path, decode_coords="all")
    missing = [c for c in predictor.channels if c not in lsi_lazy.data_vars]
    if missing:
        raise CheckpointError(
            f"the model needs channels {list(predictor.channels)} but {lsi_path} lacks {missing}.",
            "use a checkpoint trained on slidewatch factors (slidewatch train), or rebuild the LSI store.",
        )
    predictor.check_channels([c for c in predictor.channels])
    store = TileStore(root / grid.zone_name, _fingerprint(lsi_lazy, predictor, thresholds, tile))
    if store.is_complete():  # same LSI store, checkpoint and settings: nothing to redo
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return store.path, True
    # Read windows straight from zarr (no dask): each window reads only its own pixels.
    lsi = xr.open_zarr(lsi_path, chunks=None, decode_coords="all")
    store.acquire()
    try:
        store.prepare(template(grid, RISK_VARIABLES, risk_attrs(thresholds)), {
            "title": f"slidewatch risk mosaic: {lsi.attrs.get('region')} ({grid.zone_name})",
            "Conventions": "CF-1.8",
            "slidewatch_version": __version__,
            "region": lsi.attrs.get("region"),
            "zone": grid.zone_name,
            "time_window": [lsi.attrs.get("time_start"), lsi.attrs.get("time_end")],
            "epsg": grid.epsg,
            "lsi_store": str(lsi_path),
            "input_items": lsi.attrs.get("input_items"),
            "checkpoint_sha256": getattr(predictor, "checkpoint_sha256", None),
            "model": _model_info(predictor),
            "class_thresholds": list(thresholds),
            "rain_intensity_mm_h": lsi.attrs.get("rain_intensity_mm_h"),
            "rain_duration_days": lsi.attrs.get("rain_duration_days"),
            "rain_multiplier": lsi.attrs.get("rain_multiplier"),
            "rain_source": lsi.attrs.get("rain_source"),
        }, overwrite=True)  # derived: a group made from other inputs is replaced
        tiles = grid.tiles(CHUNKS_PER_TILE)
        done = store.done()
        emit("tiles", {"zone": f"{grid.zone_name} risk", "stage": "risk", "total": len(tiles), "done": len(done)})
        by_window = {(t.row0, t.row1, t.col0, t.col1): t for t in tiles}
        for t in tiles:
            if t.key in done:
                emit("tile", {"zone": f"{grid.zone_name} risk", "tile": t.key, "skipped": True})
        pending = [(slice(t.row0, t.row1), slice(t.col0, t.col1)) for t in tiles if t.key not in done]
        for (sy, sx), prob in iter_chunk_predictions(
            lsi, predictor, channels=list(predictor.channels), windows=pending, tile=tile,
            batch_size=batch_size, stats=stats,
        ):
            t: Tile = by_window[(sy.start, sy.stop, sx.start, sx.stop)]
            sub = lsi.isel(y=sy, x=sx)
            arrays = risk_tile(prob, np.asarray(sub["lsi"].values), np.asarray(sub["quality"].values), thresholds)
            store.write_tile(t, tile_dataset(arrays, sub))
            emit("tile", {"zone": f"{grid.zone_name} risk", "tile": t.key, "skipped": False})
        path = store.finalize()
    finally:
        store.release()
    emit("written", {"zone": f"{grid.zone_name} risk", "stage": "risk", "path": str(path)})
    return path, False


def write_risk(
    run_dir: Path,
    zones: Sequence[tuple[ZoneGrid, Path]],
    predictor: Any,
    *,
    region: str,
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    tile: int = 256,
    batch_size: int = 8,
    overwrite: bool = False,
    on_event: Event | None = None,
) -> RiskResult:
    """The region's mosaic: one group per zone in ``RUN/risk.zarr``, marked complete only
    when every zone is."""
    root = run_dir / RISK_STORE
    result = RiskResult(root)
    _open_root(root, {"title": f"slidewatch risk mosaic: {region}", "region": region,
                      "zones": [g.zone_name for g, _ in zones], "slidewatch_version": __version__,
                      "layout": "one group per UTM zone; see pipeline.mosaic"})
    for grid, lsi_path in zones:
        _, reused = write_zone_risk(root, grid, lsi_path, predictor, thresholds=thresholds, tile=tile,
                                    batch_size=batch_size, overwrite=overwrite, on_event=on_event,
                                    stats=result.stats)
        result.zones.append(grid.zone_name)
        if reused:
            result.reused.append(grid.zone_name)
    zarr.open_group(str(root), mode="r+").attrs[COMPLETE_ATTR] = True
    return result


def open_zone(run_dir: Path, zone: str) -> xr.Dataset:
    """One zone of a run's mosaic, georeferenced."""
    return xr.open_zarr(run_dir / RISK_STORE, group=zone, decode_coords="all", consolidated=False)
