"""Dry-run estimates (pure): items, pixels, bytes and dask tasks of a planned run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pystac

from pipeline.core.config import ZoneGrid


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
