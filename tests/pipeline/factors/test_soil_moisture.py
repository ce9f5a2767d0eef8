"""SMI references, change-detection index, NDMI fallback and quality flags."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from tests.factors_testdata import synthetic_cube

from pipeline.core.errors import InputDataError, MissingAssetError
from pipeline.core.quality import QualityFlag, describe
from pipeline.core.stats import nan_percentiles
from pipeline.factors.soil_moisture import (
    NDMI_DRY,
    NDMI_WET,
    smi_references,
    soil_moisture,
    soil_moisture_index,
)


def _history(seed=0, nt=25, ny=12, nx=10):
    rng = np.random.default_rng(seed)
    h = rng.normal(-11, 2.5, (nt, ny, nx)).astype(np.float32)
    h[rng.random(h.shape) < 0.2] = np.nan
    h[:, 0, 0] = np.nan  # a pixel never observed
    return h


def test_percentile_kernel_matches_numpy():
    h = _history()
    got = nan_percentiles(h, (10.0, 90.0))
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanpercentile(h.astype(np.float64), [10, 90], axis=0)
    np.testing.assert_allclose(got, ref, atol=1e-4, equal_nan=True)


def test_smi_references_lazy_and_chunk_checks():
    h = _history()
    arr = xr.DataArray(da.from_array(h, chunks=(-1, 5, 5)), dims=("time", "y", "x"), name="vv")
    dry, wet = smi_references(arr)
    assert dry.dtype == np.float32 and dry.dims == ("y", "x") and dry.attrs["units"] == "dB"
    assert np.isnan(dry.values[0, 0]) and np.isnan(wet.values[0, 0])
    assert (wet.values[1:, 1:] > dry.values[1:, 1:]).all()
    with pytest.raises(InputDataError, match=r"chunk\(time=-1\)"):
        smi_references(arr.chunk({"time": 5}))
    with pytest.raises(InputDataError, match="percentiles"):
        smi_references(arr, low=90, high=10)


def test_smi_formula_clip_and_guard():
    vv = xr.DataArray(np.array([-12.0, -20.0, 0.0, -10.0, np.nan], dtype=np.float32), dims="x")
    dry = xr.DataArray(np.array([-16.0, -16.0, -16.0, -10.0, -16.0], dtype=np.float32), dims="x")
    wet = xr.DataArray(np.array([-8.0, -8.0, -8.0, -10.0, -8.0], dtype=np.float32), dims="x")
    s = soil_moisture_index(vv, dry, wet).values
    assert s[0] == pytest.approx(0.5)
    assert s[1] == 0.0 and s[2] == 1.0
    assert np.isnan(s[3])  # wet - dry = 0 < eps
    assert np.isnan(s[4])


def test_soil_moisture_fallback_and_quality():
    ds = synthetic_cube(ny=16, nx=16, chunks=8)
    out = soil_moisture(ds)
    smi, q = out.smi.values, out.smi_quality.values
    assert out.smi.dtype == np.float32 and out.smi_quality.dtype == np.uint8
    assert out.smi.attrs["units"] == "1" and "flag_masks" in out.smi_quality.attrs
    west = slice(0, 4)
    b08, b11 = ds.B08.values.astype(np.float64), ds.B11.values.astype(np.float64)
    ndmi = (b08 - b11) / (b08 + b11)
    proxy = np.clip((ndmi - NDMI_DRY) / (NDMI_WET - NDMI_DRY), 0, 1)
    np.testing.assert_allclose(smi[:, west], proxy[:, west], atol=1e-6)
    assert (q[:, west] == QualityFlag.SMI_FROM_NDMI_PROXY).all()
    vv, dry, wet = (ds[n].values.astype(np.float64) for n in ("vv", "vv_dry", "vv_wet"))
    east = slice(4, None)
    np.testing.assert_allclose(smi[:, east], np.clip((vv - dry) / (wet - dry), 0, 1)[:, east], atol=1e-6)
    assert (q[:, east] == 0).all()
    assert describe(int(q[0, 0])) == ["smi_from_ndmi_proxy"]


def test_soil_moisture_without_s1_uses_proxy_everywhere_and_missing_everything_raises():
    ds = synthetic_cube(ny=8, nx=8, chunks=8).drop_vars(["vv", "vv_dry", "vv_wet"])
    out = soil_moisture(ds)
    assert (out.smi_quality.values == QualityFlag.SMI_FROM_NDMI_PROXY).all()
    with pytest.raises(MissingAssetError, match="B08"):
        soil_moisture(ds.drop_vars(["B08", "B11"]))
