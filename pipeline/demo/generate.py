"""Write the demo region: COGs, Planetary-Computer-shaped STAC items, and ground truth.

Layout under ``root`` (default ``data/demo``)::

    manifest.json                 seed, generator version, what was written (cache key)
    collections/<id>.json         STAC collections
    items/<collection>.json       FeatureCollections of items (hrefs: absolute COG paths)
    cogs/<collection>/<item>/<asset>.tif
    truth/landslides.tif          planted scars on the 10 m cube grid (uint8)
    truth/landslides.geojson      the same scars as WGS84 polygons
    truth/landcover.tif           land-cover classes on the cube grid
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.warp import transform_bounds, transform_geom
from scipy import ndimage

from pipeline.core.collections import COP_DEM, S2_BAND_RESOLUTION, SENTINEL1_RTC, SENTINEL2
from pipeline.core.config import TimeWindow
from pipeline.demo import synth

GENERATOR_VERSION = 3
DEMO_SEED = 20240701
DEMO_EPSG = 32648
#: The demo cube grid: 2048 × 2048 px at 10 m (4 × 4 chunks of 512), see regions.DEMO_REGION.
GRID_X0, GRID_Y1, GRID_SIZE = 317440.0, 3322880.0, 2048
#: Scenes extend MARGIN px beyond the grid on every side, like real tiles do.
MARGIN = 128
RES = 10.0
DEMO_WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
S2_DATES = (date(2024, 7, 4), date(2024, 7, 19), date(2024, 8, 3), date(2024, 8, 18))
S2_CLOUD_FRACTION = (0.08, 0.30, 0.18, 0.45)
#: Sentinel-1 every 16 days from May (reference history) into the window.
S1_DATES = tuple(date(2024, 5, 2) + timedelta(days=16 * k) for k in range(8))
#: Relative wetness (recent rain, 0..1) on each S1 date: drier spring, monsoon in the window.
S1_RAIN = (0.05, 0.15, 0.10, 0.30, 0.55, 0.70, 0.85, 1.00)

COG_PROFILE = dict(driver="COG", compress="DEFLATE", blocksize=512, overview_resampling="average")


@dataclass(frozen=True)
class DemoLayout:
    """Paths of a generated demo region."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def collection_files(self) -> list[Path]:
        return sorted((self.root / "collections").glob("*.json"))

    def item_files(self) -> list[Path]:
        return sorted((self.root / "items").glob("*.json"))

    @property
    def truth_mask(self) -> Path:
        return self.root / "truth" / "landslides.tif"

    @property
    def truth_polygons(self) -> Path:
        return self.root / "truth" / "landslides.geojson"

    @property
    def precipitation(self) -> Path:
        return self.root / "precipitation" / "imerg-demo.zarr"


def _write_cog(path: Path, data: np.ndarray, transform: Affine, epsg: int, nodata: float, predictor: str) -> None:
    """A COG; ``predictor`` by the COG driver's names (NO, STANDARD, FLOATING_POINT): it rejects "1"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
        crs=CRS.from_epsg(epsg), transform=transform, nodata=nodata, predictor=predictor,
        **COG_PROFILE,
    ) as dst:
        dst.write(data, 1)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _block_mode_max(a: np.ndarray, f: int) -> np.ndarray:
    """Down-sample class codes by taking the block's maximum (clouds win, like Sen2Cor)."""
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f).max(axis=(1, 3))


def _footprint(epsg: int, bounds: tuple[float, float, float, float]) -> tuple[dict, list[float]]:
    minx, miny, maxx, maxy = bounds
    ring = {"type": "Polygon", "coordinates": [[[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]]}
    geom = transform_geom(CRS.from_epsg(epsg), "EPSG:4326", ring)
    bbox = list(transform_bounds(CRS.from_epsg(epsg), "EPSG:4326", *bounds, densify_pts=21))
    return geom, bbox


def _iso(d: date, hour: int = 3, minute: int = 35) -> str:
    return datetime(d.year, d.month, d.day, hour, minute, 21, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _asset(path: Path, title: str, shape: tuple[int, int], transform: Affine, bounds: tuple, extra: dict) -> dict:
    return {
        "href": str(path.resolve()),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "title": title,
        "roles": ["data"],
        "proj:shape": list(shape),
        "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
        "proj:bbox": list(bounds),
        **extra,
    }


def _collection(cid: str, description: str, bbox: list[float], interval: list[str | None]) -> dict:
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": cid,
        "title": f"{cid} (slidewatch demo, synthetic)",
        "description": description + " Synthetic data generated by slidewatch's demo; not real observations.",
        "license": "CC0-1.0",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "links": [],
    }


def generate(root: Path, seed: int = DEMO_SEED, progress: Callable[[str], None] | None = None) -> DemoLayout:
    """Generate the demo region under ``root`` (overwrites it). Deterministic in ``seed``."""
    say = progress or (lambda msg: None)
    layout = DemoLayout(root)
    tmp = root.with_name(root.name + ".generating")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = GRID_SIZE + 2 * MARGIN
    x0, y1 = GRID_X0 - MARGIN * RES, GRID_Y1 + MARGIN * RES
    transform = Affine(RES, 0, x0, 0, -RES, y1)
    bounds = (x0, y1 - n * RES, x0 + n * RES, y1)
    geom, bbox = _footprint(DEMO_EPSG, bounds)

    say("synthesising terrain, land cover and landslide scars")
    scene = synth.synthesize_scene(seed, (n, n), RES)
    rng = np.random.default_rng(seed + 1)
    base_refl = synth.reflectance(scene, rng)

    items: dict[str, list[dict]] = {SENTINEL2: [], SENTINEL1_RTC: [], COP_DEM: []}
    # ---------------- Sentinel-2 L2A -------------------------------------------------
    for k, (day, frac) in enumerate(zip(S2_DATES, S2_CLOUD_FRACTION)):
        say(f"Sentinel-2 L2A scene {k + 1}/{len(S2_DATES)} ({day})")
        drng = np.random.default_rng(seed + 100 + k)
        density, shadow = synth.clouds(drng, (n, n), frac)
        refl = base_refl * (1.0 + 0.02 * drng.standard_normal((n, n), dtype="float32"))
        cloud_refl = 0.35 + 0.25 * density
        refl = refl * (1 - density) + cloud_refl * density
        refl[:, shadow] *= 0.35
        scl = np.where(scene.landcover == synth.WATER, 6,
                       np.where(np.isin(scene.landcover, (synth.FOREST, synth.FIELDS, synth.GRASS)), 4, 5)).astype("uint8")
        scl[shadow] = 3
        scl[(density > 0) & (density < 0.15)] = 10
        scl[(density >= 0.15) & (density < 0.5)] = 8
        scl[density >= 0.5] = 9
        nodata = np.zeros((n, n), bool)
        if k == 2:  # an orbit edge: the east quarter of this acquisition is outside the swath
            nodata[:, int(n * 0.78):] = True
            scl[nodata] = 0
        item_id = f"S2B_MSIL2A_{day:%Y%m%d}T033539_R104_T48RTU_{day:%Y%m%d}T081245"
        folder = tmp / "cogs" / SENTINEL2 / item_id
        assets = {}
        for b, band in enumerate(synth.S2_ORDER):
            f = S2_BAND_RESOLUTION[band] // 10
            arr = refl[b] if f == 1 else _block_mean(refl[b], f)
            dn = np.round(arr * 10000.0 + 1000.0).clip(1, 65535).astype("uint16")
            nd = nodata if f == 1 else _block_mode_max(nodata.astype("uint8"), f).astype(bool)
            dn[nd] = 0
            tr = Affine(RES * f, 0, x0, 0, -RES * f, y1)
            path = folder / f"{band}_{10 * f}m.tif"
            _write_cog(path, dn, tr, DEMO_EPSG, 0, predictor="STANDARD")
            assets[band] = _asset(path, f"Band {band[1:]} - {10 * f}m", dn.shape, tr, bounds,
                                  {"gsd": float(10 * f), "eo:bands": [{"name": band}]})
        scl20 = _block_mode_max(scl, 2)
        tr20 = Affine(20.0, 0, x0, 0, -20.0, y1)
        path = folder / "SCL_20m.tif"
        _write_cog(path, scl20, tr20, DEMO_EPSG, 0, predictor="NO")
        assets["SCL"] = _asset(path, "Scene classfication map (SCL)", scl20.shape, tr20, bounds, {"gsd": 20.0})
        cloud_pct = float(np.mean(density[~nodata] > 0) * 100.0)
        items[SENTINEL2].append({
            "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": SENTINEL2,
            "stac_extensions": [
                "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
                "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
            ],
            "geometry": geom, "bbox": bbox, "links": [],
            "properties": {
                "datetime": _iso(day), "platform": "Sentinel-2B", "constellation": "Sentinel 2",
                "instruments": ["msi"], "proj:epsg": DEMO_EPSG, "s2:mgrs_tile": "48RTU",
                "eo:cloud_cover": round(cloud_pct, 4), "s2:processing_baseline": "05.10",
                "s2:product_type": "S2MSI2A", "sat:orbit_state": "descending", "sat:relative_orbit": 104,
                "s2:mean_solar_zenith": 30.0, "s2:mean_solar_azimuth": 150.0,
            },
            "assets": assets,
        })

    # ---------------- Sentinel-1 RTC -------------------------------------------------
    for k, (day, rain) in enumerate(zip(S1_DATES, S1_RAIN)):
        say(f"Sentinel-1 RTC scene {k + 1}/{len(S1_DATES)} ({day})")
        drng = np.random.default_rng(seed + 200 + k)
        moisture = synth.soil_moisture(scene, rain, drng)
        vv, vh = synth.backscatter(scene, moisture, drng)
        item_id = f"S1A_IW_GRDH_1SDV_{day:%Y%m%d}T111502_{day:%Y%m%d}T111527_0{54000 + k}_069A{k:02d}_rtc"
        folder = tmp / "cogs" / SENTINEL1_RTC / item_id
        assets = {}
        for pol, arr in (("vv", vv), ("vh", vh)):
            path = folder / f"{pol}.tif"
            _write_cog(path, np.round(arr, 5).astype("float32"), transform, DEMO_EPSG, -32768.0, predictor="FLOATING_POINT")
            assets[pol] = _asset(path, f"{pol.upper()}: {'vertical' if pol == 'vv' else 'vertical transmit, horizontal'} receive",
                                 (n, n), transform, bounds,
                                 {"raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0}]})
        items[SENTINEL1_RTC].append({
            "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": SENTINEL1_RTC,
            "stac_extensions": [
                "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
                "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
            "geometry": geom, "bbox": bbox, "links": [],
            "properties": {
                "datetime": _iso(day, 11, 15), "start_datetime": _iso(day, 11, 15), "end_datetime": _iso(day, 11, 15),
                "platform": "SENTINEL-1A", "constellation": "Sentinel-1", "proj:epsg": DEMO_EPSG,
                "proj:shape": [n, n], "proj:bbox": list(bounds),
                "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
                "sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW", "sar:frequency_band": "C",
                "sar:product_type": "GRD", "sat:orbit_state": "ascending", "sat:relative_orbit": 99,
                "s1:processing_level": "1", "s1:resolution": "high",
            },
            "assets": assets,
        })

    # ---------------- Copernicus DEM (EPSG:4326 tiles) --------------------------------
    say("Copernicus DEM tiles (EPSG:4326)")
    step, px = 0.1, 1.0 / 3600.0
    w, s, e, nn = bbox
    lon0s = np.arange(np.floor(w / step) * step, e, step)
    lat0s = np.arange(np.floor(s / step) * step, nn, step)
    from pyproj import Transformer

    to_utm = Transformer.from_crs(4326, DEMO_EPSG, always_xy=True)
    size = int(round(step / px))
    for lat0 in lat0s:
        for lon0 in lon0s:
            lons = lon0 + (np.arange(size) + 0.5) * px
            lats = lat0 + step - (np.arange(size) + 0.5) * px
            lon2, lat2 = np.meshgrid(lons, lats)
            ux, uy = to_utm.transform(lon2, lat2)
            cols = (ux - x0) / RES - 0.5
            rows = (y1 - uy) / RES - 0.5
            inside = (cols >= 0) & (cols <= n - 1) & (rows >= 0) & (rows <= n - 1)
            if not inside.any():
                continue
            z = ndimage.map_coordinates(scene.elevation, [rows, cols], order=1, mode="nearest").astype("float32")
            z[~inside] = -32767.0
            tile_id = f"Copernicus_DSM_COG_10_N{lat0:05.2f}_00_E{lon0:06.2f}_00_DEM".replace(".", "_")
            tr = Affine(px, 0, lon0, 0, -px, lat0 + step)
            path = tmp / "cogs" / COP_DEM / f"{tile_id}.tif"
            _write_cog(path, z, tr, 4326, -32767.0, predictor="FLOATING_POINT")
            tb = [float(lon0), float(lat0), float(lon0 + step), float(lat0 + step)]
            items[COP_DEM].append({
                "type": "Feature", "stac_version": "1.0.0", "id": tile_id, "collection": COP_DEM,
                "stac_extensions": ["https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
                "geometry": {"type": "Polygon", "coordinates": [[[tb[0], tb[1]], [tb[2], tb[1]], [tb[2], tb[3]], [tb[0], tb[3]], [tb[0], tb[1]]]]},
                "bbox": tb, "links": [],
                "properties": {
                    "gsd": 30, "datetime": "2021-04-22T00:00:00Z", "platform": "TanDEM-X",
                    "proj:epsg": 4326, "proj:shape": [size, size],
                    "proj:transform": [tr.a, tr.b, tr.c, tr.d, tr.e, tr.f],
                },
                "assets": {"data": {
                    "href": str(path.resolve()), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "title": tile_id, "roles": ["data"],
                }},
            })

    # ---------------- ground truth on the cube grid ------------------------------------
    say("ground truth: landslide scars and land cover")
    crop = (slice(MARGIN, MARGIN + GRID_SIZE), slice(MARGIN, MARGIN + GRID_SIZE))
    grid_tr = Affine(RES, 0, GRID_X0, 0, -RES, GRID_Y1)
    truth = tmp / "truth"
    truth.mkdir(parents=True)
    mask = scene.scars[crop].astype("uint8")
    for name, arr in (("landslides.tif", mask), ("landcover.tif", scene.landcover[crop])):
        with rasterio.open(truth / name, "w", driver="GTiff", width=GRID_SIZE, height=GRID_SIZE, count=1,
                           dtype="uint8", crs=CRS.from_epsg(DEMO_EPSG), transform=grid_tr, compress="deflate") as dst:
            dst.write(arr, 1)
    feats = [
        {"type": "Feature", "properties": {"id": i, "class": "landslide"},
         "geometry": transform_geom(CRS.from_epsg(DEMO_EPSG), "EPSG:4326", g)}
        for i, (g, v) in enumerate(shapes(mask, mask=mask.astype(bool), transform=grid_tr)) if v == 1
    ]
    (truth / "landslides.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))

    # ---------------- precipitation (IMERG-shaped Zarr with a storm) --------------------
    _write_precipitation(tmp / "precipitation" / "imerg-demo.zarr", bbox, seed, say)

    # ---------------- STAC documents ---------------------------------------------------
    (tmp / "collections").mkdir()
    (tmp / "items").mkdir()
    colls = {
        SENTINEL2: ("Sentinel-2 Level-2A surface reflectance.", [_iso(S2_DATES[0]), None]),
        SENTINEL1_RTC: ("Sentinel-1 radiometrically terrain corrected gamma0 backscatter.", [_iso(S1_DATES[0]), None]),
        COP_DEM: ("Copernicus DEM GLO-30 elevation tiles.", ["2021-04-22T00:00:00Z", "2021-04-22T00:00:00Z"]),
    }
    for cid, (desc, interval) in colls.items():
        (tmp / "collections" / f"{cid}.json").write_text(json.dumps(_collection(cid, desc, bbox, interval)))
        doc = {"type": "FeatureCollection", "features": items[cid]}
        # hrefs point into the final folder, not the temporary one
        text = json.dumps(doc).replace(str(tmp.resolve()), str(root.resolve()))
        (tmp / "items" / f"{cid}.json").write_text(text)
    manifest = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "epsg": DEMO_EPSG,
        "grid": {"x0": GRID_X0, "y1": GRID_Y1, "size": GRID_SIZE, "resolution": RES},
        "window": [DEMO_WINDOW.start.isoformat(), DEMO_WINDOW.end.isoformat()],
        "items": {k: len(v) for k, v in items.items()},
        "scar_pixels": int(mask.sum()),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return layout


def _write_precipitation(path: Path, bbox: list[float], seed: int, say: Callable[[str], None]) -> None:
    """IMERG-shaped precipitation Zarr with a storm (:mod:`pipeline.demo.storm`)."""
    from pipeline.demo.storm import make_synthetic_storm

    say("precipitation: IMERG-shaped Zarr with a storm")
    ds = make_synthetic_storm(tuple(bbox), DEMO_WINDOW.end - timedelta(days=3), DEMO_WINDOW.end, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(str(path), mode="w", zarr_format=2, consolidated=True)  # as IMERG on Planetary Computer


def is_current(layout: DemoLayout, seed: int) -> bool:
    """True when ``layout`` holds a finished generation of this version and seed."""
    try:
        doc = json.loads(layout.manifest.read_text())
    except (OSError, ValueError):
        return False
    return doc.get("generator_version") == GENERATOR_VERSION and doc.get("seed") == seed


def ensure_demo_data(root: Path, seed: int = DEMO_SEED, progress: Callable[[str], None] | None = None) -> tuple[DemoLayout, bool]:
    """Generate the demo region unless a current one is cached; returns (layout, generated)."""
    layout = DemoLayout(root)
    if is_current(layout, seed):
        return layout, False
    return generate(root, seed, progress), True
