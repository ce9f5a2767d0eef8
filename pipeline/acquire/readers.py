"""The reader seam: how the cube's Sentinel pixels get from COGs onto a zone grid.

Two readers, chosen by one option, ``SLIDEWATCH_READER`` (:func:`reader_choice`):

``direct`` (the default)
    One dask task per grid chunk reads, for every scene, the window of each asset that the
    chunk needs and, for Sentinel-2, masks and composites it in the same task
    (:func:`s2_composite_blocks`): one task per chunk instead of a stack, a mask, an offset, a
    median and a count layer each. An asset on the grid's own pixel lattice (same CRS,
    north-up, a whole number of grid pixels per source pixel, its origin on a grid pixel
    corner: every Sentinel-2 band and Sentinel-1 RTC scene in its own UTM zone) is read at
    its native resolution and repeated onto the grid (nearest, and for bilinear only when the
    pixel sizes are equal, where bilinear interpolation is the identity); any other asset
    (another zone, a shifted origin) goes through GDAL's warper exactly as stackstac does it
    (a ``WarpedVRT`` over the whole grid, the chunk's window read from it). So both readers
    give the same pixels (``tests/pipeline/acquire/test_readers.py`` compares them).
``stackstac``
    ``stackstac.stack`` (kept for comparison and as a fallback): every asset through a
    ``WarpedVRT`` even when the grids match, one stack per asset group.

Both read with :func:`pipeline.acquire.gdal.gdal_env`'s settings, check each file's CRS,
geotransform and shape against its item (:func:`pipeline.acquire.gdal.check_georef`) and word
a failed read as stackstac does (``Error opening '<url>': ...``), which
:func:`pipeline.acquire.failures.read_failure` parses; a failed read fails the tile, never
becomes nodata. Each thread keeps its last :data:`OPEN_FILES_PER_THREAD` files open
(:func:`_dataset`), a few only: every open file costs memory, and a chunk reads more files
than any useful cap (with GDAL 3.10 the windowed reads do not keep decompressed blocks in
GDAL's block cache, measured: a kept handle saves the header parse, not the decompression).

Memory follows a chunk's depth, not the write tile's: the Sentinel-2 task stacks only the
scenes with cloud-free pixels in its chunk, and the Sentinel-1 task (:func:`s1_blocks`)
only the scenes with a value in its chunk, reducing them to the references and medians in
the same task (no ``(time, y, x)`` history between tasks).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pystac
from dask.base import tokenize
from rasterio.enums import Resampling
from stackstac.rio_env import LayeredEnv

from pipeline.acquire.gdal import AssetGeoref, asset_georef, check_georef, gdal_env, http_cache_generation
from pipeline.core.collections import S1_VALID_ABOVE, S2_BOA_OFFSET, S2_OFFSET_BASELINE, S2_QUANTIFICATION, SCL_VALID
from pipeline.core.config import ZoneGrid
from pipeline.core.errors import InputDataError
from pipeline.core.stats import nanquantile_axis0
from pipeline.factors import sar as _sar

__all__ = [
    "DEFAULT_READER",
    "READERS",
    "READER_ENV",
    "Scene",
    "SceneAsset",
    "boa_offset",
    "close_files",
    "median_of_finite",
    "reader_choice",
    "read_chunk",
    "S1_LAYERS",
    "s1_blocks",
    "s2_composite_blocks",
    "scenes_over",
    "stack_blocks",
]

#: Environment variable choosing the reader.
READER_ENV = "SLIDEWATCH_READER"
#: The readers, the default first.
READERS = ("direct", "stackstac")
#: The reader used when ``SLIDEWATCH_READER`` is unset.
DEFAULT_READER = "direct"
#: How far (grid pixels) a file's origin and pixel size may stray from the grid's lattice and
#: still be read without the warper: float rounding only.
LATTICE_TOLERANCE_PX = 1e-6
#: Files each thread keeps open between tasks (least recently used closed first). Each open
#: file holds about 0.5-1 MB (its ``VSI_CACHE`` and GDAL's per-dataset state), so this bounds
#: the memory per thread whatever the number of files a run reads (at 64 the handles of a
#: large region held over 100 MB on two threads, for no measurable speed: a chunk reads each
#: file once, in the same order as its neighbour, so a cap below a chunk's file count never
#: hits; a reopen parses the header again, which GDAL's ``/vsicurl/`` cache usually serves).
OPEN_FILES_PER_THREAD = 16
#: GDAL's ``VSI_CACHE_SIZE`` of each open file (bytes): with :data:`OPEN_FILES_PER_THREAD`, at
#: most 8 MiB per thread.
VSI_CACHE_BYTES = 512 * 1024


def reader_choice(environ: Mapping[str, str] | None = None) -> str:
    """The reader ``SLIDEWATCH_READER`` names (default :data:`DEFAULT_READER`); InputDataError
    for a name that is not in :data:`READERS`."""
    env = os.environ if environ is None else environ
    raw = (env.get(READER_ENV) or "").strip().lower()
    if not raw:
        return DEFAULT_READER
    if raw not in READERS:
        raise InputDataError(
            f"{READER_ENV}={raw!r} names no reader slidewatch has (it has {', '.join(READERS)}).",
            f"unset {READER_ENV} (default {DEFAULT_READER}) or set it to one of those.",
        )
    return raw


def boa_offset(item: pystac.Item) -> float:
    """The DN offset of a Sentinel-2 L2A scene: -1000 from processing baseline 04.00 on, else 0
    (by the acquisition date, 2022-01-25, when the item does not say its baseline)."""
    baseline = item.properties.get("s2:processing_baseline")
    if baseline is not None:
        return float(S2_BOA_OFFSET) if str(baseline) >= S2_OFFSET_BASELINE else 0.0
    when = item.datetime
    if when is None:
        return 0.0
    return float(S2_BOA_OFFSET) if np.datetime64(when.date()) >= np.datetime64("2022-01-25") else 0.0


# ----------------------------------------------------------------------------- what to read


@dataclass(frozen=True)
class SceneAsset:
    """One asset's file to read: what a task needs, without opening anything (picklable)."""

    href: str
    #: What the item declares about the file (checked against it when opened), or None.
    georef: AssetGeoref | None
    #: The file's footprint in the grid's CRS (from ``proj:*`` or the item's bbox), or None
    #: when unknown (then it is opened for every chunk and its own extent decides).
    bounds: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class Scene:
    """One item's assets, in the order asked for (None where the asset is not over the grid)."""

    item_id: str
    assets: tuple[SceneAsset | None, ...]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Strict overlap of two (minx, miny, maxx, maxy) boxes (stackstac's rule)."""
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


def _asset_bounds(d: Mapping, key: str, grid: ZoneGrid) -> tuple[float, float, float, float] | None:
    """An asset's footprint in the grid's CRS, as stackstac finds it: ``proj:bbox`` (asset, then
    item), else ``proj:transform`` and ``proj:shape``, else the item's lon/lat bbox."""
    from rasterio.warp import transform_bounds

    props = d.get("properties") or {}
    asset = (d.get("assets") or {}).get(key) or {}
    georef = asset_georef(d, key)
    epsg = georef.epsg if georef is not None else None
    box = asset.get("proj:bbox", props.get("proj:bbox"))
    bounds: tuple[float, float, float, float] | None = None
    if isinstance(box, (list, tuple)) and len(box) == 4:
        bounds = tuple(float(v) for v in box)  # type: ignore[assignment]
    elif georef is not None and georef.transform is not None and georef.shape is not None:
        a, b, c, dd, e, f = georef.transform
        rows, cols = georef.shape
        xs = [c, c + a * cols, c + b * rows, c + a * cols + b * rows]
        ys = [f, f + dd * cols, f + e * rows, f + dd * cols + e * rows]
        bounds = (min(xs), min(ys), max(xs), max(ys))
    if bounds is not None and epsg is not None:
        if epsg == grid.epsg:
            return bounds
        try:
            return tuple(transform_bounds(f"EPSG:{epsg}", f"EPSG:{grid.epsg}", *bounds, densify_pts=21))  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - cannot be projected: fall back to the item's bbox
            pass
    bbox = d.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) in (4, 6):
        w, s, e, n = (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else bbox
        if w <= e:
            try:
                return tuple(transform_bounds("EPSG:4326", f"EPSG:{grid.epsg}", w, s, e, n, densify_pts=21))  # type: ignore[return-value]
            except Exception:  # noqa: BLE001
                return None
    return None


def scenes_over(items: Sequence[pystac.Item], assets: Sequence[str], grid: ZoneGrid) -> list[Scene]:
    """The scenes of ``items`` with at least one of ``assets`` over ``grid``, in item order
    (items with none are left out, as stackstac leaves them out)."""
    out = []
    for it in items:
        d = it.to_dict(transform_hrefs=False)
        parts: list[SceneAsset | None] = []
        for key in assets:
            asset = it.assets.get(key)
            if asset is None or not asset.href:
                parts.append(None)
                continue
            bounds = _asset_bounds(d, key, grid)
            if bounds is not None and not _overlap(bounds, grid.bounds):
                parts.append(None)
                continue
            parts.append(SceneAsset(href=asset.href, georef=asset_georef(d, key), bounds=bounds))
        if any(p is not None for p in parts):
            out.append(Scene(item_id=it.id, assets=tuple(parts)))
    return out


# ----------------------------------------------------------------------------- one chunk


def _chunk_bounds(grid: ZoneGrid, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[float, float, float, float]:
    res = grid.resolution
    return (grid.x0 + cols[0] * res, grid.y1 - rows[1] * res, grid.x0 + cols[1] * res, grid.y1 - rows[0] * res)


def _whole(v: float) -> int | None:
    r = round(v)
    return int(r) if abs(v - r) <= LATTICE_TOLERANCE_PX else None


def _lattice(ds, epsg: int | None, grid: ZoneGrid, resampling: Resampling) -> tuple[int, int, int, int] | None:  # type: ignore[no-untyped-def]
    """(kx, ky, ox, oy) when the file lies on the grid's pixel lattice: ``kx``×``ky`` grid pixels
    per source pixel, its origin ``ox`` columns and ``oy`` rows from the grid's; else None."""
    t = ds.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or epsg is None:
        return None
    res = grid.resolution
    kx, ky = _whole(t.a / res), _whole(-t.e / res)
    ox, oy = _whole((t.c - grid.x0) / res), _whole((grid.y1 - t.f) / res)
    if kx is None or ky is None or ox is None or oy is None or kx < 1 or ky < 1:
        return None
    if resampling != Resampling.nearest and (kx, ky) != (1, 1):
        return None  # interpolation between source pixels: the warper's job
    if epsg != grid.epsg:
        return None
    return kx, ky, ox, oy


def _open(href: str, env: LayeredEnv):  # type: ignore[no-untyped-def]
    import rasterio

    # stackstac's VSI_CACHE on open (without it GDAL re-serves a truncated HTTP body to every
    # later read of the file, even after a retry), but at most VSI_CACHE_BYTES per handle: a
    # kept-open handle would otherwise hold up to 25 MB of the file's bytes
    with env.open, rasterio.Env(VSI_CACHE=True, VSI_CACHE_SIZE=VSI_CACHE_BYTES):
        try:
            return rasterio.open(href, sharing=False)
        except Exception as e:  # worded like stackstac's, for the retry logic
            raise RuntimeError(f"Error opening {href!r}: {e!r}") from e


_LOCAL = threading.local()
_OPENING = threading.Lock()
#: href → (lock serialising its opens, (cache generation, error) of its last failed open or None)
_OPENS: dict[str, list] = {}


def _open_shared(href: str, env: LayeredEnv):  # type: ignore[no-untyped-def]
    """:func:`_open`, one thread at a time per file: the second thread finds the file's header
    in GDAL's caches (no second request), or the first thread's error (the file is not asked
    twice, e.g. after a 404) until the next retry (:func:`~pipeline.acquire.gdal.clear_http_cache`)."""
    with _OPENING:
        if len(_OPENS) > 10_000:
            _OPENS.clear()
        entry = _OPENS.setdefault(href, [threading.Lock(), None])
    with entry[0]:
        failed = entry[1]
        if failed is not None and failed[0] == http_cache_generation():
            raise failed[1]
        try:
            return _open(href, env)
        except Exception as e:
            entry[1] = (http_cache_generation(), e)
            raise


def _dataset(href: str, env: LayeredEnv):  # type: ignore[no-untyped-def]
    """``href`` opened and its CRS's EPSG code, from this thread's open files when it is among
    them (a signed URL is another file: re-signed tiles open afresh)."""
    generation = http_cache_generation()
    if getattr(_LOCAL, "generation", None) != generation:  # a retry: reopen everything
        close_files()
        _LOCAL.generation = generation
    files: OrderedDict | None = getattr(_LOCAL, "files", None)
    if files is None:
        files = _LOCAL.files = OrderedDict()
    hit = files.get(href)
    if hit is not None and not hit[0].closed:
        files.move_to_end(href)
        return hit
    ds = _open_shared(href, env)
    files[href] = hit = (ds, ds.crs.to_epsg() if ds.crs is not None else None)
    while len(files) > max(OPEN_FILES_PER_THREAD, 1):
        _, (old, _) = files.popitem(last=False)
        old.close()
    return hit


def _forget(href: str) -> None:
    """Close and forget this thread's handle on ``href`` (after a failed read: a retry reopens)."""
    files: OrderedDict | None = getattr(_LOCAL, "files", None)
    hit = files.pop(href, None) if files is not None else None
    if hit is not None:
        hit[0].close()


def close_files() -> None:
    """Close the files this thread keeps open."""
    files: OrderedDict | None = getattr(_LOCAL, "files", None)
    while files:
        files.popitem(last=False)[1][0].close()


def read_chunk(
    asset: SceneAsset, grid: ZoneGrid, rows: tuple[int, int], cols: tuple[int, int], *,
    dtype: str, fill_value: float, resampling: Resampling, env: LayeredEnv | None = None,
) -> np.ndarray | None:
    """The asset's pixels on grid rows ``rows`` × columns ``cols`` (start, stop) in ``dtype``,
    ``fill_value`` where it has no data (its nodata value or outside it); None when the file
    does not reach the chunk."""
    if asset.bounds is not None and not _overlap(asset.bounds, _chunk_bounds(grid, rows, cols)):
        return None
    env = env or gdal_env()
    ds, epsg = _dataset(asset.href, env)
    try:
        if ds.count != 1:
            raise InputDataError(
                f"{asset.href.split('?', 1)[0]} has {ds.count} bands; each STAC asset must be one band.",
                "use a STAC API whose assets are single-band COGs (as Planetary Computer's).",
            )
        if asset.georef is not None:
            check_georef(ds, asset.href, asset.georef)
        lattice = _lattice(ds, epsg, grid, resampling)
        if lattice is None:
            return _warped(ds, asset.href, grid, rows, cols, dtype, fill_value, resampling, env)
        return _pasted(ds, asset.href, lattice, rows, cols, dtype, fill_value, env)
    except BaseException:
        _forget(asset.href)
        raise


def _pasted(ds, href: str, lattice: tuple[int, int, int, int], rows: tuple[int, int], cols: tuple[int, int],  # type: ignore[no-untyped-def]
            dtype: str, fill_value: float, env: LayeredEnv) -> np.ndarray | None:
    """A file on the grid's lattice: the source window under the chunk, read at its own
    resolution and repeated onto the chunk (the nearest source pixel of each grid pixel)."""
    from rasterio.windows import Window

    kx, ky, ox, oy = lattice
    # grid pixels (chunk-relative) the file covers, and the source pixels under them
    g0c, g1c = max(cols[0], ox), min(cols[1], ox + kx * ds.width)
    g0r, g1r = max(rows[0], oy), min(rows[1], oy + ky * ds.height)
    if g1c <= g0c or g1r <= g0r:
        return None
    c0, c1 = (g0c - ox) // kx, (g1c - 1 - ox) // kx + 1
    r0, r1 = (g0r - oy) // ky, (g1r - 1 - oy) // ky + 1
    window = Window(c0, r0, c1 - c0, r1 - r0)
    with env.read:
        try:
            src = ds.read(1, window=window, out_dtype=dtype)
        except Exception as e:  # worded like stackstac's, for the retry logic
            raise RuntimeError(f"Error reading {window} from {href!r}: {e!r}") from e
    missing = _nodata_mask(src, ds.nodata, fill_value)
    if missing is not None:
        src[missing] = fill_value
    if kx > 1 or ky > 1:
        src = np.repeat(np.repeat(src, ky, axis=0), kx, axis=1)
    # the repeated window starts at grid pixel (oy + r0 * ky, ox + c0 * kx)
    sr, sc = g0r - (oy + r0 * ky), g0c - (ox + c0 * kx)
    vals = src[sr:sr + g1r - g0r, sc:sc + g1c - g0c]
    if (g0r, g1r, g0c, g1c) == (rows[0], rows[1], cols[0], cols[1]):
        return np.ascontiguousarray(vals)
    out = np.full((rows[1] - rows[0], cols[1] - cols[0]), fill_value, dtype=dtype)
    out[g0r - rows[0]:g1r - rows[0], g0c - cols[0]:g1c - cols[0]] = vals
    return out


def _nodata_mask(src: np.ndarray, nodata: float | None, fill_value: float) -> np.ndarray | None:
    """Where ``src`` holds the file's nodata value (None when there is nothing to replace)."""
    if nodata is None or nodata == fill_value:
        return None
    if math.isnan(nodata):
        return np.isnan(src) if src.dtype.kind == "f" else None
    if src.dtype.kind == "f":
        return src == src.dtype.type(nodata)
    info = np.iinfo(src.dtype)
    return src == int(nodata) if float(nodata).is_integer() and info.min <= nodata <= info.max else None


def _warped(ds, href: str, grid: ZoneGrid, rows: tuple[int, int], cols: tuple[int, int], dtype: str,  # type: ignore[no-untyped-def]
            fill_value: float, resampling: Resampling, env: LayeredEnv) -> np.ndarray:
    """Any other file: GDAL's warper, exactly as stackstac sets it up (a ``WarpedVRT`` over the
    whole grid, an alpha band when the file has no nodata value), the chunk's window read."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    with env.open_vrt:
        vrt = WarpedVRT(ds, sharing=False, resampling=resampling, add_alpha=ds.nodata is None,
                        crs=CRS.from_epsg(grid.epsg), transform=Affine(*grid.transform),
                        height=grid.height, width=grid.width)
    window = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
    try:
        with env.read:
            try:
                result = vrt.read(window=window, out_dtype=dtype, masked=True)
            except Exception as e:  # worded like stackstac's, for the retry logic
                raise RuntimeError(f"Error reading {window} from {href!r}: {e!r}") from e
    finally:
        vrt.close()
    if result.shape[0] == 2:  # the alpha band marks where the file has data
        result = np.ma.masked_array(result[0], mask=result[1] == 0)
    else:
        result = result[0]
    return np.ma.filled(result, fill_value=fill_value).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- dask arrays


def _grid_chunks(grid: ZoneGrid) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return da.core.normalize_chunks(grid.chunk, grid.shape)  # type: ignore[return-value]


def stack_blocks(
    scenes: Sequence[Scene], index: int, grid: ZoneGrid, *, dtype: str, fill_value: float,
    resampling: Resampling, env: LayeredEnv | None = None,
) -> da.Array:
    """Lazy ``(scene, y, x)`` stack of asset ``index`` of each scene on ``grid``, the scenes in
    one chunk, one task per grid chunk; ``fill_value`` where a scene has no data."""
    scenes = tuple(scenes)
    ychunks, xchunks = _grid_chunks(grid)
    return da.map_blocks(
        _stack_block, chunks=((len(scenes),), ychunks, xchunks), dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"direct-stack-{tokenize(scenes, index, grid, dtype, fill_value, int(resampling))}",
        scenes=scenes, index=index, grid=grid, dtype_=dtype, fill_value=fill_value,
        resampling=resampling, env=env,
    )


def _stack_block(block_info: dict | None = None, *, scenes: tuple[Scene, ...], index: int, grid: ZoneGrid,
                 dtype_: str, fill_value: float, resampling: Resampling, env: LayeredEnv | None) -> np.ndarray:
    _, rows, cols = block_info[None]["array-location"]  # type: ignore[index]
    out = np.full((len(scenes), rows[1] - rows[0], cols[1] - cols[0]), fill_value, dtype=dtype_)
    for k, scene in enumerate(scenes):
        asset = scene.assets[index]
        if asset is None:
            continue
        vals = read_chunk(asset, grid, rows, cols, dtype=dtype_, fill_value=fill_value, resampling=resampling, env=env)
        if vals is not None:
            out[k] = vals
    return out


def s2_composite_blocks(
    scenes: Sequence[Scene], offsets: Sequence[float], grid: ZoneGrid, nbands: int,
    env: LayeredEnv | None = None,
) -> da.Array:
    """Lazy ``(nbands + 1, y, x)`` float32: the cloud-masked median reflectance of each band,
    then the count of valid observations, one task per grid chunk that reads, masks and
    composites every scene (assets ``0..nbands-1`` the bands, asset ``nbands`` the SCL;
    ``offsets`` the scenes' DN offsets). Nearest resampling, as the stackstac path."""
    scenes = tuple(scenes)
    offs = tuple(float(o) for o in offsets)
    ychunks, xchunks = _grid_chunks(grid)
    return da.map_blocks(
        _s2_block, chunks=((nbands + 1,), ychunks, xchunks), dtype="float32",
        meta=np.empty((0, 0, 0), dtype="float32"),
        name=f"direct-s2-composite-{tokenize(scenes, offs, grid, nbands)}",
        scenes=scenes, offsets=offs, grid=grid, nbands=nbands, env=env,
    )


def _s2_block(block_info: dict | None = None, *, scenes: tuple[Scene, ...], offsets: tuple[float, ...],
              grid: ZoneGrid, nbands: int, env: LayeredEnv | None) -> np.ndarray:
    _, rows, cols = block_info[None]["array-location"]  # type: ignore[index]
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    out = np.empty((nbands + 1, *shape), dtype="float32")
    valid: list[tuple[int, np.ndarray]] = []  # (scene, its cloud-free pixels)
    count = np.zeros(shape, dtype="uint16")
    for k, scene in enumerate(scenes):
        scl_asset = scene.assets[nbands]
        if scl_asset is None:
            continue
        scl = read_chunk(scl_asset, grid, rows, cols, dtype="uint8", fill_value=0, resampling=Resampling.nearest, env=env)
        if scl is None:
            continue
        ok = np.isin(scl, SCL_VALID)
        if ok.any():
            valid.append((k, ok))
            count += ok
    out[nbands] = np.minimum(count, 254)  # 255 is the fill (no data)
    quant = np.float32(S2_QUANTIFICATION)
    stack = np.empty((max(len(valid), 1), *shape), dtype="float32")
    inf = np.float32(np.inf)
    for b in range(nbands):
        stack.fill(inf)  # no observation (sorts last)
        for j, (k, ok) in enumerate(valid):
            asset = scenes[k].assets[b]
            if asset is None:
                continue
            dn = read_chunk(asset, grid, rows, cols, dtype="float32", fill_value=np.nan,
                            resampling=Resampling.nearest, env=env)
            if dn is None:
                continue
            keep = ok & (dn > 0)  # cloud-free, with data (NaN and 0 are no data)
            dn += np.float32(offsets[k])
            dn /= quant
            np.maximum(dn, np.float32(0.0), out=dn)  # clip(min=0): NaN stays NaN
            stack[j] = np.where(keep, dn, inf)
        out[b] = median_of_finite(stack)
    return out


#: Up to this many scenes the median sorts with a sorting network (elementwise min/max over
#: whole chunks), beyond it with ``np.sort`` along the scene axis.
NETWORK_MAX_SCENES = 16


def _network(n: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` elements (pairs
    beyond ``n`` dropped: the missing elements count as +inf, so they never move)."""
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return pairs


def median_of_finite(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 of a float32 ``(scenes, y, x)`` stack whose missing values are +inf,
    NaN where a pixel has none: the NaN-aware median of the same stack with NaN for +inf, equal
    to :func:`pipeline.core.stats.nanquantile_axis0` at 0.5 (the same float32 interpolation),
    faster for a few scenes. ``stack`` is overwritten (sorted)."""
    n_scenes = stack.shape[0]
    n = np.count_nonzero(stack < np.inf, axis=0)
    if n_scenes > NETWORK_MAX_SCENES:
        stack.sort(axis=0)
    else:
        tmp = np.empty(stack.shape[1:], dtype=stack.dtype)
        for i, j in _network(n_scenes):
            np.minimum(stack[i], stack[j], out=tmp)
            np.maximum(stack[i], stack[j], out=stack[j])
            stack[i] = tmp
    last = np.maximum(n - 1, 0)
    lo = last // 2  # floor(0.5 * (n - 1))
    hi = np.minimum(lo + 1, last)
    frac = np.where(last % 2 == 1, np.float32(0.5), np.float32(0.0))
    vlo = np.take_along_axis(stack, lo[None], axis=0)[0]
    vhi = np.take_along_axis(stack, hi[None], axis=0)[0]
    with np.errstate(invalid="ignore"):  # inf - inf where a pixel has no observation
        out = vlo + (vhi - vlo) * frac
    out[n == 0] = np.nan
    return out


# ----------------------------------------------------------------------------- Sentinel-1


#: The layers of :func:`s1_blocks`, in order.
S1_LAYERS = ("vv_dry", "vv_wet", "vv", "vh")


def s1_blocks(
    history: Sequence[Scene], tracks: Sequence[int], in_window: Sequence[bool], window: Sequence[Scene],
    grid: ZoneGrid, *, squared: bool = False, env: LayeredEnv | None = None,
) -> da.Array:
    """Lazy ``(4, y, x)`` float32 in dB (:data:`S1_LAYERS`): the VV dry and wet references
    (:data:`pipeline.factors.sar.SAR_REFERENCE_PERCENTILES` of the track-aligned history, NaN where fewer than two
    scenes have a value), the median of the aligned VV of the window's scenes and the median
    VH of ``window``; one task per grid chunk that reads, converts and reduces.

    ``history`` holds the VV asset (index 0) of each history scene, ``tracks`` its orbit
    track (an integer label, the same numbering for the whole grid), ``in_window`` whether it
    is one of the window's scenes; ``window`` holds their VH asset (index 0). ``squared``:
    the assets are amplitudes (GRD), squared to power. The same values, bit for bit, as the
    stack path (``s1_history_db`` → ``align_tracks`` → ``sar_references``, and the medians,
    in :mod:`pipeline.acquire.cube`), but a chunk's stack holds only the scenes that have a
    value in it, not every scene of the grid: a scene whose footprint misses the chunk, or
    that has no valid pixel there, is not part of the chunk's stack (where it would be NaN
    throughout, which changes none of the statistics), so memory follows the depth of the
    chunk, not of the whole write tile.
    """
    history, window = tuple(history), tuple(window)
    tracks_t = tuple(int(t) for t in tracks)
    flags = tuple(bool(f) for f in in_window)
    if not len(history) == len(tracks_t) == len(flags):
        raise ValueError("s1_blocks: history, tracks and in_window differ in length")
    ychunks, xchunks = _grid_chunks(grid)
    return da.map_blocks(
        _s1_block, chunks=((len(S1_LAYERS),), ychunks, xchunks), dtype="float32",
        meta=np.empty((0, 0, 0), dtype="float32"),
        name=f"direct-s1-{tokenize(history, tracks_t, flags, window, grid, squared)}",
        history=history, tracks=tracks_t, in_window=flags, window=window, grid=grid, squared=squared, env=env,
    )


def _db_stack(scenes: Sequence[Scene], grid: ZoneGrid, rows: tuple[int, int], cols: tuple[int, int],
              squared: bool, env: LayeredEnv | None) -> tuple[np.ndarray, list[int]]:
    """The chunk's backscatter in dB of those ``scenes`` (asset 0) with a value in it, in
    scene order, and their indices. As the stack path: bilinear, values at or below
    ``S1_VALID_ABOVE`` are no data, squared when ``squared``, then dB of the positive ones."""
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    box = _chunk_bounds(grid, rows, cols)
    near = [k for k, s in enumerate(scenes)
            if s.assets[0] is not None and (s.assets[0].bounds is None or _overlap(s.assets[0].bounds, box))]
    stack = np.empty((len(near), *shape), dtype="float32")
    kept: list[int] = []
    for k in near:
        vals = read_chunk(scenes[k].assets[0], grid, rows, cols, dtype="float32", fill_value=np.nan,  # type: ignore[arg-type]
                          resampling=Resampling.bilinear, env=env)
        if vals is None:
            continue
        stack[len(kept)] = vals
        kept.append(k)
    data = stack[:len(kept)]
    data[~(data > np.float32(S1_VALID_ABOVE))] = np.nan
    if squared:
        np.multiply(data, data, out=data)
    data[~(data > 0)] = np.nan
    np.log10(data, out=data)
    data *= np.float32(10.0)
    # a scene without a value in the chunk would be NaN throughout: left out
    has_value = [j for j in range(len(kept)) if not np.isnan(data[j]).all()]
    for n, j in enumerate(has_value):
        if n != j:
            data[n] = data[j]
    return data[:len(has_value)], [kept[j] for j in has_value]


def _nan_quantile(stack: np.ndarray, q: float) -> np.ndarray:
    """:func:`~pipeline.core.stats.nanquantile_axis0`, NaN for an empty stack."""
    if stack.shape[0] == 0:
        return np.full(stack.shape[1:], np.nan, dtype="float32")
    return nanquantile_axis0(stack, q)


def _s1_block(block_info: dict | None = None, *, history: tuple[Scene, ...], tracks: tuple[int, ...],
              in_window: tuple[bool, ...], window: tuple[Scene, ...], grid: ZoneGrid, squared: bool,
              env: LayeredEnv | None) -> np.ndarray:
    _, rows, cols = block_info[None]["array-location"]  # type: ignore[index]
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    out = np.empty((len(S1_LAYERS), *shape), dtype="float32")
    vv, which = _db_stack(history, grid, rows, cols, squared, env)
    vv = _sar.align_tracks_kernel(vv, np.array([tracks[k] for k in which], dtype=np.intp))
    for i, pct in enumerate(_sar.SAR_REFERENCE_PERCENTILES):  # the kernel of sar_references
        out[i] = _sar.sar_reference_kernel(vv, pct)
    out[2] = _nan_quantile(vv[[j for j, k in enumerate(which) if in_window[k]]], 0.5)
    del vv
    vh, _ = _db_stack(window, grid, rows, cols, squared, env)
    out[3] = _nan_quantile(vh, 0.5)
    return out
