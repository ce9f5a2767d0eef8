"""Precipitation sources (IMERG collection layout, local Zarr), synthetic storm, R_m."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from tests.factors_testdata import fixture_path

from pipeline.core.errors import RainfallError
from pipeline.demo.storm import make_synthetic_storm, write_precipitation_zarr
from pipeline.rain.events import D0_DAYS, P0_MM_H, explicit_event, rain_event, rainfall_multiplier
from pipeline.rain.sources import ImergLayout, ImergSource, LocalZarrSource, PrecipitationSource, imerg_layout

BBOX = (12.0, 41.5, 13.0, 42.5)
START, END = "2021-05-01", "2021-05-04"


@pytest.fixture(scope="module")
def storm() -> xr.Dataset:
    return make_synthetic_storm(BBOX, START, END, seed=7)


@pytest.fixture(scope="module")
def store(tmp_path_factory, storm):
    return write_precipitation_zarr(storm, tmp_path_factory.mktemp("rain") / "imerg.zarr")


@pytest.mark.parametrize(
    "parts",
    [
        ("planetary-computer", "pystac-client-recordings", "collections", "gpm-imerg-hhr.json"),
        ("planetary-computer", "collection-templates", "gpm-imerg-hhr__template.json"),
    ],
)
def test_imerg_collection_json_parsed(parts):
    layout = imerg_layout(fixture_path(*parts))
    assert layout.href == "abfs://imerg/gpm-imerg-hhr.zarr"
    assert layout.asset_key == "zarr-abfs"
    assert layout.variable == "precipitationCal" and layout.units == "mm/hr"
    assert layout.dims == ("time", "lon", "lat")
    assert (layout.lon, layout.lat, layout.time) == ("lon", "lat", "time")
    assert layout.step_minutes == 30.0
    assert layout.open_kwargs == {"use_cftime": True, "consolidated": True}
    assert layout.storage_options == {"account_name": "ai4edataeuwest"}
    assert layout == ImergLayout()  # the defaults are the collection's facts


def test_imerg_layout_errors(tmp_path):
    with pytest.raises(RainfallError, match="precipitationCal|Variable"):
        imerg_layout({"id": "x", "assets": {"z": {"href": "a", "type": "application/vnd+zarr"}}, "cube:variables": {}})
    with pytest.raises(RainfallError, match="no Zarr asset"):
        imerg_layout({"id": "x", "assets": {}})
    with pytest.raises(RainfallError, match="Cannot read"):
        imerg_layout(tmp_path / "missing.json")


def test_synthetic_storm_layout_deterministic_and_partial(storm):
    again = make_synthetic_storm(BBOX, START, END, seed=7)
    xr.testing.assert_identical(storm, again)
    other = make_synthetic_storm(BBOX, START, END, seed=8)
    assert not np.array_equal(other.precipitationCal.values, storm.precipitationCal.values)
    v = storm["precipitationCal"]
    assert v.dims == ("time", "lon", "lat") and v.attrs["units"] == "mm/hr" and v.dtype == np.float32
    assert storm.sizes["time"] == 3 * 48
    assert np.all(np.diff(storm.time.values) == np.timedelta64(30, "m"))
    total = v.sum("time").values
    assert (total > 0).mean() > 0.05 and (total == 0).mean() > 0.2  # covers part of the bbox only
    assert (v.values >= 0).all()


def test_local_zarr_round_trip(store, storm):
    src = LocalZarrSource(store)
    assert isinstance(src, PrecipitationSource)
    rate = src.read(BBOX, START, END)
    assert rate.dims == ("time", "lat", "lon") and rate.attrs["units"] == "mm/h"
    ref = storm.precipitationCal.transpose("time", "lat", "lon")
    np.testing.assert_array_equal(rate.values, ref.values)
    # half-open window: end excluded
    part = src.read(BBOX, "2021-05-02", "2021-05-02T06:00")
    assert part.sizes["time"] == 12
    with pytest.raises(RainfallError, match="no precipitation data"):
        src.read(BBOX, "2020-01-01", "2020-01-02")
    with pytest.raises(RainfallError, match="does not exist"):
        LocalZarrSource(store.parent / "nope.zarr").read(BBOX, START, END)


def test_imerg_source_with_injected_opener(store, storm):
    layout = imerg_layout(fixture_path("planetary-computer", "pystac-client-recordings", "collections", "gpm-imerg-hhr.json"))
    seen = {}

    def opener(lay):
        seen["href"] = lay.href
        return xr.open_zarr(store)  # stand-in for the remote abfs store

    src = ImergSource(layout, opener=opener)
    ev = rain_event(src, BBOX, START, END, per="pixel").compute()
    assert seen["href"] == "abfs://imerg/gpm-imerg-hhr.zarr"
    v = storm.precipitationCal.transpose("time", "lat", "lon").values.astype(np.float64)
    np.testing.assert_allclose(ev.intensity.values, v.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ev.duration.values, (v >= 0.1).sum(0) / 48.0, rtol=1e-6)


def test_rain_event_region_mean(store):
    ev = rain_event(LocalZarrSource(store), BBOX, START, END).compute()
    px = rain_event(LocalZarrSource(store), BBOX, START, END, per="pixel").compute()
    w = np.cos(np.deg2rad(px.lat.values))[:, None] * np.ones(px.sizes["lon"])
    assert float(ev.intensity) == pytest.approx(float((px.intensity.values * w).sum() / w.sum()), rel=1e-5)
    assert ev.intensity.attrs["units"] == "mm/h" and ev.duration.attrs["units"] == "d"
    assert 0 < float(ev.duration) < 3


def test_rainfall_multiplier_hand_values():
    assert P0_MM_H == pytest.approx(2.20 * 24**-0.44)
    assert D0_DAYS == 1.0
    assert rainfall_multiplier(P0_MM_H, 1.0) == pytest.approx(1.0, rel=1e-6)
    # (2/1)^1.2 * (3/2)^0.8
    assert rainfall_multiplier(2.0, 3.0, P0=1.0, D0=2.0) == pytest.approx(2**1.2 * 1.5**0.8, rel=1e-6)
    assert rainfall_multiplier(100.0, 10.0) == pytest.approx(5.0)  # capped
    assert rainfall_multiplier(100.0, 10.0, cap=None) > 5.0
    assert rainfall_multiplier(0.0, 2.0) == 0.0
    arr = rainfall_multiplier(xr.DataArray([0.5, 1.0]), xr.DataArray([1.0, 2.0]), P0=1.0)
    np.testing.assert_allclose(arr.values, [0.5**1.2, 2**0.8], rtol=1e-6)
    assert arr.dtype == np.float32 and arr.attrs["units"] == "1"
    assert isinstance(rainfall_multiplier(1.0, 1.0), np.float32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"P0": 0.0}, "P0"),
        ({"P0": -1.0}, "P0"),
        ({"D0": 0.0}, "D0"),
        ({"P": -1.0}, "negative"),
        ({"D": -0.5}, "negative"),
    ],
)
def test_rainfall_multiplier_rejects_bad_values(kwargs, match):
    args = {"P": 1.0, "D": 1.0, **kwargs}
    with pytest.raises(RainfallError, match=match):
        rainfall_multiplier(**args)


def test_explicit_event():
    ev = explicit_event(3.0, 2.0)
    assert float(ev.intensity) == 3.0 and float(ev.duration) == 2.0
    with pytest.raises(RainfallError, match="rain-intensity"):
        explicit_event(-1.0, 2.0)


def test_bad_window_and_bbox(store):
    src = LocalZarrSource(store)
    with pytest.raises(RainfallError, match="not before"):
        src.read(BBOX, END, START)
    with pytest.raises(RainfallError, match="outside"):
        src.read((100.0, 10.0, 101.0, 11.0), START, END)


def test_a_store_without_units_is_refused_not_guessed(tmp_path, storm):  # type: ignore[no-untyped-def]
    unitless = storm.copy()
    for name in unitless.data_vars:
        unitless[name].attrs = {k: v for k, v in unitless[name].attrs.items() if k.lower() != "units"}
    path = write_precipitation_zarr(unitless, tmp_path / "unitless.zarr")
    with pytest.raises(RainfallError, match="no units attribute") as err:
        rain_event(LocalZarrSource(path), BBOX, START, END).compute()
    assert "Fix:" in str(err.value)
