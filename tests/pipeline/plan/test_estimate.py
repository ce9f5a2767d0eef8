"""Dry-run estimates: the busiest write tile, whose cube graph is the largest one a run submits."""

from __future__ import annotations

import pystac
from pyproj import Transformer

from pipeline.core.config import ZoneGrid
from pipeline.plan.estimate import busiest_tile

GRID = ZoneGrid(epsg=32648, x0=320000.0, y1=3309440.0, width=256, height=256, resolution=10.0, chunk=64,
                lonlat_bounds=(0.0, 0.0, 0.0, 0.0))


def _item(iid: str, bbox: list[float] | None) -> pystac.Item:
    return pystac.Item(iid, None, bbox, __import__("datetime").datetime(2024, 7, 1), {})


def _lonlat(minx: float, miny: float, maxx: float, maxy: float) -> list[float]:
    return list(Transformer.from_crs(32648, 4326, always_xy=True).transform_bounds(minx, miny, maxx, maxy))


def test_busiest_tile_is_the_one_most_items_meet() -> None:
    tiles = GRID.tiles(2)  # 2 x 2 tiles of 128 px (1280 m)
    assert len(tiles) == 4
    # three small scenes well inside the south-east tile (x 321280..322560, y 3306880..3308160),
    # one inside the north-west tile, one without a bbox (counts for every tile)
    se = _lonlat(321500, 3307100, 322300, 3307900)
    nw = _lonlat(320200, 3308400, 321000, 3309200)
    items = [_item(f"se{k}", se) for k in range(3)] + [_item("nw", nw), _item("nobbox", None)]
    assert busiest_tile(GRID, tiles, items) == tiles[3]
    assert busiest_tile(GRID, tiles, items[3:]) == tiles[0]  # a tie at 1 + 1 elsewhere: first of equals
    assert busiest_tile(GRID, [], items) is None
