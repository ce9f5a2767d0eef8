"""Sentinel-1 GRD scenes in radar geometry, geocoded onto a zone grid through their GCPs.

Planetary Computer's ``sentinel-1-grd`` assets are ESA's measurement GeoTIFFs as COGs: ground-range
geometry (lines in azimuth time, samples in range) with a grid of ground control points
(lon/lat/height in EPSG:4326) instead of a geotransform, and their STAC items carry no ``proj:*``.
stackstac cannot place such files, so each (scene, chunk) is read here:

1. the chunk's pixel centres (on a coarse lattice, then interpolated) go to lon/lat and through
   a thin-plate-spline fit of the GCPs (GDAL's ``GCP_TPS``, exact at every GCP) to image
   coordinates on the GCPs' reference heights;
2. each pixel is moved in range by its height above that reference: a target ``Δh`` higher
   appears ``Δh / tan θ`` closer to the sensor in ground range (``θ`` the incidence angle,
   interpolated across the swath from the instrument mode's near/far angles; the range
   direction follows from the orbit direction and the right-looking geometry). Heights come from
   the cube's DEM; where it has none, pixels stay on the reference;
3. the window of the scene those positions need is read and sampled bilinearly (NaN where the
   scene has no data, DN 0).

Values stay uncalibrated amplitude DN (squared to power and dB by :mod:`pipeline.acquire.cube`): with
neither calibration nor radiometric terrain flattening, only per-pixel change over time (the
soil-moisture change index) is meaningful. Layover and radar shadow are not masked. The DEM is
Copernicus GLO-30 (EGM2008 heights) while GCP heights are ellipsoidal: the geoid undulation
(within about ±100 m on Earth) shifts pixels by ``N / tan θ`` in range, the same on every date of
a relative orbit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
from dask.base import tokenize
import numpy as np
import pystac
import xarray as xr

from pipeline.core.config import ZoneGrid
from pipeline.core.errors import InputDataError

#: Near/far incidence angles (degrees) of each Sentinel-1 acquisition mode across its swath.
INCIDENCE_RANGE: dict[str, tuple[float, float]] = {
    "IW": (29.1, 46.0),
    "EW": (18.9, 47.0),
    "SM": (18.3, 46.8),  # all beams together: one SM beam spans a few degrees (see swath_near_angle)
}
#: Spherical-Earth geometry used for the incidence angle across the swath (Sentinel-1's mean
#: orbit height above a mean Earth radius).
EARTH_RADIUS_M = 6_371_000.0
ORBIT_HEIGHT_M = 693_000.0
#: Spacing (pixels) of the lattice on which the geometry is computed exactly; between its
#: points it is interpolated bilinearly (the mapping is smooth on this scale).
LATTICE = 16
#: Extra margin (metres) around an item's footprint before a chunk is judged outside it.
FOOTPRINT_MARGIN_M = 3000.0


@dataclass(frozen=True)
class GrdScene:
    """One GRD asset to geocode: what a task needs, without opening anything (picklable)."""

    href: str
    item_id: str
    #: True ascending, False descending, None unknown (then samples are taken to grow with range,
    #: as in ESA's products).
    ascending: bool | None
    incidence: tuple[float, float]
    #: The item's footprint bounds in the grid's CRS, widened by :data:`FOOTPRINT_MARGIN_M`.
    bounds: tuple[float, float, float, float] | None


def grd_scene(item: pystac.Item, asset: str, grid: ZoneGrid) -> GrdScene:
    """What :func:`geocode_chunk` needs of ``item``'s ``asset`` (its href as given: sign first)."""
    if asset not in item.assets:
        from pipeline.core.errors import MissingAssetError

        raise MissingAssetError(
            f"sentinel-1-grd item {item.id!r} lacks asset {asset!r}; it has {sorted(item.assets)}.",
            "use items with VV and VH polarisations (IW/EW dual-pol 1SDV scenes).",
        )
    props = item.properties
    state = str(props.get("sat:orbit_state", "")).lower()
    ascending = True if state == "ascending" else False if state == "descending" else None
    mode = str(props.get("sar:instrument_mode", "IW")).upper()
    bounds = None
    if item.bbox is not None and len(item.bbox) in (4, 6):
        from pyproj import Transformer

        b = list(item.bbox)
        w, s, e, n = (b[0], b[1], b[3], b[4]) if len(b) == 6 else b
        if w <= e:  # an antimeridian-crossing bbox is left unbounded
            tf = Transformer.from_crs(4326, grid.epsg, always_xy=True)
            x0, y0, x1, y1 = tf.transform_bounds(w, s, e, n, densify_pts=21)
            m = FOOTPRINT_MARGIN_M
            bounds = (x0 - m, y0 - m, x1 + m, y1 + m)
    return GrdScene(
        href=item.assets[asset].href, item_id=item.id, ascending=ascending,
        incidence=INCIDENCE_RANGE.get(mode, INCIDENCE_RANGE["IW"]), bounds=bounds,
    )


class SceneGeometry:
    """Image coordinates of ground points for one opened GRD dataset (GCP-referenced)."""

    def __init__(self, gcps: Sequence, gcp_crs: object, shape: tuple[int, int], scene: GrdScene) -> None:
        from rasterio.transform import GCPTransformer
        from scipy.interpolate import RBFInterpolator

        if len(gcps) < 3:
            raise InputDataError(
                f"sentinel-1-grd item {scene.item_id!r}: {scene.href.split('?', 1)[0]} has {len(gcps)} ground "
                "control points; at least 3 are needed to place it.",
                "check the asset (`rio info`) or drop the item; sentinel-1-rtc items need no GCPs.",
            )
        self.scene = scene
        self.shape = shape
        self.gcp_crs = gcp_crs
        lons = [float(g.x) for g in gcps]
        #: a scene across the antimeridian is fitted in 0..360° longitudes
        self.wrap = max(lons) - min(lons) > 180.0
        if self.wrap:
            from rasterio.control import GroundControlPoint

            gcps = [GroundControlPoint(row=g.row, col=g.col, x=float(g.x) % 360.0, y=g.y, z=g.z) for g in gcps]
        self.tps = GCPTransformer(list(gcps), tps=True)
        # the GCPs' heights as a thin-plate spline over image space, like the positions
        pts = np.array([[g.row, g.col] for g in gcps], dtype="float64")
        self._z = RBFInterpolator(pts, np.array([float(g.z or 0.0) for g in gcps]), kernel="thin_plate_spline")

    def reference_height(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """GCP heights (m) interpolated at image positions (thin-plate spline, exact at GCPs)."""
        pts = np.column_stack([np.ravel(rows), np.ravel(cols)]).astype("float64")
        z = np.zeros(len(pts), dtype="float64")
        ok = np.isfinite(pts).all(axis=1)
        if ok.any():
            z[ok] = self._z(pts[ok])
        return z.reshape(np.shape(rows))

    def _metres_per_pixel(self, row: float, col: float) -> tuple[np.ndarray, np.ndarray]:
        """Ground (east, north) metres per +1 sample and per +1 line around (row, col)."""
        lon, lat = self.tps.xy([row, row, row + 1.0], [col, col + 1.0, col], offset="ul")
        lon, lat = np.asarray(lon, dtype="float64"), np.asarray(lat, dtype="float64")
        k_lat = 111_132.0
        k_lon = 111_320.0 * math.cos(math.radians(float(lat[0])))
        d_col = np.array([(lon[1] - lon[0]) * k_lon, (lat[1] - lat[0]) * k_lat])
        d_row = np.array([(lon[2] - lon[0]) * k_lon, (lat[2] - lat[0]) * k_lat])
        return d_col, d_row

    def range_sign(self, row: float, col: float) -> float:
        """+1 when samples grow with range (away from the sensor), -1 when they shrink."""
        if self.scene.ascending is None:
            return 1.0
        d_col, d_row = self._metres_per_pixel(row, col)
        flight = d_row if (d_row[1] > 0) == self.scene.ascending else -d_row  # north if ascending
        look = np.array([flight[1], -flight[0]])  # Sentinel-1 looks right of its track
        return 1.0 if float(d_col @ look) >= 0 else -1.0

    def image_coords(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous image (row, col) of ground points on the GCPs' reference heights
        (pixel-corner convention, as GCPs: the first pixel's centre is (0.5, 0.5))."""
        if self.wrap:
            lon = np.mod(lon, 360.0)
        rows, cols = self.tps.rowcol(lon, lat, op=lambda a: a)
        rows = np.asarray(rows, dtype="float64").reshape(np.shape(lon))
        cols = np.asarray(cols, dtype="float64").reshape(np.shape(lon))
        return rows, cols

    def shift_per_metre(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Samples (signed) by which a target moves per metre of height above the reference.

        A target ``Δh`` above the reference surface is ``Δh / tan θ`` ground metres nearer the
        sensor than its reference position, so its sample moves against the range axis.
        """
        ok = np.isfinite(rows) & np.isfinite(cols)
        out = np.zeros(np.shape(rows), dtype="float64")
        if not ok.any():
            return out
        r_mid, c_mid = float(np.median(rows[ok])), float(np.median(cols[ok]))
        sign = self.range_sign(r_mid, c_mid)
        d_col, _ = self._metres_per_pixel(r_mid, c_mid)
        spacing = float(np.hypot(*d_col))  # ground metres per sample
        frac = np.clip(np.where(ok, cols, c_mid) / self.shape[1], 0.0, 1.0)
        if sign < 0:  # samples counted from far range
            frac = 1.0 - frac
        near, far = self.scene.incidence
        theta = incidence_across_swath(frac, swath_near_angle(far, self.shape[1] * spacing, near), far)
        return -sign / np.tan(theta) / spacing


def incidence_across_swath(frac: np.ndarray, near_deg: float, far_deg: float) -> np.ndarray:
    """Incidence angle (radians) at fraction ``frac`` (0 near, 1 far) of the swath's ground range,
    on a sphere of :data:`EARTH_RADIUS_M` seen from :data:`ORBIT_HEIGHT_M`, the swath spanning
    ``near_deg`` to ``far_deg`` (a GRD swath is uniform in ground range, not in angle)."""
    theta = np.radians(np.linspace(near_deg, far_deg, 1025))
    ground = _ground_range(theta)
    target = ground[0] + np.asarray(frac, dtype="float64") * (ground[-1] - ground[0])
    return np.interp(target, ground, theta)


def _ground_range(theta: np.ndarray) -> np.ndarray:
    """Ground range from nadir (m) of points seen at incidence ``theta`` (radians)."""
    look = np.arcsin(EARTH_RADIUS_M / (EARTH_RADIUS_M + ORBIT_HEIGHT_M) * np.sin(theta))
    return EARTH_RADIUS_M * (theta - look)


def swath_near_angle(far_deg: float, width_m: float, default_deg: float) -> float:
    """The near-range incidence angle (degrees) of a swath ``width_m`` ground metres wide whose
    far edge is seen at ``far_deg``: the mode's nominal near angle describes the widest
    swath, and a scene narrower than that starts further out. ``default_deg`` when the width
    is implausible (above the nominal span or under 50 km)."""
    theta = np.radians(np.linspace(10.0, far_deg, 2049))
    ground = _ground_range(theta)
    target = ground[-1] - float(width_m)
    nominal = float(_ground_range(np.radians(np.array([default_deg])))[0])
    if not (50_000.0 <= width_m and target >= nominal - 1.0):
        return default_deg
    return float(np.degrees(np.interp(target, ground, theta)))


def _lattice(n: int) -> np.ndarray:
    idx = np.arange(0, n, LATTICE, dtype="float64")
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


@functools.lru_cache(maxsize=32)
def _to_gcp_crs(epsg: int, gcp_crs: str):  # type: ignore[no-untyped-def]
    """A (cached) transformer from the grid's CRS to the GCPs' (pyproj transformers are slow to make)."""
    from pyproj import Transformer

    return Transformer.from_crs(epsg, gcp_crs, always_xy=True)


def _weights(lattice: np.ndarray, n: int) -> np.ndarray:
    """``(n, len(lattice))`` linear-interpolation weights from lattice points to every index."""
    w = np.zeros((n, len(lattice)), dtype="float64")
    if len(lattice) == 1:
        w[:, 0] = 1.0
        return w
    idx = np.arange(n, dtype="float64")
    k = np.clip(np.searchsorted(lattice, idx, side="right") - 1, 0, len(lattice) - 2)
    t = (idx - lattice[k]) / (lattice[k + 1] - lattice[k])
    w[np.arange(n), k] = 1.0 - t
    w[np.arange(n), k + 1] = t
    return w


def _upsample(coarse: np.ndarray, ly: np.ndarray, lx: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Bilinear interpolation of a field known on the lattice ``ly × lx`` to every pixel
    (separable: two small matrix products). Pixels that a non-finite lattice point
    contributes to are NaN; the others are unaffected."""
    wy, wx = _weights(ly, ny), _weights(lx, nx)
    finite = np.isfinite(coarse)
    if finite.all():
        return wy @ coarse @ wx.T
    value = wy @ np.where(finite, coarse, 0.0) @ wx.T
    bad = wy @ (~finite).astype("float64") @ wx.T
    return np.where(bad > 1e-9, np.nan, value)


def geocode_chunk(
    scene: GrdScene,
    x: np.ndarray,
    y: np.ndarray,
    epsg: int,
    height: np.ndarray | None,
) -> np.ndarray:
    """The scene's DN (float32, NaN where it has no data) at the grid pixel centres ``x × y``.

    ``height`` (same shape as the chunk, metres, NaN allowed) corrects the terrain displacement;
    None leaves every pixel on the GCPs' reference heights.
    """
    import rasterio
    from rasterio.windows import Window
    from scipy.ndimage import map_coordinates

    from pipeline.acquire.gdal import gdal_env

    env = gdal_env()

    ny, nx = len(y), len(x)
    out = np.full((ny, nx), np.nan, dtype="float32")
    if scene.bounds is not None:
        bx0, by0, bx1, by1 = scene.bounds
        if x.max() < bx0 or x.min() > bx1 or y.max() < by0 or y.min() > by1:
            return out
    url = scene.href
    with env.open:
        try:
            ds = rasterio.open(url)
        except Exception as e:  # noqa: BLE001 - worded like stackstac's, for the retry logic
            raise RuntimeError(f"Error opening {url!r}: {e!r}") from e
    with ds:
        gcps, gcp_crs = ds.gcps
        if not gcps:
            raise InputDataError(
                f"sentinel-1-grd item {scene.item_id!r}: {url.split('?', 1)[0]} has no ground control points "
                f"({'CRS ' + ds.crs.to_string() if ds.crs else 'no CRS'}), and its STAC item has no proj:* fields.",
                "give the item proj:code and proj:transform, or drop it.",
            )
        geom = SceneGeometry(gcps, gcp_crs, (ds.height, ds.width), scene)
        ly, lx = _lattice(ny), _lattice(nx)
        gx = np.interp(lx, np.arange(nx), x)
        gy = np.interp(ly, np.arange(ny), y)
        GX, GY = np.meshgrid(gx, gy)
        lon, lat = _to_gcp_crs(epsg, gcp_crs.to_wkt() if gcp_crs else "EPSG:4326").transform(GX, GY)
        rows0, cols0 = geom.image_coords(lon, lat)
        rows = _upsample(rows0, ly, lx, ny, nx)
        cols = _upsample(cols0, ly, lx, ny, nx)
        if height is not None and np.isfinite(height).any():
            # the terrain shift, exact on the lattice's reference geometry, applied per pixel
            z_ref = _upsample(geom.reference_height(rows0.ravel(), cols0.ravel()).reshape(rows0.shape), ly, lx, ny, nx)
            k = _upsample(geom.shift_per_metre(rows0, cols0), ly, lx, ny, nx)
            cols = cols + np.where(np.isfinite(height), height - z_ref, 0.0) * k
        ok = np.isfinite(rows) & np.isfinite(cols)
        if not ok.any():
            return out
        r0 = int(max(0, math.floor(float(rows[ok].min())) - 2))
        r1 = int(min(ds.height, math.ceil(float(rows[ok].max())) + 2))
        c0 = int(max(0, math.floor(float(cols[ok].min())) - 2))
        c1 = int(min(ds.width, math.ceil(float(cols[ok].max())) + 2))
        if r1 <= r0 or c1 <= c0:
            return out
        window = Window(c0, r0, c1 - c0, r1 - r0)
        with env.read:
            try:
                src = ds.read(1, window=window, out_dtype="float32")
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"Error reading {window} from {url!r}: {e!r}") from e
        nodata = ds.nodata if ds.nodata is not None else 0.0
    src[src == nodata] = np.nan
    vals = map_coordinates(src, [rows - 0.5 - r0, cols - 0.5 - c0], order=1, mode="constant", cval=np.nan)
    out[:] = np.where(ok, vals, np.nan)
    return out


def _geocode_block(height: np.ndarray, block_info: dict | None = None, *, scene: GrdScene, grid: ZoneGrid) -> np.ndarray:
    rows, cols = block_info[None]["array-location"]  # type: ignore[index]
    y, x = grid.pixel_centres(rows, cols)
    h = height if np.isfinite(height).any() else None
    return geocode_chunk(scene, x, y, grid.epsg, h)


def grd_stack(items: Sequence[pystac.Item], asset: str, grid: ZoneGrid, height: xr.DataArray | None) -> da.Array:
    """Lazy ``(time, y, x)`` float32 DN of ``asset`` for each GRD item on ``grid`` (time in one
    chunk). ``height``: the DEM on the grid (chunked like it), or None for no terrain shift."""
    if height is None:
        h = da.full(grid.shape, np.nan, dtype="float32", chunks=grid.chunk)
    else:
        h = height.data if isinstance(height, xr.DataArray) else height
        h = h.rechunk(grid.chunk)
    layers = [
        da.map_blocks(_geocode_block, h, dtype="float32", scene=grd_scene(it, asset, grid), grid=grid,
                      name=f"grd-geocode-{asset}-{tokenize(it.id, it.assets[asset].href, grid, h.name)}")
        for it in items
    ]
    return da.stack(layers, axis=0).rechunk({0: -1})
