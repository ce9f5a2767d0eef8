"""The risk stage: U-Net over the LSI stores' chunks → ``risk.zarr`` (one group per UTM
zone, written tile by tile as results finish, resumable). Wiring only: the inference maths
is :mod:`pipeline.predict.inference`, the variables and attributes :mod:`pipeline.predict.mosaic`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from pipeline import __version__
from pipeline.core.config import CHUNKS_PER_TILE, INFERENCE_TILE, Tile, ZoneGrid
from pipeline.core.errors import CheckpointError
from pipeline.core.layout import RunLayout
from pipeline.core.provenance import RunProvenance
from pipeline.predict.inference import PredictionStats, PredictorLike, iter_chunk_predictions
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
from pipeline.store.tiles import COMPLETE_ATTR, TileStore, template

Event = Callable[[str, dict], None]


@dataclass
class RiskResult:
    """Where the mosaic went and what the inference did."""

    path: Path
    zones: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    stats: PredictionStats = field(default_factory=PredictionStats)


def _quiet(kind: str, info: dict) -> None:
    return None


def write_zone_risk(
    root: Path,
    grid: ZoneGrid,
    lsi_path: Path,
    predictor: PredictorLike,
    *,
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    tile: int = INFERENCE_TILE,
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
    store = TileStore(root / grid.zone_name,
                      risk_fingerprint(lsi_lazy.attrs.get("slidewatch_fingerprint"), predictor, thresholds, tile, __version__))
    if store.is_complete():  # same LSI store, checkpoint and settings: nothing to redo
        emit("reused", {"zone": grid.zone_name, "path": str(store.path)})
        return store.path, True
    # Read windows straight from zarr (no dask): each window reads only its own pixels.
    lsi = xr.open_zarr(lsi_path, chunks=None, decode_coords="all")
    store.acquire()
    try:
        attrs = risk_zone_attrs(RunProvenance.from_attrs(lsi.attrs), grid.zone_name, grid.epsg, str(lsi_path),
                                predictor, thresholds, __version__)
        # derived: a group made from other inputs is replaced
        store.prepare(template(grid, RISK_VARIABLES, risk_attrs(thresholds)), attrs, overwrite=True)
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
    predictor: PredictorLike,
    *,
    region: str,
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    tile: int = INFERENCE_TILE,
    batch_size: int = 8,
    overwrite: bool = False,
    on_event: Event | None = None,
) -> RiskResult:
    """The region's mosaic: one group per zone in ``RUN/risk.zarr``, marked complete only
    when every zone is."""
    root = RunLayout(run_dir).risk
    result = RiskResult(root)
    group = zarr.open_group(str(root), mode="a", zarr_format=3)
    group.attrs.update({**risk_root_attrs(region, [g.zone_name for g, _ in zones], __version__), COMPLETE_ATTR: False})
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
    return xr.open_zarr(RunLayout(run_dir).risk, group=zone, decode_coords="all", consolidated=False)
