"""Grid planning: any valid bbox gives chunk-aligned per-zone grids that cover it."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from pipeline.core.errors import RegionError
from pipeline.plan.grid import plan_grids, utm_zone, zone_parts
from pipeline.plan.regions import DEMO_REGION, REGISTRY, Region, parse_region


@st.composite
def bboxes(draw):  # type: ignore[no-untyped-def]
    w = draw(st.floats(-179.0, 178.0))
    s = draw(st.floats(-79.0, 82.0))
    width = draw(st.floats(0.001, 1.5))
    height = draw(st.floats(0.001, 1.0))
    return (w, s, min(w + width, 180.0), min(s + height, 84.0))


@settings(max_examples=60, deadline=None)
@given(bbox=bboxes(), chunk=st.sampled_from([64, 256, 512]))
def test_grids_cover_bbox_and_align_to_chunks(bbox, chunk):  # type: ignore[no-untyped-def]
    grids = plan_grids(Region("t", bbox), chunk=chunk)
    parts = zone_parts(bbox)
    assert len(grids) == len(parts)
    # zone parts tile the bbox in longitude
    assert math.isclose(parts[0][1][0], bbox[0], abs_tol=1e-9) and math.isclose(parts[-1][1][2], bbox[2], abs_tol=1e-9)
    for g, (zone, part) in zip(grids, parts):
        assert g.epsg % 100 == zone
        assert g.width % chunk == 0 and g.height % chunk == 0
        step = g.resolution * chunk
        assert math.isclose(g.x0 / step, round(g.x0 / step), abs_tol=1e-6)
        assert math.isclose(g.y1 / step, round(g.y1 / step), abs_tol=1e-6)
        # every point on the part's densified outline falls inside the grid
        tr = Transformer.from_crs(4326, g.epsg, always_xy=True)
        w, s, e, n = part
        pts = [(w + (e - w) * i / 10, s + (n - s) * j / 10) for i in range(11) for j in (0, 10)]
        pts += [(w + (e - w) * i / 10, s + (n - s) * j / 10) for i in (0, 10) for j in range(11)]
        minx, miny, maxx, maxy = g.bounds
        for lon, lat in pts:
            x, y = tr.transform(lon, lat)
            assert minx - 1e-6 <= x <= maxx + 1e-6 and miny - 1e-6 <= y <= maxy + 1e-6


def test_zone_split_documented_rule():
    grids = plan_grids(parse_region("101.5,29,102.5,29.5"))
    assert [g.epsg for g in grids] == [32647, 32648]
    assert grids[0].lonlat_bounds[2] == pytest.approx(102.0) and grids[1].lonlat_bounds[0] == pytest.approx(102.0)


def test_southern_hemisphere_and_zone_edges():
    assert utm_zone(-180) == 1 and utm_zone(179.999) == 60 and utm_zone(180) == 60
    assert plan_grids(parse_region("-71.9,-50.1,-71.8,-50.0"))[0].epsg == 32719
    # a bbox ending exactly on a zone meridian stays in one zone
    assert len(plan_grids(parse_region("101.5,29,102.0,29.5"))) == 1


def test_demo_region_is_the_4x4_chunk_square():
    (g,) = plan_grids(DEMO_REGION)
    assert (g.epsg, g.x0, g.y1, g.width, g.height) == (32648, 317440.0, 3322880.0, 2048, 2048)


def test_registry_has_papers_study_areas():
    assert REGISTRY["hongya"].bbox == (102.8, 29.5, 103.5, 30.0)
    assert REGISTRY["junlian"].bbox == (104.60, 27.98, 104.64, 28.02)
    assert {g.epsg for g in plan_grids(REGISTRY["junlian"])} == {32648}


@pytest.mark.parametrize("spec,needle", [
    ("atlantis", "Unknown region"),
    ("10,50,9,51", "inverted"),
    ("10,51,11,50", "inverted"),
    ("200,0,201,1", "outside [-180, 180]"),
    ("0,85,1,86", "UTM"),
    ("missing.geojson", "does not exist"),
])
def test_bad_regions(spec, needle):  # type: ignore[no-untyped-def]
    with pytest.raises(RegionError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        plan_grids(parse_region(spec))


def test_geojson_region(tmp_path):  # type: ignore[no-untyped-def]
    p = tmp_path / "aoi.geojson"
    p.write_text('{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[104.6,27.98],[104.64,27.98],[104.64,28.02],[104.6,27.98]]]}}')
    r = parse_region(str(p))
    assert r.name == "aoi" and r.bbox == (104.6, 27.98, 104.64, 28.02)
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(RegionError, match="not readable JSON"):
        parse_region(str(bad))


def test_polygon_across_the_antimeridian_is_refused(tmp_path):  # type: ignore[no-untyped-def]
    # Fiji: a ring that steps from 179.5 to -179.5 covers 1° of ocean, not 359° of the globe
    p = tmp_path / "fiji.geojson"
    ring = [[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]]
    p.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    with pytest.raises(RegionError, match="crosses the antimeridian") as err:
        parse_region(str(p))
    assert "split it" in str(err.value)


def test_size_guard_covers_the_whole_region(monkeypatch):  # type: ignore[no-untyped-def]
    import pipeline.plan.grid as grid

    # 3 zones, each under the per-zone limit but together over the region limit
    monkeypatch.setattr(grid, "MAX_PIXELS_PER_REGION", 3 * 10_000 * 10_000)
    with pytest.raises(RegionError, match="the whole region") as err:
        plan_grids(parse_region("100.5,10,117.5,11"))
    assert "split the region" in str(err.value)
    assert len(plan_grids(parse_region("100.5,10,101.5,11"))) == 1
