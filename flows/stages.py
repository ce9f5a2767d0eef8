"""The stages of a regional run, shared by the CLI, the demo and the Prefect flows.

Wiring only: each stage calls library code and reports progress through ``on_event(kind,
info)``. The order is::

    cube_stage   plan → search → cube_<zone>.zarr          (reused when finished)
    rain         P, D → R_m                                  (explicit, a precipitation Zarr, or none)
    lsi_stage    factors → LSI → lsi_<zone>.zarr + PNG       (rain-dependent)
    risk_stage   U-Net over chunks → risk.zarr + exports     (rain-dependent)

A run triggered by rain reuses the finished cube (keyed by region, window and inputs) and
recomputes only the rain-dependent stages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flows.lsi_stage import Rain, write_lsi, write_lsi_quicklook
from flows.regional_run import RunResult, regional_run
from pipeline import __version__
from pipeline.config import CubeConfig, TimeWindow
from pipeline.errors import RainfallError, StoreError
from pipeline.lsi import LsiParams
from pipeline.regions import Region

Event = Callable[[str, dict], None]

__all__ = ["Rain", "cube_stage", "lsi_stage", "resolve_rain", "write_run_json", "read_run_json"]

#: Days before the end of the window whose precipitation defines a run's rainfall event.
RAIN_LOOKBACK_DAYS = 3


def _quiet(kind: str, info: dict) -> None:
    return None


def resolve_rain(
    intensity: float | None,
    duration: float | None,
    precip: Path | None,
    bbox: tuple[float, float, float, float],
    window: TimeWindow,
) -> Rain:
    """The run's rainfall event: explicit P (mm/h) and D (days), a local IMERG-layout Zarr
    (the last :data:`RAIN_LOOKBACK_DAYS` days of the window), or none (R_m = 1)."""
    from pipeline.rainfall import LocalZarrSource, rain_event, rainfall_multiplier

    if (intensity is None) != (duration is None):
        raise RainfallError("--rain-intensity and --rain-duration go together.", "give both, or neither.")
    if intensity is not None and duration is not None:
        return Rain(intensity, duration, float(rainfall_multiplier(intensity, duration)), "explicit")
    if precip is not None:
        start = window.end - timedelta(days=RAIN_LOOKBACK_DAYS)
        ev = rain_event(LocalZarrSource(precip), bbox, str(start), str(window.end + timedelta(days=1))).compute()
        p, d = float(ev["intensity"]), float(ev["duration"])
        return Rain(p, d, float(rainfall_multiplier(p, d)), f"{precip} {start}..{window.end}")
    return Rain(None, None, 1.0, "none (no rainfall scaling, R_m = 1)")


def cube_stage(
    region: Region,
    window: TimeWindow,
    stac_url: str,
    out: Path,
    config: CubeConfig,
    *,
    on_event: Event | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    chunk: int | None = None,
    source: Any = None,
) -> RunResult:
    """Search and write (or reuse) the cube of every UTM zone of the region."""
    kwargs: dict[str, Any] = {"dry_run": dry_run, "overwrite": overwrite, "on_event": on_event or _quiet}
    if chunk is not None:
        kwargs["chunk"] = chunk
    if source is not None:
        kwargs["source"] = source
    return regional_run(region, window, stac_url, out, config, **kwargs)


def lsi_stage(
    result: RunResult, rain: Rain, *, params: LsiParams | None = None, overwrite: bool = False,
    on_event: Event | None = None,
) -> list[Path]:
    """Factors and LSI of every zone (``lsi_<zone>.zarr`` + PNG); sets ``zone.lsi_path``."""
    emit = on_event or _quiet
    paths = []
    for z in result.zones:
        path = write_lsi(z.cube_path, z.grid, params or LsiParams(), rain, overwrite=overwrite, on_event=emit)
        png = write_lsi_quicklook(path)
        emit("lsi", {"zone": z.grid.zone_name, "path": str(path), "quicklook": str(png)})
        z.lsi_path = path
        paths.append(path)
    return paths


def write_run_json(run_dir: Path, record: dict) -> Path:
    """Write ``run.json`` (the run's parameters, provenance and triggering alert) atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    tmp = path.with_name(f".run.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str, sort_keys=True))
    tmp.replace(path)
    return path


def read_run_json(run_dir: Path) -> dict:
    """The run's ``run.json`` (``{}`` when absent)."""
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
        "stac_url": stac_url,
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
        **(extra or {}),
    }


def load_predictor(checkpoint: Path, device: str = "auto", batch_size: int = 8) -> Any:
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
    tile: int = 256,
    batch_size: int = 8,
) -> Path | None:
    """U-Net over every zone's LSI store → ``RUN/risk.zarr`` → exports (COGs, PNG, STAC item).

    ``checkpoint=None`` skips the stage (returns ``None``). The mosaic is reused when its
    LSI store, checkpoint and settings are unchanged; ``rain`` is recorded through the LSI
    store it reads.
    """
    from flows.risk_stage import open_zone, write_risk
    from pipeline.export import export_run
    from pipeline.mosaic import CLASS_THRESHOLDS
    from pipeline.quicklook import write_quicklook

    emit = on_event or _quiet
    if checkpoint is None:
        return None
    predictor = load_predictor(checkpoint, device, batch_size)
    emit("model", {"predictor": repr(predictor)})
    zones = [(z.grid, z.lsi_path) for z in result.zones if z.lsi_path is not None]
    if not zones:
        raise StoreError("No LSI store to run the model on.", "run the LSI stage first (drop --cube-only).")
    region = str(xr_attr(zones[0][1], "region") or result.run_dir.parent.name)
    risk = write_risk(result.run_dir, zones, predictor, region=region, thresholds=thresholds or CLASS_THRESHOLDS,
                      tile=tile, batch_size=batch_size, overwrite=overwrite, on_event=emit)
    emit("inference", {"stats": risk.stats.as_dict(), "reused": risk.reused})
    quicklooks = {}
    for grid, _ in zones:
        ds = open_zone(result.run_dir, grid.zone_name)
        quicklooks[grid.zone_name] = write_quicklook(
            ds["probability"], result.run_dir / "exports" / f"risk_{grid.zone_name}.png", classes=ds["risk_class"],
            title=f"Landslide probability (U-Net), {ds.attrs.get('region')} {grid.zone_name}", label="probability")
    item = export_run(result.run_dir, quicklooks=quicklooks)
    emit("exported", {"item": str(item), "exports": str(result.run_dir / "exports")})
    return risk.path


def xr_attr(store: Path, name: str) -> Any:
    """One attribute of a Zarr store's root (``None`` when absent)."""
    import zarr

    return dict(zarr.open_group(str(store), mode="r").attrs).get(name)


#: How ``slidewatch demo`` trains its model (small, CPU-friendly; synthetic scars only).
DEMO_TRAIN: dict[str, Any] = {
    "arch": "enhanced", "base_width": 8, "depth": 3, "chip_size": 64, "block_size": 512, "epochs": 12,
    "chips_per_epoch": 512, "lr": 5e-3, "patience": 5, "batch_size": 16, "seed": 0,
}


def ensure_demo_model(
    lsi_path: Path, truth: Path, model_dir: Path, *, retrain: bool = False, on_event: Event | None = None,
) -> Path:
    """The demo's checkpoint: trained once on the demo region's planted (synthetic) scars
    and cached in ``model_dir``; reused while the training inputs and settings match."""
    import hashlib

    from models.checkpoint import read_metadata
    from models.training import CHECKPOINT_NAME, TrainConfig, train

    emit = on_event or _quiet
    key = hashlib.sha256(json.dumps({
        "train": DEMO_TRAIN, "lsi": xr_attr(lsi_path, "slidewatch_fingerprint"),
        "truth": truth.stat().st_size, "version": __version__,
    }, sort_keys=True).encode()).hexdigest()[:16]
    path, stamp = model_dir / CHECKPOINT_NAME, model_dir / "demo_key.txt"
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == key and not retrain:
        try:
            read_metadata(path)
        except Exception:  # a corrupt cache is simply retrained
            pass
        else:
            emit("model-reused", {"path": str(path)})
            return path
    emit("training", {"config": DEMO_TRAIN, "out": str(model_dir)})
    tmp_dir = model_dir.with_name(model_dir.name + ".partial")
    import shutil

    shutil.rmtree(tmp_dir, ignore_errors=True)
    new = train(lsi_path, truth, tmp_dir, TrainConfig(**DEMO_TRAIN), progress=True)
    (tmp_dir / "demo_key.txt").write_text(key + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    return model_dir / new.name
