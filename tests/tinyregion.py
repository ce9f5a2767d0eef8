"""A tiny seeded region (COGs + PC-shaped STAC items) for cube tests, made in a temp dir.

128 × 128 px at 10 m in EPSG:32648 (chunks of 64), three Sentinel-2 dates with SCL,
three Sentinel-1 RTC dates, one EPSG:4326 DEM tile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from pipeline.core.config import ZoneGrid

EPSG = 32648
X0, Y1, N, RES = 320000.0, 3309440.0, 128, 10.0  # on the 640 m lattice of 64-px chunks
GRID = ZoneGrid(epsg=EPSG, x0=X0, y1=Y1, width=N, height=N, resolution=RES, chunk=64,
                lonlat_bounds=tuple(transform_bounds(CRS.from_epsg(EPSG), "EPSG:4326", X0, Y1 - N * RES, X0 + N * RES, Y1)))
BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B11": 20, "B12": 20, "SCL": 20}


def _cog(path: Path, arr: np.ndarray, tr: Affine, epsg: int, nodata: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", tiled=True, blockxsize=64, blockysize=64,
                       width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype,
                       crs=CRS.from_epsg(epsg), transform=tr, nodata=nodata) as dst:
        dst.write(arr, 1)


def _item(cid: str, iid: str, dt: str, props: dict, assets: dict, bbox: list[float]) -> pystac.Item:
    w, s, e, n = bbox
    geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    d = {"type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": cid, "geometry": geom,
         "bbox": bbox, "links": [], "properties": {"datetime": dt, **props}, "assets": assets}
    return pystac.Item.from_dict(d)


def make_tiny_region(root: Path, seed: int = 7, scl_override: int | None = None, drop_asset: str | None = None) -> dict[str, list[pystac.Item]]:
    rng = np.random.default_rng(seed)
    bounds = (X0, Y1 - N * RES, X0 + N * RES, Y1)
    bbox = list(transform_bounds(CRS.from_epsg(EPSG), "EPSG:4326", *bounds))
    s2: list[pystac.Item] = []
    for k, day in enumerate(("2024-07-04", "2024-07-19", "2024-08-03")):
        assets = {}
        for band, res in NATIVE.items():
            f = res // 10
            shape = (N // f, N // f)
            tr = Affine(res, 0, X0, 0, -res, Y1)
            if band == "SCL":
                arr = rng.choice(np.array([4, 5, 6, 8, 9, 3], dtype="uint8"), size=shape, p=[.4, .2, .1, .1, .1, .1])
                if scl_override is not None:
                    arr[:] = scl_override
            else:
                arr = rng.integers(1100, 5000, size=shape, dtype="uint16")
            path = root / "s2" / f"{k}" / f"{band}.tif"
            _cog(path, arr, tr, EPSG, 0)
            assets[band] = {"href": str(path), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                            "roles": ["data"], "gsd": float(res), "proj:shape": list(shape),
                            "proj:transform": [res, 0, X0, 0, -res, Y1]}
        if drop_asset:
            assets.pop(drop_asset, None)
        s2.append(_item("sentinel-2-l2a", f"S2_{k}", f"{day}T03:35:00Z",
                        {"proj:epsg": EPSG, "eo:cloud_cover": 20.0, "s2:processing_baseline": "05.10"}, assets, bbox))
    s1: list[pystac.Item] = []
    for k, day in enumerate(("2024-07-05", "2024-07-21", "2024-08-06")):
        assets = {}
        for pol in ("vv", "vh"):
            arr = rng.gamma(4.0, 0.05 / 4.0, size=(N, N)).astype("float32")
            path = root / "s1" / f"{k}" / f"{pol}.tif"
            _cog(path, arr, Affine(RES, 0, X0, 0, -RES, Y1), EPSG, -32768.0)
            assets[pol] = {"href": str(path), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "roles": ["data"], "proj:shape": [N, N], "proj:transform": [RES, 0, X0, 0, -RES, Y1]}
        s1.append(_item("sentinel-1-rtc", f"S1_{k}", f"{day}T11:15:00Z", {"proj:epsg": EPSG}, assets, bbox))
    # DEM tile in EPSG:4326 covering the region with a margin, 1 arcsecond
    w, s, e, n = bbox
    px = 1 / 3600
    lon0, lat1 = np.floor(w * 100) / 100, np.ceil(n * 100) / 100
    cols, rows = int(np.ceil((e - lon0) / px)) + 10, int(np.ceil((lat1 - s) / px)) + 10
    yy, xx = np.mgrid[0:rows, 0:cols]
    dem = (1000 + 3.0 * xx + 2.0 * yy + 20 * np.sin(xx / 7.0)).astype("float32")
    tr = Affine(px, 0, lon0, 0, -px, lat1)
    path = root / "dem" / "tile.tif"
    _cog(path, dem, tr, 4326, -32767.0)
    tb = [lon0, lat1 - rows * px, lon0 + cols * px, lat1]
    dem_item = _item("cop-dem-glo-30", "DEM_0", "2021-04-22T00:00:00Z",
                     {"proj:epsg": 4326, "proj:shape": [rows, cols], "proj:transform": list(tr)[:6]},
                     {"data": {"href": str(path), "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}}, tb)
    return {"sentinel-2-l2a": s2, "sentinel-1-rtc": s1, "cop-dem-glo-30": [dem_item]}


def inner_bbox() -> tuple[float, float, float, float]:
    """A lon/lat bbox 50 m inside the tiny grid: it plans back onto exactly that grid."""
    from pyproj import Transformer

    tr = Transformer.from_crs(GRID.epsg, 4326, always_xy=True)
    minx, miny, maxx, maxy = GRID.bounds
    w, s = tr.transform(minx + 50, miny + 50)
    e, n = tr.transform(maxx - 50, maxy - 50)
    w2, n2 = tr.transform(minx + 50, maxy - 50)
    e2, s2 = tr.transform(maxx - 50, miny + 50)
    return (max(w, w2), max(s, s2), min(e, e2), min(n, n2))


def tiny_region(name: str = "tiny"):  # type: ignore[no-untyped-def]
    """The tiny grid as a Region (see :func:`inner_bbox`)."""
    from pipeline.plan.regions import Region

    return Region(name=name, bbox=inner_bbox())


class FakeSource:
    """An ItemSource over in-memory items (filters by collection only)."""

    url = "http://fake.invalid/stac"

    def __init__(self, items: dict[str, list[pystac.Item]]) -> None:
        self.items = items
        self.calls: list[tuple] = []

    def search(self, collection, bbox, datetime, max_cloud_cover=None, max_items=None):  # type: ignore[no-untyped-def]
        self.calls.append((collection, tuple(bbox), datetime, max_cloud_cover))
        return list(self.items.get(collection, []))


def tiny_checkpoint(lsi_path: Path, path: Path, *, seed: int = 0, provenance: dict | None = None) -> Path:
    """An untrained tiny EnhancedUNet (seeded) saved at ``path``, normalised with the mean
    and standard deviation of the LSI store at ``lsi_path``: a real checkpoint for tests
    that need the risk stage to run, not to be right."""
    import torch
    import xarray as xr

    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import DEFAULT_CHANNELS, EnhancedUNet

    torch.manual_seed(seed)
    model = EnhancedUNet(DEFAULT_CHANNELS, base_width=4, depth=2)
    lsi = xr.open_zarr(lsi_path)
    mean = tuple(float(lsi[c].mean()) for c in DEFAULT_CHANNELS)
    std = tuple(float(lsi[c].std()) or 1.0 for c in DEFAULT_CHANNELS)
    return save_checkpoint(path, model, NormStats(mean, std), **({"provenance": provenance} if provenance else {}))


def copied_item(item: pystac.Item, root: Path, suffix: str, *, dx: float = 0.0, dy: float = 0.0,
                edit: Callable[[np.ndarray, dict], np.ndarray] | None = None) -> pystac.Item:
    """A copy of ``item`` (id ``<id>_<suffix>``) whose files, rewritten under ``root``, are
    moved by (dx, dy) metres (``proj:transform`` too) and whose values ``edit(array,
    profile)`` may change."""
    out = item.clone()
    out.id = f"{item.id}_{suffix}"
    for key, asset in out.assets.items():
        with rasterio.open(asset.href) as src:
            profile, arr = src.profile, src.read(1)
        if edit is not None:
            arr = edit(arr, profile)
        t = profile["transform"]
        profile["transform"] = Affine(t.a, t.b, t.c + dx, t.d, t.e, t.f + dy)
        dst = root / out.id / f"{key}.tif"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(dst, "w", **profile) as f:
            f.write(arr, 1)
        asset.href = str(dst)
        asset.extra_fields["proj:transform"] = list(profile["transform"])[:6]
    return out
