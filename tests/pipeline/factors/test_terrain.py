"""Slope/aspect: against gdaldem on real DEMs, chunk-independence, analytic planes, bad input."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from tests.factors_testdata import fixture_path, grid_coords
from rasterio.enums import Resampling

from pipeline.core.errors import InputDataError
from pipeline.factors.terrain import aspect, horn_slope_aspect_kernel, slope

# rioxarray/rasterio internals warn about Affine "*" (not ours).
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

DEMS = [("dem-rmnp", "rmnp-dem.tif", 200.0), ("dem-rome-srtm", "Rome-30m-DEM.tif", 30.0)]


def _projected_dem(tmp_path, folder, name, res):
    """Reproject the (geographic) fixture DEM to its UTM zone, square pixels, float32, NaN nodata."""
    src = fixture_path("rasters", folder, name)
    dem = rioxarray.open_rasterio(src, masked=True).squeeze("band", drop=True)
    assert dem.rio.crs.is_geographic  # the fixtures are EPSG:4326; we compare on a projected copy
    utm = dem.rio.estimate_utm_crs()
    proj = dem.rio.reproject(utm, resolution=res, resampling=Resampling.bilinear).astype("float32")
    proj = proj.rio.write_nodata(np.nan, encoded=False)
    path = tmp_path / f"{folder}-utm.tif"
    proj.rio.to_raster(path)
    return path


def _gdaldem(mode, src, dst):
    exe = shutil.which("gdaldem")
    if exe is None:
        pytest.skip("gdaldem (gdal-bin) is not installed")
    subprocess.run([exe, mode, str(src), str(dst), "-q"], check=True)
    return rioxarray.open_rasterio(dst, masked=True).squeeze("band", drop=True).values


@pytest.mark.parametrize("folder,name,res", DEMS)
def test_slope_and_aspect_match_gdaldem(tmp_path, folder, name, res):
    path = _projected_dem(tmp_path, folder, name, res)
    ref_slope = _gdaldem("slope", path, tmp_path / "slope.tif")
    ref_aspect = _gdaldem("aspect", path, tmp_path / "aspect.tif")
    dem = rioxarray.open_rasterio(path, masked=True).squeeze("band", drop=True).chunk(64)
    s = slope(dem)
    a = aspect(dem)
    assert s.dtype == np.float32 and a.dtype == np.float32
    s, a = s.values, a.values
    # Same footprint: NaN on the raster edge and next to nodata, like gdaldem.
    np.testing.assert_array_equal(np.isfinite(s), np.isfinite(ref_slope))
    both = np.isfinite(s) & np.isfinite(ref_slope)
    assert both.sum() > 1000
    assert np.abs(s - ref_slope)[both].max() < 0.1
    # Aspect is ill-conditioned on near-flat ground (gdaldem sums in float32): compare where slope > 1°.
    steep = both & (s > 1.0) & np.isfinite(a) & np.isfinite(ref_aspect)
    assert steep.sum() > 500
    diff = np.abs((a - ref_aspect + 180.0) % 360.0 - 180.0)
    assert diff[steep].max() < 0.1


def _da(z, res=10.0, chunks=None):
    out = xr.DataArray(z.astype(np.float32), dims=("y", "x"), coords=grid_coords(*z.shape, res=res))
    if chunks is None:
        return out
    if isinstance(chunks, tuple):
        chunks = dict(zip(("y", "x"), chunks))
    return out.chunk(chunks)


def test_chunk_edges_are_exact():
    rng = np.random.default_rng(1)
    z = np.cumsum(np.cumsum(rng.normal(size=(70, 90)), 0), 1)
    whole = slope(_da(z)).values
    for ch in (23, (16, 33), 45):
        np.testing.assert_array_equal(slope(_da(z, chunks=ch)).values, whole)
        np.testing.assert_array_equal(aspect(_da(z, chunks=ch)).values, aspect(_da(z)).values)


@pytest.mark.parametrize(
    "gx,gy,expected_aspect",
    [(-0.1, 0.0, 90.0), (0.1, 0.0, 270.0), (0.0, -0.1, 0.0), (0.0, 0.1, 180.0), (-0.1, -0.1, 45.0)],
)
def test_plane(gx, gy, expected_aspect):
    """z = gx*x + gy*y (x east, y north): slope atan(|grad|), aspect = downslope azimuth."""
    c = grid_coords(20, 30)
    X, Y = np.meshgrid(c["x"] - c["x"][0], c["y"] - c["y"][-1])
    z = gx * X + gy * Y
    s = slope(_da(z, chunks=8)).values
    a = aspect(_da(z, chunks=8)).values
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(s[inner], np.degrees(np.arctan(np.hypot(gx, gy))), atol=1e-3)
    np.testing.assert_allclose((a[inner] - expected_aspect + 180) % 360 - 180, 0, atol=1e-2)
    assert np.isnan(s[0]).all() and np.isnan(s[:, -1]).all()


def test_flat_aspect_is_nan_and_nearest_edges():
    z = np.full((10, 12), 100.0)
    assert np.isnan(aspect(_da(z)).values).all()
    s = slope(_da(z), edges="nearest").values
    assert np.isfinite(s).all() and (s == 0).all()


def test_eager_kernel_matches_front():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(12, 15)).cumsum(0)
    s, a = horn_slope_aspect_kernel(z, 10.0, -10.0)
    np.testing.assert_array_equal(s, slope(_da(z)).values)
    np.testing.assert_array_equal(a, aspect(_da(z)).values)


def test_geographic_dem_is_refused():
    src = fixture_path("rasters", "dem-rmnp", "rmnp-dem.tif")
    dem = rioxarray.open_rasterio(src, masked=True).squeeze("band", drop=True)
    with pytest.raises(InputDataError, match="geographic CRS"):
        slope(dem)


def test_degree_like_coordinates_without_crs_are_refused():
    z = np.zeros((10, 10), dtype=np.float32)
    dem = xr.DataArray(z, dims=("y", "x"), coords={"y": 40.5 - np.arange(10) * 0.001, "x": -105 + np.arange(10) * 0.001})
    with pytest.raises(InputDataError, match="degrees"):
        slope(dem)


def test_bad_shapes_are_refused():
    with pytest.raises(InputDataError, match="dims"):
        slope(xr.DataArray(np.zeros((2, 5, 5)), dims=("band", "y", "x")))
    with pytest.raises(InputDataError, match="coordinates"):
        slope(xr.DataArray(np.zeros((5, 5)), dims=("y", "x")))


def test_crs_read_from_grid_mapping_without_rioxarray_accessor():
    from rasterio.crs import CRS

    z = np.zeros((5, 5), dtype=np.float32)
    dem = xr.DataArray(z, dims=("y", "x"), coords=grid_coords(5, 5), attrs={"grid_mapping": "spatial_ref"})
    dem = dem.assign_coords(spatial_ref=xr.DataArray(0, attrs={"crs_wkt": CRS.from_epsg(4326).to_wkt()}))
    with pytest.raises(InputDataError, match="geographic CRS"):
        slope(dem)
    dem = dem.assign_coords(spatial_ref=xr.DataArray(0, attrs={"crs_wkt": CRS.from_epsg(32633).to_wkt()}))
    assert np.isfinite(slope(dem).values[1:-1, 1:-1]).all()
