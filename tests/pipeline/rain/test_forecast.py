"""Forecast rainfall (pipeline.rain.forecast): GRIB2 reader on the real files of
../shared/fixtures/rainfall, accumulations → P and D, index parsers, and the two
keyless sources against a local HTTP server (no real network)."""

from __future__ import annotations

import importlib.util

import http.server
import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import xarray as xr

from pipeline.core.errors import RainfallError
from pipeline.rain.events import rain_event
from pipeline.rain.forecast import (
    ByteRange,
    EcmwfOpenDataSource,
    ForecastEvent,
    ForecastSource,
    GfsSource,
    PrecipMessage,
    accumulation_windows,
    ecmwf_index_ranges,
    forecast_event,
    hourly_rates,
    idx_ranges,
    latest_run,
    parse_ecmwf_index,
    parse_wgrib2_idx,
    in_grib_process,
    read_grib_precipitation,
)
from tests.factors_testdata import fixture_path

if importlib.util.find_spec("eccodes") is None:  # never imported here: see read_grib_precipitation
    pytest.skip("eccodes is not installed", allow_module_level=True)

R = "rainfall"
ECMWF, GFS, HRRR, RDPA = "ecmwf-opendata", "noaa-gfs-gefs", "noaa-hrrr", "cmc-rdpa"
GFS06 = "gfs.20200325.t18z.pgrb2.0p25.f006.grib2"
GFS18 = "gfs.20200325.t18z.pgrb2.0p25.f018.grib2"
EUROPE = (5.0, 43.0, 10.0, 47.0)


def _nearest(path, number: int, lat: float, lon: float) -> float:
    """An independent decode: ecCodes' own nearest-point lookup in message ``number`` (in
    the GRIB worker process: ecCodes' bundled PROJ must not load into the test process)."""
    return in_grib_process(_nearest_here, str(path), number, lat, lon)


def _nearest_here(path, number: int, lat: float, lon: float) -> float:
    import eccodes

    with open(path, "rb") as fh:
        for _ in range(number):
            h = eccodes.codes_grib_new_from_file(fh)
            if _ < number - 1:
                eccodes.codes_release(h)
        try:
            return float(eccodes.codes_grib_find_nearest(h, lat, lon)[0]["value"])
        finally:
            eccodes.codes_release(h)


@pytest.fixture(scope="module")
def gfs_run():
    f6, f18 = fixture_path(R, GFS, GFS06), fixture_path(R, GFS, GFS18)
    return read_grib_precipitation(f6, EUROPE) + read_grib_precipitation(f18, EUROPE), f6, f18


# --------------------------------------------------------------------------- reader


def test_ecmwf_tprate_is_a_rate_in_kg_m2_s_converted_to_mm_h():
    f = fixture_path(R, ECMWF, "ifs-0p25-oper-20250912T12-step0-tprate.grib2")
    (m,) = read_grib_precipitation(f)
    assert (m.short_name, m.units, m.kind, m.window) == ("tprate", "kg m**-2 s**-1", "rate", (0.0, 0.0))
    assert m.run == datetime(2025, 9, 12, 12, tzinfo=UTC)
    assert m.field.attrs["units"] == "mm/h" and m.field.shape == (721, 1440)
    # the grid starts at 180°E: longitudes are wrapped to -180..179.75 and sorted, lat ascending
    assert m.field.lon.values[0] == -180.0 and m.field.lon.values[-1] == 179.75
    assert m.field.lat.values[0] == -90.0 and m.field.lat.values[-1] == 90.0
    # SOURCE.md: max 9.82e-3 kg m-2 s-1 (35.4 mm/h), mean 3.13e-5 (0.11 mm/h)
    assert float(m.field.max()) == pytest.approx(35.35, abs=0.01)
    assert float(m.field.mean()) == pytest.approx(3.13e-5 * 3600, rel=0.01)
    i = np.unravel_index(int(np.argmax(m.field.values)), m.field.shape)
    lat, lon = float(m.field.lat[i[0]]), float(m.field.lon[i[1]])
    assert float(m.field.values[i]) == pytest.approx(_nearest(f, 1, lat, lon) * 3600, rel=1e-5)


def test_ecmwf_tp_is_in_metres_and_step0_is_zero():
    f = fixture_path(R, ECMWF, "ifs-0p4beta-oper-20240101T00-step0-tp.grib2")
    (m,) = read_grib_precipitation(f, EUROPE)
    assert (m.short_name, m.units, m.kind, m.window) == ("tp", "m", "accumulation", (0.0, 0.0))
    assert m.field.attrs["units"] == "mm" and float(np.abs(m.field).max()) == 0.0
    assert np.allclose(np.diff(m.field.lon.values), 0.4)


def test_gfs_f006_and_f018_windows_units_and_values():
    f6, f18 = fixture_path(R, GFS, GFS06), fixture_path(R, GFS, GFS18)
    m6 = read_grib_precipitation(f6)
    m18 = read_grib_precipitation(f18)
    assert [m.window for m in m6] == [(0.0, 6.0), (0.0, 6.0)]  # bucket and run total, identical at f006
    assert [m.window for m in m18] == [(12.0, 18.0), (0.0, 18.0)]  # both windows, not only the first
    assert {m.units for m in m6 + m18} == {"kg m**-2"}
    assert [round(float(m.field.max()), 2) for m in m18] == [107.94, 240.12]
    assert float(m18[1].field.mean()) == pytest.approx(1.900, abs=1e-3)
    # a grid point checked against ecCodes' own nearest-point decode (0..360 lon in the file)
    lat, lon = 45.0, 7.5
    for path, k, m in ((f18, 1, m18[0]), (f18, 2, m18[1]), (f6, 1, m6[0])):
        got = float(m.field.sel(lat=lat, lon=lon))
        assert got == pytest.approx(_nearest(path, k, lat, lon), abs=1e-4)


def test_gfs_subregion_hand_checked_values():
    f = fixture_path(R, GFS, "gfs.20200330.t18z.pgrb2.0p25.f012.grib2")
    ms = read_grib_precipitation(f)  # message 1 (TMP) is skipped
    assert [(m.number, m.window) for m in ms] == [(2, (6.0, 12.0)), (3, (0.0, 12.0))]
    b, a = ms
    # decoded by hand from the file (j scans positively: first row is 21.25°S)
    assert b.field.lat.values.tolist() == [-21.25, -21.0] and b.field.lon.values.tolist() == [55.0, 55.25, 55.5]
    np.testing.assert_allclose(b.field.values, [[0.3125, 0.5, 1.25], [0.3125, 0.375, 1.3125]])
    np.testing.assert_allclose(a.field.values, [[2.0625, 3.375, 5.5], [2.3125, 1.0625, 3.3125]])
    w = accumulation_windows(ms)
    assert list(zip(w.start_h.values, w.end_h.values)) == [(0, 6), (6, 12)]
    np.testing.assert_allclose(w.values[0], a.field.values - b.field.values)


def test_gefs_member_pdt_4_11_window():
    f = fixture_path(R, GFS, "gep08.t00z.pgrb2a.0p50.f012.grib2")
    (m,) = read_grib_precipitation(f)
    assert m.window == (6.0, 12.0) and m.units == "kg m**-2" and m.field.shape == (21, 29)
    assert float(m.field.max()) == pytest.approx(4.1, abs=1e-3)
    assert float(m.field.sel(lat=50.0, lon=0.0)) == pytest.approx(_nearest(f, 2, 50.0, 0.0), abs=1e-4)


def test_hrrr_both_windows_on_the_lambert_grid():
    f = fixture_path(R, HRRR, "subset_20201214_hrrr.t00z.wrfsfcf12.grib2")
    ms = read_grib_precipitation(f)
    assert [m.window for m in ms] == [(0.0, 12.0), (11.0, 12.0)]
    assert {m.grid_type for m in ms} == {"lambert"} and ms[0].field.dims == ("y", "x")
    assert ms[0].field.lat.ndim == 2 and ms[0].field.shape == (1059, 1799)
    assert float(ms[0].field.max()) == pytest.approx(135.36, abs=0.01)
    assert float(ms[1].field.max()) == pytest.approx(42.12, abs=0.01)
    # crop to a box: the point nearest to (40N, 95W) matches ecCodes' nearest-point value
    sub = read_grib_precipitation(f, (-96.0, 39.0, -94.0, 41.0))
    for k, m in enumerate(sub, 1):
        d = (m.field.lat - 40.0) ** 2 + ((m.field.lon + 95.0) * np.cos(np.deg2rad(40.0))) ** 2
        j, i = np.unravel_index(int(np.argmin(d.values)), d.shape)
        assert float(m.field.values[j, i]) == pytest.approx(_nearest(f, k, 40.0, -95.0), abs=1e-3)
    assert sub[0].field.size < 1059 * 1799 / 50


def test_rdpa_negative_time_range_and_local_parameter():
    f = fixture_path(R, RDPA, "CMC_RDPA_APCP-024-0100cutoff_SFC_0_ps10km_2023121806_000.grib2")
    ms = read_grib_precipitation(f, (-80.0, 43.0, -70.0, 48.0))
    assert len(ms) == 1  # 0/1/193 of centre cwao is not ECMWF's tp
    (m,) = ms
    assert m.window == (-24.0, 0.0) and m.run == datetime(2023, 12, 18, 6, tzinfo=UTC)
    assert m.units == "kg m**-2" and m.grid_type == "polar_stereographic"
    full = read_grib_precipitation(f)[0].field
    assert float(full.max()) == pytest.approx(158.53, abs=0.01) and int(full.isnull().sum()) == 20283


def test_reader_refuses_a_file_without_precipitation(tmp_path):
    p = tmp_path / "x.grib2"
    p.write_bytes(b"<html>not found</html>")
    with pytest.raises(RainfallError, match="no GRIB message"):
        read_grib_precipitation(p)
    with pytest.raises(RainfallError, match="outside the grid"):
        read_grib_precipitation(fixture_path(R, GFS, "gfs.20200330.t18z.pgrb2.0p25.f012.grib2"), EUROPE)


# --------------------------------------------------------------------------- accumulations


def test_gfs_f006_bucket_and_f018_run_total_give_consistent_buckets(gfs_run):
    ms, _, _ = gfs_run
    w = accumulation_windows(ms)
    assert list(zip(w.start_h.values, w.end_h.values)) == [(0, 6), (6, 12), (12, 18)]
    by = {m.window: m.field.values for m in ms}
    # buckets add to the run total, up to GFS's packing step (1/16 mm): the 6-12 h difference of
    # packed run totals dips to -0.0625 mm in a few cells, which is clipped to 0
    np.testing.assert_allclose(w.values.sum(axis=0), by[(0.0, 18.0)], atol=0.0625 + 1e-4)
    np.testing.assert_allclose(w.values[2], by[(12.0, 18.0)], atol=1e-4)
    np.testing.assert_allclose(w.values[0], by[(0.0, 6.0)], atol=1e-4)
    mid = by[(0.0, 18.0)] - by[(12.0, 18.0)] - by[(0.0, 6.0)]  # 6-12 h from differences only
    assert mid.min() > -0.5
    np.testing.assert_allclose(w.values[1], np.clip(mid, 0, None), atol=1e-4)
    ev = forecast_event(ms, EUROPE, (0, 18), source="gfs")
    assert ev.total_mm == pytest.approx(sum(x[2] for x in ev.windows), rel=1e-4)
    assert ev.intensity_mm_h == pytest.approx(ev.total_mm / 18, rel=1e-5)
    assert 0 < ev.duration_days <= 18 / 24


def _msg(run, s, e, values, number=1, units="kg m**-2"):
    da = xr.DataArray(np.asarray(values, np.float32), dims=("lat", "lon"), coords={"lat": [45.0, 45.25], "lon": [7.0]})
    return PrecipMessage(number, "tp", run, float(s), float(e), "accumulation", units, "regular_ll", da)


RUN = datetime(2024, 5, 1, 0, tzinfo=UTC)


def test_synthetic_windows_by_hand():
    # run totals 0-6: 6 mm, 0-12: 6 mm, then a bucket 12-18: 12 mm (second cell: twice as much)
    ms = [_msg(RUN, 0, 6, [[6], [12]]), _msg(RUN, 0, 12, [[6], [12]]), _msg(RUN, 12, 18, [[12], [24]])]
    w = accumulation_windows(ms)
    np.testing.assert_allclose(w.values[:, 0, 0], [6, 0, 12])
    rates = hourly_rates(w, 0, 18)
    assert rates.attrs["step_minutes"] == 60 and rates.sizes["time"] == 18
    np.testing.assert_allclose(rates.values[:, 0, 0], [1] * 6 + [0] * 6 + [2] * 6)  # spread evenly
    assert rates.time.values[0] == np.datetime64("2024-05-01T00:00")
    ev = forecast_event(ms, (6.9, 44.9, 7.1, 45.4), (0, 18), source="synthetic")
    w0, w1 = np.cos(np.deg2rad(45.0)), np.cos(np.deg2rad(45.25))
    p_expected = (1.0 * w0 + 2.0 * w1) / (w0 + w1)  # per cell 18/18 and 36/18 mm/h
    assert ev.intensity_mm_h == pytest.approx(p_expected, rel=1e-5)
    assert ev.duration_days == pytest.approx(0.5)  # 12 wet hours in both cells
    assert ev.wet_intensity_mm_h == pytest.approx(ev.total_mm / 12, rel=1e-5)
    assert [x[:2] for x in ev.windows] == [(0, 6), (6, 12), (12, 18)]
    assert ev.lead_start == RUN and ev.lead_end == RUN + timedelta(hours=18) and ev.run == RUN
    assert ev.multiplier > 0 and "synthetic" in ev.describe()
    # the same P and D as events.rain_event gives for the same hourly series
    class Src:
        def read(self, bbox, start, end):
            return rates
    ref = rain_event(Src(), (6.9, 44.9, 7.1, 45.4), "2024-05-01", "2024-05-02").compute()
    assert float(ref["intensity"]) == pytest.approx(ev.intensity_mm_h, rel=1e-6)
    # a lead window that cuts buckets: hours 3..15 → 3 h at 1, 6 h at 0, 3 h at 2 (first cell)
    part = hourly_rates(w, 3, 15)
    assert part.values[:, 0, 0].sum() == pytest.approx(9.0)


def test_accumulation_errors():
    with pytest.raises(RainfallError, match="cover"):
        hourly_rates(accumulation_windows([_msg(RUN, 0, 6, [[6], [6]])]), 0, 12)
    with pytest.raises(RainfallError, match="several runs"):
        accumulation_windows([_msg(RUN, 0, 6, [[1], [1]]), _msg(RUN + timedelta(hours=6), 0, 12, [[1], [1]])])
    with pytest.raises(RainfallError, match="negative bucket"):
        accumulation_windows([_msg(RUN, 0, 6, [[10], [10]]), _msg(RUN, 0, 12, [[2], [2]])])
    with pytest.raises(RainfallError, match="disagree"):
        accumulation_windows([_msg(RUN, 0, 6, [[1], [1]]), _msg(RUN, 0, 6, [[9], [9]])])
    with pytest.raises(RainfallError, match="zero-length"):
        accumulation_windows([_msg(RUN, 0, 0, [[0], [0]], units="m")])


# --------------------------------------------------------------------------- index files


@pytest.mark.parametrize(
    "name, lines, tp, cp",
    [
        ("ifs-0p4beta-20231201000000-0h-oper-fc.index", 83, (4484236, 224), None),
        ("aifs_single_20250301_00z_0h.index", 106, (64717380, 224), None),
        ("aifs_single_20250301_00z_6h.index", 102, (55640090, 653441), (46051920, 684506)),
    ],
)
def test_ecmwf_index_parser_on_real_files(name, lines, tp, cp):
    entries = parse_ecmwf_index(fixture_path(R, ECMWF, name).read_text())
    assert len(entries) == lines
    ((e, br),) = ecmwf_index_ranges(entries, ("tp",))
    assert (br.offset, br.length) == tp and e["param"] == "tp"
    assert br.header == f"bytes={tp[0]}-{tp[0] + tp[1] - 1}"
    if cp:
        assert [(b.offset, b.length) for _, b in ecmwf_index_ranges(entries, ("cp",))] == [cp]
        assert [b.offset for _, b in ecmwf_index_ranges(entries, ("tp", "cp"))] == sorted([tp[0], cp[0]])


def test_wgrib2_idx_parser_on_real_gfs_and_hrrr_files():
    entries = parse_wgrib2_idx(fixture_path(R, GFS, "gfs.20250801.t00z.pgrb2.0p25.f007.idx").read_text())
    apcp = idx_ranges(entries)
    assert [(e.number, e.offset, e.length, e.window_h) for e in apcp] == [
        (596, 428200066, 428448703 - 428200066, (6.0, 7.0)),
        (597, 428448703, 428853055 - 428448703, (0.0, 7.0)),
    ]
    assert apcp[0].byte_range.header == "bytes=428200066-428448702"
    assert entries[-1].length is None and entries[-1].byte_range.header.endswith("-")
    hrrr = idx_ranges(parse_wgrib2_idx(fixture_path(R, HRRR, "hrrr.20231201.t00z.wrfsfcf00.grib2.idx").read_text()))
    assert [(e.number, e.offset, e.window_h) for e in hrrr] == [(84, 52738581, (0.0, 0.0))]
    with pytest.raises(RainfallError):
        parse_wgrib2_idx("not an idx line")


# --------------------------------------------------------------------------- run selection


def test_latest_run_never_in_the_future_and_waits_for_publication():
    ecmwf, gfs = (0, 12), (0, 6, 12, 18)
    t = datetime(2025, 9, 12, 19, 59, tzinfo=UTC)
    assert latest_run(t, ecmwf, timedelta(hours=8)) == datetime(2025, 9, 12, 0, tzinfo=UTC)
    assert latest_run(t + timedelta(minutes=1), ecmwf, timedelta(hours=8)) == datetime(2025, 9, 12, 12, tzinfo=UTC)
    assert latest_run(datetime(2025, 9, 12, 3, 59), gfs, timedelta(hours=4)) == datetime(2025, 9, 11, 18, tzinfo=UTC)
    for h in range(48):
        now = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=h, minutes=17)
        for cycles in (ecmwf, gfs):
            run = latest_run(now, cycles, timedelta(0))
            assert run <= now and now - run < timedelta(hours=24 // len(cycles))


# --------------------------------------------------------------------------- sources over a local server


class _Server:
    """A local HTTP server over a dict path → bytes, honouring single ``Range: bytes=a-b`` requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _body(self):
                outer.requests.append((self.command, self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                rng = self.headers.get("Range")
                if rng:
                    a, b = rng.removeprefix("bytes=").split("-")
                    a, b = int(a), (int(b) if b else len(data) - 1)
                    part = data[a : b + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                else:
                    part = data
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                return part

            def do_HEAD(self):
                self._body()

            def do_GET(self):
                part = self._body()
                if part is not None:
                    self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def make(files):
        s = _Server(files)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _grib_messages(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        assert data[i : i + 4] == b"GRIB"
        n = int.from_bytes(data[i + 8 : i + 16], "big")
        out.append(data[i : i + n])
        i += n
    return out


def test_gfs_source_fetches_apcp_by_idx_ranges_and_falls_back_one_run(server, caplog):
    f6, f18 = fixture_path(R, GFS, GFS06).read_bytes(), fixture_path(R, GFS, GFS18).read_bytes()
    files = {}
    for step, data in ((6, f6), (18, f18)):
        filler = b"\0" * 1000  # stands for the other variables of a full GFS file
        body = filler + data
        msgs = _grib_messages(data)
        lines, off = [f"1:0:d=2020032518:TMP:2 m above ground:{step} hour fcst:"], len(filler)
        windows = {6: ["0-6", "0-6"], 18: ["12-18", "0-18"]}[step]
        for k, (m, win) in enumerate(zip(msgs, windows), 2):
            lines.append(f"{k}:{off}:d=2020032518:APCP:surface:{win} hour acc fcst:")
            off += len(m)
        path = f"/gfs.20200325/18/atmos/gfs.t18z.pgrb2.0p25.f{step:03d}"
        files[path] = body
        files[path + ".idx"] = ("\n".join(lines) + "\n").encode()
    srv = server(files)

    class TwoFiles(GfsSource):  # the fixture run has f006 and f018 only; f012 follows from them
        def steps_for(self, lead_end_h):
            return [6, 18]

    src = TwoFiles(base=srv.url)
    assert isinstance(src, ForecastSource)
    # 2020-03-26 00Z is the newest run due by 04:30; it is not served → one run back, announced
    with caplog.at_level(logging.WARNING, logger="pipeline.rain.forecast"):
        ev = src.forecast(EUROPE, datetime(2020, 3, 26, 4, 30, tzinfo=UTC), 8)
    assert isinstance(ev, ForecastEvent)
    assert ev.run == datetime(2020, 3, 25, 18, tzinfo=UTC)
    assert ev.lead_window_h == (10.0, 18.0) and ev.lead_start == datetime(2020, 3, 26, 4, tzinfo=UTC)
    assert len(ev.notes) == 1 and "not published" in ev.notes[0] and "2020-03-25 18Z" in ev.notes[0]
    assert sum("not published" in r.message for r in caplog.records) == 1
    m6 = _grib_messages(f6)
    ranges = sorted((p.rsplit(".", 1)[-1], r) for _, p, r in srv.requests if r)
    assert ranges[:2] == [("f006", f"bytes=1000-{1000 + len(m6[0]) - 1}"), ("f006", f"bytes={1000 + len(m6[0])}-")]
    assert len(ranges) == 4  # two APCP messages per file, by byte range
    assert not any(p.endswith("f006") and r is None for _, p, r in srv.requests)  # never the whole file
    # the same numbers as reading the fixtures directly
    direct = read_grib_precipitation(fixture_path(R, GFS, GFS06), EUROPE) + read_grib_precipitation(
        fixture_path(R, GFS, GFS18), EUROPE
    )
    ref = forecast_event(direct, EUROPE, (10, 18), source="gfs")
    assert ev.intensity_mm_h == pytest.approx(ref.intensity_mm_h, rel=1e-6)
    assert ev.duration_days == pytest.approx(ref.duration_days, rel=1e-6)


def _ecmwf_tp(step: int, metres: float) -> bytes:
    """A tp message at ``step`` made from the real 0.4° step-0 tp message (ECMWF keys, CCSDS)."""
    raw = fixture_path(R, ECMWF, "ifs-0p4beta-oper-20240101T00-step0-tp.grib2").read_bytes()
    return in_grib_process(_ecmwf_tp_here, raw, step, metres)


def _ecmwf_tp_here(raw: bytes, step: int, metres: float) -> bytes:
    import eccodes

    h = eccodes.codes_new_from_message(raw)
    try:
        eccodes.codes_set(h, "endStep", step)
        eccodes.codes_set_values(h, np.full(eccodes.codes_get(h, "numberOfValues"), metres))
        return eccodes.codes_get_message(h)
    finally:
        eccodes.codes_release(h)


def test_ecmwf_source_through_the_opendata_client_and_index_ranges(server):
    files = {}
    steps = list(range(3, 28, 3))
    for step in steps:
        tp = _ecmwf_tp(step, 0.001 * min(step, 6))  # 1 mm/h for 6 h, then dry: run totals in metres
        filler = b"\1" * 777
        body = filler + tp
        idx = [
            {"domain": "g", "date": "20240101", "time": "0000", "expver": "0001", "class": "od", "type": "fc",
             "stream": "oper", "step": str(step), "levtype": "sfc", "param": "2t", "_offset": 0, "_length": 777},
            {"domain": "g", "date": "20240101", "time": "0000", "expver": "0001", "class": "od", "type": "fc",
             "stream": "oper", "step": str(step), "levtype": "sfc", "param": "tp", "_offset": 777, "_length": len(tp)},
        ]
        base = f"/20240101/00z/ifs/0p25/oper/20240101000000-{step}h-oper-fc"
        files[base + ".grib2"] = body
        files[base + ".index"] = "\n".join(json.dumps(x) for x in idx).encode()
        assert [b.offset for _, b in ecmwf_index_ranges(parse_ecmwf_index(files[base + ".index"].decode()))] == [777]
    srv = server(files)
    src = EcmwfOpenDataSource(source=srv.url)
    assert isinstance(src, ForecastSource)
    ev = src.forecast(EUROPE, datetime(2024, 1, 1, 8, 0), 18)  # naive = UTC; 00Z is due at 08Z
    assert ev.run == datetime(2024, 1, 1, 0, tzinfo=UTC) and ev.notes == ()
    assert ev.lead_window_h == (8.0, 26.0)
    assert ev.total_mm == pytest.approx(0.0, abs=1e-3) and ev.duration_days == 0.0
    ev0 = src.forecast(EUROPE, datetime(2024, 1, 1, 20, 0), 6)  # 12Z due but absent → 00Z, announced
    assert ev0.run == datetime(2024, 1, 1, 0, tzinfo=UTC) and len(ev0.notes) == 1
    assert ev0.lead_window_h == (20.0, 26.0)
    # hours 0-6: 6 mm in metres → mm, as buckets 0-3 and 3-6
    assert ev0.windows[:3] == ((0.0, 3.0, pytest.approx(3.0, abs=1e-3)), (3.0, 6.0, pytest.approx(3.0, abs=1e-3)),
                               (6.0, 9.0, pytest.approx(0.0, abs=1e-3)))
    tp_ranges = [r for _, p, r in srv.requests if r and p.endswith(".grib2")]
    assert tp_ranges and all(r.startswith("bytes=777-") for r in tp_ranges)  # only the tp bytes
    direct = _ecmwf_event_direct(tmp_files=files, steps=steps)
    assert direct == pytest.approx(6.0, abs=1e-3)


def _ecmwf_event_direct(tmp_files, steps):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        ms = []
        for s in steps:
            p = Path(d) / f"{s}.grib2"
            p.write_bytes(tmp_files[f"/20240101/00z/ifs/0p25/oper/20240101000000-{s}h-oper-fc.grib2"][777:])
            ms += read_grib_precipitation(p, EUROPE)
        ev = forecast_event(ms, EUROPE, (0, 24), source="direct")
        return ev.total_mm


def test_sources_state_their_facts():
    e, g = EcmwfOpenDataSource(), GfsSource()
    assert e.cycle_hours == (0, 12) and e.source == "aws" and "0p25" in e.name
    assert g.cycle_hours == (0, 6, 12, 18) and g.base.startswith("https://noaa-gfs-bdp-pds")
    assert e.steps_for(72) == [*range(3, 73, 3)] and e.steps_for(150)[-2:] == [144, 150]
    assert g.steps_for(20) == [6, 12, 18, 24]
    assert g.url(datetime(2025, 8, 1, tzinfo=UTC), 7).endswith("gfs.20250801/00/atmos/gfs.t00z.pgrb2.0p25.f007")
    with pytest.raises(RainfallError):
        e.steps_for(400)
    with pytest.raises(RainfallError, match="lead_hours"):
        g.forecast(EUROPE, datetime(2025, 1, 1), 0)
    assert ByteRange(10, 5).header == "bytes=10-14"


def test_eccodes_never_loads_into_this_process():
    """ecCodes' wheels load their own PROJ globally; decoded in a worker, this process's
    pyproj keeps its database (before: "no database context specified", then a crash at exit)."""
    import sys

    from pyproj import CRS

    msgs = read_grib_precipitation(fixture_path(R, GFS, GFS06), EUROPE)
    assert msgs and "eccodes" not in sys.modules and "gribapi" not in sys.modules
    assert CRS.from_user_input("EPSG:4326").to_epsg() == 4326
