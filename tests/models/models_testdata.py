"""Tiny seeded synthetic data for the models tests: a factor Zarr plus a polygon inventory.

Landslides are discs (3-14 px radius) on a 10 m UTM grid; the factors carry a learnable
signal (steeper, less vegetated, higher LSI inside landslides) plus noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer

from models.networks import DEFAULT_CHANNELS

CRS = "EPSG:32633"


@pytest.fixture(scope="module")
def torch_threads():
    """One torch thread per test module: on a shared 2-core machine, 2 OpenMP threads competing
    with another process are several times slower than 1. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
ORIGIN = (500_000.0, 5_000_000.0)  # top-left corner (x, y)
RES = 10.0


def grid_transform(res: float = RES, origin: tuple[float, float] = ORIGIN) -> Affine:
    return Affine(res, 0.0, origin[0], 0.0, -res, origin[1])


def landslide_polygons(size: int, n: int = 20, seed: int = 0) -> list[shapely.Polygon]:
    """Non-overlapping-ish discs in grid CRS metres."""
    rng = np.random.default_rng(seed)
    t = grid_transform()
    polys = []
    for _ in range(n):
        r_px = float(rng.uniform(3, 14))
        row, col = rng.uniform(r_px, size - r_px, 2)
        x, y = t @ (col, row)
        polys.append(shapely.Point(x, y).buffer(r_px * RES, quad_segs=8))
    return polys


def write_geojson(path: Path, polys, to_crs: str | None = "EPSG:4326", props=None) -> Path:
    """GeoJSON FeatureCollection; reprojected to ``to_crs`` (4326 = RFC 7946, no crs member)."""
    feats = []
    tr = Transformer.from_crs(CRS, to_crs, always_xy=True) if to_crs and to_crs != CRS else None
    for i, p in enumerate(polys):
        if tr is not None:
            p = shapely.transform(p, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        feats.append(
            {
                "type": "Feature",
                "properties": (props[i] if props else {"id": f"ls-{i}"}),
                "geometry": shapely.geometry.mapping(p),
            }
        )
    doc = {"type": "FeatureCollection", "features": feats}
    if to_crs is None or to_crs == CRS:
        doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    path.write_text(json.dumps(doc))
    return path


def synthetic_factors(mask: np.ndarray, seed: int = 0, channels=DEFAULT_CHANNELS) -> dict[str, np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(seed + 1)
    h, w = mask.shape
    m = mask.astype(np.float32)
    near = ndimage.gaussian_filter(m, 3)

    def noise(s):
        return (rng.normal(0, s, (h, w))).astype(np.float32)

    base = {
        "slope": 15 + 20 * m + 5 * near + noise(4),
        "dem": 800 + ndimage.gaussian_filter(rng.normal(0, 50, (h, w)), 10) * 10 + 30 * near,
        "ndvi": 0.6 - 0.35 * m + noise(0.08),
        "ndwi": -0.3 + 0.1 * m + noise(0.05),
        "smi": 0.4 + 0.1 * near + noise(0.05),
        "ndbi": -0.1 + 0.05 * m + noise(0.05),
        "lsi": 0.35 + 0.3 * near + 0.1 * m + noise(0.05),
    }
    return {c: np.asarray(base[c], dtype=np.float32) for c in channels}


def write_factor_cube(
    path: Path, size: int = 256, seed: int = 0, n_landslides: int = 20, channels=DEFAULT_CHANNELS
) -> tuple[Path, np.ndarray, list]:
    """Write ``path`` (Zarr, dims (y, x), CRS via rioxarray). Returns path, mask, polygons."""
    import rioxarray  # noqa: F401
    import xarray as xr

    polys = landslide_polygons(size, n_landslides, seed)
    t = grid_transform()
    mask = rasterio.features.rasterize(
        ((p, 1) for p in polys), out_shape=(size, size), transform=t, dtype=np.uint8
    )
    facs = synthetic_factors(mask, seed, channels)
    xs = ORIGIN[0] + (np.arange(size) + 0.5) * RES
    ys = ORIGIN[1] - (np.arange(size) + 0.5) * RES
    ds = xr.Dataset(
        {c: (("y", "x"), v) for c, v in facs.items()}, coords={"y": ys, "x": xs}
    ).rio.write_crs(CRS)
    ds.to_zarr(path, mode="w", consolidated=False)
    return path, mask, polys


# ----------------------------------------------------------------------------- own rasters (issue 16)
#: Band order of the synthetic chips written by :func:`write_chip_folder`.
CHIP_BANDS = ("B02", "B03", "B04", "B08", "elevation")


def write_mask_tif(path: Path, mask: np.ndarray, transform: Affine, crs: str, nodata=None) -> Path:
    """A one-band uint8 mask GeoTIFF."""
    with rasterio.open(path, "w", driver="GTiff", width=mask.shape[1], height=mask.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(mask.astype(np.uint8), 1)
    return path


def write_chip_folder(root: Path, seed: int = 0, describe: bool = True) -> tuple[Path, Path, dict]:
    """Four small GeoTIFF chips on different grids in two CRSs (EPSG:32648 and EPSG:32633),
    bands B02, B03, B04, B08 and elevation (descriptions set when ``describe``), and one
    0/1/2 mask per chip (0 unlabelled, 1 not a landslide, 2 landslide) named like the chip.

    Landslide discs are brighter in red, darker in NIR (low NDVI) and on steeper ground.
    Returns ``(chips folder, masks folder, {chip name: (bands (5, h, w) float32, mask)})``.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    chips, masks = root / "chips", root / "masks"
    chips.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    specs = [  # name, crs, origin (x, y), (h, w), pixel size
        ("hongya_a", "EPSG:32648", (300_000.0, 3_300_000.0), (64, 64), 10.0),
        ("hongya_b", "EPSG:32648", (310_000.0, 3_310_000.0), (48, 80), 10.0),
        ("alps_a", "EPSG:32633", (600_000.0, 5_200_000.0), (64, 64), 20.0),
        ("alps_b", "EPSG:32633", (605_000.0, 5_205_000.0), (56, 72), 10.0),
    ]
    out = {}
    for name, crs, (x0, y0), (h, w), res in specs:
        slide = np.zeros((h, w), bool)
        rr, cc = np.mgrid[:h, :w]
        for _ in range(3):
            r, c, rad = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(3, 7)
            slide |= (rr - r) ** 2 + (cc - c) ** 2 <= rad**2
        m = slide.astype(np.float32)
        b02 = 0.05 + 0.02 * m + rng.normal(0, 0.005, (h, w))
        b03 = 0.08 + 0.03 * m + rng.normal(0, 0.005, (h, w))
        b04 = 0.06 + 0.10 * m + rng.normal(0, 0.01, (h, w))
        b08 = 0.35 - 0.15 * m + rng.normal(0, 0.02, (h, w))
        dem = 900 + np.cumsum(rng.normal(2, 1, (h, w)), axis=0) + 30 * ndimage.gaussian_filter(m, 2)
        bands = np.stack([b02, b03, b04, b08, dem]).astype(np.float32)
        t = Affine(res, 0.0, x0, 0.0, -res, y0)
        with rasterio.open(chips / f"{name}.tif", "w", driver="GTiff", width=w, height=h, count=5,
                           dtype="float32", crs=crs, transform=t) as dst:
            dst.write(bands)
            if describe:
                for i, b in enumerate(CHIP_BANDS):
                    dst.set_band_description(i + 1, b)
        mask = np.where(slide, 2, 1).astype(np.uint8)
        mask[:, : w // 4] = 0  # a strip nobody mapped
        write_mask_tif(masks / f"{name}.tif", mask, t, crs)
        out[name] = (bands, mask)
    return chips, masks, out
