"""LSI: chunking independence, lazy vs eager, hand-computed pixels in both modes, guards, classes."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import xarray as xr
from tests.factors_testdata import grid_coords, synthetic_cube

from pipeline.core.errors import InputDataError, MissingAssetError, NoValidDataError
from pipeline.factors.layers import FACTORS, compute_factors
from pipeline.factors.lsi import LsiParams, landslide_susceptibility, normalise, risk_classes
from pipeline.factors.ranges import HISTOGRAM_SPECS, normalisation_ranges
from pipeline.core.quality import QualityFlag
from pipeline.products.quicklook import write_quicklook


def _factors(chunks):
    return compute_factors(synthetic_cube(ny=96, nx=80, seed=3, chunks=chunks))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_ranges_and_lsi_independent_of_chunking():
    fa, fb = _factors(32), _factors((40, 25))
    ra, rb = normalisation_ranges(fa), normalisation_ranges(fb)
    assert ra == rb
    json.dumps(ra)  # plain, serialisable
    la = landslide_susceptibility(fa, ra, rain_multiplier=1.4).compute()
    lb = landslide_susceptibility(fb, rb, rain_multiplier=1.4).compute()
    for v in la.data_vars:
        np.testing.assert_allclose(la[v].values, lb[v].values, atol=1e-6, err_msg=v)
    assert np.isfinite(la.lsi.values).all()  # edges="nearest": no border loss


def test_lazy_equals_eager_and_small_graph():
    f = _factors(32)
    r = normalisation_ranges(f)
    lazy = landslide_susceptibility(f, r)
    assert all(isinstance(lazy[v].data, dask.array.Array) for v in lazy.data_vars)
    eager = landslide_susceptibility(f.compute(), r)
    assert not isinstance(eager.lsi.data, dask.array.Array)
    for v in lazy.data_vars:
        np.testing.assert_allclose(lazy[v].values, eager[v].values, atol=1e-6, err_msg=v)
        assert lazy[v].attrs["units"] and lazy[v].attrs["long_name"]
    # LSI layer itself: one task per chunk on top of the factors
    nchunks = lazy.lsi.data.npartitions
    assert len(lazy.lsi.data.__dask_graph__().layers[lazy.lsi.data.name]) == nchunks


def test_ranges_match_numpy_percentiles_within_one_bin():
    f = _factors(32).compute()
    r = normalisation_ranges(f)
    for name in FACTORS:
        lo, hi, n = HISTOGRAM_SPECS[name]
        width = (hi - lo) / n
        v = np.sort(f[name].values[np.isfinite(f[name].values)])
        for q, got in zip((2, 98), r[name]):
            k = q / 100 * (v.size - 1)
            # within one bin of the order statistics around the percentile's rank
            assert v[max(int(k) - 1, 0)] - width <= got <= v[min(int(k) + 2, v.size - 1)] + width, (name, q)


def test_ranges_over_several_zones_are_those_of_all_their_pixels():
    west = compute_factors(synthetic_cube(seed=1)).compute()
    east = compute_factors(synthetic_cube(seed=2)).compute()
    east = east.assign(dem=east["dem"] + 800.0)  # a higher zone: per-zone ranges would differ
    region = normalisation_ranges([west, east])
    assert region != normalisation_ranges(west)
    for name in FACTORS:
        lo, hi, n = HISTOGRAM_SPECS[name]
        width = (hi - lo) / n
        v = np.concatenate([z[name].values.ravel() for z in (west, east)])
        v = np.sort(v[np.isfinite(v)])
        for q, got in zip((2, 98), region[name]):
            k = q / 100 * (v.size - 1)
            assert v[max(int(k) - 1, 0)] - width <= got <= v[min(int(k) + 2, v.size - 1)] + width, (name, q)


def _tiny(values: dict[str, list[float]]) -> xr.Dataset:
    n = len(next(iter(values.values())))
    c = grid_coords(1, n)
    return xr.Dataset({k: xr.DataArray(np.array([v], dtype=np.float32), dims=("y", "x"), coords=c) for k, v in values.items()})


RANGES = {"slope": [0.0, 40.0], "dem": [0.0, 1000.0], "ndvi": [-1.0, 1.0], "ndwi": [-1.0, 1.0], "smi": [0.0, 1.0], "ndbi": [-1.0, 1.0]}
PIXELS = {
    "slope": [20.0, 60.0, 0.0, 10.0],
    "dem": [500.0, 1000.0, 0.0, 250.0],
    "ndvi": [0.0, -1.0, 1.0, 0.5],
    "ndwi": [0.0, 1.0, -1.0, -1.0],
    "smi": [0.5, 1.0, 0.0, 0.0],
    "ndbi": [0.0, 1.0, -1.0, -1.0],
}


def _hand(mode: str, rm: float):
    w = LsiParams().weights
    out = []
    for i in range(4):
        x = {}
        for f in FACTORS:
            lo, hi = RANGES[f]
            x[f] = min(max((PIXELS[f][i] - lo) / (hi - lo), 0.0), 1.0)
        s = sum(w[f] * x[f] for f in FACTORS)
        if mode == "normalised":
            out.append(_sigmoid(10.0 * (rm * s - 0.30)))
        else:
            den = w["ndwi"] * x["ndwi"] + w["smi"] * x["smi"] + w["ndbi"] * x["ndbi"]
            out.append(_sigmoid(rm * s / den) if den > 1e-3 else np.nan)
    return np.array(out)


@pytest.mark.parametrize("mode", ["normalised", "paper"])
@pytest.mark.parametrize("rm", [1.0, 0.6, 2.5])
def test_hand_computed_pixels(mode, rm):
    ds = _tiny(PIXELS)
    out = landslide_susceptibility(ds, RANGES, LsiParams(mode=mode), rain_multiplier=rm)
    np.testing.assert_allclose(out.lsi.values[0], _hand(mode, rm), atol=1e-6, equal_nan=True)
    # pixel 0 by hand, once more, explicitly: x = (.5, .5, .5, .5, .5, .5), S = .5 * .60 = .30
    if mode == "normalised":
        assert out.lsi.values[0, 0] == pytest.approx(_sigmoid(10 * (rm * 0.30 - 0.30)), abs=1e-6)
        np.testing.assert_allclose(out.contrib_ndvi.values[0], -0.2 * np.array([0.5, 0.0, 1.0, 0.75]), atol=1e-7)


def test_paper_mode_denominator_guard():
    ds = _tiny(PIXELS)
    out = landslide_susceptibility(ds, RANGES, LsiParams(mode="paper"))
    q = out.lsi_quality.values[0]
    # pixels 2 and 3 have ndwi = smi = ndbi = 0 after normalisation → denominator 0
    assert np.isnan(out.lsi.values[0, 2]) and np.isnan(out.lsi.values[0, 3])
    assert q[2] & QualityFlag.PAPER_DENOMINATOR and q[3] & QualityFlag.PAPER_DENOMINATOR
    assert q[0] == 0 and q[1] == 0
    # the default mode has no such hole
    assert np.isfinite(landslide_susceptibility(ds, RANGES).lsi.values).all()


def test_all_nan_factor_and_missing_factor():
    f = _factors(32)
    bad = f.assign(smi=f.smi * np.nan)
    with pytest.raises(NoValidDataError, match="'smi'"):
        normalisation_ranges(bad)
    with pytest.raises(MissingAssetError, match="'ndbi'"):
        landslide_susceptibility(f.drop_vars("ndbi"), RANGES)
    with pytest.raises(NoValidDataError, match="'dem'"):
        landslide_susceptibility(f, {**RANGES, "dem": [float("nan"), float("nan")]})
    with pytest.raises(MissingAssetError, match="B04"):
        compute_factors(synthetic_cube(ny=8, nx=8, chunks=8).drop_vars("B04"))


def test_nan_factor_flag_and_params_validation():
    vals = {k: list(v) for k, v in PIXELS.items()}
    vals["smi"][1] = float("nan")
    out = landslide_susceptibility(_tiny(vals), RANGES)
    assert np.isnan(out.lsi.values[0, 1]) and out.lsi_quality.values[0, 1] & QualityFlag.NAN_FACTOR
    with pytest.raises(InputDataError, match="mode"):
        LsiParams(mode="other")  # type: ignore[arg-type]
    with pytest.raises(InputDataError, match="steepness"):
        LsiParams(steepness=0)
    p = LsiParams(centre=0.2)
    assert LsiParams.from_attrs(json.loads(json.dumps(p.to_attrs()))) == p


def test_normalise_degenerate_range():
    ds = _tiny({"slope": [0.0, 5.0, float("nan")]})
    out = normalise(ds, {"slope": [0.0, 0.0]})
    np.testing.assert_array_equal(out.slope.values[0], [0.5, 0.5, np.nan])


def test_risk_classes_and_quicklook(tmp_path):
    lsi = xr.DataArray(np.array([[0.0, 0.2, 0.34, 0.5, 0.7, 1.0, np.nan]], dtype=np.float32), dims=("y", "x"), coords=grid_coords(1, 7))
    c = risk_classes(lsi.chunk({"x": 3}))
    np.testing.assert_array_equal(c.values[0], [0, 0, 1, 1, 2, 2, 255])
    assert c.dtype == np.uint8 and c.attrs["flag_meanings"] == "low medium high" and c.attrs["units"] == "1"
    with pytest.raises(InputDataError):
        risk_classes(lsi, (0.7, 0.3))
    f = _factors(32)
    out = landslide_susceptibility(f, normalisation_ranges(f))
    png = write_quicklook(out.lsi, tmp_path / "ql" / "lsi.png", classes=risk_classes(out.lsi), title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["lsi.png"]  # no temporary left behind
