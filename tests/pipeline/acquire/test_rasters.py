"""Local rasters → chip store (issue 16): band names, derived channels, tiling, refusals.

The rasters are made here by :func:`write_scene` (seeded, tiny, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from rasterio.transform import Affine

from pipeline.acquire.rasters import (
    canonical_band,
    chip_store_info,
    find_rasters,
    prepare_chip_store,
    read_raster,
    resolve_channels,
)
from pipeline.core.errors import InputDataError, StoreError
from pipeline.factors.terrain import slope as terrain_slope

T32648 = Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 3_300_000.0)


def write_scene(path: Path, names=("B03", "B04", "B08", "B11", "dem"), shape=(24, 30), seed=0,
                transform=T32648, crs="EPSG:32648", describe=True, nodata=None) -> np.ndarray:
    """A float32 GeoTIFF with one band per name (reflectance 0.01..0.5; dem 500..900 m)."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.01, 0.5, (len(names), *shape)).astype(np.float32)
    for i, n in enumerate(names):
        if n in ("dem", "elevation"):
            data[i] = (500 + np.add.outer(np.arange(shape[0]) * 3.0, np.arange(shape[1]) * 1.5)
                       + rng.normal(0, 1, shape)).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=len(names),
                       dtype="float32", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if describe:
            for i, n in enumerate(names):
                dst.set_band_description(i + 1, n)
    return data


def test_canonical_band_names():
    assert [canonical_band(b) for b in ("B4", "b04", "red", "B8a", "nir", "SWIR-1", "Elevation", "vv")] == [
        "B04", "B04", "B04", "B8A", "B08", "B11", "dem", "vv"]
    assert resolve_channels(["NDVI", "b3", "Slope", "twi"], ["B03", "ndvi", "slope"]) == ("ndvi", "B03", "slope", "twi")


def test_ndvi_equals_a_hand_computed_pixel_and_slope_reuses_the_kernel(tmp_path):
    data = write_scene(tmp_path / "scene.tif")
    res = prepare_chip_store([tmp_path / "scene.tif"], tmp_path / "s.zarr", channels=["NDVI", "NDWI", "NDBI", "slope"])
    assert res.channels == ("ndvi", "ndwi", "ndbi", "slope")
    ds = xr.open_zarr(tmp_path / "s.zarr", group="scene", decode_coords="all", consolidated=False)
    b03, b04, b08, b11 = (float(data[i, 7, 11]) for i in range(4))
    assert float(ds["ndvi"][7, 11]) == pytest.approx((b08 - b04) / (b08 + b04), rel=1e-6)
    assert float(ds["ndwi"][7, 11]) == pytest.approx((b03 - b08) / (b03 + b08), rel=1e-6)
    assert float(ds["ndbi"][7, 11]) == pytest.approx((b11 - b08) / (b11 + b08), rel=1e-6)
    dem = read_raster(tmp_path / "scene.tif")["dem"]
    np.testing.assert_allclose(ds["slope"].values, terrain_slope(dem, edges="nearest").values, rtol=1e-6)
    assert set(ds.data_vars) == {"ndvi", "ndwi", "ndbi", "slope"} and ds.rio.crs.to_epsg() == 32648
    assert ds["slope"].attrs["units"] == "degree"


def test_read_raster_names_nodata_and_refusals(tmp_path):
    write_scene(tmp_path / "a.tif", names=("red", "nir"), describe=True, nodata=0.0)
    with rasterio.open(tmp_path / "a.tif", "r+") as dst:
        arr = dst.read(1)
        arr[0, 0] = 0.0
        dst.write(arr, 1)
    ds = read_raster(tmp_path / "a.tif")
    assert list(ds.data_vars) == ["B04", "B08"] and np.isnan(ds["B04"][0, 0])
    assert ds.rio.transform() == T32648 and float(ds.x[0]) == 300_005.0
    write_scene(tmp_path / "plain.tif", names=("x", "y"), describe=False)
    with pytest.raises(InputDataError, match=r"band\(s\) \[1, 2\] of 2 have no description.*--bands"):
        read_raster(tmp_path / "plain.tif")
    with pytest.raises(InputDataError, match="has 2 band"):
        read_raster(tmp_path / "plain.tif", bands=["B04"])
    assert list(read_raster(tmp_path / "plain.tif", bands=["B4", "B8"]).data_vars) == ["B04", "B08"]
    with pytest.raises(InputDataError, match=r"plain\.tif lacks \['B03'\], needed for ndwi"):
        prepare_chip_store([tmp_path / "plain.tif"], tmp_path / "x.zarr", bands=["B04", "B08"], channels=["ndwi"])
    with pytest.raises(InputDataError, match="lacks \\['dem'\\], needed for slope"):
        prepare_chip_store([tmp_path / "plain.tif"], tmp_path / "x.zarr", bands=["B04", "B08"], channels=["slope"])
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(InputDataError, match="does not exist"):
        find_rasters([tmp_path / "nope"])


def test_tiles_keep_their_georeference_and_an_external_dem_gives_slope(tmp_path):
    write_scene(tmp_path / "big.tif", names=("B04", "B08"), shape=(40, 50))
    dem_t = Affine(30.0, 0.0, 299_900.0, 0.0, -30.0, 3_300_100.0)
    write_scene(tmp_path / "dem.tif", names=("dem",), shape=(20, 25), transform=dem_t)
    res = prepare_chip_store([tmp_path / "big.tif"], tmp_path / "t.zarr", tile=32, dem=tmp_path / "dem.tif",
                             channels=["B04", "slope"])
    names = [c["name"] for c in res.chips]
    assert names == ["big_r0c0", "big_r0c1", "big_r1c0", "big_r1c1"]
    info = chip_store_info(tmp_path / "t.zarr")
    assert info["tile"] == 32 and info["chips"][3]["shape"] == [8, 18] and info["chips"][3]["window"] == [32, 32]
    whole = read_raster(tmp_path / "big.tif")
    part = xr.open_zarr(tmp_path / "t.zarr", group="big_r1c1", decode_coords="all", consolidated=False)
    assert part.rio.transform() == T32648 @ Affine.translation(32, 32)
    np.testing.assert_array_equal(part["B04"].values, whole["B04"].values[32:, 32:])
    assert np.isfinite(part["slope"].values).all()
    with pytest.raises(StoreError, match="already exists.*--overwrite"):
        prepare_chip_store([tmp_path / "big.tif"], tmp_path / "t.zarr")
    prepare_chip_store([tmp_path / "big.tif"], tmp_path / "t.zarr", overwrite=True, channels=["B04"])
    assert chip_store_info(tmp_path / "t.zarr")["channels"] == ["B04"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial stores left


def test_chips_in_two_crs_and_name_clashes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_scene(tmp_path / "a" / "c1.tif", names=("B04", "B08"))
    write_scene(tmp_path / "a" / "c2.tif", names=("B04", "B08"), crs="EPSG:32633",
                transform=Affine(20.0, 0.0, 600_000.0, 0.0, -20.0, 5_200_000.0))
    res = prepare_chip_store([tmp_path / "a"], tmp_path / "s.zarr")
    assert res.channels == ("B04", "B08", "ndvi") and {c["crs"] for c in res.chips} == {"EPSG:32648", "EPSG:32633"}
    write_scene(tmp_path / "b" / "c1.tif", names=("B04", "B08"))
    with pytest.raises(InputDataError, match="would both be chip 'c1'"):
        prepare_chip_store([tmp_path / "a", tmp_path / "b"], tmp_path / "s2.zarr")
    write_scene(tmp_path / "b" / "c1.tif", names=("B04", "B03"))
    with pytest.raises(InputDataError, match="choose the channels every chip has"):
        prepare_chip_store([tmp_path / "a" / "c2.tif", tmp_path / "b" / "c1.tif"], tmp_path / "s3.zarr")
