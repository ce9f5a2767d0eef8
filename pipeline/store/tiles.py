"""Zarr stores written tile by tile, resumable, and complete only when they are.

A store is built at ``<name>.zarr.partial``: the template (metadata, coordinates, CRS)
first, then chunk-aligned region writes, one tile at a time, each recorded in a progress
ledger. Only when every tile is written are the metadata consolidated, the store marked
``slidewatch_complete`` and the folder renamed to ``<name>.zarr`` — so a store at the
final path is always complete, and an interrupted run resumes from the ledger.

Every store is written in :data:`~pipeline.core.layout.ZARR_FORMAT` (Zarr v2, so that the
GDAL of the pinned rasterio, and QGIS, open it with its CRS; ``docs/zarr.md``) with the
fill values of :func:`~pipeline.core.layout.fill_value`, which are never valid values (NaN;
255 for the uint8 classes, quality flags and counts). A finished store in another format
(Zarr v3, as earlier versions wrote) is not complete for :meth:`TileStore.is_complete`:
it is rebuilt, then replaced.

Every finished store carries a fresh ``slidewatch_generation`` id. A stage that reads
another store (the LSI reading the cube, the risk mosaic reading the LSI) notes that id
when it starts (:class:`GenerationGuard`) and checks it again after reading each tile and
before the tile enters its ledger: a store replaced under a reader by any means — another
run, ``--overwrite``, a copy — stops the reader with :class:`StoreChangedError` instead of
mixing two generations into one output. A finished store replaces the old one in one
atomic step where the file system can (``renameat2`` exchange,
:func:`pipeline.core.files.replace_dir`), so readers never find the path missing.

Two runs never write the same store: :meth:`TileStore.acquire` takes the
:class:`~pipeline.core.locking.WriterLock` on ``<name>.zarr.lock`` (which records the
holder's pid). The kernel drops the lock when its holder dies, so the lock of a killed
run is taken over safely, never by two processes at once.

Retries, and which layer retries what (three layers, each for failures the one below
cannot fix):

1. **GDAL** retries a single HTTP request (429, 5xx, timeouts) inside one read, with its
   own backoff: ``GDAL_HTTP_MAX_RETRY``/``GDAL_HTTP_RETRY_DELAY`` in
   :data:`pipeline.acquire.gdal.OVERRIDABLE`. It cannot re-sign a URL whose token expired.
2. **The tile retry here** (:func:`write_tiles`, policy :func:`tile_retrying`, on
   ``tenacity``) runs when a tile's read failed for good in GDAL: it calls
   ``tile_dataset(tile)`` again, which rebuilds the tile's dataset and so signs its URLs
   afresh, after ``on_retry`` (drop expired tokens, clear GDAL's HTTP cache). Up to
   :data:`TILE_RETRIES` more attempts, :data:`TILE_RETRY_DELAY_S` apart, doubling, at most
   a minute; only errors ``retry_if`` accepts, never a :class:`SlidewatchError`. A tile
   lands whole in the ledger or is written again on resume, so retrying one is safe.
3. **Prefect** (``flows/prefect_flows.py``, ``retries=`` on the tasks) reruns a whole stage
   task on a transient error (STAC API unreachable, an OS-level error), e.g. the
   ``CatalogError`` raised once a tile's budget is spent; the rerun resumes from the
   ledger, so the tiles already written are kept.

Layer 2 is ``tenacity`` rather than the hand-written loop it replaced: about as long, but
each part of the policy is a named piece (stop, wait, retry, before_sleep) instead of
counter arithmetic in a ``while True``. One nuance: ``retry_if`` is also asked about the
last failure (tenacity asks before it checks the budget); it must not have side effects.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import tenacity
import xarray as xr
import zarr

from pipeline.core.config import Tile, ZoneGrid
from pipeline.core.errors import SlidewatchError, StoreError
from pipeline.core.files import replace_dir
from pipeline.core.generation import GENERATION_ATTR, GenerationGuard, StoreChangedError, store_generation
from pipeline.core.layout import ZARR_FORMAT, crs_attrs, fill_value, store_format, zarr_encoding
from pipeline.core.locking import WriterLock

COMPLETE_ATTR = "slidewatch_complete"
FINGERPRINT_ATTR = "slidewatch_fingerprint"

#: Attempts per tile after the first (each rebuilds the tile's dataset) and the first pause.
TILE_RETRIES = 3
TILE_RETRY_DELAY_S = 2.0
#: The longest pause between two attempts at a tile (seconds).
TILE_RETRY_MAX_DELAY_S = 60.0
#: errno values of write failures that retrying cannot fix (reported as StoreError).
_FATAL_WRITE_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def grid_coords(grid: ZoneGrid) -> dict[str, np.ndarray]:
    """Pixel-centre coordinates of a grid (float64 metres)."""
    y, x = grid.pixel_centres()
    return {"y": y, "x": x}


def georeference(ds: xr.Dataset, grid: ZoneGrid) -> xr.Dataset:
    """Attach CF grid mapping (``spatial_ref``) and transform with rioxarray, and the
    array-level ``_CRS`` GDAL reads (:func:`~pipeline.core.layout.crs_attrs`) on every
    variable on ``(y, x)``."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = ds.rio.write_crs(f"EPSG:{grid.epsg}")
    ds = ds.rio.write_transform(_affine(grid))
    ds = ds.rio.write_coordinate_system()
    crs = crs_attrs(grid.epsg)
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        ds[name].encoding.pop("grid_mapping", None)
        if set(ds[name].dims) >= {"y", "x"}:
            ds[name].attrs.update(crs)
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
    """A lazy dataset of fill values (:func:`~pipeline.core.layout.fill_value`: NaN, 255
    for uint8) on ``grid``: cheap empty tiles, read back as "no data"."""
    coords = grid_coords(grid)
    data = {
        name: (("y", "x"), da.full(grid.shape, fill_value(dt), dtype=dt, chunks=grid.chunk))
        for name, dt in variables.items()
    }
    return xr.Dataset(data, coords=coords)


@dataclass
class TileStore:
    """A resumable, tile-by-tile Zarr store (see the module docstring)."""

    path: Path
    fingerprint: str

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._writer = WriterLock(self.lock, target=self.path)
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
        """A finished store with this fingerprint, in :data:`ZARR_FORMAT`, exists at the final
        path (one in an older format is rebuilt: see :meth:`outdated_format`)."""
        if not self.path.exists() or store_format(self.path) != ZARR_FORMAT:
            return False
        try:
            attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        except Exception:
            return False
        return bool(attrs.get(COMPLETE_ATTR)) and attrs.get(FINGERPRINT_ATTR) == self.fingerprint

    def outdated_format(self) -> int | None:
        """The Zarr format of the store at the final path when it is not :data:`ZARR_FORMAT`
        (a store an older slidewatch wrote in Zarr v3: rebuilt, then replaced), else None."""
        found = store_format(self.path) if self.path.exists() else None
        return found if found not in (None, ZARR_FORMAT) else None

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
        when the output folder or the lock file cannot be created.
        """
        self._writer.acquire(wait_s)

    def release(self) -> None:
        """Give the lock back (the lock file is removed while still held)."""
        self._writer.release()

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
            if (doc is not None and doc.get("fingerprint") == self.fingerprint
                    and store_format(self.partial) == ZARR_FORMAT):
                return  # resume
            shutil.rmtree(self.partial)
        ds = tmpl.copy()
        ds.attrs.update({k: _jsonable(v) for k, v in attrs.items()})
        ds.attrs[FINGERPRINT_ATTR] = self.fingerprint
        ds.attrs[COMPLETE_ATTR] = False
        for var in ds.variables.values():
            var.encoding = {k: v for k, v in var.encoding.items() if k not in ("_FillValue", "fill_value")}
        encoding = zarr_encoding(ds.variables, (tmpl.chunksizes["y"][0], tmpl.chunksizes["x"][0]))
        try:
            ds.to_zarr(str(self.partial), mode="w", compute=False, zarr_format=ZARR_FORMAT,
                       consolidated=False, encoding=encoding)
        except OSError as exc:
            raise StoreError(f"Cannot write {self.partial}: {exc.strerror or exc}.", "choose a writable --out.") from None
        self._write_ledger(set())

    def write_tile(self, tile: Tile, ds: xr.Dataset, verify: Callable[[], None] | None = None) -> None:
        """Compute ``ds`` (the tile's lazy data) and write it into its aligned region.

        ``verify`` runs after the tile is written and before it enters the ledger (e.g.
        :meth:`GenerationGuard.check` on the store it was read from): when it raises, the
        tile is not recorded, so a resume writes it again."""
        write_region(self.partial, tile, ds)
        self.record([tile.key], verify=verify)

    def record(self, keys: Iterable[str], verify: Callable[[], None] | None = None) -> None:
        """Enter tiles already written into the partial store (e.g. by :func:`write_region` on
        a Dask worker) in the ledger, after ``verify`` (as in :meth:`write_tile`) passed."""
        if verify is not None:
            verify()
        with self._ledger_lock:
            done = self.done()
            done.update(keys)
            self._write_ledger(done)

    def has_data(self, name: str, where: Callable[[np.ndarray], np.ndarray] | None = None) -> bool:
        """Whether variable ``name`` of the partial store holds any value but its fill (the
        array's Zarr ``fill_value``: NaN for floats, 255 for uint8) for which ``where``
        (a numpy predicate, e.g. ``lambda count: count > 0``) also holds when given; reads
        chunk by chunk and stops at the first hit."""
        arr = zarr.open_group(str(self.partial), mode="r")[name]
        floating = np.issubdtype(arr.dtype, np.floating)
        fill = arr.fill_value
        cy, cx = arr.chunks
        for r in range(0, arr.shape[0], cy):
            for c in range(0, arr.shape[1], cx):
                block = np.asarray(arr[r:r + cy, c:c + cx])
                ok = np.isfinite(block) if floating else (block != fill if fill is not None else np.ones(block.shape, bool))
                if where is not None:
                    ok &= np.asarray(where(block), dtype=bool)
                if ok.any():
                    return True
        return False

    def finalize(self, extra_attrs: Mapping[str, object] | None = None) -> Path:
        """Mark complete, consolidate, and move the partial store to its final path."""
        group = zarr.open_group(str(self.partial), mode="r+")
        if extra_attrs:
            group.attrs.update({k: _jsonable(v) for k, v in extra_attrs.items()})
        group.attrs[COMPLETE_ATTR] = True
        group.attrs[GENERATION_ATTR] = uuid.uuid4().hex
        trash = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)  # left by a run killed while replacing a store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (v3 only) "consolidated metadata is not in the v3 spec yet"
            zarr.consolidate_metadata(str(self.partial))
        # atomic where the file system allows (no moment without a store at the final path)
        replace_dir(self.partial, self.path, trash)
        self.ledger.unlink(missing_ok=True)
        return self.path

    def _write_ledger(self, tiles: Iterable[str]) -> None:
        ledger = self.ledger
        tmp = ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "tiles": sorted(tiles)}))
        tmp.replace(ledger)


def open_parent_group(path: Path) -> zarr.Group:
    """Open (creating it) the group at ``path`` whose child groups are stores of their own
    (the risk mosaic's root, one :class:`TileStore` per zone), in :data:`ZARR_FORMAT`.

    A root that an earlier version wrote in another Zarr format (v3) would hide children
    written in this one (zarr reads the v3 metadata first): its metadata file is replaced
    by one in this format, its attributes kept; its children are rebuilt as stores of their
    own (:meth:`TileStore.is_complete` is false for them)."""
    path = Path(path)
    found = store_format(path)
    if found is not None and found != ZARR_FORMAT:
        attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=found).attrs)
        for name in ("zarr.json",) if found == 3 else (".zgroup", ".zattrs", ".zmetadata"):
            (path / name).unlink(missing_ok=True)
        group = zarr.open_group(str(path), mode="a", zarr_format=ZARR_FORMAT)
        group.attrs.update(attrs)
        return group
    return zarr.open_group(str(path), mode="a", zarr_format=ZARR_FORMAT)


def write_region(partial: Path, tile: Tile, ds: xr.Dataset) -> None:
    """Compute ``ds`` and write it into ``tile``'s aligned region of the partial store at
    ``partial`` (made by :meth:`TileStore.prepare`). Needs no :class:`TileStore` (no lock,
    no ledger), so it runs on a Dask worker; the driver then enters
    the tile with :meth:`TileStore.record`."""
    region = {"y": slice(tile.row0, tile.row1), "x": slice(tile.col0, tile.col1)}
    drop = [n for n, v in ds.variables.items() if not set(v.dims) >= {"y", "x"}]
    ds = ds.drop_vars(drop + [c for c in ("x", "y") if c in ds.coords and c not in drop])
    ds.attrs = {}
    for var in ds.data_vars.values():
        var.attrs = {}
        var.encoding = {}
    try:
        ds.to_zarr(str(partial), region=region, mode="r+", zarr_format=ZARR_FORMAT, consolidated=False)
    except OSError as exc:
        if exc.errno in _FATAL_WRITE_ERRNO:
            raise StoreError(f"Cannot write tile {tile.key} into {partial}: {exc.strerror}.",
                             "free disk space or choose a writable --out, then rerun to resume.") from None
        raise


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Hand the heap memory this process has freed back to the operating system (glibc's
    ``malloc_trim(0)``; False where the C library has none, e.g. musl or macOS).

    A tile's arrays are allocated and freed by several threads, each in its own malloc
    arena; freed, the space stays mapped, scattered between live blocks, so without this
    the resident size climbs to the busiest tile's footprint and stays there, and the next
    tile's peak comes on top of it. :func:`write_tiles` calls it after every tile (dask's
    distributed workers get the same effect from ``MALLOC_TRIM_THRESHOLD_``).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


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
    verify: Callable[[], None] | None = None,
) -> None:
    """Write every pending tile; ``on_tile(tile, skipped)`` reports progress; ``verify``
    as in :meth:`TileStore.write_tile` (never retried: its error is a :class:`StoreError`).

    A tile that fails is tried again as :func:`tile_retrying` says: up to ``retries`` more
    times (default :data:`TILE_RETRIES`), ``retry_delay_s`` apart, doubling (default
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
    with ``concurrency`` (one tile's working set each); after each tile the freed heap goes
    back to the system (:func:`release_freed_memory`).
    """
    retrying = tile_retrying(TILE_RETRIES if retries is None else retries,
                             TILE_RETRY_DELAY_S if retry_delay_s is None else retry_delay_s,
                             retry_if, on_retry)
    done = store.done()
    pending = []
    for tile in tiles:
        if tile.key in done:
            if on_tile:
                on_tile(tile, True)
        else:
            pending.append(tile)

    def write_one(tile: Tile) -> Tile:
        try:
            retrying(lambda t: store.write_tile(t, tile_dataset(t), verify), tile)
        except SlidewatchError:
            raise
        except Exception as exc:
            # statistics are per thread (tenacity keeps them thread-local), so per tile here
            _label(exc, tile, retrying.statistics.get("attempt_number", 1))
            raise
        finally:
            release_freed_memory()  # the next tile starts from what is live, not the last peak
        return tile

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


def tile_retrying(
    retries: int,
    delay_s: float,
    retry_if: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[Tile, int, BaseException], None] | None = None,
) -> tenacity.Retrying:
    """The per-tile retry policy (layer 2 in the module docstring), called as
    ``retrying(write, tile)``: ``retries`` more attempts after the first, pauses of
    ``delay_s · 2^(n-1)`` capped at :data:`TILE_RETRY_MAX_DELAY_S`, only for errors that are
    no :class:`SlidewatchError` and that ``retry_if`` accepts, ``on_retry(tile, n, error)``
    before the n-th pause; the last error is raised unchanged."""

    def retryable(exc: BaseException) -> bool:
        return (isinstance(exc, Exception) and not isinstance(exc, SlidewatchError)
                and (retry_if is None or retry_if(exc)))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.args[0], state.attempt_number, state.outcome.exception())

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(1 + max(0, int(retries))),
        wait=tenacity.wait_exponential(multiplier=max(0.0, float(delay_s)), max=TILE_RETRY_MAX_DELAY_S),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


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


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))
