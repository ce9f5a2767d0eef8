"""Regions: a bbox, a GeoJSON file, or a name from the built-in registry.

A region is always described in WGS84 longitude/latitude; ``pipeline.plan.grid`` turns it
into UTM grids.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import RegionError

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Region:
    """A named area of interest: lon/lat bbox plus an optional GeoJSON geometry."""

    name: str
    bbox: BBox
    description: str = ""
    #: GeoJSON geometry (WGS84) when the region is a polygon rather than a box.
    geometry_json: str | None = None

    @property
    def slug(self) -> str:
        """A file-system-safe name for output folders: letters, digits, ``._-`` only, never
        ``.``/``..`` or a hidden name, at most 80 characters (long names end in a hash)."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)
        slug = re.sub(r"\.{2,}", "_", slug).strip("._-")
        if len(slug) > 80:
            digest = hashlib.sha256(self.name.encode()).hexdigest()[:10]
            slug = slug[:69].rstrip("._-") + "_" + digest
        return slug or "region"

    def geometry(self) -> dict:
        if self.geometry_json is not None:
            return json.loads(self.geometry_json)
        w, s, e, n = self.bbox
        return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


#: The embedded demo region: a synthetic 20.48 km × 20.48 km mountain catchment whose grid
#: is exactly 4 × 4 chunks of EPSG:32648 (see ``pipeline.demo``). The bbox sits inside that
#: square so planning snaps back onto it.
DEMO_REGION = Region(
    name="demo",
    bbox=(103.1120, 29.8430, 103.3180, 30.0220),
    description="Synthetic mountain region (seeded) served by a local STAC API; not real data.",
)

REGISTRY: dict[str, Region] = {
    "demo": DEMO_REGION,
    "hongya": Region(
        name="hongya",
        bbox=(102.8, 29.5, 103.5, 30.0),
        description="Hongya County, Sichuan, China: study area of the enhanced U-Net paper.",
    ),
    "junlian": Region(
        name="junlian",
        bbox=(104.60, 27.98, 104.64, 28.02),
        description="Junlian County, Sichuan, China: study area of the LSI paper.",
    ),
}


def validate_bbox(bbox: BBox, what: str = "bbox") -> BBox:
    """Check a lon/lat bbox: finite, in range, not inverted, not empty."""
    w, s, e, n = (float(v) for v in bbox)
    if not all(abs(v) < float("inf") for v in (w, s, e, n)):
        raise RegionError(f"{what} {bbox} has a non-finite value.", "give four numbers.")
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise RegionError(
            f"{what} longitudes {w}, {e} are outside [-180, 180].",
            "give lon/lat in degrees as west,south,east,north.",
        )
    if not (-80 <= s <= 84 and -80 <= n <= 84):
        raise RegionError(
            f"{what} latitudes {s}, {n} are outside UTM's range [-80, 84].",
            "give lon/lat in degrees as west,south,east,north (UPS polar grids are not supported).",
        )
    if w >= e:
        raise RegionError(
            f"{what} is inverted or empty in longitude: west {w} >= east {e}.",
            "order it west,south,east,north; regions crossing the antimeridian must be split.",
        )
    if s >= n:
        raise RegionError(
            f"{what} is inverted or empty in latitude: south {s} >= north {n}.",
            "order it west,south,east,north.",
        )
    return (w, s, e, n)


def _bbox_of_coords(coords: object) -> BBox:
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: object) -> None:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, (list, tuple)):
            for sub in c:
                walk(sub)

    walk(coords)
    if not xs:
        raise RegionError("GeoJSON geometry has no coordinates.", "check the file.")
    return (min(xs), min(ys), max(xs), max(ys))


def _antimeridian_jump(coords: object) -> tuple[float, float] | None:
    """The first edge of a ring or line whose longitude jumps by more than 180° (it crosses
    the antimeridian the short way), as (from, to); None when there is none."""
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (list, tuple)) \
            and coords[0] and isinstance(coords[0][0], (int, float)):
        lons = [float(c[0]) for c in coords if isinstance(c, (list, tuple)) and c]
        for a, b in zip(lons, lons[1:]):
            if abs(b - a) > 180.0:
                return a, b
        return None
    if isinstance(coords, (list, tuple)):
        for sub in coords:
            found = _antimeridian_jump(sub)
            if found is not None:
                return found
    return None


def region_from_geojson(path: Path) -> Region:
    """A region from a GeoJSON file (Feature, FeatureCollection or bare geometry, WGS84)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegionError(f"GeoJSON file {path} does not exist.", "check the path.") from None
    except RecursionError:
        raise RegionError(f"GeoJSON file {path} is nested too deeply to be a region.", "check the file.") from None
    except (OSError, ValueError) as exc:
        raise RegionError(f"GeoJSON file {path} is not readable JSON ({exc}).", "check the file.") from None
    if not isinstance(doc, dict):
        raise RegionError(f"GeoJSON file {path} is not a JSON object.", "check the file.")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
            raise RegionError(f"GeoJSON file {path}: 'features' is not a list of Feature objects.",
                              "write the FeatureCollection as {\"type\": \"FeatureCollection\", \"features\": [{...}]}.")
        geoms = [f.get("geometry") for f in features if f.get("geometry")]
        if not geoms:
            raise RegionError(f"GeoJSON file {path} has no features with geometry.", "add a polygon.")
        geometry = geoms[0] if len(geoms) == 1 else {
            "type": "GeometryCollection", "geometries": geoms}
    elif kind == "Feature":
        geometry = doc.get("geometry")
    else:
        geometry = doc
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise RegionError(f"GeoJSON file {path} has no geometry.", "add a Polygon geometry.")
    if geometry["type"] == "GeometryCollection":
        coords = [g.get("coordinates") for g in geometry["geometries"]]
    else:
        coords = geometry.get("coordinates")
    jump = _antimeridian_jump(coords)
    if jump is not None:
        raise RegionError(
            f"GeoJSON file {path} crosses the antimeridian (an edge goes from {jump[0]:g}° to {jump[1]:g}° "
            "longitude), which would make a region round the whole globe.",
            "split it at 180° into one polygon per side and run them as two regions.",
        )
    bbox = _bbox_of_coords(coords)
    bbox = validate_bbox(bbox, what=f"extent of {path.name}")
    return Region(name=path.stem, bbox=bbox, geometry_json=json.dumps(geometry))


def parse_region(spec: str) -> Region:
    """Resolve ``spec``: a registry name, ``west,south,east,north``, or a ``.geojson`` path."""
    text = spec.strip()
    if text.lower() in REGISTRY:
        return REGISTRY[text.lower()]
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    if len(parts) == 4:
        try:
            numbers = tuple(float(p) for p in parts)
        except ValueError:
            numbers = None
        if numbers is not None:
            bbox = validate_bbox(numbers)  # type: ignore[arg-type]
            name = "bbox_" + "_".join(f"{v:.4f}" for v in bbox)
            return Region(name=name, bbox=bbox)
    path = Path(text)
    if path.suffix.lower() in {".geojson", ".json"} or path.exists():
        return region_from_geojson(path)
    known = ", ".join(sorted(REGISTRY))
    raise RegionError(
        f"Unknown region {spec!r}.",
        f"use one of the built-in names ({known}), a bbox 'west,south,east,north' in degrees, "
        "or a path to a GeoJSON file.",
    )
