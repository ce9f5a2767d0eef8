"""A GeoJSON region is mapped as its polygon: pixels outside it (and in its holes) are masked
in the LSI store and flagged ``outside_region``; pixels inside are as in a bbox run."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import xarray as xr
from pyproj import Transformer

from flows import stages
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.provenance import Rain
from pipeline.core.quality import QualityFlag
from pipeline.plan.regions import region_from_geojson
from tests.tinyregion import GRID, FakeSource, make_tiny_region, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
RAIN = Rain(None, None, 1.0, "none")


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    """A lon/lat ring of a grid-CRS rectangle (densified, so it stays that rectangle)."""
    to_ll = Transformer.from_crs(GRID.epsg, 4326, always_xy=True)
    xs = np.concatenate([np.linspace(x0, x1, 9), np.full(9, x1), np.linspace(x1, x0, 9), np.full(9, x0)])
    ys = np.concatenate([np.full(9, y0), np.linspace(y0, y1, 9), np.full(9, y1), np.linspace(y1, y0, 9)])
    lon, lat = to_ll.transform(xs, ys)
    return [[float(a), float(b)] for a, b in zip(lon, lat)] + [[float(lon[0]), float(lat[0])]]


def test_polygon_with_a_hole_masks_outside_and_the_hole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x0, y0, x1, y1 = GRID.bounds
    outer = _ring(x0 + 60, y0 + 60, x1 - 60, y1 - 60)         # the grid but a 60 m rim (6 pixels)
    hole = _ring(x0 + 400, y0 + 400, x0 + 800, y0 + 800)      # a 400 m square hole
    path = tmp_path / "valley.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [outer, hole]}))
    region = region_from_geojson(path)
    items = make_tiny_region(tmp_path / "cogs")
    polygon = stages.cube_stage(region, WINDOW, FakeSource.url, tmp_path / "poly", CubeConfig(), chunk=64,
                                source=FakeSource(items))
    stages.lsi_stage(polygon, RAIN)
    boxed = stages.cube_stage(tiny_region("box"), WINDOW, FakeSource.url, tmp_path / "box", CubeConfig(), chunk=64,
                              source=FakeSource(items))
    stages.lsi_stage(boxed, RAIN)
    lsi = xr.open_zarr(polygon.zones[0].lsi_path, mask_and_scale=False)  # the codes: bit flags, class 255
    ref = xr.open_zarr(boxed.zones[0].lsi_path, mask_and_scale=False)
    # pixel centres in the hole, by hand
    x, y = np.meshgrid(lsi["x"].values, lsi["y"].values)
    in_hole = (x > x0 + 400) & (x < x0 + 800) & (y > y0 + 400) & (y < y0 + 800)
    in_rim = (x < x0 + 60) | (x > x1 - 60) | (y < y0 + 60) | (y > y1 - 60)
    outside = in_hole | in_rim
    assert lsi.sizes == ref.sizes  # the polygon plans onto the same grid as the bbox
    flagged = (lsi["quality"].values & int(QualityFlag.OUTSIDE_REGION)) != 0
    assert np.array_equal(flagged, outside)
    assert np.isnan(lsi["lsi"].values[outside]).all() and (lsi["risk_class"].values[outside] == 255).all()
    assert ((lsi["lsi_quality"].values[outside] & int(QualityFlag.OUTSIDE_REGION)) != 0).all()
    inside = ~outside & np.isfinite(ref["lsi"].values)
    assert np.isfinite(lsi["lsi"].values[inside]).all()
    assert not (ref["quality"].values & int(QualityFlag.OUTSIDE_REGION)).any()  # a bbox region masks nothing
