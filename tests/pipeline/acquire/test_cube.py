"""Cube values on a tiny generated region against an independent read with rasterio."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pipeline.acquire.catalog import RunInputs
from pipeline.acquire.cube import build_cube
from pipeline.core.stats import nanquantile_axis0
from pipeline.core.errors import MissingAssetError
from tests.tinyregion import BANDS, GRID, make_tiny_region

SCL_VALID = (2, 4, 5, 6, 7, 11)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_region(root)


def _inputs(items) -> RunInputs:  # type: ignore[no-untyped-def]
    return RunInputs(s2=items["sentinel-2-l2a"], s1=items["sentinel-1-rtc"], s1_history=items["sentinel-1-rtc"],
                     dem=items["cop-dem-glo-30"])


def _read(href: str) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1)


def test_cube_is_lazy_float32_and_chunked(tiny):  # type: ignore[no-untyped-def]
    ds = build_cube(_inputs(tiny), GRID, BANDS)
    assert all(v.chunks is not None for v in ds.data_vars.values())
    assert {str(v.dtype) for k, v in ds.data_vars.items() if k != "s2_valid_count"} == {"float32"}
    assert ds["s2_valid_count"].dtype == np.uint8
    assert ds.sizes == {"y": 128, "x": 128}
    assert ds.chunksizes["x"] == (64, 64)


def test_s2_composite_matches_rasterio(tiny):  # type: ignore[no-untyped-def]
    ds = build_cube(_inputs(tiny), GRID, BANDS).compute()
    for band in ("B04", "B11"):
        stack = []
        for it in tiny["sentinel-2-l2a"]:
            dn = _read(it.assets[band].href).astype("float32")
            scl = _read(it.assets["SCL"].href)
            if dn.shape != (128, 128):  # 20 m band: nearest up-sampling onto the 10 m grid
                dn = np.repeat(np.repeat(dn, 2, 0), 2, 1)
            scl = np.repeat(np.repeat(scl, 2, 0), 2, 1)
            refl = (dn - 1000.0) / 10000.0  # baseline 05.10: offset -1000
            refl[~np.isin(scl, SCL_VALID)] = np.nan
            stack.append(refl)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.nanmedian(np.stack(stack), axis=0)
        got = ds[band].values
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, atol=1e-6)
        count = np.isfinite(np.stack(stack)).sum(0)
        np.testing.assert_array_equal(ds["s2_valid_count"].values, count)


def test_s1_db_median_matches_rasterio(tiny):  # type: ignore[no-untyped-def]
    ds = build_cube(_inputs(tiny), GRID, BANDS).compute()
    lin = np.stack([_read(it.assets["vv"].href) for it in tiny["sentinel-1-rtc"]])
    expected = np.median(10 * np.log10(lin), axis=0)
    np.testing.assert_allclose(ds["vv"].values, expected, atol=1e-4)
    np.testing.assert_allclose(ds["vv_dry"].values, np.percentile(10 * np.log10(lin), 10, axis=0), atol=1e-4)


def test_dem_bilinear_matches_rasterio_reproject(tiny):  # type: ignore[no-untyped-def]
    ds = build_cube(_inputs(tiny), GRID, BANDS).compute()
    href = tiny["cop-dem-glo-30"][0].assets["data"].href
    dst = np.full(GRID.shape, np.nan, dtype="float32")
    with rasterio.open(href) as src:
        reproject(rasterio.band(src, 1), dst, dst_transform=rasterio.Affine(*GRID.transform),
                  dst_crs=f"EPSG:{GRID.epsg}", resampling=Resampling.bilinear, dst_nodata=np.nan)
    # same GDAL warper behind both: values agree to well under a metre
    assert np.nanmax(np.abs(ds["dem"].values - dst)) < 0.5


def test_missing_asset_is_named(tmp_path):  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path, drop_asset="B04")
    with pytest.raises(MissingAssetError, match="B04"):
        build_cube(_inputs(items), GRID, BANDS)


def test_nanquantile_matches_numpy():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 40, 40)).astype("float32")
    a[rng.random(a.shape) < 0.4] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for q in (0.1, 0.5, 0.9):
            np.testing.assert_allclose(nanquantile_axis0(a, q), np.nanquantile(a, q, axis=0), atol=1e-6)


def test_align_tracks_kernel_by_hand() -> None:
    from pipeline.factors.sar import align_tracks_kernel

    # one pixel, two tracks 6 dB apart (geometry), the same changes within each
    block = np.array([-10.0, -12.0, -11.0, -4.0, -6.0, -5.0], dtype="float32").reshape(6, 1, 1)
    got = align_tracks_kernel(block, np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(got.ravel(), [-7.0, -9.0, -8.0, -7.0, -9.0, -8.0])  # means -11 / -5, overall -8
    # a track with too few scenes at a pixel is left out there (its own mean would flatten
    # its change); at a pixel where no track has enough, nothing changes
    block = np.array([[-10.0, -10.0], [-12.0, -12.0], [-11.0, np.nan], [-2.0, -2.0]], dtype="float32").reshape(4, 1, 2)
    got = align_tracks_kernel(block, np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(got[:, 0, 0], [-10.0, -12.0, -11.0, np.nan])
    np.testing.assert_allclose(got[:, 0, 1], [-10.0, -12.0, np.nan, -2.0])
    # one track: unchanged
    same = np.array([-10.0, -12.0], dtype="float32").reshape(2, 1, 1)
    assert align_tracks_kernel(same, np.array([3, 3])) is same


def test_sar_references_are_aligned_across_orbit_tracks(tmp_path):  # type: ignore[no-untyped-def]
    """Two tracks see the same scenes 6.02 dB apart (4× the power, as geometry does on a
    slope): the references and the window median must show only the change over time."""
    items = make_tiny_region(tmp_path)
    track_a = items["sentinel-1-rtc"]
    track_b = []
    for k, it in enumerate(track_a):
        b = it.clone()
        b.id = f"{it.id}_desc"
        b.datetime = it.datetime.replace(day=it.datetime.day + 3)
        for pol in ("vv", "vh"):
            src = it.assets[pol].href
            dst = tmp_path / "s1b" / f"{k}_{pol}.tif"
            dst.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(src) as ds:
                profile, arr = ds.profile, ds.read(1)
            with rasterio.open(dst, "w", **profile) as out:
                out.write(arr * 4, 1)
            b.assets[pol].href = str(dst)
        b.properties.update({"sat:orbit_state": "descending", "sat:relative_orbit": 33})
        track_b.append(b)
    for it in track_a:
        it.properties.update({"sat:orbit_state": "ascending", "sat:relative_orbit": 99})
    s1 = [track_a[0], track_b[0], track_a[1], track_b[1], track_a[2], track_b[2]]
    inputs = RunInputs(s2=items["sentinel-2-l2a"], s1=s1, s1_history=s1, dem=items["cop-dem-glo-30"])
    ds = build_cube(inputs, GRID, BANDS).compute()
    a_db = 10 * np.log10(np.stack([_read(it.assets["vv"].href) for it in track_a]))
    both = np.concatenate([a_db, a_db]) + 10 * np.log10(2)  # each track moved half-way: ±3.01 dB
    np.testing.assert_allclose(ds["vv_dry"].values, np.percentile(both, 10, axis=0), atol=1e-3)
    np.testing.assert_allclose(ds["vv_wet"].values, np.percentile(both, 90, axis=0), atol=1e-3)
    np.testing.assert_allclose(ds["vv"].values, np.median(both, axis=0), atol=1e-3)


def test_window_scenes_are_found_whatever_the_item_order(tmp_path):  # type: ignore[no-untyped-def]
    """stackstac sorts by date and drops items with nothing over the grid: the window's
    median and the tracks must still pair each scene with its own item."""
    items = make_tiny_region(tmp_path)
    s1 = items["sentinel-1-rtc"]
    far = s1[0].clone()  # an item over another place: stackstac leaves it out
    far.id = "S1_far"
    for asset in far.assets.values():
        asset.extra_fields["proj:transform"] = [10.0, 0.0, 900000.0, 0.0, -10.0, 3309440.0]
    history = [s1[2], far, s1[0], s1[1]]  # not in date order
    inputs = RunInputs(s2=items["sentinel-2-l2a"], s1=[s1[2], s1[0]], s1_history=history, dem=items["cop-dem-glo-30"])
    ds = build_cube(inputs, GRID, BANDS).compute()
    lin = np.stack([_read(it.assets["vv"].href) for it in (s1[2], s1[0])])
    np.testing.assert_allclose(ds["vv"].values, np.median(10 * np.log10(lin), axis=0), atol=1e-4)
