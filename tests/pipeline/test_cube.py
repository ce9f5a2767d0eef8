"""Cube values on a tiny generated region against an independent read with rasterio."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pipeline.catalog import RunInputs
from pipeline.cube import build_cube, nanquantile_axis0
from pipeline.errors import MissingAssetError
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
