"""Open-Meteo reader and source (pipeline.rain.openmeteo) on the real responses of
../shared/fixtures/rainfall/open-meteo (JSON, two VCR cassettes, FlatBuffers); the source
with requests mocked (no network)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import numpy as np
import pytest
import yaml

from pipeline.core.errors import RainfallError
from pipeline.rain.forecast import (
    FORECAST_SOURCES,
    ForecastEvent,
    ForecastSource,
    forecast_source,
)
from pipeline.rain.openmeteo import (
    OpenMeteoSource,
    read_openmeteo_flatbuffers,
    read_openmeteo_hourly,
    read_openmeteo_json,
)
from tests.factors_testdata import fixture_path

OM = ("rainfall", "open-meteo")
EOS = "eos_forecast_50N10E_2026-03-02_hourly72.json"
VCR1 = "vcr_forecast_weather_code_berlin_2023-11-13.yml"
VCR2 = "vcr_forecast_weather_code_two_models_berlin_2023-11-13.yml"
FB = "openmeteo_forecast_2loc_temperature_2m_168h.fb"


@pytest.fixture
def eos() -> dict:
    return json.loads(fixture_path(*OM, EOS).read_text())


def _cassette_body(name: str) -> dict:
    tape = yaml.safe_load(fixture_path(*OM, name).read_text())
    (interaction,) = tape["http_interactions"]
    assert interaction["response"]["status"]["code"] == 200
    return json.loads(interaction["response"]["body"]["string"])


# ---------------------------------------------------------------- JSON reader


def test_json_reader_real_response_utc_hour_starts(eos):
    da = read_openmeteo_json(fixture_path(*OM, EOS))
    assert da.dims == ("time", "lat", "lon") and da.shape == (72, 1, 1)
    assert da.attrs["units"] == "mm/h" and da.attrs["step_minutes"] == 60.0
    assert float(da.lat[0]) == 50.0 and float(da.lon[0]) == 10.0
    # 2026-03-02T00:00 Europe/Berlin (UTC+1) ends the hour 2026-03-01T22:00..23:00Z
    assert da.time.values[0] == np.datetime64("2026-03-01T22:00", "ns")
    assert da.time.values[-1] == np.datetime64("2026-03-04T21:00", "ns")
    assert np.all(np.diff(da.time.values) == np.timedelta64(1, "h"))
    assert float(np.abs(da).max()) == 0.0 and not np.isnan(da.values).any()
    # dict, text and path give the same array
    assert read_openmeteo_json(eos).equals(da) and read_openmeteo_json(json.dumps(eos)).equals(da)


def test_json_reader_refuses_other_units_in_one_line(eos):
    doc = copy.deepcopy(eos)
    doc["hourly_units"]["precipitation"] = "inch"
    with pytest.raises(RainfallError, match="in 'inch', not mm") as e:
        read_openmeteo_json(doc)
    assert "\n" not in str(e.value)
    # snowfall is cm in this real response and is not a precipitation-amount variable here
    with pytest.raises(RainfallError, match="not an hourly precipitation amount"):
        read_openmeteo_json(eos, variable="snowfall")


def test_json_reader_nulls_and_unixtime(eos):
    doc = copy.deepcopy(eos)
    doc["hourly"]["precipitation"][5] = None
    assert np.isnan(read_openmeteo_json(doc).values[5, 0, 0])
    # timeformat=unixtime: labels are UTC seconds; offset not applied again
    t0 = int(datetime(2026, 3, 1, 23, tzinfo=UTC).timestamp())
    doc["hourly"]["time"] = [t0 + 3600 * k for k in range(72)]
    assert read_openmeteo_json(doc).time.values[0] == np.datetime64("2026-03-01T22:00", "ns")


def test_json_reader_absent_key_lists_what_is_there():
    doc = _cassette_body(VCR1)
    with pytest.raises(RainfallError, match=r"has no 'precipitation'; it holds: weather_code") as e:
        read_openmeteo_json(doc)
    assert "\n" not in str(e.value)


def test_cassette_single_model_weather_code():
    da = read_openmeteo_hourly(_cassette_body(VCR1), "weather_code")
    assert da.shape == (168, 1, 1) and da.attrs["units"] == "wmo code"
    assert da.time.values[0] == np.datetime64("2023-11-13T00:00", "ns")  # GMT, offset 0
    assert {61, 80} <= set(np.unique(da.values).astype(int))


def test_cassette_multi_model_keys():
    doc = _cassette_body(VCR2)
    with pytest.raises(RainfallError, match=r"several models \(best_match, gfs_seamless\); pass model=") as e:
        read_openmeteo_hourly(doc, "weather_code")
    assert "\n" not in str(e.value)
    with pytest.raises(RainfallError, match=r"no 'weather_code_ecmwf_ifs025'.*holds: weather_code_best_match, weather_code_gfs_seamless"):
        read_openmeteo_hourly(doc, "weather_code", model="ecmwf_ifs025")
    gfs = read_openmeteo_hourly(doc, "weather_code", model="gfs_seamless")
    assert gfs.attrs["source_key"] == "weather_code_gfs_seamless"
    np.testing.assert_array_equal(gfs.values[:, 0, 0], doc["hourly"]["weather_code_gfs_seamless"])
    best = read_openmeteo_hourly(doc, "weather_code", model="best_match")
    assert not np.array_equal(best.values, gfs.values)


def test_json_reader_multi_model_precipitation_keys(eos):
    # The real response's precipitation under the multi-model key naming of the cassettes.
    doc = copy.deepcopy(eos)
    zeros = doc["hourly"].pop("precipitation")
    doc["hourly"]["precipitation_ecmwf_ifs025"] = zeros
    doc["hourly"]["precipitation_gfs_seamless"] = [0.5] * 72
    for k in ("precipitation_ecmwf_ifs025", "precipitation_gfs_seamless"):
        doc["hourly_units"][k] = "mm"
    with pytest.raises(RainfallError, match=r"several models \(ecmwf_ifs025, gfs_seamless\)"):
        read_openmeteo_json(doc)
    with pytest.raises(RainfallError, match="no 'precipitation_icon_d2'"):
        read_openmeteo_json(doc, model="icon_d2")
    assert float(read_openmeteo_json(doc, model="ecmwf_ifs025").max()) == 0.0
    assert float(read_openmeteo_json(doc, model="gfs_seamless").mean()) == 0.5
    # precipitation_probability is another variable, not a model
    assert "precipitation_probability" in eos["hourly"]


# ---------------------------------------------------------------- FlatBuffers


def test_flatbuffers_real_response():
    pytest.importorskip("openmeteo_sdk")
    fb = fixture_path(*OM, FB)
    with pytest.raises(RainfallError, match=r"has no hourly 'precipitation'; it holds: temperature_2m") as e:
        read_openmeteo_flatbuffers(fb)
    assert "\n" not in str(e.value)
    t = read_openmeteo_hourly(fb, "temperature_2m")
    assert t.dims == ("time", "location") and t.shape == (168, 2)
    np.testing.assert_allclose(t.lat.values, [52.52, 40.1], atol=1e-4)
    np.testing.assert_allclose(t.values[0], [10.6455, 22.45], atol=1e-3)
    assert t.time.values[0] == np.datetime64("2023-11-02T00:00", "ns") and t.attrs["units"] == "°C"
    with pytest.raises(RainfallError, match="JSON, not FlatBuffers"):
        read_openmeteo_flatbuffers(fixture_path(*OM, EOS).read_bytes())
    with pytest.raises(RainfallError, match="not JSON"):
        read_openmeteo_json(fb.read_bytes())


# ---------------------------------------------------------------- source


class _Resp:
    def __init__(self, doc, status=200):
        self.doc, self.status_code = doc, status

    def json(self):
        return self.doc


class _Session:
    def __init__(self, doc):
        self.doc, self.calls = doc, []

    def get(self, url, params=None, timeout=None):
        self.calls.append((url, dict(params or {}), timeout))
        return _Resp(self.doc)


BBOX = (9.5, 49.5, 10.5, 50.5)  # centre 10E 50N, the fixture's point
ISSUED = datetime(2026, 3, 1, 22, 40, tzinfo=UTC)  # hour 2026-03-01T22Z = the first of the fixture


def test_source_all_zero_real_response(eos):
    sess = _Session(eos)
    src = OpenMeteoSource(session=sess)
    assert isinstance(src, ForecastSource)
    ev = src.forecast(BBOX, ISSUED, 72)
    assert isinstance(ev, ForecastEvent)
    assert ev.intensity_mm_h == 0.0 and ev.duration_days == 0.0 and ev.total_mm == 0.0
    assert ev.lead_start == datetime(2026, 3, 1, 22, tzinfo=UTC) and ev.lead_end == datetime(2026, 3, 4, 22, tzinfo=UTC)
    assert len(ev.windows) == 72 and any("in the past" in n for n in ev.notes)
    ((url, params, timeout),) = sess.calls
    assert url == "https://api.open-meteo.com/v1/forecast" and timeout == 30.0
    assert params["latitude"] == "50.0000" and params["longitude"] == "10.0000"
    assert params["hourly"] == "precipitation" and params["timezone"] == "GMT"
    assert params["start_hour"] == "2026-03-01T23:00" and params["end_hour"] == "2026-03-04T22:00"


def test_source_hand_computed_p_and_d(eos, monkeypatch):
    doc = copy.deepcopy(eos)
    p = doc["hourly"]["precipitation"]
    # labels (local, UTC+1) 2026-03-02T06:00..T09:00 → UTC hour starts 04..07Z = hours 6..9 of the lead window
    p[6], p[7], p[8], p[9] = 2.0, 4.5, 0.1, 0.05
    p[30] = 1.5  # hour 30
    p[71] = 9.9  # last hour of the fixture, outside a 48-h window
    import requests

    seen = []

    def fake_get(url, params=None, timeout=None):
        seen.append(timeout)
        return _Resp(doc)

    monkeypatch.setattr(requests, "get", fake_get)
    ev = OpenMeteoSource(timeout_s=7.0).forecast(BBOX, ISSUED, 48)
    total = 2.0 + 4.5 + 0.1 + 0.05 + 1.5
    assert ev.total_mm == pytest.approx(total, rel=1e-5)
    assert ev.intensity_mm_h == pytest.approx(total / 48, rel=1e-5)
    # wet hours (>= 0.1 mm/h): 2.0, 4.5, 0.1, 1.5 → 4 h = 1/6 d
    assert ev.duration_days == pytest.approx(4 / 24, rel=1e-5)
    assert ev.windows[7] == pytest.approx((7.0, 8.0, 4.5))
    assert seen == [7.0]
    ev72 = OpenMeteoSource(timeout_s=7.0).forecast(BBOX, ISSUED, 72)
    assert ev72.total_mm == pytest.approx(total + 9.9, rel=1e-5) and ev72.duration_days == pytest.approx(5 / 24, rel=1e-5)


def test_source_refuses_uncovered_hours(eos):
    with pytest.raises(RainfallError, match="no precipitation value for 1 of the 73 hours") as e:
        OpenMeteoSource(session=_Session(eos)).forecast(BBOX, ISSUED, 73)
    assert "\n" not in str(e.value)
    with pytest.raises(RainfallError, match="lead_hours"):
        OpenMeteoSource(session=_Session(eos)).forecast(BBOX, ISSUED, 0)


def test_source_http_error_in_one_line():
    class S:
        def get(self, url, params=None, timeout=None):
            return _Resp({"error": True, "reason": "Latitude must be in range"}, status=400)

    with pytest.raises(RainfallError, match="HTTP 400 .*Latitude must be in range"):
        OpenMeteoSource(session=S()).forecast(BBOX, ISSUED, 6)


def test_forecast_source_factory_knows_open_meteo():
    assert "open-meteo" in FORECAST_SOURCES
    assert isinstance(forecast_source("open-meteo"), OpenMeteoSource)
