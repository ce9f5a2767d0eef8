"""The rainfall watch library: threshold maths, watch lists, events, alert ids and the ledger."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import RainfallError, SlidewatchError
from pipeline.demo.storm import make_synthetic_storm, write_precipitation_zarr
from pipeline.rain.sources import LocalZarrSource
from pipeline.plan.regions import Region
from pipeline.core.errors import WatchListError
from pipeline.rain.alerts import Alert, AlertLedger, alert_id
from pipeline.rain.watch import (
    Event,
    Threshold,
    check_region,
    event_bounds,
    exceeds,
    imagery_window,
    load_watchlist,
    parse_watchlist,
    threshold_mm_h,
)

UTC = timezone.utc


# --------------------------------------------------------------------------- threshold


def test_guzzetti_threshold_hand_values():
    # 2.20 · 10^-0.44: log10 = log10(2.2) - 0.44 = 0.342423 - 0.44 = -0.097577 → 0.79877 mm/h
    assert threshold_mm_h(10.0) == pytest.approx(0.79877, abs=5e-5)
    assert threshold_mm_h(1.0) == pytest.approx(2.20)
    # 24 h: 2.20 · exp(-0.44 · ln 24) = 2.20 · exp(-1.398344) = 2.20 · 0.247006 = 0.54341 (bc -l)
    assert threshold_mm_h(24.0) == pytest.approx(0.54341, abs=5e-5)
    # Caine (1980), I = 14.82 D^-0.39 at 24 h: 14.82 · exp(-0.39 · 3.178054) = 14.82 · 0.289546 = 4.2911
    assert Threshold(14.82, 0.39).intensity(24.0) == pytest.approx(4.2911, abs=5e-4)


def test_exceeds_at_and_around_the_curve():
    assert exceeds(0.80, 10.0) and not exceeds(0.79, 10.0)
    assert exceeds(threshold_mm_h(10.0), 10.0)  # on the curve counts
    assert not exceeds(50.0, 0.0)  # no rain duration, no alert
    assert not exceeds(float("nan"), 10.0) and not exceeds(5.0, float("nan"))
    assert exceeds(4.3, 24.0, a=14.82, b=0.39) and not exceeds(4.2, 24.0, a=14.82, b=0.39)


# --------------------------------------------------------------------------- watch lists


def test_watchlist_parses_names_bboxes_geojson_and_default_threshold(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "valley.geojson").write_text(json.dumps({
        "type": "Polygon", "coordinates": [[[103.0, 29.0], [103.2, 29.0], [103.2, 29.3], [103.0, 29.0]]]}))
    (tmp_path / "w.yaml").write_text(
        "regions:\n"
        "  - name: hills\n    region: 103.1,29.8,103.2,29.9\n    threshold: {a: 14.82, b: 0.39}\n"
        "  - name: valley\n    region: shapes/valley.geojson\n"
        "  - region: junlian\n"
    )
    wl = load_watchlist(tmp_path / "w.yaml")
    assert wl.names() == ["hills", "valley", "junlian"]
    hills, valley, junlian = wl.entries
    assert hills.region.bbox == (103.1, 29.8, 103.2, 29.9) and hills.region.name == "hills"
    assert hills.threshold == Threshold(14.82, 0.39)
    assert valley.region.bbox == (103.0, 29.0, 103.2, 29.3)
    assert valley.spec == str(tmp_path / "shapes" / "valley.geojson")  # resolved beside the watch list
    assert valley.threshold == Threshold(2.20, 0.44) and junlian.region.bbox == (104.60, 27.98, 104.64, 28.02)


@pytest.mark.parametrize("doc,needle", [
    ({}, "no top-level 'regions:'"),
    ({"regions": []}, "non-empty list"),
    ({"regions": [{"name": "a"}]}, "has no 'region'"),
    ({"regions": [{"name": "a", "region": "atlantis"}]}, "Unknown region"),
    ({"regions": [{"name": "a", "region": "10,50,9,51"}]}, "inverted"),
    ({"regions": [{"name": "a", "region": "demo"}, {"name": "a", "region": "junlian"}]}, "used twice"),
    ({"regions": [{"name": "a b/c", "region": "demo"}]}, "not usable as a folder name"),
    ({"regions": [{"name": "a", "region": "demo", "threshold": {"a": -1, "b": 0.44}}]}, "must be > 0"),
    ({"regions": [{"name": "a", "region": "demo", "threshold": {"a": 2.2, "b": -0.44}}]}, "outside [0, 2)"),
    ({"regions": [{"name": "a", "region": "demo", "threshold": {"a": "x"}}]}, "not a finite number"),
    ({"regions": [{"name": "a", "region": "demo", "threshold": {"c": 1}}]}, "unknown threshold key"),
    ({"regions": [{"name": "a", "region": "demo", "threshhold": {}}]}, "unknown key(s) ['threshhold']"),
    ({"regions": ["demo"]}, "not a mapping"),
])
def test_watchlist_errors_name_the_culprit_and_the_fix(doc, needle):
    with pytest.raises(WatchListError) as info:
        parse_watchlist(doc, source="w.yaml")
    assert needle in str(info.value) and "Fix:" in str(info.value)
    assert isinstance(info.value, SlidewatchError)


def test_watchlist_file_errors(tmp_path):
    with pytest.raises(WatchListError, match="does not exist"):
        load_watchlist(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("regions: [a, b\n")
    with pytest.raises(WatchListError, match="not readable YAML"):
        load_watchlist(tmp_path / "bad.yaml")


# --------------------------------------------------------------------------- events


def test_event_bounds_joins_short_gaps_and_takes_the_latest_event():
    wet = np.array([1, 1, 0, 0, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    assert event_bounds(wet, min_gap_steps=4) == (6, 10)  # gap of 1 joined, gap of 4 separates
    assert event_bounds(wet, min_gap_steps=1) == (8, 10)
    assert event_bounds(wet, min_gap_steps=5) == (0, 10)
    assert event_bounds(np.zeros(5, bool), 2) is None


BOX = (103.0, 29.5, 104.0, 30.5)


@pytest.fixture(scope="module")
def storm(tmp_path_factory):  # type: ignore[no-untyped-def]
    ds = make_synthetic_storm(BOX, "2024-08-28", "2024-09-01", seed=3, peak_mm_h=20.0, resolution=0.1)
    path = write_precipitation_zarr(ds, tmp_path_factory.mktemp("rain") / "p.zarr")
    return ds, path


def _reference(ds, bbox):  # type: ignore[no-untyped-def]
    """Independent numpy event statistics (area max for timing; cos-lat means for I and D)."""
    rate = ds["precipitationCal"].transpose("time", "lat", "lon")
    lon, lat = ds["lon"].values, ds["lat"].values
    ix = (lon + 0.05 > bbox[0]) & (lon - 0.05 < bbox[2])
    iy = (lat + 0.05 > bbox[1]) & (lat - 0.05 < bbox[3])
    r = rate.values[:, iy][:, :, ix].astype(np.float64)
    wet = r.max(axis=(1, 2)) >= 0.1
    idx = np.flatnonzero(wet)
    i0, i1 = idx[0], idx[-1] + 1  # the synthetic storm is one pulse: no 6 h gaps inside
    w = np.cos(np.deg2rad(lat[iy]))[:, None] * np.ones(ix.sum())[None, :]
    ev = r[i0:i1]
    intensity = (ev.mean(0) * w).sum() / w.sum()
    duration_h = (((ev >= 0.1).sum(0) * 0.5) * w).sum() / w.sum()
    t = ds["time"].values
    return t[i0], t[i1 - 1] + np.timedelta64(30, "m"), intensity, duration_h


def test_check_region_matches_an_independent_computation(storm):
    ds, path = storm
    cx, cy = ds.attrs["storm_centre_lonlat"]
    wet = Region("wet", (cx - 0.05, cy - 0.05, cx + 0.05, cy + 0.05))
    ev = check_region(LocalZarrSource(path), wet, datetime(2024, 9, 1, tzinfo=UTC), hours=96)
    start, end, intensity, duration_h = _reference(ds, wet.bbox)
    assert ev is not None and ev.region == "wet"
    assert np.datetime64(ev.start.replace(tzinfo=None)) == start
    assert np.datetime64(ev.end.replace(tzinfo=None)) == end
    assert ev.intensity_mm_h == pytest.approx(intensity, rel=1e-5)
    assert ev.duration_h == pytest.approx(duration_h, rel=1e-5)
    assert ev.duration_days == pytest.approx(duration_h / 24)
    assert exceeds(ev.intensity_mm_h, ev.duration_h)


def test_check_region_start_is_stable_as_now_moves(storm):
    ds, path = storm
    cx, cy = ds.attrs["storm_centre_lonlat"]
    wet = Region("wet", (cx - 0.05, cy - 0.05, cx + 0.05, cy + 0.05))
    full = check_region(LocalZarrSource(path), wet, "2024-09-01T00:00", hours=96)
    assert full is not None
    # A window of 6 h that starts inside the event: the start is traced back to the same hour.
    late = check_region(LocalZarrSource(path), wet, full.end.replace(tzinfo=None).isoformat(), hours=6)
    assert late is not None and late.start == full.start and late.end == full.end
    assert alert_id("wet", late.start, late.source) == alert_id("wet", full.start, full.source)


def test_check_region_dry_and_outside(storm):
    ds, path = storm
    cx, cy = ds.attrs["storm_centre_lonlat"]
    # The box's corner farthest from the storm centre is outside its footprint (radius 0.45 of the side).
    fx = BOX[2] - 0.05 if cx < 103.5 else BOX[0] + 0.05
    fy = BOX[3] - 0.05 if cy < 30.0 else BOX[1] + 0.05
    far = Region("far", (fx - 0.04, fy - 0.04, fx + 0.04, fy + 0.04))
    assert check_region(LocalZarrSource(path), far, "2024-09-01T00:00", hours=96) is None
    with pytest.raises(RainfallError, match="outside the precipitation grid"):
        check_region(LocalZarrSource(path), Region("x", (10.0, 10.0, 10.1, 10.1)), "2024-09-01", hours=24)
    with pytest.raises(RainfallError, match="no precipitation data"):
        check_region(LocalZarrSource(path), far, "2025-01-01", hours=24)


def test_imagery_window_ends_on_the_event_day():
    assert imagery_window(datetime(2024, 8, 20, 5, tzinfo=UTC), 60) == (date(2024, 6, 22), date(2024, 8, 20))
    assert imagery_window(datetime(2024, 8, 20, 23, 30), 1) == (date(2024, 8, 20), date(2024, 8, 20))
    with pytest.raises(RainfallError):
        imagery_window(datetime(2024, 8, 20), 0)


# --------------------------------------------------------------------------- alerts and the ledger


def _alert(region: str = "hills", start: datetime = datetime(2024, 8, 29, 7, 30, tzinfo=UTC)) -> Alert:
    ev = Event(region, start, datetime(2024, 8, 30, 9, tzinfo=UTC), 3.0, 20.0, "zarr:/p.zarr", (1.0, 2.0, 3.0, 4.0))
    return Alert.from_event(ev, Threshold())


def test_alert_id_is_stable_within_the_hour_and_distinguishes_sources():
    a, b = _alert(), _alert(start=datetime(2024, 8, 29, 7, 0, tzinfo=UTC))
    assert a.id == b.id and len(a.id) == 16
    assert a.id != _alert(start=datetime(2024, 8, 29, 8, 0, tzinfo=UTC)).id
    assert a.id != _alert(region="other").id
    assert alert_id("hills", a.start, "zarr:/other.zarr") != a.id
    assert a.threshold_mm_h == pytest.approx(0.58880, abs=5e-5)  # 2.20 · 20^-0.44 (bc -l)


def test_ledger_deduplicates_across_instances(tmp_path):
    path = tmp_path / "out" / "alerts.jsonl"
    one, two = AlertLedger(path), AlertLedger(path)
    alert = _alert()
    assert one.claim(alert, tmp_path / "run")
    assert not two.claim(alert, tmp_path / "run")
    assert not one.claim(alert)
    two.update(alert.id, "succeeded", tmp_path / "run")
    rec = one.get(alert.id)
    assert rec is not None and rec["status"] == "succeeded" and rec["run_dir"] == str(tmp_path / "run")
    assert rec["region"] == "hills" and rec["intensity_mm_h"] == 3.0
    other = _alert(region="valley")
    assert two.claim(other)
    assert set(one.records()) == {alert.id, other.id}
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["triggered", "succeeded", "triggered"]


def _claim_in_child(path: str, barrier) -> bool:  # type: ignore[no-untyped-def]
    barrier.wait(timeout=30)
    return AlertLedger(path).claim(_alert(), "run")


def test_ledger_claims_once_across_processes(tmp_path):
    path = str(tmp_path / "alerts.jsonl")
    ctx = mp.get_context("fork")
    n = 4
    barrier = ctx.Manager().Barrier(n)
    with ctx.Pool(n) as pool:
        results = pool.starmap(_claim_in_child, [(path, barrier)] * n, chunksize=1)
    assert sorted(results) == [False, False, False, True]
    assert len(Path(path).read_text().splitlines()) == 1


def test_ledger_claims_once_across_threads_and_leaves_no_lock_file(tmp_path):
    import threading

    path = tmp_path / "alerts.jsonl"
    n = 8
    barrier = threading.Barrier(n)
    results: list[bool] = []

    def claim() -> None:
        barrier.wait(timeout=30)
        results.append(AlertLedger(path).claim(_alert(), "run"))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [False] * (n - 1) + [True]
    assert len(path.read_text().splitlines()) == 1
    assert not AlertLedger(path).lock_path.exists()  # removed on release, as a store's lock is


def test_ledger_in_an_unwritable_out_is_a_store_error(tmp_path):
    from pipeline.core.errors import StoreError

    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(StoreError, match="Cannot create the output folder"):
        AlertLedger(tmp_path / "out" / "alerts.jsonl").claim(_alert())


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):  # type: ignore[no-untyped-def]
    import time

    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nregions: *i\n")  # 9**9 strings if expanded
    t0 = time.monotonic()
    with pytest.raises(WatchListError, match="aliases are not allowed"):
        load_watchlist(tmp_path / "bomb.yaml")
    assert time.monotonic() - t0 < 5
    (tmp_path / "big.yaml").write_text("regions: []\n" + "#" * 1_100_000)
    with pytest.raises(WatchListError, match="over 1,000,000"):
        load_watchlist(tmp_path / "big.yaml")


def test_month_keyed_imagery_window_is_shared_by_every_event_of_a_month():
    """Every alert of a month gets the same window (so its cube is reused); the next month a new one."""
    aug = {imagery_window(datetime(2024, 8, d, 5, tzinfo=UTC), 60, "month") for d in (1, 15, 31)}
    assert aug == {(date(2024, 6, 2), date(2024, 7, 31))}
    assert imagery_window(datetime(2024, 9, 1, tzinfo=UTC), 60, "month") == (date(2024, 7, 3), date(2024, 8, 31))
    assert imagery_window(datetime(2024, 3, 10), 30, "month") == (date(2024, 1, 31), date(2024, 2, 29))
    with pytest.raises(RainfallError, match="period 'season' is unknown"):
        imagery_window(datetime(2024, 8, 20), 60, "season")


# --------------------------------------------------------------------------- alert pictures


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_an_alerts_picture_lies_beside_the_ledger(tmp_path):
    ledger = AlertLedger(tmp_path / "out" / "alerts.jsonl")
    assert ledger.plot_path("0123456789abcdef") == tmp_path / "out" / "alerts" / "0123456789abcdef.png"
    for bad in ("../x", "a/b", "", "a b"):
        with pytest.raises(ValueError, match="not a plain name"):
            ledger.plot_path(bad)


def test_the_alert_picture_draws_the_alerts_event_and_threshold():
    from pipeline.products.plots import alert_plot

    alert = _alert()
    fig = alert_plot(alert.as_dict())
    lines = {ln.get_gid(): ln for ln in fig.axes[0].lines}
    assert lines["event"].get_xdata().tolist() == [alert.duration_h] == [20.0]
    assert lines["event"].get_ydata().tolist() == [alert.intensity_mm_h] == [3.0]
    d = np.asarray(lines["threshold"].get_xdata(), dtype=float)
    np.testing.assert_allclose(lines["threshold"].get_ydata(), [threshold_mm_h(v) for v in d], rtol=1e-12)
    assert "hills" in fig.axes[0].get_title() and "2024-08-29 07:30" in fig.axes[0].get_title()


def test_write_alert_plots_draws_recorded_alerts_once_and_the_triggered_run(tmp_path):
    from flows.watch_commands import write_alert_plots

    out = tmp_path / "out"
    ledger = AlertLedger(out / "alerts.jsonl")
    run = out / "hills" / "20240601_20240731"
    run.mkdir(parents=True)
    alert = _alert()
    assert ledger.claim(alert, run)
    unrecorded = _alert(region="valley")  # a check-only alert: not in the ledger, not drawn
    rows = [{"region": "hills", "alert": True, "new": True, "alert_id": alert.id, "run_dir": str(run)},
            {"region": "valley", "alert": True, "new": False, "alert_id": unrecorded.id, "run_dir": None},
            {"region": "dry", "alert": False, "new": False, "alert_id": None, "run_dir": None}]
    written = write_alert_plots(rows, ledger.path)
    assert written == [out / "alerts" / f"{alert.id}.png", run / "plots" / "alert.png"]
    assert all(_png_size(p) == (800, 500) for p in written)
    assert sorted(p.name for p in (out / "alerts").iterdir()) == [f"{alert.id}.png"]
    # the next check sees the alert again: its picture is not redrawn, the run's is left alone
    before = written[0].stat().st_mtime_ns
    again = [{**rows[0], "new": False, "status": "seen before (succeeded)"}]
    assert write_alert_plots(again, ledger.path) == [] and written[0].stat().st_mtime_ns == before
    written[0].unlink()  # a missing picture is drawn again
    assert write_alert_plots(again, ledger.path) == [written[0]]
    elsewhere = tmp_path / "elsewhere" / "alerts.jsonl"
    assert write_alert_plots(rows, elsewhere) == []  # no ledger: nothing drawn, nothing created
    assert not (tmp_path / "elsewhere").exists()


def test_watch_command_writes_the_alert_pictures(storm, tmp_path, monkeypatch):
    """The watch command draws what the flow recorded: a fake flow stands in for Prefect."""
    import sys
    import types

    import typer
    from typer.testing import CliRunner

    from flows.watch_commands import watch

    _, precip = storm
    out = tmp_path / "out"
    run = out / "hills" / "20240601_20240731"
    alert = _alert()

    def fake_flow(**kw):  # type: ignore[no-untyped-def]
        assert Path(kw["out"]) == out.resolve()
        rows = [{"region": "hills", "intensity_mm_h": 3.0, "duration_h": 20.0, "threshold_mm_h": alert.threshold_mm_h,
                 "alert": True, "new": False, "alert_id": alert.id, "status": "alert (not triggered: check only)",
                 "run_dir": str(run), "kind": "observed"}]
        if kw["trigger"]:
            run.mkdir(parents=True, exist_ok=True)
            assert AlertLedger(out / "alerts.jsonl").claim(alert, run)
            rows[0].update(new=True, status="run finished")
        return rows

    fake = types.ModuleType("flows.prefect_flows")
    fake.rainfall_watch_flow = fake_flow  # type: ignore[attr-defined]
    fake.ALERTS_FILE = "alerts.jsonl"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flows.prefect_flows", fake)
    (tmp_path / "w.yaml").write_text("regions:\n  - name: hills\n    region: 103.4,29.9,103.6,30.1\n")
    app = typer.Typer()
    app.command("watch")(watch)
    app.command("noop")(lambda: None)
    args = ["watch", "--watchlist", str(tmp_path / "w.yaml"), "--out", str(out), "--once", "--precip", str(precip),
            "--forecast", "none"]
    res = CliRunner().invoke(app, [*args, "--check-only"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert not out.exists() and "alert plot" not in res.output  # check only: nothing recorded, nothing drawn
    res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for path in (out / "alerts" / f"{alert.id}.png", run / "plots" / "alert.png"):
        assert f"alert plot: {path}" in res.output and _png_size(path) == (800, 500)
