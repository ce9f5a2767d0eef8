"""Copernicus DEM tiles mosaicked in their own grid, then resampled onto a zone grid.

GLO-30 tiles abut (every degree; their edge pixels' centres lie on the degree lines). Warping
each tile onto the grid on its own and then taking the first valid value leaves a seam at every
border: a grid pixel near one is interpolated from one tile only, with half its neighbours
missing. Here each chunk of the grid is one task that

1. transforms the chunk's outline into the tiles' CRS and picks the tiles under it (item bbox,
   then the file's own extent);
2. opens each of them (GDAL's settings from :func:`pipeline.acquire.gdal.gdal_env`; errors worded
   like stackstac's, ``Error opening '<url>': ...``, which the retry logic parses) and checks its
   CRS, geotransform and shape against its item (:func:`pipeline.acquire.gdal.check_georef`);
3. reads only the window of each tile that the chunk needs (plus a margin for the kernel) into
   one mosaic on the finest tile's pixel lattice (tiles on another lattice, e.g. across GLO-30's
   latitude bands of different longitude spacing, are resampled bilinearly onto it; where tiles
   overlap the later item wins, as before);
4. warps the mosaic bilinearly onto the chunk with GDAL (``rasterio.warp.reproject``), so a pixel
   near a border is interpolated from both tiles, as ``gdalwarp`` over a ``gdalbuildvrt`` of
   all tiles does.

Grids across the antimeridian work in longitudes unwrapped around the chunk (``+lon_wrap``).
Memory per task: the chunk plus its mosaic (a chunk's footprint in DEM pixels and the margin).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pystac
from dask.base import tokenize
from stackstac.rio_env import LayeredEnv

from pipeline.acquire.gdal import AssetGeoref, asset_georef, check_georef, gdal_env
from pipeline.core.collections import DEM_VALID_ABOVE
from pipeline.core.config import ZoneGrid
from pipeline.core.errors import InputDataError

#: Source pixels read beyond a chunk's footprint on every side, on top of the resampling kernel's
#: reach (GDAL widens bilinear's kernel when the grid is coarser than the DEM).
MARGIN_PX = 3
#: Degrees by which a chunk's lon/lat footprint is widened before the bbox of an item that does
#: not declare its geotransform is compared with it (the exact windows come from the files).
BBOX_MARGIN_DEG = 0.01
#: Error allowed (source pixels) in the warper's approximation of the grid-to-DEM transformation:
#: in effect exact, so a pixel's elevation does not depend on how the grid is chunked.
WARP_TOLERANCE_PX = 1e-6
#: Points per side of a chunk's outline when it is transformed into the tiles' CRS.
OUTLINE_POINTS = 9


@dataclass(frozen=True)
class DemTile:
    """One DEM asset to read: what a task needs, without opening anything (picklable)."""

    href: str
    item_id: str
    #: What the item declares about the file (checked against it), or None.
    georef: AssetGeoref | None
    #: The item's lon/lat bbox (west may exceed east across the antimeridian), or None.
    bbox: tuple[float, float, float, float] | None


def dem_tiles(items: Sequence[pystac.Item], asset: str) -> list[DemTile]:
    """The tiles of ``items``' ``asset`` (hrefs as given: sign first), in item order."""
    out = []
    for it in items:
        d = it.to_dict(transform_hrefs=False)
        out.append(DemTile(href=it.assets[asset].href, item_id=it.id, georef=asset_georef(d, asset), bbox=_bbox(it.bbox)))
    return out


def _bbox(bbox: object) -> tuple[float, float, float, float] | None:
    """A 2D lon/lat bbox, or None when there is none that can be used (then the tile is opened
    for every chunk and its own extent decides). Not validated: GLO-30's tiles at 180°W reach
    half a pixel beyond it."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) not in (4, 6):
        return None
    vals = [bbox[0], bbox[1], bbox[3], bbox[4]] if len(bbox) == 6 else list(bbox)
    try:
        w, s, e, n = (float(v) for v in vals)
    except (TypeError, ValueError):
        return None
    return (w, s, e, n) if all(abs(v) < 1000 for v in (w, s, e, n)) and s <= n else None


def dem_mosaic(tiles: Sequence[DemTile], grid: ZoneGrid, env: LayeredEnv | None = None) -> da.Array:
    """Lazy float32 elevations on ``grid`` (NaN where no tile has data), one task per chunk,
    read with the GDAL settings ``env`` (default :func:`pipeline.acquire.gdal.gdal_env`)."""
    chunks = da.core.normalize_chunks(grid.chunk, grid.shape)
    tiles = tuple(tiles)
    return da.map_blocks(
        _dem_block, chunks=chunks, dtype="float32", meta=np.empty((0, 0), dtype="float32"),
        name=f"cop-dem-mosaic-{tokenize(tiles, grid)}", tiles=tiles, grid=grid, env=env,
    )


def _dem_block(block_info: dict | None = None, *, tiles: tuple[DemTile, ...], grid: ZoneGrid,
               env: LayeredEnv | None) -> np.ndarray:
    rows, cols = block_info[None]["array-location"]  # type: ignore[index]
    return read_dem_chunk(tiles, grid, rows, cols, env)


def read_dem_chunk(
    tiles: Sequence[DemTile], grid: ZoneGrid, rows: tuple[int, int], cols: tuple[int, int],
    env: LayeredEnv | None = None,
) -> np.ndarray:
    """Elevations (float32, NaN where none) of grid pixels ``rows`` × ``cols`` (start, stop)."""
    import rasterio
    from rasterio.crs import CRS

    ny, nx = rows[1] - rows[0], cols[1] - cols[0]
    out = np.full((ny, nx), np.nan, dtype="float32")
    res = grid.resolution
    x0, y1 = grid.x0 + cols[0] * res, grid.y1 - rows[0] * res
    bounds = (x0, y1 - ny * res, x0 + nx * res, y1)
    grid_crs = CRS.from_epsg(grid.epsg)
    lon, lat, lon_c = _outline(grid_crs, CRS.from_epsg(4326), bounds)
    footprint = (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))
    wanted = [t for t in tiles if t.bbox is None or _bbox_meets(t.bbox, footprint, lon_c, _reach(t, footprint, (ny, nx)))]
    if not wanted:
        return out
    env = env or gdal_env()
    opened: list[tuple[DemTile, object]] = []
    try:
        for tile in wanted:
            with env.open:
                try:
                    ds = rasterio.open(tile.href)
                except Exception as e:  # worded like stackstac's, for the retry logic
                    raise RuntimeError(f"Error opening {tile.href!r}: {e!r}") from e
            opened.append((tile, ds))
            if tile.georef is not None:
                check_georef(ds, tile.href, tile.georef)
        groups: dict[str, tuple[object, list]] = {}  # one mosaic per source CRS (one in practice)
        for tile, ds in opened:
            epsg = tile.georef.epsg if tile.georef is not None else None
            crs = CRS.from_epsg(epsg) if epsg else ds.crs  # type: ignore[attr-defined]
            if crs is None:
                raise InputDataError(
                    f"cop-dem-glo-30 item {tile.item_id!r}: {tile.href.split('?', 1)[0]} has no CRS, and its item "
                    "declares none (proj:code/proj:epsg).",
                    "give the item proj:code, or the file a CRS (gdal_edit.py -a_srs), or drop the item.",
                )
            key = f"EPSG:{epsg}" if epsg else crs.to_wkt()
            groups.setdefault(key, (crs, []))[1].append((tile, ds))
        dst_transform = _affine(res, 0.0, x0, 0.0, -res, y1)
        for crs, members in groups.values():
            part = _warp_group(members, crs, grid_crs, bounds, dst_transform, (ny, nx), env)
            if part is not None:
                out = np.where(np.isfinite(part), part, out)
    finally:
        for _, ds in opened:
            ds.close()  # type: ignore[attr-defined]
    out[~(out > DEM_VALID_ABOVE)] = np.nan
    return out.astype("float32", copy=False)


def _affine(*coefficients: float):  # type: ignore[no-untyped-def]
    from affine import Affine

    return Affine(*coefficients)


def _outline(src_crs, dst_crs, bounds: tuple[float, float, float, float]):  # type: ignore[no-untyped-def]
    """The outline of ``bounds`` (``OUTLINE_POINTS`` a side) and its centre in ``dst_crs``:
    (xs, ys, centre x); geographic longitudes are unwrapped around the centre's."""
    from rasterio.warp import transform

    x0, y0, x1, y1 = bounds
    t = np.linspace(0.0, 1.0, OUTLINE_POINTS)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t, np.full_like(t, x0), [(x0 + x1) / 2]])
    ys = np.concatenate([np.full_like(t, y1), y1 - (y1 - y0) * t, np.full_like(t, y0), y0 + (y1 - y0) * t, [(y0 + y1) / 2]])
    tx, ty = transform(src_crs, dst_crs, xs, ys)
    tx, ty = np.asarray(tx, dtype="float64"), np.asarray(ty, dtype="float64")
    centre = float(tx[-1])
    if dst_crs.is_geographic:
        tx = centre + (tx - centre + 180.0) % 360.0 - 180.0
    return tx[:-1], ty[:-1], centre


def _near(lon: float, centre: float) -> float:
    """The longitude equivalent to ``lon`` nearest to ``centre`` (multiples of 360° apart)."""
    return lon + 360.0 * round((centre - lon) / 360.0)


def _margin_px(src_per_dst: float) -> int:
    """Source pixels read beyond a chunk's footprint when one grid pixel spans ``src_per_dst``."""
    return MARGIN_PX + math.ceil(2 * src_per_dst)


def _reach(tile: DemTile, footprint: tuple[float, float, float, float], shape: tuple[int, int]) -> float:
    """Degrees beyond a chunk's lon/lat footprint from which ``tile`` may contribute."""
    tr = tile.georef.transform if tile.georef is not None else None
    if tr is None or tile.georef.epsg != 4326:  # type: ignore[union-attr]
        return BBOX_MARGIN_DEG
    px, py = abs(tr[0]) or BBOX_MARGIN_DEG, abs(tr[4]) or BBOX_MARGIN_DEG
    fw, fs, fe, fn = footprint
    src_per_dst = max((fe - fw) / px / shape[1], (fn - fs) / py / shape[0])
    return (_margin_px(src_per_dst) + 1) * max(px, py)


def _bbox_meets(bbox: tuple[float, float, float, float], footprint: tuple[float, float, float, float],
                centre: float, margin: float) -> bool:
    w, s, e, n = bbox
    if e < w:  # the item crosses the antimeridian
        e += 360.0
    shift = _near((w + e) / 2, centre) - (w + e) / 2
    fw, fs, fe, fn = footprint
    return w + shift <= fe + margin and e + shift >= fw - margin and s <= fn + margin and n >= fs - margin


def _warp_group(members, crs, grid_crs, bounds, dst_transform, shape, env):  # type: ignore[no-untyped-def]
    """The tiles of one CRS mosaicked over the chunk's footprint and warped onto the chunk, or
    None when none of them holds data there."""
    from rasterio.crs import CRS

    xs, ys, centre = _outline(grid_crs, crs, bounds)
    geographic = bool(crs.is_geographic)
    placed = []  # (tile, dataset, its geotransform with longitudes unwrapped near the chunk's)
    for tile, ds in members:
        tr = ds.transform
        if abs(tr.b) > 0 or abs(tr.d) > 0:
            raise InputDataError(
                f"cop-dem-glo-30 item {tile.item_id!r}: {tile.href.split('?', 1)[0]} has a rotated geotransform "
                f"{tuple(tr)[:6]}; DEM tiles must be north-up.",
                "warp the tile north-up (gdalwarp) or drop the item.",
            )
        if geographic:
            cx = tr.c + tr.a * ds.width / 2
            tr = _affine(tr.a, 0.0, tr.c + _near(cx, centre) - cx, 0.0, tr.e, tr.f)
        placed.append((tile, ds, tr))
    # the mosaic's lattice: the finest tile's pixels, over the chunk's footprint and a margin
    _, _, ref = min(placed, key=lambda p: abs(p[2].a * p[2].e))
    a, e = ref.a, ref.e
    xmin, xmax, ymin, ymax = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    src_per_dst = max((xmax - xmin) / abs(a) / shape[1], (ymax - ymin) / abs(e) / shape[0])
    m = _margin_px(src_per_dst)
    u = sorted(((xmin - ref.c) / a, (xmax - ref.c) / a))
    v = sorted(((ymin - ref.f) / e, (ymax - ref.f) / e))
    c0, c1 = math.floor(u[0]) - m, math.ceil(u[1]) + m
    r0, r1 = math.floor(v[0]) - m, math.ceil(v[1]) + m
    lattice = _affine(a, 0.0, ref.c + c0 * a, 0.0, e, ref.f + r0 * e)
    mosaic = np.full((r1 - r0, c1 - c0), np.nan, dtype="float32")
    for tile, ds, tr in placed:
        _paste(mosaic, lattice, tile, ds, tr, crs, env)
    if not np.isfinite(mosaic).any():
        return None
    src_crs = crs
    if geographic and (xmin - m * abs(a) < -180.0 or xmax + m * abs(a) > 180.0):
        src_crs = CRS.from_proj4(f"{crs.to_proj4()} +lon_wrap={centre:.12g}")  # longitudes around the chunk's
    return _warp(mosaic, lattice, src_crs, dst_transform, grid_crs, shape)


def _warp(mosaic: np.ndarray, lattice, src_crs, dst_transform, dst_crs, shape: tuple[int, int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """GDAL's bilinear warp of ``mosaic`` onto the chunk, its transformation computed (in effect)
    exactly (:data:`WARP_TOLERANCE_PX`; ``rasterio.warp.reproject`` always approximates to 1/8 px,
    differently for each chunk)."""
    from rasterio.enums import Resampling
    from rasterio.io import MemoryFile
    from rasterio.vrt import WarpedVRT

    rows, cols = mosaic.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=cols, height=rows, count=1, dtype="float32", transform=lattice,
                      nodata=np.nan) as ds:
            ds.write(mosaic, 1)
        with mem.open() as ds, WarpedVRT(ds, src_crs=src_crs, src_transform=lattice, src_nodata=np.nan, crs=dst_crs,
                                         transform=dst_transform, width=shape[1], height=shape[0], nodata=np.nan,
                                         resampling=Resampling.bilinear, tolerance=WARP_TOLERANCE_PX) as vrt:
            return vrt.read(1, out_dtype="float32")


def _read(ds, tile: DemTile, window, env) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A window of the tile's first band, float32, NaN where it has no data (or no elevation)."""
    with env.read:
        try:
            arr = ds.read(1, window=window, out_dtype="float32", masked=True)
        except Exception as e:  # worded like stackstac's, for the retry logic
            raise RuntimeError(f"Error reading {window} from {tile.href!r}: {e!r}") from e
    arr = np.ma.filled(arr, np.nan).astype("float32", copy=False)
    arr[~(arr > DEM_VALID_ABOVE)] = np.nan
    return arr


def _paste(mosaic: np.ndarray, lattice, tile: DemTile, ds, tr, crs, env) -> None:  # type: ignore[no-untyped-def]
    """Copy the part of one tile that falls on ``mosaic`` into it (its valid pixels win)."""
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    h, w = mosaic.shape
    u0, v0 = ~lattice @ (tr.c, tr.f)
    same_lattice = (abs(tr.a / lattice.a - 1) < 1e-9 and abs(tr.e / lattice.e - 1) < 1e-9
                    and abs(u0 - round(u0)) < 1e-6 and abs(v0 - round(v0)) < 1e-6)
    if same_lattice:  # the usual case: a copy of the overlapping window
        iu, iv = round(u0), round(v0)
        mc0, mc1 = max(0, iu), min(w, iu + ds.width)
        mr0, mr1 = max(0, iv), min(h, iv + ds.height)
        if mc1 <= mc0 or mr1 <= mr0:
            return
        vals = _read(ds, tile, Window(mc0 - iu, mr0 - iv, mc1 - mc0, mr1 - mr0), env)
        target = mosaic[mr0:mr1, mc0:mc1]
        ok = np.isfinite(vals)
        target[ok] = vals[ok]
        return
    # another lattice (resolution or alignment): the tile's window under the mosaic, resampled onto it
    inv = ~tr
    us, vs = zip(*(inv @ (lattice.c + i * lattice.a * w, lattice.f + j * lattice.e * h) for i in (0, 1) for j in (0, 1)))
    c0, c1 = max(0, math.floor(min(us)) - 2), min(ds.width, math.ceil(max(us)) + 2)
    r0, r1 = max(0, math.floor(min(vs)) - 2), min(ds.height, math.ceil(max(vs)) + 2)
    if c1 <= c0 or r1 <= r0:
        return
    window = Window(c0, r0, c1 - c0, r1 - r0)
    vals = _read(ds, tile, window, env)
    # through a georeferenced in-memory GeoTIFF, not ``reproject`` on arrays: its in-memory datasets
    # silence rasterio with ``warnings.catch_warnings``, which is not thread safe (chunks run side by side)
    part = _warp(vals, window_transform(window, tr), crs, lattice, crs, mosaic.shape)
    ok = np.isfinite(part)
    mosaic[ok] = part[ok]
