"""Zarr v3 stores written tile by tile, resumable, and complete only when they are.

A store is built at ``<name>.zarr.partial``: the template (metadata, coordinates, CRS)
first, then chunk-aligned region writes, one tile at a time, each recorded in a progress
ledger. Only when every tile is written are the metadata consolidated, the store marked
``slidewatch_complete`` and the folder renamed to ``<name>.zarr`` — so a store at the
final path is always complete, and an interrupted run resumes from the ledger. A lock
file keeps two runs from writing the same store.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline.config import Tile, ZoneGrid
from pipeline.errors import StoreError

COMPLETE_ATTR = "slidewatch_complete"
FINGERPRINT_ATTR = "slidewatch_fingerprint"


def grid_coords(grid: ZoneGrid) -> dict[str, np.ndarray]:
    """Pixel-centre coordinates of a grid (float64 metres)."""
    x = grid.x0 + (np.arange(grid.width) + 0.5) * grid.resolution
    y = grid.y1 - (np.arange(grid.height) + 0.5) * grid.resolution
    return {"y": y, "x": x}


def georeference(ds: xr.Dataset, grid: ZoneGrid) -> xr.Dataset:
    """Attach CF grid mapping (``spatial_ref``) and transform with rioxarray."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = ds.rio.write_crs(f"EPSG:{grid.epsg}")
    ds = ds.rio.write_transform(_affine(grid))
    ds = ds.rio.write_coordinate_system()
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        ds[name].encoding.pop("grid_mapping", None)
    return ds


def _affine(grid: ZoneGrid):  # type: ignore[no-untyped-def]
    from affine import Affine

    return Affine(*grid.transform)


def template(
    grid: ZoneGrid,
    variables: Mapping[str, str],
    attrs: Mapping[str, Mapping[str, str]] | None = None,
) -> xr.Dataset:
    """A lazy, never-computed dataset with the store's variables, chunks and georeference."""
    coords = grid_coords(grid)
    data_vars = {}
    for name, dtype in variables.items():
        arr = da.empty(grid.shape, dtype=dtype, chunks=grid.chunk)
        data_vars[name] = xr.DataArray(arr, dims=("y", "x"), attrs=dict((attrs or {}).get(name, {})))
    ds = xr.Dataset(data_vars, coords=coords)
    ds["x"].attrs.update(units="m", standard_name="projection_x_coordinate", axis="X")
    ds["y"].attrs.update(units="m", standard_name="projection_y_coordinate", axis="Y")
    return georeference(ds, grid)


def blank(grid: ZoneGrid, variables: Mapping[str, str]) -> xr.Dataset:
    """A lazy dataset of fill values (NaN, or 0 for integers) on ``grid``: cheap empty tiles."""
    coords = grid_coords(grid)
    data = {
        name: (("y", "x"), da.full(grid.shape, _fill_value(np.dtype(dt)), dtype=dt, chunks=grid.chunk))
        for name, dt in variables.items()
    }
    return xr.Dataset(data, coords=coords)


def _fill_value(dtype: np.dtype) -> object:
    return np.nan if np.issubdtype(dtype, np.floating) else 0


@dataclass
class TileStore:
    """A resumable, tile-by-tile Zarr v3 store (see the module docstring)."""

    path: Path
    fingerprint: str

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    @property
    def ledger(self) -> Path:
        """Progress ledger beside the partial store (tiles written so far)."""
        return self.path.with_name(self.path.name + ".progress.json")

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    # -- state ----------------------------------------------------------------------
    def is_complete(self) -> bool:
        """A finished store with this fingerprint exists at the final path."""
        if not self.path.exists():
            return False
        try:
            attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        except Exception:
            return False
        return bool(attrs.get(COMPLETE_ATTR)) and attrs.get(FINGERPRINT_ATTR) == self.fingerprint

    def existing_fingerprint(self) -> str | None:
        try:
            return dict(zarr.open_group(str(self.path), mode="r").attrs).get(FINGERPRINT_ATTR)
        except Exception:
            return None

    def done(self) -> set[str]:
        ledger = self.ledger
        if not ledger.exists() or not self.partial.exists():
            return set()
        doc = json.loads(ledger.read_text())
        if doc.get("fingerprint") != self.fingerprint:
            return set()
        return set(doc.get("tiles", []))

    # -- locking --------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the writer lock, or raise StoreError naming the other writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise StoreError(
                        f"{self.path} is being written by another slidewatch run (pid {pid}).",
                        "wait for it to finish, or use another --out.",
                    ) from None
                self.lock.unlink(missing_ok=True)  # stale lock of a dead run
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return
        raise StoreError(f"Could not take the lock {self.lock}.", "remove it if no run is active.")

    def release(self) -> None:
        self.lock.unlink(missing_ok=True)

    # -- writing --------------------------------------------------------------------
    def prepare(self, tmpl: xr.Dataset, attrs: Mapping[str, object], overwrite: bool = False) -> None:
        """Create the partial store from ``tmpl`` unless a matching one can be resumed."""
        if self.path.exists() and not overwrite and self.existing_fingerprint() not in (None, self.fingerprint):
            raise StoreError(
                f"{self.path} holds a finished store made with other inputs or parameters.",
                "pass --overwrite to replace it, or choose another --out.",
            )
        if self.partial.exists():
            ledger = self.ledger
            if ledger.exists() and json.loads(ledger.read_text()).get("fingerprint") == self.fingerprint:
                return  # resume
            shutil.rmtree(self.partial)
        ds = tmpl.copy()
        ds.attrs.update({k: _jsonable(v) for k, v in attrs.items()})
        ds.attrs[FINGERPRINT_ATTR] = self.fingerprint
        ds.attrs[COMPLETE_ATTR] = False
        encoding = {
            name: {"chunks": (tmpl.chunksizes["y"][0], tmpl.chunksizes["x"][0]),
                   "fill_value": _fill_value(var.dtype)}
            for name, var in tmpl.data_vars.items()
        }
        try:
            ds.to_zarr(str(self.partial), mode="w", compute=False, zarr_format=3,
                       consolidated=False, encoding=encoding)
        except PermissionError as exc:
            raise StoreError(f"Cannot write {self.partial}: {exc.strerror}.", "choose a writable --out.") from None
        self._write_ledger(set())

    def write_tile(self, tile: Tile, ds: xr.Dataset) -> None:
        """Compute ``ds`` (the tile's lazy data) and write it into its aligned region."""
        region = {"y": slice(tile.row0, tile.row1), "x": slice(tile.col0, tile.col1)}
        drop = [n for n, v in ds.variables.items() if not set(v.dims) >= {"y", "x"}]
        ds = ds.drop_vars(drop + [c for c in ("x", "y") if c in ds.coords and c not in drop])
        ds.attrs = {}
        for var in ds.data_vars.values():
            var.attrs = {}
            var.encoding = {}
        ds.to_zarr(str(self.partial), region=region, mode="r+", zarr_format=3, consolidated=False)
        done = self.done()
        done.add(tile.key)
        self._write_ledger(done)

    def finalize(self, extra_attrs: Mapping[str, object] | None = None) -> Path:
        """Mark complete, consolidate, and move the partial store to its final path."""
        group = zarr.open_group(str(self.partial), mode="r+")
        if extra_attrs:
            group.attrs.update({k: _jsonable(v) for k, v in extra_attrs.items()})
        group.attrs[COMPLETE_ATTR] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not in the v3 spec yet"
            zarr.consolidate_metadata(str(self.partial))
        if self.path.exists():
            trash = self.path.with_name(self.path.name + ".old")
            shutil.rmtree(trash, ignore_errors=True)
            self.path.rename(trash)
            self.partial.rename(self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.partial.rename(self.path)
        self.ledger.unlink(missing_ok=True)
        return self.path

    def _write_ledger(self, tiles: Iterable[str]) -> None:
        ledger = self.ledger
        tmp = ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "tiles": sorted(tiles)}))
        tmp.replace(ledger)


def write_tiles(
    store: TileStore,
    grid: ZoneGrid,
    tiles: list[Tile],
    tile_dataset: Callable[[Tile], xr.Dataset],
    on_tile: Callable[[Tile, bool], None] | None = None,
) -> None:
    """Write every pending tile; ``on_tile(tile, skipped)`` reports progress."""
    done = store.done()
    for tile in tiles:
        if tile.key in done:
            if on_tile:
                on_tile(tile, True)
            continue
        store.write_tile(tile, tile_dataset(tile))
        if on_tile:
            on_tile(tile, False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))
