"""Every asset's geotransform and shape are checked against its item's ``proj:transform`` and
``proj:shape`` (asset-level fields override item-level ones) before its pixels are used."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pystac
import pytest
import rasterio
from rasterio.transform import Affine

from pipeline.acquire.cube import dem_on_grid, s2_composite, stackstac_dict
from pipeline.acquire.gdal import asset_georef, check_georef
from pipeline.core.config import TimeWindow
from pipeline.core.errors import InputDataError
from tests.tinyregion import GRID, FakeSource, make_tiny_region, tiny_region


def _shift(path: Path, dx: float = 0.0, dy: float = 0.0) -> None:
    """Rewrite a COG with the same pixels, its geotransform moved by (dx, dy) CRS units."""
    with rasterio.open(path) as src:
        arr, prof = src.read(1), src.profile
    t = prof["transform"]
    prof["transform"] = Affine(t.a, t.b, t.c + dx, t.d, t.e, t.f + dy)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr, 1)


def test_a_shifted_cog_fails_the_run_and_nothing_is_marked_complete(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flows import stages

    items = make_tiny_region(tmp_path / "cogs")
    _shift(Path(items["sentinel-2-l2a"][1].assets["B04"].href), dx=300.0)  # 300 m east
    window = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
    with pytest.raises(InputDataError) as info:
        stages.cube_stage(tiny_region(), window, FakeSource.url, tmp_path / "out", chunk=32, source=FakeSource(items))
    msg = str(info.value)
    assert "asset 'B04' of item 'S2_1'" in msg
    assert "320300" in msg and "320000" in msg and "proj:transform" in msg  # what the file and the item say
    assert "+300, +0 in CRS units, i.e. +30 columns, +0 rows" in msg  # how far off
    assert "Fix:" in msg and "drop the item" in msg and "\n" not in msg
    assert not list((tmp_path / "out").rglob("cube_*.zarr"))  # no finished store


def test_a_shifted_dem_tile_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path)
    dem = items["cop-dem-glo-30"]
    _shift(Path(dem[0].assets["data"].href), dx=0.003)  # ~300 m at 30°N
    with pytest.raises(InputDataError, match=r"asset 'data' of item 'DEM_0'.*proj:transform"):
        dem_on_grid(dem, GRID).compute(scheduler="synchronous")


def test_a_shape_the_item_does_not_declare_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path)
    s2 = items["sentinel-2-l2a"]
    s2[0].assets["B04"].extra_fields["proj:shape"] = [128, 127]
    with pytest.raises(InputDataError, match=r"asset 'B04' of item 'S2_0'.*128 x 128.*proj:shape \[128, 127\]"):
        s2_composite(s2, GRID, ["B04"]).compute(scheduler="synchronous")


def test_asset_fields_override_the_items(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path)
    s2 = items["sentinel-2-l2a"]
    # a wrong item-level transform is overridden by the (right) asset-level ones: accepted
    s2[2].properties["proj:transform"] = [10.0, 0.0, 999990.0, 0.0, -10.0, 3309440.0]
    s2_composite(s2, GRID, ["B04"]).compute(scheduler="synchronous")
    # a wrong asset-level transform wins over a right item-level one: refused
    s2[2].properties["proj:transform"] = [10.0, 0.0, 320000.0, 0.0, -10.0, 3309440.0]
    s2[2].assets["B04"].extra_fields["proj:transform"] = [10.0, 0.0, 320000.0, 0.0, -10.0, 3309140.0]
    with pytest.raises(InputDataError, match=r"asset 'B04' of item 'S2_2'"):
        s2_composite(s2, GRID, ["B04"]).compute(scheduler="synchronous")


def test_float_rounding_is_tolerated_and_a_tenth_of_a_pixel_is_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path)
    d = stackstac_dict(items["cop-dem-glo-30"][0])
    href = d["assets"]["data"]["href"]
    a, b, c, dd, e, f = d["properties"]["proj:transform"]
    with rasterio.open(href) as ds:
        d["properties"]["proj:transform"] = [a * (1 + 1e-13), b, c + a * 1e-8, dd, e, f - e * 1e-8]
        check_georef(ds, href, asset_georef(d, "data"))
        d["properties"]["proj:transform"] = [a, b, c + a * 0.1, dd, e, f]
        with pytest.raises(InputDataError, match=r"-0.1 columns, \+0 rows"):
            check_georef(ds, href, asset_georef(d, "data"))


def test_items_without_projection_fields_are_not_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path)
    d = stackstac_dict(items["cop-dem-glo-30"][0])
    for k in ("proj:epsg", "proj:code", "proj:transform", "proj:shape"):
        d["properties"].pop(k, None)
    assert asset_georef(d, "data") is None


def _check_all(items: list[pystac.Item]) -> int:
    n = 0
    for it in items:
        d = stackstac_dict(it)
        for key, asset in d["assets"].items():
            expected = asset_georef(d, key)
            if expected is None or not str(asset["href"]).endswith(".tif"):
                continue
            with rasterio.open(asset["href"]) as ds:
                check_georef(ds, asset["href"], expected)
            n += 1
    return n


def test_the_tiny_region_and_the_demo_items_match_their_files(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pipeline.demo.generate as gen
    from pipeline.acquire.items import load_items

    tiny = make_tiny_region(tmp_path / "tiny")
    assert _check_all([it for its in tiny.values() for it in its]) == 3 * 7 + 3 * 2 + 1
    monkeypatch.setattr(gen, "GRID_SIZE", 256)
    monkeypatch.setattr(gen, "MARGIN", 16)
    layout = gen.generate(tmp_path / "demo", seed=7)
    demo = [it for f in sorted((layout.root / "items").glob("*.json")) for it in load_items(f)]
    assert {it.collection_id for it in demo} >= {"sentinel-2-l2a", "sentinel-1-rtc", "cop-dem-glo-30"}
    assert _check_all(demo) > 20
