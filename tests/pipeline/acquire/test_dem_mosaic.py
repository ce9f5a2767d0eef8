"""Copernicus DEM tiles are mosaicked before they are resampled onto the grid.

A small UTM grid straddles several borders of Planetary-Computer-shaped GLO-30 tiles (1 arcsecond,
pixel centres on the tile edges' degree lines, item-level ``proj:*``). The reference is GDAL's
own: ``gdalbuildvrt`` of all tiles, ``gdalwarp -r bilinear`` onto the same grid, ``gdaldem
slope``. Slope from the cube's DEM must agree with it as well next to tile borders as inside.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.errors
import xarray as xr
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from pipeline.acquire.cube import dem_on_grid
from pipeline.acquire.failures import read_failure
from pipeline.core.config import ZoneGrid
from pipeline.factors.terrain import slope

EPSG = 32648
PX = 1 / 3600  # GLO-30 below 50° latitude: 1 arcsecond both ways
STEP = 0.01  # degrees per test tile (36 px): several borders cross the grid
X0, Y1, N, RES = 320000.0, 3309440.0, 256, 10.0


def _grid(chunk: int = 64, epsg: int = EPSG, x0: float = X0, y1: float = Y1, n: int = N) -> ZoneGrid:
    b = (x0, y1 - n * RES, x0 + n * RES, y1)
    return ZoneGrid(epsg=epsg, x0=x0, y1=y1, width=n, height=n, resolution=RES, chunk=chunk,
                    lonlat_bounds=tuple(transform_bounds(CRS.from_epsg(epsg), "EPSG:4326", *b)))


def _terrain(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Steep, smooth relief (slopes up to ~60°), metres; seeded by nothing, the same everywhere."""
    u, v = (lon - 103.1) * 96_000, (lat - 29.9) * 111_000
    return 900 + 250 * np.sin(u / 310.0) * np.cos(v / 270.0) + 120 * np.sin((u + v) / 170.0) + 0.08 * u - 0.05 * v


def pc_dem_dict(tile_id: str, href: Path, transform: Affine, shape: tuple[int, int]) -> dict:
    """A cop-dem-glo-30 item shaped like Planetary Computer's (see the recorded one below)."""
    rows, cols = shape
    w, n = transform.c, transform.f
    e, s = w + cols * transform.a, n + rows * transform.e
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": tile_id, "collection": "cop-dem-glo-30",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
        "bbox": [w, s, e, n], "links": [],
        "geometry": {"type": "Polygon", "coordinates": [[[e, s], [e, n], [w, n], [w, s], [e, s]]]},
        "properties": {"gsd": 30, "datetime": "2021-04-22T00:00:00Z", "platform": "TanDEM-X", "proj:epsg": 4326,
                       "proj:shape": [rows, cols], "proj:transform": [transform.a, transform.b, transform.c,
                                                                     transform.d, transform.e, transform.f]},
        "assets": {"data": {"href": str(href), "title": tile_id, "roles": ["data"],
                            "type": "image/tiff; application=geotiff; profile=cloud-optimized"}},
    }


def pc_dem_item(tile_id: str, href: Path, transform: Affine, shape: tuple[int, int]) -> pystac.Item:
    return pystac.Item.from_dict(pc_dem_dict(tile_id, href, transform, shape))


def write_tile(path: Path, lon0: float, lat0: float, size: int, fn=_terrain) -> tuple[Affine, np.ndarray]:  # type: ignore[no-untyped-def]
    """One tile from (lon0, lat0) to (lon0 + size px, lat0 + size px), pixel centres on its edges
    (GLO-30's layout: the origin is half a pixel outside the degree line)."""
    tr = Affine(PX, 0, lon0 - PX / 2, 0, -PX, lat0 + size * PX + PX / 2)
    cols, rows = np.meshgrid(np.arange(size), np.arange(size))
    z = fn(tr.c + (cols + 0.5) * PX, tr.f - (rows + 0.5) * PX).astype("float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", tiled=True, blockxsize=16, blockysize=16, width=size, height=size,
                       count=1, dtype="float32", crs=CRS.from_epsg(4326), transform=tr, nodata=-32767.0) as dst:
        dst.write(z, 1)
    return tr, z


def make_tiles(root: Path, grid: ZoneGrid, step: float = STEP) -> list[pystac.Item]:
    """Abutting tiles of ``step`` degrees covering ``grid``, in PC's item shape."""
    w, s, e, n = grid.lonlat_bounds
    size = round(step / PX)
    items = []
    for lat0 in np.arange(np.floor(s / step) * step, n, step):
        for lon0 in np.arange(np.floor(w / step) * step, e, step):
            lat0, lon0 = round(float(lat0), 6), round(float(lon0), 6)
            tid = f"Copernicus_DSM_COG_10_N{lat0:.2f}_00_E{lon0:.2f}_00_DEM".replace(".", "_")
            tr, _ = write_tile(root / f"{tid}.tif", lon0, lat0, size)
            items.append(pc_dem_item(tid, root / f"{tid}.tif", tr, (size, size)))
    return items


def _gdal_reference(root: Path, items: list[pystac.Item], grid: ZoneGrid) -> tuple[np.ndarray, np.ndarray]:
    """(DEM, slope) by GDAL's tools: all tiles merged (VRT), warped bilinear onto ``grid`` with the
    exact transformation (``-et 0``), gdaldem."""
    if not all(shutil.which(t) for t in ("gdalbuildvrt", "gdalwarp", "gdaldem")):
        pytest.skip("GDAL's command line tools (gdal-bin) are not installed")
    vrt, dem, slp = root / "merged.vrt", root / "ref_dem.tif", root / "ref_slope.tif"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), *[it.assets["data"].href for it in items]], check=True)
    x0, y0, x1, y1 = grid.bounds
    subprocess.run(["gdalwarp", "-q", "-overwrite", "-et", "0", "-t_srs", f"EPSG:{grid.epsg}", "-te", str(x0), str(y0), str(x1),
                    str(y1), "-tr", str(grid.resolution), str(grid.resolution), "-r", "bilinear", "-dstnodata", "nan",
                    "-ot", "Float32", str(vrt), str(dem)], check=True)
    subprocess.run(["gdaldem", "slope", "-q", str(dem), str(slp)], check=True)
    with rasterio.open(dem) as a, rasterio.open(slp) as b:
        return a.read(1), b.read(1, masked=True).filled(np.nan)


def border_mask(items: list[pystac.Item], grid: ZoneGrid, within_px: float = 2.0) -> np.ndarray:
    """Grid pixels within ``within_px`` DEM pixels of a border between two tiles."""
    y, x = grid.pixel_centres()
    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(*np.meshgrid(x, y))
    # the border between two tiles lies half a pixel outside each one's edge pixel centres
    lons = {round(it.bbox[0] + PX / 2, 6) for it in items}
    lats = {round(it.bbox[1] + PX / 2, 6) for it in items}
    near = np.zeros(lon.shape, bool)
    for b in lons:
        near |= np.abs(lon - b) < within_px * PX
    for b in lats:
        near |= np.abs(lat - b) < within_px * PX
    return near


def _stats(err: np.ndarray) -> tuple[float, float, float]:
    return float(np.percentile(err, 50)), float(np.percentile(err, 99)), float(err.max())


@pytest.fixture(scope="module")
def straddling(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("demtiles")
    grid = _grid()
    items = make_tiles(root, grid)
    return root, grid, items


def test_slope_at_tile_borders_is_as_good_as_inside(straddling) -> None:  # type: ignore[no-untyped-def]
    root, grid, items = straddling
    ref_dem, ref_slope = _gdal_reference(root, items, grid)
    dem = dem_on_grid(items, grid)
    got = slope(dem).values
    ok = np.isfinite(got) & np.isfinite(ref_slope)
    assert ok.sum() == (N - 2) ** 2  # everything but the grid's outer ring, as gdaldem
    border = border_mask(items, grid)
    assert len(items) >= 9 and 0.1 < border.mean() < 0.5  # borders both ways cross the grid
    err = np.abs(got - ref_slope)
    b50, b99, bmax = _stats(err[ok & border])
    i50, i99, imax = _stats(err[ok & ~border])
    report = f"slope error vs gdaldem, border p50/p99/max {b50:.3f}/{b99:.3f}/{bmax:.3f}°, interior {i50:.3f}/{i99:.3f}/{imax:.3f}°"
    assert i99 < 0.01, report
    assert b99 <= max(2 * i99, 0.01) and bmax <= max(2 * imax, 0.05), report
    assert np.nanmax(np.abs(dem.values - ref_dem)) < 0.01  # metres: the same bilinear surface


def test_dem_does_not_depend_on_chunking(straddling) -> None:  # type: ignore[no-untyped-def]
    """Each chunk is warped with the exact transformation: no chunk seams either (GDAL's default
    1/8-pixel approximation, fitted per chunk, moves elevations by centimetres here)."""
    _, grid, items = straddling
    a = dem_on_grid(items, grid).values
    b = dem_on_grid(items, _grid(chunk=128)).values
    c = dem_on_grid(items, _grid(chunk=32)).values
    assert np.isfinite(a).all()
    np.testing.assert_allclose(b, a, atol=1e-4)
    np.testing.assert_allclose(c, a, atol=1e-4)


def test_tiles_of_another_longitude_spacing_join_without_a_seam(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GLO-30's longitude spacing grows with latitude (1.5" from 50°, 2" from 60°, ...): a tile
    north of such a band border is resampled onto its southern neighbour's lattice first. On a
    plane (which bilinear interpolation reproduces exactly) the DEM is the plane everywhere."""
    grid = _grid(n=128)
    _, s, _, n = grid.lonlat_bounds
    mid = round((s + n) / 2 / 0.005) * 0.005
    lat_ref, lon_ref = 29.9, 103.1

    def plane(lon, lat):  # type: ignore[no-untyped-def]  # about 1 m per m both ways
        return 1000 + 100_000 * (lon - lon_ref) + 110_000 * (lat - lat_ref)

    items = _two_lattice_items(tmp_path, grid, plane)
    dem = dem_on_grid(items, grid).values
    y, x = grid.pixel_centres()
    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(*np.meshgrid(x, y))
    assert (lat > mid).any() and (lat < mid).any()
    assert np.isfinite(dem).all()
    np.testing.assert_allclose(dem, plane(lon, lat), atol=0.05)


def _two_lattice_items(root: Path, grid: ZoneGrid, fn=_terrain) -> list[pystac.Item]:  # type: ignore[no-untyped-def]
    """Two GLO-30-like tiles either side of a longitude-spacing border (1" south, 1.5" north)."""
    w, s, _, n = grid.lonlat_bounds
    mid = round((s + n) / 2 / 0.005) * 0.005
    lon0 = np.floor(w / 0.01) * 0.01
    items = []
    for name, lat0, xres in (("south", mid - 0.02, PX), ("north", mid, 1.5 * PX)):
        cols, rows = round(0.04 / xres), 72
        tr = Affine(xres, 0, lon0 - xres / 2, 0, -PX, lat0 + rows * PX + PX / 2)
        cc, rr = np.meshgrid(np.arange(cols), np.arange(rows))
        z = fn(tr.c + (cc + 0.5) * xres, tr.f - (rr + 0.5) * PX).astype("float32")
        with rasterio.open(root / f"{name}.tif", "w", driver="GTiff", width=cols, height=rows, count=1,
                           dtype="float32", crs=CRS.from_epsg(4326), transform=tr, nodata=-32767.0) as dst:
            dst.write(z, 1)
        items.append(pc_dem_item(name, root / f"{name}.tif", tr, (rows, cols)))
    return items


def test_tiles_resampled_on_many_threads_warn_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Resampling a tile of another lattice used ``rasterio.warp.reproject`` on arrays, whose
    in-memory datasets silence rasterio's warnings with ``warnings.catch_warnings``: not thread
    safe, so chunks computed side by side let a ``NotGeoreferencedWarning`` through now and then."""
    import dask

    grid = _grid(chunk=16, n=128)
    items = _two_lattice_items(tmp_path, grid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            with dask.config.set(scheduler="threads", num_workers=8):
                dem = dem_on_grid(items, grid).values
            assert np.isfinite(dem).all()
    ours = [w for w in caught if issubclass(w.category, rasterio.errors.NotGeoreferencedWarning)]
    assert not ours, f"{len(ours)} NotGeoreferencedWarning(s): {ours[0].message}"


def test_one_task_per_chunk_and_lazy(straddling, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, grid, items = straddling
    dem = dem_on_grid(items, grid)
    assert isinstance(dem, xr.DataArray) and dem.dtype == np.float32 and dem.dims == ("y", "x")
    assert dem.chunks == ((64,) * 4, (64,) * 4)
    assert len(dem.data.__dask_graph__()) == 16
    # nothing is opened until computed: a missing file fails only then, worded for the retry logic
    gone = [it.clone() for it in items]
    missing = tmp_path / "gone.tif"
    gone[0].assets["data"].href = str(missing)
    lazy = dem_on_grid(gone, grid)
    with pytest.raises(RuntimeError, match="Error opening") as info:
        lazy.compute(scheduler="synchronous")
    failure = read_failure(info.value)
    assert failure is not None and failure.url == str(missing) and not failure.remote


def test_only_the_tiles_a_chunk_needs_are_read(straddling, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A chunk reads the windows of the tiles under it, not whole tiles, and not the others."""
    _, grid, items = straddling
    opened: list[str] = []
    read_px: list[int] = []
    real_open = rasterio.open

    def spy_open(path, *a, **kw):  # type: ignore[no-untyped-def]
        ds = real_open(path, *a, **kw)
        if str(path).endswith("_DEM.tif"):
            opened.append(str(path))
            real_read = ds.read

            def read(*ra, **rk):  # type: ignore[no-untyped-def]
                out = real_read(*ra, **rk)
                read_px.append(int(np.prod(out.shape[-2:])))
                return out

            ds.read = read
        return ds

    monkeypatch.setattr(rasterio, "open", spy_open)
    dem = dem_on_grid(items, grid)
    dem[:64, :64].compute(scheduler="synchronous")  # one chunk of 640 m: about 21 x 23 DEM px
    assert 1 <= len(set(opened)) <= 4
    assert sum(read_px) < 4 * 30 * 30


def test_tiles_across_the_antimeridian_are_joined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A UTM zone 60 grid reaching past 180°E: the tiles west of -180° join those east of 180°."""
    def smooth(lon, lat):  # type: ignore[no-untyped-def]
        lon = np.where(lon < 0, lon + 360, lon)  # continuous across the antimeridian
        return 500 + 3000 * (lon - 179.99) + 2000 * (lat - 65.0)

    to_utm = Transformer.from_crs(4326, 32660, always_xy=True)
    x, y = to_utm.transform(179.995, 65.01)
    grid = _grid(chunk=64, epsg=32660, x0=float(np.floor(x / 640) * 640), y1=float(np.ceil(y / 640) * 640), n=128)
    w, _, e, _ = grid.lonlat_bounds
    assert w > e  # the grid crosses the antimeridian
    items = []
    size = 72  # 0.02° tiles
    for lon0 in (179.98, -180.0):
        for lat0 in (64.98, 65.0, 65.02):
            tid = f"T_{lat0}_{lon0}".replace(".", "_").replace("-", "m")
            tr, _ = write_tile(tmp_path / f"{tid}.tif", lon0, lat0, size, smooth)
            items.append(pc_dem_item(tid, tmp_path / f"{tid}.tif", tr, (size, size)))
    dem = dem_on_grid(items, grid).values
    yy, xx = grid.pixel_centres()
    lon, lat = Transformer.from_crs(32660, 4326, always_xy=True).transform(*np.meshgrid(xx, yy))
    assert (lon > 0).any() and (lon < 0).any()
    assert np.isfinite(dem).all()
    np.testing.assert_allclose(dem, smooth(lon, lat), atol=0.05)  # a plane: bilinear is exact


def test_pc_shaped_items_match_the_recorded_one(shared_fixtures, tmp_path) -> None:  # type: ignore[no-untyped-def]
    recorded = json.loads((shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "items4"
                           / "cop-dem-glo-30-pc.json").read_text())[0]
    ours = pc_dem_dict("x", tmp_path / "x.tif", Affine(PX, 0, 103.0 - PX / 2, 0, -PX, 30.0 + PX / 2), (36, 36))
    assert set(ours["properties"]) == set(recorded["properties"])
    assert set(ours["assets"]["data"]) == set(recorded["assets"]["data"])
    assert ours["stac_extensions"] == recorded["stac_extensions"]
    # PC's layout: the origin is half a pixel west and north of the tile's degree lines
    a, _, c, _, e, f = recorded["properties"]["proj:transform"]
    assert abs((c + a / 2) - round(c + a / 2)) < 1e-9 and abs((f + e / 2) - round(f + e / 2)) < 1e-9
