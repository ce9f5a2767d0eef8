"""Regions over several UTM zones: a zone without scenes is reported and skipped when the
others have data; a region where no zone has any is refused as before."""

from __future__ import annotations

import json
from datetime import date

import pytest

import flows.stages.cube as cube_stage_module
from flows import stages
from pipeline.core.config import CubeConfig, TimeWindow, ZoneGrid
from pipeline.core.errors import EmptySearchError
from pipeline.core.layout import read_run_json, write_run_json
from pipeline.core.provenance import Rain
from tests.tinyregion import GRID, FakeSource, make_tiny_region, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
#: A second 128 px grid in the neighbouring zone (47N), far from the tiny region's items.
OTHER = ZoneGrid(epsg=32647, x0=700_160.0, y1=3_309_440.0, width=128, height=128, resolution=10.0, chunk=64,
                 lonlat_bounds=(101.05, 29.89, 101.07, 29.91))


class BBoxSource(FakeSource):
    """Items whose bbox meets the searched one (as a STAC API filters)."""

    def search(self, collection, bbox, datetime, max_cloud_cover=None, max_items=None):  # type: ignore[no-untyped-def]
        w, s, e, n = bbox
        return [it for it in super().search(collection, bbox, datetime, max_cloud_cover, max_items)
                if it.bbox[0] <= e and it.bbox[2] >= w and it.bbox[1] <= n and it.bbox[3] >= s]


def test_a_zone_without_scenes_is_skipped_and_named(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path / "cogs")
    monkeypatch.setattr(cube_stage_module, "plan_grids", lambda region, chunk: [OTHER, GRID])
    events: list[tuple[str, dict]] = []
    result = stages.cube_stage(tiny_region("two-zones"), WINDOW, FakeSource.url, tmp_path / "out", CubeConfig(),
                               chunk=64, source=BBoxSource(items), on_event=lambda k, i: events.append((k, dict(i))))
    assert [z.grid.zone_name for z in result.zones] == ["utm48n"]
    assert list(result.skipped) == ["utm47n"] and "sentinel-2-l2a" in result.skipped["utm47n"]
    assert any(k == "zone-skipped" and i["zone"] == "utm47n" for k, i in events)
    record = stages.run_record(tiny_region("two-zones"), WINDOW, FakeSource.url, result, Rain(None, None, 1.0, "none"))
    write_run_json(result.run_dir, record)
    assert read_run_json(result.run_dir)["skipped_zones"]["utm47n"].startswith("No sentinel-2-l2a")


def test_a_region_where_no_zone_has_scenes_is_refused(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cube_stage_module, "plan_grids", lambda region, chunk: [OTHER, GRID])
    with pytest.raises(EmptySearchError):
        stages.cube_stage(tiny_region("nothing"), WINDOW, FakeSource.url, tmp_path / "out", CubeConfig(), chunk=64,
                          source=BBoxSource({}))


def test_normalisation_ranges_are_shared_by_every_zone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import xarray as xr

    from pipeline.factors.layers import compute_factors
    from pipeline.factors.ranges import normalisation_ranges

    zones = []
    for seed, name in ((7, "west"), (11, "east")):  # two zones' cubes with different pixels
        part = stages.cube_stage(tiny_region(name), WINDOW, FakeSource.url, tmp_path / name, CubeConfig(), chunk=64,
                                 source=FakeSource(make_tiny_region(tmp_path / f"cogs-{name}", seed=seed)))
        zones += part.zones
    result = stages.RunResult(run_dir=tmp_path / "run", zones=zones)
    rain = Rain(None, None, 1.0, "none")
    stages.lsi_stage(result, rain)
    cubes = [xr.open_zarr(z.cube_path) for z in zones]
    expected = normalisation_ranges([compute_factors(c) for c in cubes])
    stored = [xr.open_zarr(z.lsi_path).attrs["normalisation_ranges"] for z in zones]
    assert stored[0] == stored[1] == json.loads(json.dumps(expected))
    assert stored[0] != normalisation_ranges(compute_factors(cubes[0]))  # not the first zone's own
    # the shared ranges key each store: a rerun reuses both
    events: list[str] = []
    stages.lsi_stage(result, rain, on_event=lambda k, i: events.append(k))
    assert events.count("reused") == 2
