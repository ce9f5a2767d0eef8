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
from pipeline.errors import RainfallError
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
