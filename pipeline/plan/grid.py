"""Grid planning (pure, no I/O): a lon/lat region becomes chunk-aligned UTM grids.

Rules, in order:

1. **UTM zone per longitude.** Zone ``floor((lon + 180) / 6) + 1``; the hemisphere (and so
   EPSG 326xx or 327xx) follows the latitude of the region's centre, for all its zones.
   Norway/Svalbard exceptions are not applied.
2. **Regions across zone boundaries are split, one grid per zone** (per-zone processing,
   what stackstac users ask for): the part of the bbox between two zone meridians is
   planned in that zone's own CRS, so no pixel is ever far outside its zone. Outputs are
   one store per zone, named by zone (``utm48n``...).
3. **Chunk-aligned extent on a global lattice.** Each zone part's bbox is projected
   (densified edges), then snapped *outward* to multiples of ``resolution * chunk``
   metres. The grid therefore covers the region, its width and height are whole numbers
   of chunks, and a given place always falls in the same chunk for every region and run,
   so caches and tiles line up between runs.
"""

from __future__ import annotations

import math

from pyproj import Transformer

from pipeline.core.config import DEFAULT_CHUNK, DEFAULT_RESOLUTION, ZoneGrid
from pipeline.core.errors import RegionError
from pipeline.plan.regions import BBox, Region, validate_bbox

#: Refuse plans whose single zone grid exceeds this many pixels (~ 400,000 km² at 10 m).
MAX_PIXELS_PER_ZONE = 4_000_000_000
#: Largest chunk edge (px): a task holds a few dozen chunks of float32 layers in memory.
MAX_CHUNK = 4096
#: Refuse plans whose zone grids together exceed this many pixels (~ 400,000 km² at 10 m).
MAX_PIXELS_PER_REGION = 4_000_000_000


def utm_zone(lon: float) -> int:
    """UTM zone number (1..60) of a longitude; 180° belongs to zone 60."""
    return min(60, int(math.floor((lon + 180.0) / 6.0)) + 1)


def utm_epsg(zone: int, north: bool) -> int:
    return (32600 if north else 32700) + zone


def zone_parts(bbox: BBox) -> list[tuple[int, BBox]]:
    """Split a lon/lat bbox at UTM zone meridians: ``[(zone, part_bbox), ...]`` west to east."""
    w, s, e, n = bbox
    parts: list[tuple[int, BBox]] = []
    z0, z1 = utm_zone(w), utm_zone(e)
    # A bbox ending exactly on a zone meridian does not touch the next zone.
    if z1 > z0 and math.isclose(e, -180.0 + 6.0 * (z1 - 1)):
        z1 -= 1
    for zone in range(z0, z1 + 1):
        zw = max(w, -180.0 + 6.0 * (zone - 1))
        ze = min(e, -180.0 + 6.0 * zone)
        if ze > zw:
            parts.append((zone, (zw, s, ze, n)))
    return parts


def _snap_out(lo: float, hi: float, step: float) -> tuple[float, float]:
    a = math.floor(lo / step) * step
    b = math.ceil(hi / step) * step
    if b <= a:
        b = a + step
    return a, b


def plan_zone_grid(
    epsg: int,
    lonlat_bbox: BBox,
    resolution: float = DEFAULT_RESOLUTION,
    chunk: int = DEFAULT_CHUNK,
) -> ZoneGrid:
    """The chunk-aligned grid in ``epsg`` that covers ``lonlat_bbox``."""
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    minx, miny, maxx, maxy = to_utm.transform_bounds(*lonlat_bbox, densify_pts=21)
    step = resolution * chunk
    x0, x1 = _snap_out(minx, maxx, step)
    y0, y1 = _snap_out(miny, maxy, step)
    width = int(round((x1 - x0) / resolution))
    height = int(round((y1 - y0) / resolution))
    if width * height > MAX_PIXELS_PER_ZONE:
        raise RegionError(
            f"Region part in EPSG:{epsg} needs a {width}×{height} pixel grid, over the "
            f"{MAX_PIXELS_PER_ZONE:,} pixel limit per zone.",
            "split the region into smaller runs.",
        )
    return ZoneGrid(
        epsg=epsg, x0=x0, y1=y1, width=width, height=height,
        resolution=resolution, chunk=chunk, lonlat_bounds=tuple(lonlat_bbox),  # type: ignore[arg-type]
    )


def plan_grids(
    region: Region,
    resolution: float = DEFAULT_RESOLUTION,
    chunk: int = DEFAULT_CHUNK,
) -> list[ZoneGrid]:
    """One chunk-aligned UTM grid per zone the region touches (see the module rules)."""
    if resolution <= 0:
        raise RegionError(f"Resolution {resolution} m is not positive.", "use e.g. 10.")
    if chunk < 16:
        raise RegionError(f"Chunk size {chunk} px is too small.", "use 256 to 2048.")
    if chunk > MAX_CHUNK:
        gib = chunk * chunk * 4 * 2**-30
        raise RegionError(f"Chunk size {chunk} px is too large: one chunk of one float32 layer would be {gib:.1f} GiB "
                          "and a task holds dozens.", f"use 256 to 2048 (at most {MAX_CHUNK}).")
    bbox = validate_bbox(region.bbox)
    north = (bbox[1] + bbox[3]) / 2.0 >= 0.0
    grids = [plan_zone_grid(utm_epsg(zone, north), part, resolution, chunk) for zone, part in zone_parts(bbox)]
    pixels = sum(g.width * g.height for g in grids)
    if pixels > MAX_PIXELS_PER_REGION:
        km2 = pixels * resolution**2 / 1e6
        raise RegionError(
            f"Region {region.name!r} needs {pixels:,} pixels ({km2:,.0f} km²) over {len(grids)} zone grid(s), "
            f"over the {MAX_PIXELS_PER_REGION:,} pixel limit for the whole region.",
            "split the region into smaller runs.",
        )
    return grids
