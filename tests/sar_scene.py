"""A simulated Sentinel-1 GRD scene in radar geometry, for testing the GCP geocoder.

Forward model, written independently of ``pipeline.acquire.sar_geocode``: a right-looking sensor at
693 km over a spherical Earth images terrain ``h(E, N)``; a GRD sample at ground range ``s_ref``
on the reference surface (height ``Z_REF``) has the slant range of that reference point, and its
value is the ground pattern where the same slant range meets the terrain (found by iterating the
law of cosines). Ground range and along-track distance are laid out locally in UTM around the
test area. The file carries only GCPs (EPSG:4326, on the reference surface), like ESA's
measurement GeoTIFFs, and spans the whole IW swath (29.1° to 46.0°) in range.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

RE = 6_371_000.0
HS = 693_000.0
Z_REF = 200.0  # mean height of the GCPs' reference surface


def z_ref(row: np.ndarray, col: np.ndarray, rows: int) -> np.ndarray:
    """The reference surface the GCPs lie on (m): tilted, as ESA's geolocation grid follows a
    coarse terrain (``row``, ``col`` in pixel-corner coordinates of the ESA-ordered image)."""
    return Z_REF + 300.0 * (col / WIDTH - 0.5) + 80.0 * (row / rows - 0.5)
DX = DY = 10.0  # ground-range and azimuth sample spacing (m)
EPSG = 32648
CENTRE = (320_640.0, 3_308_800.0)  # UTM 48N: the centre of tests/tinyregion.py's grid
GRD_ITEM = Path("planetary-computer") / "collection-templates" / "sentinel-1-grd__test-data__sentinel-1-grd-item-raw.json"


def ground_range(theta_deg: float) -> float:
    """Ground range from nadir (m) of a point seen at incidence ``theta_deg`` on the sphere."""
    th = np.radians(theta_deg)
    look = np.arcsin(RE / (RE + HS) * np.sin(th))
    return float(RE * (th - look))


S_NEAR, S_FAR = ground_range(29.1), ground_range(46.0)
WIDTH = int(round((S_FAR - S_NEAR) / DX))


def terrain(e: np.ndarray, n: np.ndarray) -> np.ndarray:
    """A 700 m hill (slopes up to about 25°) on a 300 m plain."""
    return 300.0 + 700.0 * np.exp(-((e - CENTRE[0] - 200) ** 2 + (n - CENTRE[1] + 100) ** 2) / (2 * 900.0**2))


def pattern(e: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The ground's brightness (DN): smooth, but changing within a few pixels."""
    de, dn = e - CENTRE[0], n - CENTRE[1]
    return 2000.0 + 900.0 * np.sin(2 * np.pi * de / 430.0) * np.cos(2 * np.pi * dn / 510.0) + 0.1 * de


def _slant(phi: np.ndarray, h: np.ndarray | float) -> np.ndarray:
    a, b = RE + HS, RE + h
    return np.sqrt(a * a + b * b - 2 * a * b * np.cos(phi))


def simulate(path: Path, orbit: str = "ascending", cols_grow_with_range: bool = True, rows: int = 500,
             gain: float = 1.0, half_cols: int = 350) -> dict:
    """Write the scene (ground pattern × ``gain``) to ``path``; returns its orbit, footprint and shape."""
    heading = np.radians(-10.0 if orbit == "ascending" else 190.0)
    along = np.array([np.sin(heading), np.cos(heading)])  # unit vector of flight (E, N)
    right = np.array([along[1], -along[0]])  # the sensor looks right of its track
    s_mid = 0.5 * (S_NEAR + S_FAR)
    y_mid = rows * DY / 2

    def ground(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = CENTRE[0] + (s - s_mid) * right[0] + (y - y_mid) * along[0]
        n = CENTRE[1] + (s - s_mid) * right[1] + (y - y_mid) * along[1]
        return e, n

    # only the columns near the area hold data (the rest is nodata, as outside a real swath)
    c_mid = (s_mid - S_NEAR) / DX
    c0, c1 = int(c_mid - half_cols), int(c_mid + half_cols)
    ll, cc = np.mgrid[0:rows, c0:c1].astype("float64") + 0.5
    y = ll * DY
    s_ref = S_NEAR + cc * DX
    r_ref = _slant(s_ref / RE, z_ref(ll, cc, rows))
    phi = s_ref / RE
    for _ in range(30):  # the terrain point with the reference point's slant range
        h = terrain(*ground(RE * phi, y))
        cosphi = ((RE + HS) ** 2 + (RE + h) ** 2 - r_ref**2) / (2 * (RE + HS) * (RE + h))
        phi = np.arccos(cosphi)
    dn = np.clip(gain * pattern(*ground(RE * phi, y)), 1, 65535).astype("uint16")
    img = np.zeros((rows, WIDTH), dtype="uint16")
    img[:, c0:c1] = dn
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    gcps = []
    for r in np.linspace(0, rows, 6):
        for c in np.linspace(0, WIDTH, 21):
            lon, lat = to_ll.transform(*ground(np.array(S_NEAR + c * DX), np.array(r * DY)))
            col = c if cols_grow_with_range else WIDTH - c
            gcps.append(GroundControlPoint(row=float(r), col=float(col), x=float(lon), y=float(lat),
                                           z=float(z_ref(np.array(r), np.array(c), rows))))
    if not cols_grow_with_range:
        img = img[:, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=rows, count=1, dtype="uint16",
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                       gcps=gcps, crs=CRS.from_epsg(4326)) as dst:
        dst.write(img, 1)
    corners = [ground(np.array(S_NEAR + c * DX), np.array(r * DY)) for r, c in ((0, 0), (0, WIDTH), (rows, WIDTH), (rows, 0))]
    lonlat = [to_ll.transform(float(e), float(n)) for e, n in corners]
    return {"orbit": orbit, "footprint": lonlat, "shape": img.shape}


def grd_item(fixtures: Path, tif: Path, sim: dict, item_id: str, day: str) -> pystac.Item:
    """Planetary Computer's recorded GRD item with its geometry, time and orbit set to the
    simulated scene's and its ``vv``/``vh`` assets pointing at ``tif``."""
    d = json.loads((fixtures / GRD_ITEM).read_text())
    ring = [list(p) for p in sim["footprint"]] + [list(sim["footprint"][0])]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    d["id"] = item_id
    d["collection"] = "sentinel-1-grd"
    d["geometry"] = {"type": "Polygon", "coordinates": [ring]}
    d["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
    props = d["properties"]
    props["datetime"] = f"{day}T11:15:00Z"
    props.pop("start_datetime", None)
    props.pop("end_datetime", None)
    props["sat:orbit_state"] = sim["orbit"]
    for key in ("vv", "vh"):
        d["assets"][key]["href"] = str(tif)
    d["links"] = []
    return pystac.Item.from_dict(d)


def dem_item(folder: Path) -> pystac.Item:
    """A Copernicus-DEM-like EPSG:4326 COG tile of :func:`terrain` around the area (1 arcsecond)."""
    from rasterio.transform import Affine

    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    to_utm = Transformer.from_crs(4326, EPSG, always_xy=True)
    w, s = to_ll.transform(CENTRE[0] - 3000, CENTRE[1] - 3000)
    e, n = to_ll.transform(CENTRE[0] + 3000, CENTRE[1] + 3000)
    px = 1 / 3600
    cols, rows = int(np.ceil((e - w) / px)), int(np.ceil((n - s) / px))
    lon = w + px * (np.arange(cols) + 0.5)
    lat = n - px * (np.arange(rows) + 0.5)
    ee, nn = to_utm.transform(*np.meshgrid(lon, lat))
    dem = terrain(ee, nn).astype("float32")
    tr = Affine(px, 0, w, 0, -px, n)
    path = folder / "dem.tif"
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=1, dtype="float32",
                       crs=CRS.from_epsg(4326), transform=tr, nodata=-32767.0, tiled=True) as dst:
        dst.write(dem, 1)
    bbox = [w, n - rows * px, w + cols * px, n]
    return pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.0.0", "id": "DEM_sim", "collection": "cop-dem-glo-30",
        "geometry": {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]],
                                                         [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]},
        "bbox": bbox, "links": [],
        "properties": {"datetime": "2021-04-22T00:00:00Z", "proj:epsg": 4326, "proj:shape": [rows, cols],
                       "proj:transform": list(tr)[:6]},
        "assets": {"data": {"href": str(path), "type": "image/tiff; application=geotiff", "roles": ["data"]}},
    })
