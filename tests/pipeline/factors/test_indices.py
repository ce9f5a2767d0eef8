"""Spectral indices on the real Sentinel-2 crop (Patagonia) and edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from tests.factors_testdata import fixture_path, synthetic_cube

from pipeline.core.errors import MissingAssetError
from pipeline.factors.indices import INDEX_BANDS, normalized_difference_kernel, spectral_indices

# SOURCE.md: green=B03, red=B04, nir (labelled band 07; used as B08), swir1=B11;
# values are reflectance x 10000 as float64.
FILES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir1", "B12": "swir2"}


@pytest.fixture(scope="module")
def patagonia() -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    raw = {}
    for band, stem in FILES.items():
        path = fixture_path("rasters", "s2-l2a-patagonia", f"{stem}_band.nc")
        raw[band] = xr.open_dataarray(path, engine="scipy").values
    ny, nx = raw["B03"].shape
    coords = {"y": 4700020 - 5 - 10 * np.arange(ny), "x": 600000 + 5 + 10 * np.arange(nx)}
    ds = xr.Dataset(
        {b: xr.DataArray((v / 10000.0).astype(np.float32), dims=("y", "x"), coords=coords) for b, v in raw.items()}
    ).chunk({"y": 64, "x": 128})
    return ds, raw


def test_indices_match_hand_computation(patagonia):
    ds, raw = patagonia
    out = spectral_indices(ds)
    assert set(out.data_vars) == {"ndvi", "ndwi", "ndbi", "ndmi"}
    for name, (a, b) in INDEX_BANDS.items():
        got = out[name]
        assert got.dtype == np.float32
        assert got.attrs["units"] == "1" and got.attrs["long_name"]
        expected = (raw[a] - raw[b]) / (raw[a] + raw[b])  # scale cancels
        np.testing.assert_allclose(got.values, expected, atol=2e-6, err_msg=name)
    # Real-scene sanity: NDVI and NDMI of the same pixel order as the bands say.
    assert np.nanmax(out.ndvi.values) > 0.2 and np.nanmin(out.ndvi.values) < 0.1


def test_lazy_one_task_per_chunk(patagonia):
    ds, _ = patagonia
    nd = spectral_indices(ds, ["ndvi"]).ndvi.data
    layer = list(nd.__dask_graph__().layers.values())[-1]
    assert len(layer) == nd.npartitions


def test_nan_zero_denominator_and_clipping_without_warnings():
    a = np.array([0.3, np.nan, 0.0, 0.2, -0.01, 0.5], dtype=np.float32)
    b = np.array([0.1, 0.2, 0.0, -0.2, 0.02, np.nan], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = normalized_difference_kernel(a, b)
    assert r[0] == pytest.approx(0.5)
    assert np.isnan(r[1]) and np.isnan(r[2]) and np.isnan(r[3]) and np.isnan(r[5])
    assert -1.0 <= r[4] <= 1.0  # (-0.03)/(0.01) = -3 clipped to -1
    assert r[4] == -1.0


def test_missing_band_is_named():
    ds = synthetic_cube(ny=8, nx=8, chunks=8).drop_vars("B11")
    with pytest.raises(MissingAssetError, match="'B11'"):
        spectral_indices(ds)
    # indices that do not need B11 still work
    assert "ndvi" in spectral_indices(ds, ["ndvi", "ndwi"])
