"""Sentinel-1 GRD in radar geometry (GCPs only) geocoded onto the grid.

References: an independent forward simulation of the SAR geometry (tests/sar_scene.py) with a
known ground pattern and terrain, GDAL's own GCP warper (``gdalwarp -tps``), and Planetary
Computer's recorded GRD item for keys and properties.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import date

import numpy as np
import pytest
import rasterio

from pipeline.acquire.catalog import has_map_projection, search_inputs
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.acquire.cube import build_cube
from pipeline.core.errors import InputDataError
from pipeline.acquire.failures import read_failure
from pipeline.acquire.sar_geocode import GrdScene, geocode_chunk, grd_scene, incidence_across_swath
from tests import sar_scene as sim
from tests.tinyregion import BANDS, GRID, FakeSource, make_tiny_region

N = 256
X = sim.CENTRE[0] - N * 5 + 10 * (np.arange(N) + 0.5)
Y = sim.CENTRE[1] + N * 5 - 10 * (np.arange(N) + 0.5)
XX, YY = np.meshgrid(X, Y)
WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def _scene(path, orbit: str) -> GrdScene:  # type: ignore[no-untyped-def]
    return GrdScene(href=str(path), item_id="sim", ascending=orbit == "ascending", incidence=(29.1, 46.0), bounds=None)


@pytest.mark.parametrize(("orbit", "grow"), [("ascending", True), ("descending", True), ("ascending", False),
                                             ("descending", False)])
def test_geocoded_grd_lands_on_the_ground_pattern(tmp_path, orbit: str, grow: bool) -> None:  # type: ignore[no-untyped-def]
    tif = tmp_path / "grd.tif"
    sim.simulate(tif, orbit, grow)
    truth = sim.pattern(XX, YY)
    got = geocode_chunk(_scene(tif, orbit), X, Y, sim.EPSG, sim.terrain(XX, YY))
    err = np.abs(got - truth)
    assert np.isfinite(got).all()
    # what is left is bilinear interpolation of a pattern that changes ~130 DN per pixel
    assert np.median(err) < 5 and np.percentile(err, 99) < 30
    # control: on the GCPs' reference surface, the 300-1000 m terrain puts pixels hundreds of
    # metres off, and the same comparison fails badly
    flat = geocode_chunk(_scene(tif, orbit), X, Y, sim.EPSG, None)
    assert np.median(np.abs(flat - truth)) > 100


def test_reference_surface_agrees_with_gdalwarp_tps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("gdalwarp") is None:
        pytest.skip("gdalwarp (gdal-bin) is not installed")
    tif = tmp_path / "grd.tif"
    sim.simulate(tif, "descending")
    x0, y1 = X[0] - 5, Y[0] + 5
    out = tmp_path / "warped.tif"
    subprocess.run(["gdalwarp", "-q", "-tps", "-et", "0", "-t_srs", f"EPSG:{sim.EPSG}", "-te", str(x0), str(y1 - 10 * N),
                    str(x0 + 10 * N), str(y1), "-tr", "10", "10", "-r", "bilinear", "-srcnodata", "0",
                    "-dstnodata", "nan", "-ot", "Float32", str(tif), str(out)], check=True)
    with rasterio.open(out) as ds:
        ref = ds.read(1)
    got = geocode_chunk(_scene(tif, "descending"), X, Y, sim.EPSG, None)
    diff = np.abs(got - ref)
    assert np.isfinite(ref).all() and np.isfinite(got).all()
    assert np.median(diff) < 5 and np.percentile(diff, 99) < 30


def test_incidence_spans_the_swath() -> None:
    th = np.degrees(incidence_across_swath(np.array([0.0, 0.5, 1.0]), 29.1, 46.0))
    np.testing.assert_allclose(th[[0, 2]], [29.1, 46.0], atol=1e-6)
    # uniform in ground range, so the middle of the swath is steeper than the mean angle
    assert 38.0 < th[1] < 38.6


def test_chunks_outside_the_footprint_open_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    far = GrdScene(href=str(tmp_path / "absent.tif"), item_id="far", ascending=True, incidence=(29.1, 46.0),
                   bounds=(0.0, 0.0, 1000.0, 1000.0))
    assert np.isnan(geocode_chunk(far, X, Y, sim.EPSG, None)).all()  # opening would have raised


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the point of the test
def test_unreadable_and_ungeoreferenced_assets_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "missing.tif"
    with pytest.raises(RuntimeError) as info:
        geocode_chunk(_scene(missing, "ascending"), X, Y, sim.EPSG, None)
    failure = read_failure(info.value)  # the retry logic recognises it like a stackstac read
    assert failure is not None and failure.url == str(missing) and not failure.remote
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16") as ds:
        ds.write(np.ones((1, 8, 8), dtype="uint16"))
    with pytest.raises(InputDataError, match="item 'sim'.*no ground control points"):
        geocode_chunk(_scene(bare, "ascending"), X, Y, sim.EPSG, None)


def _grd_items(shared_fixtures, folder, gains=(1.0, 1.25, 0.8)):  # type: ignore[no-untyped-def]
    items = []
    for k, (gain, day) in enumerate(zip(gains, ("2024-07-05", "2024-07-17", "2024-07-29"))):
        tif = folder / f"grd{k}.tif"
        info = sim.simulate(tif, "descending", gain=gain)
        items.append(sim.grd_item(shared_fixtures, tif, info, f"S1A_IW_GRDH_1SDV_sim{k}", day))
    return items


def test_cube_from_recorded_grd_items(tmp_path, shared_fixtures) -> None:  # type: ignore[no-untyped-def]
    """Planetary Computer's recorded GRD item (no proj:*, vv/vh keys) over simulated pixels: the
    search falls back to it, and the cube's VV is the ground pattern in dB, terrain-corrected."""
    raw = json.loads((shared_fixtures / sim.GRD_ITEM).read_text())
    gains = (1.0, 1.25, 0.8)
    grd = _grd_items(shared_fixtures, tmp_path / "grd", gains)
    assert not any(has_map_projection(it) for it in grd)
    assert set(raw["assets"]) == set(grd[0].assets) and raw["properties"]["sar:polarizations"] == ["VV", "VH"]
    items = make_tiny_region(tmp_path / "tiny")
    items.pop("sentinel-1-rtc")
    items["sentinel-1-grd"] = grd
    items["cop-dem-glo-30"] = [sim.dem_item(tmp_path / "dem")]
    inputs = search_inputs(FakeSource(items), GRID.lonlat_bounds, WINDOW, CubeConfig())
    assert inputs.s1_collection == "sentinel-1-grd" and len(inputs.s1) == 3
    assert any("geocoded through their GCPs" in n for n in inputs.notes)
    ds = build_cube(inputs, GRID, BANDS).compute()
    x, y = ds["x"].values, ds["y"].values
    truth = sim.pattern(*np.meshgrid(x, y))
    db = 20 * np.log10(truth[None] * np.array(gains)[:, None, None])  # DN² in dB
    np.testing.assert_allclose(np.median(np.abs(ds["vv"].values - np.median(db, axis=0))), 0, atol=0.05)
    assert np.percentile(np.abs(ds["vv"].values - np.median(db, axis=0)), 99) < 0.3
    np.testing.assert_allclose(ds["vv_dry"].values, np.percentile(db, 10, axis=0), atol=0.3)
    np.testing.assert_allclose(ds["vv_wet"].values, np.percentile(db, 90, axis=0), atol=0.3)
    # the DEM used for the terrain shift is the cube's own DEM
    np.testing.assert_allclose(ds["dem"].values, sim.terrain(*np.meshgrid(x, y)), atol=1.0)


def test_search_skips_single_pol_scenes(shared_fixtures) -> None:  # type: ignore[no-untyped-def]
    """The recorded EW scene (HH only) is skipped with a note; the recorded IW GRD item is taken
    although it has no map projection."""
    import pystac

    cassette = shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "cassette-items"
    ew = pystac.Item.from_dict(json.loads((cassette / "s1_grd_EW_item_00_Feature.json").read_text()))
    iw = [pystac.Item.from_dict(f) for f in json.loads((cassette / "sentinel-1-grd_00_FeatureCollection.json").read_text())["features"]]
    tiny = make_tiny_region_items_without_s1()
    tiny["sentinel-1-grd"] = [ew, *iw]
    inputs = search_inputs(FakeSource(tiny), GRID.lonlat_bounds, WINDOW, CubeConfig())
    assert [it.id for it in inputs.s1_history] == [iw[0].id]
    assert any("1 sentinel-1-grd item(s) without VV and VH" in n for n in inputs.notes)
    assert grd_scene(iw[0], "vv", GRID).ascending is False  # the recorded item is descending


def make_tiny_region_items_without_s1() -> dict:
    import pystac

    s2 = pystac.Item(id="S2", geometry=None, bbox=None, datetime=__import__("datetime").datetime(2024, 7, 4), properties={})
    dem = pystac.Item(id="DEM", geometry=None, bbox=None, datetime=__import__("datetime").datetime(2021, 4, 22), properties={})
    return {"sentinel-2-l2a": [s2], "cop-dem-glo-30": [dem]}


def test_grid_in_another_crs_uses_the_same_geometry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A grid in the neighbouring UTM zone (47N, as for regions split across zones) gets the same
    ground pattern: nothing assumes the scene's and the grid's CRS agree."""
    tif = tmp_path / "grd.tif"
    sim.simulate(tif, "ascending")
    from pyproj import Transformer

    to47 = Transformer.from_crs(sim.EPSG, 32647, always_xy=True)
    cx, cy = to47.transform(*sim.CENTRE)
    x = cx - 640 + 10 * (np.arange(128) + 0.5)
    y = cy + 640 - 10 * (np.arange(128) + 0.5)
    xx, yy = np.meshgrid(x, y)
    e, n = Transformer.from_crs(32647, sim.EPSG, always_xy=True).transform(xx, yy)
    got = geocode_chunk(_scene(tif, "ascending"), x, y, 32647, sim.terrain(e, n))
    assert np.median(np.abs(got - sim.pattern(e, n))) < 5


def test_projected_and_radar_grd_scenes_are_named_by_item(tmp_path, shared_fixtures) -> None:  # type: ignore[no-untyped-def]
    """A GRD item with proj:* goes through stackstac, one in radar geometry through the GCPs;
    the ``id`` coordinate says which scene is which, whatever the items' order."""
    from pipeline.acquire.cube import s1_power

    radar = _grd_items(shared_fixtures, tmp_path / "grd", gains=(1.0,))[0]
    projected = make_tiny_region(tmp_path / "tiny")["sentinel-1-rtc"][0].clone()
    projected.collection_id = "sentinel-1-grd"
    assert has_map_projection(projected) and not has_map_projection(radar)
    with rasterio.open(projected.assets["vv"].href) as ds:
        direct = ds.read(1).astype("float64") ** 2  # GRD DN are squared to power
    x = GRID.x0 + 10 * (np.arange(GRID.width) + 0.5)
    y = GRID.y1 - 10 * (np.arange(GRID.height) + 0.5)
    pattern = sim.pattern(*np.meshgrid(x, y))
    for order in ([radar, projected], [projected, radar]):
        got = s1_power(order, "vv", GRID, "sentinel-1-grd", None)
        assert sorted(got["id"].values) == sorted([radar.id, projected.id])
        np.testing.assert_allclose(got.sel(time=got["id"] == projected.id).values[0], direct, rtol=1e-5)
        # the radar scene, without a DEM, lands on the GCP surface: same pattern, shifted
        geocoded = got.sel(time=got["id"] == radar.id).values[0]
        assert np.isfinite(geocoded).all() and abs(np.median(np.sqrt(geocoded)) - np.median(pattern)) < 200


def test_scene_across_the_antimeridian(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A scene whose GCPs straddle 180°: fitted in 0..360° longitudes, it lands as anywhere else."""
    from pyproj import Transformer

    centre = Transformer.from_crs(4326, 32660, always_xy=True).transform(179.97, 30.0)
    monkeypatch.setattr(sim, "EPSG", 32660)
    monkeypatch.setattr(sim, "CENTRE", centre)
    tif = tmp_path / "grd.tif"
    sim.simulate(tif, "descending")
    with rasterio.open(tif) as ds:
        lons = [g.x for g in ds.gcps[0]]
    assert min(lons) < -179 and max(lons) > 179  # really across
    x = centre[0] - 640 + 10 * (np.arange(128) + 0.5)
    y = centre[1] + 640 - 10 * (np.arange(128) + 0.5)
    xx, yy = np.meshgrid(x, y)
    got = geocode_chunk(_scene(tif, "descending"), x, y, 32660, sim.terrain(xx, yy))
    assert np.isfinite(got).all() and np.median(np.abs(got - sim.pattern(xx, yy))) < 5


def test_upsample_keeps_nan_local() -> None:
    from pipeline.acquire.sar_geocode import _lattice, _upsample

    ly, lx = _lattice(64), _lattice(64)
    coarse = np.add.outer(ly, 2 * lx)
    np.testing.assert_allclose(_upsample(coarse, ly, lx, 64, 64), np.add.outer(np.arange(64.0), 2 * np.arange(64.0)))
    coarse[0, 0] = np.nan  # one bad lattice point blanks only the cells it touches
    out = _upsample(coarse, ly, lx, 64, 64)
    assert np.isnan(out[:16, :16]).all() and np.isfinite(out[16:, :]).all() and np.isfinite(out[:, 16:]).all()


def test_swath_width_sets_the_near_angle() -> None:
    from pipeline.acquire.sar_geocode import swath_near_angle

    assert swath_near_angle(46.0, sim.WIDTH * sim.DX, 29.1) == pytest.approx(29.1, abs=0.01)
    # Planetary Computer's recorded IW scene is 26,029 samples of 10 m: a narrower swath
    assert 29.9 < swath_near_angle(46.0, 260_290.0, 29.1) < 30.4
    assert swath_near_angle(46.0, 1_000.0, 29.1) == 29.1  # implausible: the nominal angle


def test_power_of_items_with_nothing_over_the_grid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.acquire.cube import s1_power

    far = make_tiny_region(tmp_path)["sentinel-1-rtc"][0].clone()
    for asset in far.assets.values():
        asset.extra_fields["proj:transform"] = [10.0, 0.0, 900000.0, 0.0, -10.0, 3309440.0]
    got = s1_power([far], "vv", GRID, "sentinel-1-rtc")
    assert got.sizes["time"] == 1 and list(got["id"].values) == [""] and np.isnan(got.values).all()
