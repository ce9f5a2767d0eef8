"""Current observed IMERG sources (pipeline.rain.imerg) against the real files in
``../shared/fixtures/rainfall/``: the V07 HDF5 cut, the legacy Early-Run RT-H5 granule and the
recorded CMR replies. HTTP is faked by a requests transport adapter (no network); the daily
GIS GeoTIFF is made here because no real one exists in any reachable repository."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import h5py
import numpy as np
import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from pipeline.core.errors import AccountRequiredError, RainfallError
from pipeline.rain.imerg import (
    CMR_GRANULES_URL,
    EarthdataSession,
    Granule,
    ImergRunSource,
    cmr_granule_search_url,
    parse_cmr_granules,
    read_imerg_gis_daily,
    read_imerg_hdf5,
    search_imerg_granules,
)
from tests.factors_testdata import fixture_path

V07 = ("rainfall", "imerg-v07-hdf5-cut", "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5")
RT = ("rainfall", "imerg-early-v03e-rt-h5", "3B-HHR-E.MS.MRG.3IMERG.20151001-S000000-E002959.0000.V03E.RT-H5")
CMR_JSON = ("rainfall", "imerg-cmr-earthaccess", "GPM_3IMERGHH.json")
CMR_UMM = ("rainfall", "imerg-cmr-earthaccess", "GPM_3IMERGHH_umm.json")
CMR_NAME = "3B-HHR.MS.MRG.3IMERG.20190220-S000000-E002959.0000.V06B.HDF5"
CMR_URL = "https://data.gesdisc.earthdata.nasa.gov/data/GPM_L3/GPM_3IMERGHH.06/2019/051/" + CMR_NAME
CRED_VARS = ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD")

#: A bbox around the RT-H5 granule's wettest cell (57.21 mm/hr at 82.75°W 36.55°N, SOURCE.md).
STORM_BBOX = (-82.98, 36.42, -82.52, 36.68)


# --------------------------------------------------------------------------- HDF5 reader


def test_v07_cut_units_shape_time_fill_and_orientation():
    da = read_imerg_hdf5(fixture_path(*V07))
    assert da.dims == ("time", "lat", "lon") and da.shape == (1, 10, 10)
    assert da.attrs["units"] == "mm/h" and da.attrs["step_minutes"] == 30.0 and da.dtype == np.float32
    # 643852800 s since 1980-01-06 with calendar="julian" is 2000-06-01 00:00 (file name, time_bnds).
    assert da["time"].values[0] == np.datetime64("2000-06-01T00:00:00", "ns")
    assert da["time"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_allclose(da["lon"].values, -179.95 + 0.1 * np.arange(10), atol=1e-4)
    np.testing.assert_allclose(da["lat"].values, -89.95 + 0.1 * np.arange(10), atol=1e-4)
    # SOURCE.md: 70 cells 0.0, 30 cells fill. In the file (time, lon, lat) the fill is the three
    # southernmost latitudes at every longitude, so here the first three *rows* are NaN.
    v = da.values[0]
    assert np.isnan(v[:3, :]).all() and (v[3:, :] == 0).all()
    assert int(np.isnan(v).sum()) == 30


def test_v07_bbox_subset_picks_cells_whose_extent_intersects():
    da = read_imerg_hdf5(fixture_path(*V07), (-179.78, -89.68, -179.52, -89.32))
    np.testing.assert_allclose(da["lon"].values, [-179.75, -179.65, -179.55], atol=1e-4)
    np.testing.assert_allclose(da["lat"].values, [-89.65, -89.55, -89.45, -89.35], atol=1e-4)
    assert da.shape == (1, 4, 3) and (da.values == 0).all()


def test_legacy_early_rt_h5_values_and_lon_major_orientation():
    da = read_imerg_hdf5(fixture_path(*RT), STORM_BBOX)
    assert da.dims == ("time", "lat", "lon") and da.shape == (1, 3, 5)
    assert da.attrs["variable"] == "precipitationCal"
    # No time variable in V03E: the FileHeader's StartGranuleDateTime is used.
    assert da["time"].values[0] == np.datetime64("2015-10-01T00:00:00", "ns")
    # Hand-checked with h5py: precipitationCal[lon=972, lat=1265] = 57.20672 at (-82.75, 36.55);
    # [971, 1265] (one cell west, -82.85) = 5.8283606; [972, 1264] (one cell south, 36.45) = 22.127968.
    # Swapping lon and lat would exchange the two neighbours.
    assert float(da.sel(lat=36.55, lon=-82.75, method="nearest")[0]) == pytest.approx(57.20672, abs=1e-4)
    assert float(da.sel(lat=36.55, lon=-82.85, method="nearest")[0]) == pytest.approx(5.8283606, abs=1e-4)
    assert float(da.sel(lat=36.45, lon=-82.75, method="nearest")[0]) == pytest.approx(22.127968, abs=1e-4)
    assert float(da[0, 1, 2]) == pytest.approx(57.20672, abs=1e-4)  # (lat 36.55, lon -82.75) by position


def test_legacy_early_rt_h5_global_statistics_match_source_md():
    da = read_imerg_hdf5(fixture_path(*RT))
    assert da.shape == (1, 1800, 3600)
    v = da.values[0]
    polar = np.abs(da["lat"].values) > 60
    assert np.isnan(v[polar, :]).all() and int(np.isnan(v).sum()) == 2_160_000  # ±60° coverage
    assert int((v > 0).sum()) == 260_451
    assert float(np.nanmax(v)) == pytest.approx(57.21, abs=0.01)
    assert float(np.nanmean(v)) == pytest.approx(0.142, abs=0.001)


def _tiny_granule(path: Path, units: str | None = "mm/hr", calendar: str = "julian") -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("Grid")
        g["lon"] = np.array([10.05, 10.15], np.float32)
        g["lat"] = np.array([45.05, 45.15, 45.25], np.float32)
        t = g.create_dataset("time", data=np.array([1400000000], np.int32))
        t.attrs["units"] = b"seconds since 1980-01-06 00:00:00 UTC"
        t.attrs["calendar"] = calendar.encode()
        p = g.create_dataset("precipitation", data=np.full((1, 2, 3), 1.5, np.float32))
        p.attrs["DimensionNames"] = b"time,lon,lat"
        p.attrs["_FillValue"] = np.float32(-9999.9)
        if units is not None:
            p.attrs["Units"] = units.encode()
    return path


def test_julian_calendar_and_units_attribute_spelled_Units(tmp_path):
    da = read_imerg_hdf5(_tiny_granule(tmp_path / "g.HDF5", units="mm/hr"))
    # 1.4e9 s after 1980-01-06 (same label arithmetic in the Julian and Gregorian calendars
    # between 1901 and 2099).
    assert da["time"].values[0] == np.datetime64("1980-01-06") + np.timedelta64(1_400_000_000, "s")
    assert (da.values == 1.5).all()


@pytest.mark.parametrize("units", ["kg m-2", "mm", "K", None])
def test_non_rate_units_refused_in_one_line(tmp_path, units):
    with pytest.raises(RainfallError, match="units") as e:
        read_imerg_hdf5(_tiny_granule(tmp_path / "g.HDF5", units=units))
    assert "\n" not in str(e.value)


def test_unknown_calendar_refused(tmp_path):
    with pytest.raises(RainfallError, match="calendar"):
        read_imerg_hdf5(_tiny_granule(tmp_path / "g.HDF5", calendar="360_day"))


def test_not_an_imerg_file_refused(tmp_path):
    p = tmp_path / "x.HDF5"
    p.write_text("<html>Earthdata Login</html>")
    with pytest.raises(RainfallError, match="HDF5"):
        read_imerg_hdf5(p)


# --------------------------------------------------------------------------- CMR


def test_cmr_search_url_names_collection_version_time_and_bbox():
    early = cmr_granule_search_url("early", STORM_BBOX, "2025-01-01", "2025-01-02T06:00")
    u = urlparse(early)
    assert f"{u.scheme}://{u.netloc}{u.path}" == CMR_GRANULES_URL + ".umm_json"
    q = parse_qs(u.query)
    assert q["short_name"] == ["GPM_3IMERGHHE"] and q["version"] == ["07"]
    assert q["temporal"] == ["2025-01-01T00:00:00Z,2025-01-02T06:00:00Z"]
    assert q["bounding_box"] == ["-82.98,36.42,-82.52,36.68"]
    assert int(q["page_size"][0]) > 0
    late = parse_qs(urlparse(cmr_granule_search_url("late", (0, 0, 1, 1), "2025-01-01", "2025-01-02", fmt="json")).query)
    assert late["short_name"] == ["GPM_3IMERGHHL"]
    assert urlparse(cmr_granule_search_url("late", (0, 0, 1, 1), "2025-01-01", "2025-01-02", fmt="json")).path.endswith(
        "/granules.json")


@pytest.mark.parametrize("parts", [CMR_JSON, CMR_UMM])
def test_cmr_replies_parse_to_the_https_data_link(parts):
    doc = json.loads(fixture_path(*parts).read_text())
    (g,) = parse_cmr_granules(doc)
    assert isinstance(g, Granule)
    assert g.concept_id == "G1618495041-GES_DISC" and g.name == CMR_NAME
    assert g.start == np.datetime64("2019-02-20T00:00:00") and g.end == np.datetime64("2019-02-20T00:29:59.999")
    assert g.url == CMR_URL  # not s3://, not OPeNDAP, not an inherited collection link
    assert g.size_mb == pytest.approx(10.07326889038086)


def test_cmr_granule_without_https_data_link_refused():
    doc = json.loads(fixture_path(*CMR_UMM).read_text())
    doc["items"][0]["umm"]["RelatedUrls"] = [u for u in doc["items"][0]["umm"]["RelatedUrls"] if u["Type"] != "GET DATA"]
    with pytest.raises(RainfallError, match="https"):
        parse_cmr_granules(doc)


# --------------------------------------------------------------------------- fake HTTP


class FakeHTTP(HTTPAdapter):
    """A requests transport that answers from ``app(request) -> (status, headers, body)``."""

    def __init__(self, app):
        super().__init__()
        self.app = app
        self.seen: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):  # type: ignore[override]
        self.seen.append(request)
        status, headers, body = self.app(request)
        raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, status=status, preload_content=False,
                                   reason={200: "OK", 302: "Found", 401: "Unauthorized"}.get(status, "Error"))
        return self.build_response(request, raw)


def _factory(adapter):
    def make():
        s = EarthdataSession()
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        return s
    return make


def _cmr_pages(doc: dict, n: int) -> list[dict]:
    """Split a recorded UMM-G reply into ``n`` pages of one granule each (times shifted by 30 min)."""
    pages = []
    for k in range(n):
        d = copy.deepcopy(doc)
        d["hits"] = n
        rng = d["items"][0]["umm"]["TemporalExtent"]["RangeDateTime"]
        t0 = np.datetime64("2019-02-20T00:00") + np.timedelta64(30 * k, "m")
        rng["BeginningDateTime"] = f"{t0}:00.000Z"
        rng["EndingDateTime"] = f"{t0 + np.timedelta64(29, 'm')}:59.999Z"
        pages.append(d)
    return pages


def test_cmr_search_pages_with_search_after_and_caps(shared_fixtures):
    doc = json.loads(fixture_path(*CMR_UMM).read_text())
    pages = _cmr_pages(doc, 3)

    def app(req):
        k = int(req.headers.get("CMR-Search-After", "0"))
        headers = {"Content-Type": "application/vnd.nasa.cmr.umm_results+json", "CMR-Hits": "3"}
        if k + 1 < len(pages):
            headers["CMR-Search-After"] = str(k + 1)
        return 200, headers, json.dumps(pages[k]).encode()

    fake = FakeHTTP(app)
    with _factory(fake)() as s:
        got = search_imerg_granules("early", (0, 0, 1, 1), "2019-02-20", "2019-02-21", session=s, page_size=1)
    assert [str(g.start) for g in got] == ["2019-02-20T00:00:00.000", "2019-02-20T00:30:00.000", "2019-02-20T01:00:00.000"]
    assert [r.headers.get("CMR-Search-After") for r in fake.seen] == [None, "1", "2"]
    assert all("Authorization" not in r.headers for r in fake.seen)  # CMR search is public: no credentials
    with _factory(FakeHTTP(app))() as s, pytest.raises(RainfallError, match="more than 2"):
        search_imerg_granules("early", (0, 0, 1, 1), "2019-02-20", "2019-02-21", session=s, page_size=1, max_pages=2)


# --------------------------------------------------------------------------- ImergRunSource


EARLY_NAME = RT[-1]
EARLY_URL = "https://data.gesdisc.earthdata.nasa.gov/data/GPM_L3/GPM_3IMERGHHE.07/2015/274/" + EARLY_NAME


def _early_reply() -> dict:
    """The recorded UMM-G reply, re-pointed at the real Early-Run granule we have (its name,
    time and URL; the schema and every other field are the recording's)."""
    doc = json.loads(fixture_path(*CMR_UMM).read_text())
    umm = doc["items"][0]["umm"]
    for u in umm["RelatedUrls"]:
        u["URL"] = u["URL"].replace("GPM_3IMERGHH.06/2019/051/" + CMR_NAME, "GPM_3IMERGHHE.07/2015/274/" + EARLY_NAME)
    umm["RelatedUrls"][0]["URL"] = EARLY_URL
    umm["TemporalExtent"]["RangeDateTime"] = {"BeginningDateTime": "2015-10-01T00:00:00.000Z",
                                              "EndingDateTime": "2015-10-01T00:29:59.999Z"}
    umm["DataGranule"]["Identifiers"][0]["Identifier"] = EARLY_NAME
    umm["CollectionReference"] = {"ShortName": "GPM_3IMERGHHE", "Version": "07"}
    return doc


class GesDisc:
    """CMR plus a GES DISC-like data host: bearer tokens are accepted directly; Basic
    credentials go through the URS OAuth redirect (data host → URS → data host + cookie)."""

    def __init__(self, granule: bytes, token: str = "tok", user: str = "alice", password: str = "pw", echo_auth=False):
        self.granule, self.token, self.basic = granule, token, base64.b64encode(f"{user}:{password}".encode()).decode()
        self.echo_auth = echo_auth
        self.reply = _early_reply()
        self.logged_in = False  # the server side of GES DISC's session cookie after the URS round trip

    def __call__(self, req):
        u = urlparse(req.url)
        auth = req.headers.get("Authorization", "")
        if u.netloc == "cmr.earthdata.nasa.gov":
            return 200, {"Content-Type": "application/json", "CMR-Hits": "1"}, json.dumps(self.reply).encode()
        if u.netloc == "urs.earthdata.nasa.gov":
            if auth == f"Basic {self.basic}":
                return 302, {"Location": "https://data.gesdisc.earthdata.nasa.gov/login?code=abc"}, b""
            return 401, {"Content-Type": "text/html"}, b"<html>Earthdata Login</html>"
        if u.netloc == "data.gesdisc.earthdata.nasa.gov":
            if u.path == "/login":
                self.logged_in = parse_qs(u.query).get("code") == ["abc"]
                return 302, {"Location": EARLY_URL}, b""
            if u.path != urlparse(EARLY_URL).path:
                return 404, {}, b"not found"
            if self.echo_auth:  # a server whose error page echoes what it was sent
                return 500, {"Content-Type": "text/plain"}, f"bad request {req.url} {auth}".encode()
            if auth == f"Bearer {self.token}" or self.logged_in:
                return 200, {"Content-Type": "application/x-hdf5"}, self.granule
            return 302, {"Location": "https://urs.earthdata.nasa.gov/oauth/authorize?client_id=x&response_type=code"}, b""
        return 404, {}, b""


@pytest.fixture
def no_creds(monkeypatch):
    for v in CRED_VARS:
        monkeypatch.delenv(v, raising=False)


def _source(tmp_path, fake, run="early", now="2015-10-02T00:00"):
    return ImergRunSource(run=run, cache_dir=tmp_path / "cache", session_factory=_factory(fake),
                          now=lambda: np.datetime64(now))


def test_early_source_downloads_with_token_and_reads_the_granule(tmp_path, monkeypatch, no_creds):
    monkeypatch.setenv("EARTHDATA_TOKEN", "tok")
    server = GesDisc(fixture_path(*RT).read_bytes(), token="tok")
    fake = FakeHTTP(server)
    src = _source(tmp_path, fake)
    da = src.read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert da.dims == ("time", "lat", "lon") and da.shape == (1, 3, 5) and da.attrs["units"] == "mm/h"
    assert da["time"].values[0] == np.datetime64("2015-10-01T00:00", "ns")
    assert float(da.sel(lat=36.55, lon=-82.75, method="nearest")[0]) == pytest.approx(57.20672, abs=1e-4)
    cmr, data = fake.seen
    q = parse_qs(urlparse(cmr.url).query)
    assert q["short_name"] == ["GPM_3IMERGHHE"] and q["bounding_box"] == ["-82.98,36.42,-82.52,36.68"]
    assert "Authorization" not in cmr.headers and data.headers["Authorization"] == "Bearer tok"
    cached = list((tmp_path / "cache").rglob("*"))
    assert [p.name for p in cached if p.is_file()] == [EARLY_NAME]  # atomic: no .part left behind
    # A second read is served from the cache (CMR is asked again, the granule is not downloaded).
    src.read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert [urlparse(r.url).netloc for r in fake.seen[2:]] == ["cmr.earthdata.nasa.gov"]
    # and the events code consumes it like any PrecipitationSource
    from pipeline.rain.events import rain_event
    from pipeline.rain.sources import PrecipitationSource
    assert isinstance(src, PrecipitationSource)
    ev = rain_event(src, STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert float(ev["intensity"]) > 5


def test_late_source_with_username_password_follows_the_urs_redirect(tmp_path, monkeypatch, no_creds):
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "pw-secret")
    server = GesDisc(fixture_path(*RT).read_bytes(), user="alice", password="pw-secret")
    server.reply["items"][0]["umm"]["CollectionReference"]["ShortName"] = "GPM_3IMERGHHL"
    fake = FakeHTTP(server)
    da = _source(tmp_path, fake, run="late").read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert float(da.max()) == pytest.approx(57.20672, abs=1e-4)
    hosts = [urlparse(r.url).netloc for r in fake.seen]
    assert hosts == ["cmr.earthdata.nasa.gov", "data.gesdisc.earthdata.nasa.gov", "urs.earthdata.nasa.gov",
                     "data.gesdisc.earthdata.nasa.gov", "data.gesdisc.earthdata.nasa.gov"]
    assert parse_qs(urlparse(fake.seen[0].url).query)["short_name"] == ["GPM_3IMERGHHL"]


def test_missing_credentials_refused_before_any_request(tmp_path, no_creds):
    fake = FakeHTTP(GesDisc(b""))
    with pytest.raises(AccountRequiredError, match="EARTHDATA_TOKEN") as e:
        _source(tmp_path, fake).read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert "\n" not in str(e.value)
    assert fake.seen == []


def test_username_without_password_is_missing_credentials(tmp_path, monkeypatch, no_creds):
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    fake = FakeHTTP(GesDisc(b""))
    with pytest.raises(AccountRequiredError, match="EARTHDATA_PASSWORD"):
        _source(tmp_path, fake).read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert fake.seen == []


@pytest.mark.parametrize("mode", ["token-echoed", "token-rejected", "basic-rejected", "basic-echoed"])
def test_credentials_never_in_exceptions_or_logs(tmp_path, monkeypatch, no_creds, caplog, mode):
    secret_token, user, password = "tok-SECRET-7d1f", "alice-SECRET", "pw-SECRET-99"
    if mode.startswith("token"):
        monkeypatch.setenv("EARTHDATA_TOKEN", secret_token)
    else:
        monkeypatch.setenv("EARTHDATA_USERNAME", user)
        monkeypatch.setenv("EARTHDATA_PASSWORD", password)
    server = GesDisc(fixture_path(*RT).read_bytes(), token="other", user="bob", password="x",
                     echo_auth=mode.endswith("echoed"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RainfallError) as e:
        _source(tmp_path, FakeHTTP(server)).read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    texts = [str(e.value), repr(e.value), caplog.text, *(r.getMessage() for r in caplog.records)]
    cause = e.value.__cause__ or e.value.__context__
    texts += [str(cause), repr(cause)] if cause is not None else []
    for t in texts:
        for s in (secret_token, password, basic):
            assert s not in t
    assert "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-written kept


def test_latency_says_the_last_hours_are_not_available_and_uses_what_is(tmp_path, monkeypatch, no_creds, caplog):
    monkeypatch.setenv("EARTHDATA_TOKEN", "tok")
    fake = FakeHTTP(GesDisc(fixture_path(*RT).read_bytes(), token="tok"))
    caplog.set_level(logging.INFO, logger="pipeline.rain.imerg")
    # now = 05:00 → Early data (≈4 h latency) exist up to ≈01:00; the window runs to 05:00.
    da = _source(tmp_path, fake, now="2015-10-01T05:00").read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T05:00")
    assert da.sizes["time"] == 1
    notes = [r.getMessage() for r in caplog.records if "not available yet" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "4 h" in notes[0]
    assert da.attrs["available_until"] == "2015-10-01T01:00:00"
    # Late: ≈14 h; a window entirely newer than now − latency is refused before any request.
    fake2 = FakeHTTP(GesDisc(b"", token="tok"))
    with pytest.raises(RainfallError, match="14 h"):
        _source(tmp_path, fake2, run="late", now="2015-10-01T12:00").read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T06:00")
    assert fake2.seen == []


@pytest.mark.parametrize("bbox", [(10.0, 59.0, 11.0, 61.0), (10.0, -70.0, 11.0, -65.0)])
def test_bbox_outside_60s_60n_refused_before_any_request(tmp_path, monkeypatch, no_creds, bbox):
    monkeypatch.setenv("EARTHDATA_TOKEN", "tok")
    fake = FakeHTTP(GesDisc(b"", token="tok"))
    with pytest.raises(RainfallError, match="60°S") as e:
        _source(tmp_path, fake).read(bbox, "2015-10-01T00:00", "2015-10-01T00:30")
    assert "\n" not in str(e.value) and fake.seen == []


def test_source_states_its_needs():
    early, late = ImergRunSource("early"), ImergRunSource("late")
    assert (early.short_name, early.latency_hours, early.needs_credentials) == ("GPM_3IMERGHHE", 4.0, True)
    assert (late.short_name, late.latency_hours) == ("GPM_3IMERGHHL", 14.0)
    assert early.coverage_lat == (-60.0, 60.0)
    with pytest.raises(RainfallError, match="early.*late"):
        ImergRunSource("final")


def test_html_login_page_instead_of_granule_is_an_error(tmp_path, monkeypatch, no_creds):
    monkeypatch.setenv("EARTHDATA_TOKEN", "tok")
    server = GesDisc(b"<html>Earthdata Login</html>", token="tok")
    with pytest.raises(RainfallError, match="HDF5"):
        _source(tmp_path, FakeHTTP(server)).read(STORM_BBOX, "2015-10-01T00:00", "2015-10-01T00:30")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- registry


def test_rain_source_factory(tmp_path):
    from pipeline.rain.sources import (
        RAIN_SOURCES,
        ImergSource,
        LocalZarrSource,
        precipitation_source,
        rain_source,
    )

    assert {"imerg-early", "imerg-late", "imerg-v06-pc", "local-zarr"} <= set(RAIN_SOURCES)
    e = rain_source("imerg-early", cache_dir=tmp_path)
    assert isinstance(e, ImergRunSource) and e.run == "early" and Path(e.cache_dir) == tmp_path
    assert rain_source("imerg-late").run == "late"
    assert isinstance(rain_source("imerg-v06-pc"), ImergSource)
    assert isinstance(rain_source("local-zarr", path=tmp_path / "x.zarr"), LocalZarrSource)
    with pytest.raises(RainfallError, match="imerg-early"):
        rain_source("gsmap")
    with pytest.raises(RainfallError, match="path"):
        rain_source("local-zarr")
    assert isinstance(precipitation_source(tmp_path / "x.zarr"), LocalZarrSource)  # unchanged
    from pipeline.rain import sources
    assert sources.ImergRunSource is ImergRunSource


# --------------------------------------------------------------------------- GIS daily GeoTIFF


def test_gis_daily_geotiff_to_mm_per_hour(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    # Made here: no real IMERG GIS 1day.tif exists in any repository reachable for fixtures.
    name = "3B-HHR-E.MS.MRG.3IMERG.20240915-S233000-E235959.1410.V07C.1day.tif"
    vals = np.array([[240, 0, 12], [480, 29999, 5]], np.uint16)  # 0.1 mm/day; 29999 = nodata here
    with rasterio.open(tmp_path / name, "w", driver="GTiff", width=3, height=2, count=1, dtype="uint16",
                       crs="EPSG:4326", transform=from_origin(10.0, 46.0, 0.1, 0.1), nodata=29999) as dst:
        dst.write(vals, 1)
    da = read_imerg_gis_daily(tmp_path / name)
    assert da.dims == ("time", "lat", "lon") and da.shape == (1, 2, 3)
    assert da.attrs["units"] == "mm/h" and da.attrs["step_minutes"] == 1440.0
    assert da["time"].values[0] == np.datetime64("2024-09-15T00:00", "ns")  # the day the file closes
    np.testing.assert_allclose(da["lat"].values, [45.85, 45.95], atol=1e-9)  # ascending, north row last
    np.testing.assert_allclose(da["lon"].values, [10.05, 10.15, 10.25], atol=1e-9)
    # 240 × 0.1 mm/day = 24 mm/day = 1 mm/h (top-left pixel, the northern row)
    assert float(da.sel(lat=45.95, lon=10.05, method="nearest")[0]) == pytest.approx(1.0)
    assert float(da.sel(lat=45.85, lon=10.05, method="nearest")[0]) == pytest.approx(2.0)
    assert np.isnan(float(da.sel(lat=45.85, lon=10.15, method="nearest")[0]))
    sub = read_imerg_gis_daily(tmp_path / name, (10.12, 45.82, 10.3, 45.88))
    assert sub.shape == (1, 1, 2) and float(sub[0, 0, 1]) == pytest.approx(0.5 / 24)
