"""The run folder: where every store, export and record of a run lives.

::

    OUT/<region slug>/<start>_<end>/        one run (:func:`run_dir_for`)
        cube_<zone>.zarr                     acquired imagery per UTM zone
        lsi_<zone>.zarr  lsi_<zone>.png      factors, LSI and its quick-look
        risk.zarr/<zone>/                    the risk mosaic, one group per zone
        items/<zone>/<collection>.json       the STAC items read (tokens stripped)
        exports/                             COGs + .qml styles, region mosaics, quick-looks,
                                             the run's STAC catalog (collection.json, items/)
        plots/alert.png                      the alert that triggered the run (the watch)
        run.json                             parameters, rain, alert, zones
        calibration.json                     the LSI calibration the demo fitted
        report.html                          ``slidewatch report``

Every stage, the export, the report and the watch take their paths from
:class:`RunLayout`.

How every store is written on disk lives here too (:data:`ZARR_FORMAT`,
:func:`zarr_encoding`, :func:`fill_value`, :func:`crs_attrs`), so that the tile stores,
the risk mosaic's root and the chip stores of ``slidewatch prepare`` are alike and open in
GDAL/QGIS as well as in xarray (``docs/zarr.md``). Foundation: imports nothing of ours but
the errors, the file helpers and the no-data codes of :mod:`pipeline.core.classes` and
:mod:`pipeline.core.quality`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.classes import NODATA_CLASS
from pipeline.core.errors import InputDataError, StoreError
from pipeline.core.files import atomic_write_text

__all__ = [
    "RISK_STORE",
    "RUN_JSON",
    "ZARR_FORMAT",
    "ZSTD_LEVEL",
    "RunLayout",
    "crs_attrs",
    "fill_value",
    "read_run_json",
    "run_dir_for",
    "store_format",
    "write_run_json",
    "zarr_attrs",
    "zarr_encoding",
    "zarr_metadata_file",
]

RISK_STORE = "risk.zarr"
RUN_JSON = "run.json"
EXPORTS = "exports"
PLOTS = "plots"
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

    @property
    def plots(self) -> Path:
        """The run's pictures (the report shows every PNG there)."""
        return self.run_dir / PLOTS

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


# --------------------------------------------------------------------------- the Zarr format

#: The Zarr format of every store slidewatch writes (cube, LSI, risk mosaic, chip stores).
#: 2, not 3, so that the GDAL which the pinned rasterio (1.4.4) brings, GDAL 3.10, opens them
#: with their CRS and geotransform (and QGIS with it): GDAL 3.10 knows only the pre-release
#: Zarr v3 codec names ("Unsupported codec: bytes") and has no v3 zstd. GDAL 3.12 reads v3,
#: but comes only with rasterio >= 1.5, which needs Python >= 3.12, where the CPU-only torch
#: wheel we install does not apply. xarray reads both formats alike. See ``docs/zarr.md``.
ZARR_FORMAT = 2
#: zstd level of every array: GDAL 3.10 reads zstd (as blosc and zlib) in Zarr v2 stores,
#: and zstd is what the v3 stores used, so sizes and speed stay as they were.
ZSTD_LEVEL = 3


def zarr_compressors() -> tuple[Any, ...]:
    """The ``compressors`` encoding of every array we write (zstd, see :data:`ZSTD_LEVEL`)."""
    from numcodecs import Zstd

    return (Zstd(level=ZSTD_LEVEL),)


def fill_value(dtype: Any) -> float | int:
    """The Zarr ``fill_value`` (CF ``_FillValue``, GDAL's nodata) of a variable of ``dtype``:
    never a valid value. NaN for floats; for ``uint8`` 255, which is :data:`NODATA_CLASS`
    (classes are 0..2) and :data:`pipeline.core.quality.QUALITY_NODATA` (a flag combination that cannot occur)
    and above the largest count we store (254); the largest value of other unsigned types,
    the smallest of signed ones."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return float("nan")
    if dt == np.uint8:
        return NODATA_CLASS
    if dt.kind == "u":
        return int(np.iinfo(dt).max)
    if dt.kind == "i":
        return int(np.iinfo(dt).min)
    raise TypeError(f"no fill value for dtype {dt}")


def zarr_encoding(variables: Any, chunks: tuple[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """xarray ``to_zarr`` encoding of every variable of a dataset (``variables`` maps names to
    arrays with a ``dtype`` and ``dims``): zstd for all, :func:`fill_value` as ``_FillValue``
    (Zarr v2 ``fill_value``) for the variables that have dimensions, and ``chunks`` for
    those on ``(y, x)``."""
    enc: dict[str, dict[str, Any]] = {}
    for name, var in variables.items():
        e: dict[str, Any] = {"compressors": zarr_compressors()}
        dims = tuple(getattr(var, "dims", ()))
        if dims and np.dtype(var.dtype).kind in "fiu":
            e["_FillValue"] = fill_value(var.dtype)
        if chunks is not None and dims == ("y", "x"):
            e["chunks"] = tuple(int(c) for c in chunks)
        enc[str(name)] = e
    return enc


def crs_attrs(crs: Any) -> dict[str, Any]:
    """The array-level CRS attribute GDAL reads (``_CRS``: WKT2 and, where one exists, its
    EPSG URL), written beside the CF ``grid_mapping`` so that a reader opening one array
    folder alone sees the CRS too. ``crs``: anything :class:`pyproj.CRS` accepts."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    doc: dict[str, Any] = {"wkt": c.to_wkt()}
    epsg = c.to_epsg()
    if epsg is not None:
        doc["url"] = f"http://www.opengis.net/def/crs/EPSG/0/{epsg}"
    return {"_CRS": doc}


def store_format(path: str | os.PathLike) -> int | None:
    """The Zarr format of the store or group folder at ``path`` (2 or 3), None when none is there."""
    p = Path(path)
    if (p / "zarr.json").is_file():
        return 3
    if (p / ".zgroup").is_file() or (p / ".zarray").is_file():
        return 2
    return None


def zarr_metadata_file(path: str | os.PathLike) -> Path:
    """The metadata file a finished store writes last (its consolidated metadata:
    ``.zmetadata`` in Zarr v2, ``zarr.json`` in v3); its modification time is the store's."""
    p = Path(path)
    return p / "zarr.json" if store_format(p) == 3 else p / ".zmetadata"
