"""Zarr v3 stores written tile by tile, resumable, and complete only when they are.

A store is built at ``<name>.zarr.partial``: the template (metadata, coordinates, CRS)
first, then chunk-aligned region writes, one tile at a time, each recorded in a progress
ledger. Only when every tile is written are the metadata consolidated, the store marked
``slidewatch_complete`` and the folder renamed to ``<name>.zarr`` — so a store at the
final path is always complete, and an interrupted run resumes from the ledger.

Two runs never write the same store: :meth:`TileStore.acquire` takes an exclusive
``flock`` on ``<name>.zarr.lock`` (which records the holder's pid). The kernel drops the
lock when its holder dies, so the lock of a killed run is taken over safely, never by two
processes at once. :func:`write_tiles` retries a failing tile (a fresh ``tile_dataset``
each time, which re-signs URLs) within a per-tile budget before giving up; a tile either
lands whole in the ledger or is written again on resume.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline.core.config import Tile, ZoneGrid
from pipeline.core.errors import SlidewatchError, StoreError

try:  # POSIX advisory locks; elsewhere an O_EXCL lock file with a pid check is used
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

COMPLETE_ATTR = "slidewatch_complete"
FINGERPRINT_ATTR = "slidewatch_fingerprint"

#: Attempts per tile after the first (each rebuilds the tile's dataset) and the first pause.
TILE_RETRIES = 3
TILE_RETRY_DELAY_S = 2.0
#: errno values of write failures that retrying cannot fix (reported as StoreError).
_FATAL_WRITE_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def grid_coords(grid: ZoneGrid) -> dict[str, np.ndarray]:
    """Pixel-centre coordinates of a grid (float64 metres)."""
    y, x = grid.pixel_centres()
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

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._lock_fd: int | None = None
        self._ledger_lock = threading.Lock()  # tiles written by concurrent threads

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
        """Keys of the tiles already written into the partial store (per the ledger)."""
        if not self.partial.exists():
            return set()
        doc = self._read_ledger()
        if doc is None or doc.get("fingerprint") != self.fingerprint:
            return set()
        return set(doc.get("tiles", []))

    def _read_ledger(self) -> dict | None:
        """The ledger document, or None when absent or unreadable (then nothing is resumed)."""
        try:
            doc = json.loads(self.ledger.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    # -- locking --------------------------------------------------------------------
    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the writer lock, waiting up to ``wait_s`` seconds for another run to finish.

        Raises :class:`StoreError` naming the other writer's pid when it is still held, or
        when the output folder cannot be created.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the output folder {self.path.parent}: {exc.strerror or exc}.",
                "choose a writable --out (a folder you can create files in).",
            ) from None
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            holder = self._try_lock()
            if holder is None:
                return
            if time.monotonic() >= deadline:
                who = f"pid {holder}" if holder > 0 else "an unknown process"
                raise StoreError(
                    f"{self.path} is being written by another slidewatch run ({who}; lock file {self.lock}).",
                    "wait for that run to finish (or stop it), or write to another --out; "
                    "a lock left by a run that died is taken over automatically.",
                )
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _try_lock(self) -> int | None:
        """Take the lock now: None on success, else the holder's pid (0 when unknown)."""
        if fcntl is None:  # pragma: no cover - Windows
            return self._try_lock_excl()
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"Cannot create the lock file {self.lock}: {exc.strerror or exc}.",
                             "choose a writable --out.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            return holder
        # the lock file may have been unlinked by its previous holder after we opened it
        try:
            same = os.fstat(fd).st_ino == os.stat(self.lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self._try_lock()
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        return None

    def _try_lock_excl(self) -> int | None:  # pragma: no cover - Windows fallback
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    return pid
                self.lock.unlink(missing_ok=True)  # stale lock of a dead run
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return None
        return 0

    def release(self) -> None:
        """Give the lock back (the lock file is removed while still held)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            if fcntl is None:  # pragma: no cover
                self.lock.unlink(missing_ok=True)
            return
        try:
            self.lock.unlink(missing_ok=True)
        finally:
            os.close(fd)

    # -- writing --------------------------------------------------------------------
    def prepare(self, tmpl: xr.Dataset, attrs: Mapping[str, object], overwrite: bool = False) -> None:
        """Create the partial store from ``tmpl`` unless a matching one can be resumed."""
        if self.path.exists() and not overwrite and self.existing_fingerprint() not in (None, self.fingerprint):
            raise StoreError(
                f"{self.path} holds a finished store made with other inputs or parameters.",
                "pass --overwrite to replace it, or choose another --out.",
            )
        if self.partial.exists():
            doc = self._read_ledger()
            if doc is not None and doc.get("fingerprint") == self.fingerprint:
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
        except OSError as exc:
            raise StoreError(f"Cannot write {self.partial}: {exc.strerror or exc}.", "choose a writable --out.") from None
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
        try:
            ds.to_zarr(str(self.partial), region=region, mode="r+", zarr_format=3, consolidated=False)
        except OSError as exc:
            if exc.errno in _FATAL_WRITE_ERRNO:
                raise StoreError(f"Cannot write tile {tile.key} into {self.partial}: {exc.strerror}.",
                                 "free disk space or choose a writable --out, then rerun to resume.") from None
            raise
        with self._ledger_lock:
            done = self.done()
            done.add(tile.key)
            self._write_ledger(done)

    def has_data(self, name: str) -> bool:
        """Whether variable ``name`` of the partial store holds any value but its fill (NaN
        for floats, 0 for integers); reads chunk by chunk and stops at the first hit."""
        arr = zarr.open_group(str(self.partial), mode="r")[name]
        floating = np.issubdtype(arr.dtype, np.floating)
        cy, cx = arr.chunks
        for r in range(0, arr.shape[0], cy):
            for c in range(0, arr.shape[1], cx):
                block = np.asarray(arr[r:r + cy, c:c + cx])
                if (np.isfinite(block) if floating else block != 0).any():
                    return True
        return False

    def finalize(self, extra_attrs: Mapping[str, object] | None = None) -> Path:
        """Mark complete, consolidate, and move the partial store to its final path."""
        group = zarr.open_group(str(self.partial), mode="r+")
        if extra_attrs:
            group.attrs.update({k: _jsonable(v) for k, v in extra_attrs.items()})
        group.attrs[COMPLETE_ATTR] = True
        trash = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)  # left by a run killed while replacing a store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not in the v3 spec yet"
            zarr.consolidate_metadata(str(self.partial))
        if self.path.exists():
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
    *,
    retries: int | None = None,
    retry_delay_s: float | None = None,
    retry_if: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[Tile, int, BaseException], None] | None = None,
    concurrency: int = 1,
) -> None:
    """Write every pending tile; ``on_tile(tile, skipped)`` reports progress.

    A tile that fails is tried again up to ``retries`` times (default
    :data:`TILE_RETRIES`), ``retry_delay_s`` apart, doubling (default
    :data:`TILE_RETRY_DELAY_S`), each time with a fresh ``tile_dataset(tile)``: the
    dataset is rebuilt, so URLs are signed again. ``on_retry(tile, attempt, error)`` runs
    before each new attempt (e.g. to drop expired tokens). Slidewatch errors and errors for
    which ``retry_if`` is false are not retried. When the budget is spent the last error
    is raised unchanged, with the tile and the attempts made as its ``slidewatch_tile`` and
    ``slidewatch_attempts`` attributes; the tiles written so far stay in the ledger for a
    resume.

    ``concurrency`` tiles are computed at once (each from its own thread, so a distributed
    cluster gets several tiles' graphs together). After a failure no new tile starts; the
    tiles already running finish and are recorded, then the error is raised. Memory grows
    with ``concurrency`` (one tile's working set each).
    """
    budget = TILE_RETRIES if retries is None else max(0, int(retries))
    delay = TILE_RETRY_DELAY_S if retry_delay_s is None else max(0.0, float(retry_delay_s))
    done = store.done()
    pending = []
    for tile in tiles:
        if tile.key in done:
            if on_tile:
                on_tile(tile, True)
        else:
            pending.append(tile)

    def write_one(tile: Tile) -> Tile:
        attempt = 0
        while True:
            try:
                store.write_tile(tile, tile_dataset(tile))
                return tile
            except SlidewatchError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified by retry_if
                if attempt >= budget or (retry_if is not None and not retry_if(exc)):
                    _label(exc, tile, attempt + 1)
                    raise
                attempt += 1
                if on_retry:
                    on_retry(tile, attempt, exc)
                time.sleep(min(delay * 2 ** (attempt - 1), 60.0))

    if concurrency <= 1 or len(pending) <= 1:
        for tile in pending:
            write_one(tile)
            if on_tile:
                on_tile(tile, False)
        return
    pool = ThreadPoolExecutor(max_workers=int(concurrency), thread_name_prefix="slidewatch-tile")
    try:
        queue = iter(pending)
        running = {pool.submit(write_one, t) for t in _take(queue, int(concurrency))}
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            failed = [f for f in finished if f.exception() is not None]
            for fut in finished:
                if fut.exception() is None and on_tile:
                    on_tile(fut.result(), False)
            if failed:
                wait(running)  # let running tiles land in the ledger, start no new one
                for fut in running:
                    if fut.exception() is None and on_tile:
                        on_tile(fut.result(), False)
                raise failed[0].exception()  # type: ignore[misc]
            running |= {pool.submit(write_one, t) for t in _take(queue, len(finished))}
    finally:
        pool.shutdown(wait=True)


def _take(it: Iterable[Tile], n: int) -> list[Tile]:
    out = []
    for tile in it:
        out.append(tile)
        if len(out) >= n:
            break
    return out


def _label(exc: BaseException, tile: Tile, attempts: int) -> None:
    """Name the tile an error comes from on the error itself (concurrent tiles)."""
    try:
        exc.slidewatch_tile = tile  # type: ignore[attr-defined]
        exc.slidewatch_attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))
