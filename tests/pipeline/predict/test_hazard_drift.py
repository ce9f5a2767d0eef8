"""The hazard step and the input-drift check, against hand-computed values (no torch)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.core.errors import InputDataError
from pipeline.predict.drift import DRIFT_LIMIT, channel_drift, drifted
from pipeline.predict.hazard import check_hazard_mode, hazard


def test_hazard_by_hand() -> None:
    s = np.array([0.0, 0.1, 0.5, 0.9, 1.0, np.nan], dtype=np.float32)
    # R_m = 2: 1 - (1 - s)^2
    np.testing.assert_allclose(hazard(s, 2.0), [0.0, 0.19, 0.75, 0.99, 1.0, np.nan], rtol=1e-6, equal_nan=True)
    # the reference event gives the susceptibility itself; no rain gives no hazard
    np.testing.assert_allclose(hazard(s, 1.0), s, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(hazard(s, 0.0)[:5], np.zeros(5, np.float32))
    assert hazard(s, 2.0).dtype == np.float32


def test_hazard_is_monotone_in_rain_and_in_susceptibility() -> None:
    rng = np.random.default_rng(0)
    s = np.sort(rng.uniform(0, 1, 1000)).astype(np.float32)
    rms = [0.0, 0.3, 1.0, 1.7, 5.0]
    layers = [hazard(s, rm) for rm in rms]
    for lo, hi in zip(layers, layers[1:]):
        assert (hi >= lo).all()
    for h in layers:
        assert (np.diff(h) >= 0).all()


def test_bad_hazard_inputs_are_refused() -> None:
    with pytest.raises(InputDataError, match="must be a finite number >= 0"):
        hazard(np.array([0.5]), -1.0)
    with pytest.raises(InputDataError, match="hazard mode 'both' is unknown"):
        check_hazard_mode("both")


def test_channel_drift_by_hand() -> None:
    a = np.arange(100, dtype=np.float32).reshape(10, 10)  # 0..99
    a[0, 0] = np.nan  # 99 valid pixels
    ds = xr.Dataset({"a": (("y", "x"), a), "b": (("y", "x"), a * 0 + 5)})
    # range [0, 50] widened by 10 % of 50 on each side -> [-5, 55]: 56..99 outside = 44 pixels
    (da, db) = channel_drift(ds.chunk(3), {"a": [0.0, 50.0], "b": [0.0, 10.0], "absent": [0, 1]})
    assert da.channel == "a" and da.valid_pixels == 99 and da.outside == pytest.approx(44 / 99)
    assert da.median == pytest.approx(50.0, abs=1.0)
    assert db.outside == 0.0
    assert drifted([da, db]) == [da] and da.outside > DRIFT_LIMIT
    assert "a: 44% of pixels outside its training range [0, 50]" in da.describe()
