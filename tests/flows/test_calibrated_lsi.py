"""A calibration is applied: the LSI uses its centre and steepness and says so in its attributes."""

from __future__ import annotations

from datetime import date

import numpy as np
import xarray as xr

from flows import stages
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.provenance import Rain
from pipeline.factors.calibration import CalibrationResult, load_calibration, save_calibration
from tests.tinyregion import FakeSource, make_tiny_region, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def test_lsi_uses_the_saved_calibration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = stages.cube_stage(tiny_region("cal"), WINDOW, FakeSource.url, tmp_path / "out", CubeConfig(), chunk=64,
                               source=FakeSource(make_tiny_region(tmp_path / "cogs")))
    rain = Rain(4.0, 2.0, 1.7, "explicit")
    fit = CalibrationResult(centre=0.42, steepness=17.0, auc=0.9, n_samples=10, n_positive=2, log_loss=0.1, converged=True)
    params, source = load_calibration(save_calibration(fit, tmp_path / "calibration.json", "a test inventory"))
    stages.lsi_stage(result, rain, params=params, calibration=source)
    lsi = xr.open_zarr(result.zones[0].lsi_path)
    assert lsi.attrs["lsi_params"]["centre"] == 0.42 and lsi.attrs["lsi_params"]["steepness"] == 17.0
    assert lsi.attrs["lsi_calibration"] == source
    # by hand: LSI = sigmoid(k (sum of contributions - c)), rain-free by default
    contrib = sum(lsi[v].values.astype(np.float64) for v in lsi.data_vars if str(v).startswith("contrib_"))
    expected = 1.0 / (1.0 + np.exp(-17.0 * (contrib - 0.42)))
    ok = np.isfinite(expected)
    np.testing.assert_allclose(lsi["lsi"].values[ok], expected[ok], atol=1e-5)
    assert lsi.attrs["rain_multiplier"] is None and lsi.attrs["hazard_mode"] == "decoupled"
    # the paper's coupling: LSI = sigmoid(k (R_m * sum of contributions - c))
    stages.lsi_stage(result, rain, params=params, calibration=source, hazard="paper")
    lsi = xr.open_zarr(result.zones[0].lsi_path)
    expected = 1.0 / (1.0 + np.exp(-17.0 * (contrib * 1.7 - 0.42)))
    np.testing.assert_allclose(lsi["lsi"].values[ok], expected[ok], atol=1e-5)
