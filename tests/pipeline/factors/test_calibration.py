"""Calibration: rank AUC vs scikit-learn, logistic fit recovers a known sigmoid, report."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.factors.calibration import (
    PAPER_AUC,
    CalibrationResult,
    calibrate,
    fit_logistic,
    format_report,
    load_calibration,
    roc_auc,
    save_calibration,
)
from pipeline.core.errors import InputDataError, NoValidDataError
from pipeline.factors.lsi import FACTORS, LsiParams

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (test-only) is not installed")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(3000) < 0.1
    s = np.round(rng.normal(size=3000) + 1.2 * y, 1)  # rounding → many ties
    assert roc_auc(s, y) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)


def test_auc_needs_both_classes():
    with pytest.raises(InputDataError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])


def _synthetic(seed=0, n=60_000, centre=0.35, k=12.0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.2, 0.8, n)
    y = rng.random(n) < 1 / (1 + np.exp(-k * (s - centre)))
    return s, y


def test_logistic_fit_recovers_centre_and_slope():
    s, y = _synthetic()
    score = xr.DataArray(s.reshape(200, 300), dims=("y", "x"))
    mask = xr.DataArray(y.reshape(200, 300).astype(np.uint8), dims=("y", "x"))
    res = calibrate(score, mask, sample_size=50_000, seed=3)
    assert res.converged
    assert res.centre == pytest.approx(0.35, abs=0.02)
    assert res.steepness == pytest.approx(12.0, rel=0.1)
    assert res.auc == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-9)
    assert res.n_samples == 50_000
    again = calibrate(score, mask, sample_size=50_000, seed=3)
    assert again == res  # seeded
    p = res.to_params()
    assert isinstance(p, LsiParams) and p.centre == pytest.approx(res.centre)


def test_fit_weights_recovers_direction():
    rng = np.random.default_rng(5)
    n = 40_000
    X = rng.uniform(0, 1, (n, 6))
    true_w = np.array([0.25, 0.15, -0.20, 0.20, 0.10, 0.10])
    k, c = 8.0, 0.30
    y = rng.random(n) < 1 / (1 + np.exp(-k * (X @ true_w - c)))
    ds = xr.Dataset({f: xr.DataArray(X[:, i].reshape(200, 200), dims=("y", "x")) for i, f in enumerate(FACTORS)})
    res = calibrate(ds, xr.DataArray(y.reshape(200, 200), dims=("y", "x")), fit_weights=True, sample_size=40_000)
    w = np.array([res.weights[f] for f in FACTORS])
    assert np.abs(w).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, true_w, atol=0.06)
    assert res.steepness == pytest.approx(k, rel=0.2)
    assert res.centre == pytest.approx(c, abs=0.05)


def test_fit_logistic_plain():
    s, y = _synthetic(seed=1, n=20_000, centre=0.0, k=5.0)
    a, b, ok, loss = fit_logistic(s, y)
    assert ok and b[0] == pytest.approx(5.0, rel=0.15) and abs(a) < 0.15 and loss > 0


def test_nodata_labels_ignored_and_no_positives_raise():
    s, y = _synthetic(seed=2, n=10_000)
    lab = y.astype(np.float32)
    lab[:100] = 255  # nodata
    s2 = s.copy()
    s2[100:200] = np.nan
    res = calibrate(xr.DataArray(s2), xr.DataArray(lab))
    assert res.n_samples == 10_000 - 200
    with pytest.raises(NoValidDataError, match="landslide"):
        calibrate(xr.DataArray(s), xr.DataArray(np.zeros_like(s)))


def test_report_labels_paper_auc_as_different_data():
    s, y = _synthetic(seed=4, n=5_000)
    txt = format_report(calibrate(xr.DataArray(s), xr.DataArray(y)), data_set="synthetic test")
    assert f"{PAPER_AUC:.3f}" in txt and "not directly comparable" in txt and "synthetic test" in txt


def test_saved_calibration_gives_the_fitted_lsi_params(tmp_path):  # type: ignore[no-untyped-def]
    fit = CalibrationResult(centre=0.5803, steepness=14.9547, auc=0.975, n_samples=200_000, n_positive=447,
                            log_loss=0.0106, converged=True)
    path = save_calibration(fit, tmp_path / "calibration.json", "the demo")
    params, source = load_calibration(path)
    assert (params.centre, params.steepness, params.mode) == (0.5803, 14.9547, "normalised")
    assert params == fit.to_params() and params.w_slope == LsiParams().w_slope
    assert str(path) in source and "the demo" in source and "AUC 0.975" in source


@pytest.mark.parametrize("text,needle", [
    (None, "does not exist"),
    ("{oops", "not readable JSON"),
    ("[1, 2]", "not an object"),
    ('{"centre": 0.5}', "lacks a numeric"),
    ('{"centre": 0.5, "steepness": -3}', "steepness <= 0"),
    ('{"centre": NaN, "steepness": 3}', "non-finite"),
])
def test_bad_calibration_files_are_one_clear_error(tmp_path, text, needle):  # type: ignore[no-untyped-def]
    path = tmp_path / "calibration.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputDataError, match=needle) as err:
        load_calibration(path)
    assert "calibration.json" in str(err.value) and "Fix:" in str(err.value)

