"""The run folder: where every store, export and record of a run lives.

::

    OUT/<region slug>/<start>_<end>/        one run (:func:`run_dir_for`)
        cube_<zone>.zarr                     acquired imagery per UTM zone
        lsi_<zone>.zarr  lsi_<zone>.png      factors, LSI and its quick-look
        risk.zarr/<zone>/                    the risk mosaic, one group per zone
        items/<zone>/<collection>.json       the STAC items read (tokens stripped)
        exports/                             COGs, quick-looks, the run's STAC item
        run.json                             parameters, rain, alert, zones
        calibration.json                     the LSI calibration the demo fitted
        report.html                          ``slidewatch report``

Every stage, the export, the report and the watch take their paths from
:class:`RunLayout`. Foundation: imports nothing of ours but the errors and file helpers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputDataError, StoreError
from pipeline.core.files import atomic_write_text

__all__ = ["RISK_STORE", "RUN_JSON", "RunLayout", "read_run_json", "run_dir_for", "write_run_json", "zarr_attrs"]

RISK_STORE = "risk.zarr"
RUN_JSON = "run.json"
EXPORTS = "exports"
ITEMS = "items"
REPORT = "report.html"
CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    run_dir: Path

    def cube(self, zone: str) -> Path:
        return self.run_dir / f"cube_{zone}.zarr"

    def lsi(self, zone: str) -> Path:
        return self.run_dir / f"lsi_{zone}.zarr"

    def lsi_stores(self) -> list[Path]:
        """The LSI stores present, sorted by zone."""
        return sorted(p for p in self.run_dir.glob("lsi_*.zarr") if p.is_dir())

    @staticmethod
    def zone_of(store: Path) -> str:
        """``utm48n`` for ``…/lsi_utm48n.zarr`` or ``…/cube_utm48n.zarr``."""
        return store.name.split("_", 1)[1].removesuffix(".zarr")

    @property
    def risk(self) -> Path:
        return self.run_dir / RISK_STORE

    @property
    def exports(self) -> Path:
        return self.run_dir / EXPORTS

    def risk_quicklook(self, zone: str) -> Path:
        return self.exports / f"risk_{zone}.png"

    def items(self, zone: str) -> Path:
        return self.run_dir / ITEMS / zone

    @property
    def items_root(self) -> Path:
        return self.run_dir / ITEMS

    @property
    def run_json(self) -> Path:
        return self.run_dir / RUN_JSON

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT

    @property
    def lock(self) -> Path:
        """The run's lock, held by the one run that writes its rain-dependent stores and
        ``run.json`` (beside the folder, so taking it creates nothing inside)."""
        return self.run_dir.with_name(self.run_dir.name + ".lock")

    @property
    def calibration(self) -> Path:
        """The LSI calibration a run fitted (``slidewatch demo``), for ``run --calibration``."""
        return self.run_dir / CALIBRATION


def run_dir_for(out: str | os.PathLike, slug: str, start: date, end: date, *, name: str | None = None) -> Path:
    """``OUT/<slug>/<start>_<end>`` as an absolute path; refuses (StoreError) any run folder
    that would resolve outside ``out`` (odd region names, symlinks under ``out``)."""
    try:
        root = Path(out).expanduser().resolve()
        run_dir = root / slug / f"{start:%Y%m%d}_{end:%Y%m%d}"
        resolved = run_dir.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop, an unreadable component
        raise StoreError(f"The output folder {out} cannot be resolved: {exc}.",
                         "give --out a plain folder (remove the symlink loop under it).") from None
    if resolved == root or not resolved.is_relative_to(root):
        raise StoreError(
            f"The run folder of region {name if name is not None else slug!r} resolves to {resolved}, "
            f"outside the output root {root}.",
            "give the region (or its GeoJSON file) a plain name, and remove symlinks under --out that point elsewhere.",
        )
    return run_dir


def write_run_json(run_dir: Path, record: dict) -> Path:
    """Write ``run.json`` (the run's parameters, provenance and triggering alert) atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(RunLayout(run_dir).run_json, json.dumps(record, indent=2, default=str, sort_keys=True))


def read_run_json(run_dir: Path) -> dict:
    """The run's ``run.json`` (``{}`` when absent); InputDataError when it is not a JSON object."""
    path = RunLayout(Path(run_dir)).run_json
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise InputDataError(f"{path} is not valid JSON ({exc}).",
                             "fix or delete run.json; the report also works without it.") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"{path} holds {type(data).__name__}, not an object.",
                             "fix or delete run.json; the report also works without it.")
    return data


def zarr_attrs(store: Path, group: str | None = None) -> dict[str, Any]:
    """The attributes of a Zarr store's root (or one group), read without opening arrays."""
    import zarr

    root = zarr.open_group(str(store), mode="r")
    return dict((root[group] if group else root).attrs)
