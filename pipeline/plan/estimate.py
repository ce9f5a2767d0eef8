"""Dry-run estimates (pure): items, pixels, bytes and dask tasks of a planned run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pystac

from pipeline.core.config import Tile, ZoneGrid


@dataclass
class ZonePlan:
    """What one zone of a run will read and compute."""

    grid: ZoneGrid
    items: dict[str, int]
    bytes_read: int
    tasks: int
    notes: list[str] = field(default_factory=list)
    #: Why items, bytes and the cube's tasks are unknown (the STAC API could not be
    #: reached); ``tasks`` then counts the LSI stage's graph only.
    offline: str | None = None
    #: Tasks of the largest graph the run submits at once: the cube graph of its busiest write
    #: tile (the run computes write tiles one graph each, ``SLIDEWATCH_TILE_CONCURRENCY`` at a
    #: time); None when unknown (offline).
    largest_graph: int | None = None

    @property
    def area_km2(self) -> float:
        return self.grid.width * self.grid.height * self.grid.resolution**2 / 1e6


def _overlap_fraction(item_bbox: Sequence[float], bbox: Sequence[float]) -> float:
    w, s, e, n = bbox
    iw, is_, ie, in_ = item_bbox
    dx = max(0.0, min(e, ie) - max(w, iw))
    dy = max(0.0, min(n, in_) - max(s, is_))
    area = (e - w) * (n - s)
    return (dx * dy) / area if area > 0 else 0.0


def estimate_bytes(items: Sequence[pystac.Item], assets: Sequence[str], grid: ZoneGrid, bytes_per_px: Sequence[int]) -> int:
    """Uncompressed bytes read: for each item and asset, the grid pixels it overlaps at the
    asset's native resolution (``gsd``, else the grid's) times the sample size."""
    total = 0.0
    grid_px = grid.width * grid.height
    for it in items:
        frac = _overlap_fraction(it.bbox or grid.lonlat_bounds, grid.lonlat_bounds)
        for asset, nbytes in zip(assets, bytes_per_px):
            a = it.assets.get(asset)
            gsd = float(a.extra_fields.get("gsd", grid.resolution)) if a is not None else grid.resolution
            if a is not None and it.properties.get("proj:epsg") == 4326:
                gsd = 30.0
            total += frac * grid_px * (grid.resolution / gsd) ** 2 * nbytes
    return int(total)


def graph_tasks(obj: object) -> int:
    """Number of tasks in a dask collection's graph."""
    graph = obj.__dask_graph__()  # type: ignore[attr-defined]
    return len(graph)


def busiest_tile(grid: ZoneGrid, tiles: Sequence[Tile], items: Sequence[pystac.Item]) -> Tile | None:
    """The write tile whose lon/lat footprint meets the most item bboxes (the first of equals;
    items without a bbox, or across the antimeridian, count for every tile): the tile whose
    cube graph is the largest. None when there are no tiles."""
    from pyproj import Transformer

    boxes = []
    everywhere = 0
    for it in items:
        b = it.bbox
        if b is None or len(b) not in (4, 6):
            everywhere += 1
            continue
        w, s, e, n = (b[0], b[1], b[3], b[4]) if len(b) == 6 else b
        if w > e:
            everywhere += 1
            continue
        boxes.append((w, s, e, n))
    arr = np.asarray(boxes, dtype="float64").reshape(-1, 4)
    to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    best: Tile | None = None
    most = -1
    for tile in tiles:
        w, s, e, n = to_lonlat.transform_bounds(*grid.subgrid(tile).bounds, densify_pts=11)
        count = everywhere + int(((arr[:, 0] <= e) & (arr[:, 2] >= w) & (arr[:, 1] <= n) & (arr[:, 3] >= s)).sum())
        if count > most:
            best, most = tile, count
    return best
