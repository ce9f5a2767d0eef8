"""Local percentile thresholds (issue 17): LHASA-style climatology percentiles per region."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from pipeline.core.errors import RainfallError, WatchListError
from pipeline.demo.storm import make_synthetic_storm, write_precipitation_zarr
from pipeline.plan.regions import Region
from pipeline.rain.alerts import Alert, AlertLedger
from pipeline.rain.sources import LocalZarrSource
from pipeline.rain.watch import (
    Event,
    Threshold,
    check_region,
    climatology_window_sums,
    load_watchlist,
    parse_watchlist,
    watch_row,
)

UTC = timezone.utc  # noqa: UP017 - as in test_watch.py
BOX = (103.0, 29.7, 103.4, 30.0)
START = datetime(2024, 7, 1)  # the climatology store covers 2024-07-01 .. 2024-08-10 (40 days)


@pytest.fixture(scope="module")
def clim(tmp_path_factory):
    ds = make_synthetic_storm(BOX, "2024-07-01", "2024-08-10", seed=7, peak_mm_h=12.0, resolution=0.1)
    path = write_precipitation_zarr(ds, tmp_path_factory.mktemp("clim") / "precip.zarr")
    return ds, path


def _region_mean(ds) -> np.ndarray:
    """cos(lat)-weighted region mean rate per half-hour step, by hand from the dataset."""
    rate = np.asarray(ds["precipitationCal"].values, dtype=np.float64)  # (time, lon, lat)
    w = np.cos(np.deg2rad(np.asarray(ds["lat"].values, dtype=np.float64)))
    return (rate * w[None, None, :]).sum(axis=(1, 2)) / (w.sum() * rate.shape[1])


def _hand_window_sums(ds, window_h: float = 72.0) -> np.ndarray:
    mean = _region_mean(ds)
    n_win, n_day = int(window_h * 2), 48  # half-hour steps
    sums = []
    k = 0
    while k * n_day + n_win <= mean.size:
        sums.append(mean[k * n_day: k * n_day + n_win].sum() * 0.5)  # mm/h x 0.5 h
        k += 1
    return np.array(sums)


def _entry_threshold(path, percentile=95, window_h=None):
    doc = {"percentile": percentile, "climatology": str(path)}
    if window_h is not None:
        doc["window_h"] = window_h
    wl = parse_watchlist({"regions": [{"name": "r", "region": ",".join(map(str, BOX)), "threshold": doc}]})
    return wl.entries[0].threshold


# --------------------------------------------------------------------------- the percentile


def test_p95_is_numpys_percentile_of_the_hand_built_window_sums(clim):
    ds, path = clim
    hand = _hand_window_sums(ds)
    assert hand.size == 40 - 3 + 1  # 40 days, 3-day windows sliding by one day
    sums = climatology_window_sums(path, BOX, 72.0)
    np.testing.assert_allclose(np.sort(sums), np.sort(hand), rtol=1e-5, atol=1e-6)
    th = _entry_threshold(path)
    assert th.kind == "percentile" and th.percentile == 95.0 and th.window_h == 72.0
    assert th.threshold_mm(BOX) == pytest.approx(float(np.percentile(hand, 95)), rel=1e-5)
    # another window length and percentile
    th24 = _entry_threshold(path, percentile=80, window_h=24)
    assert th24.threshold_mm(BOX) == pytest.approx(float(np.percentile(_hand_window_sums(ds, 24.0), 80)), rel=1e-5)


def test_climatology_is_computed_once_per_region(clim, monkeypatch):
    _, path = clim
    th = _entry_threshold(path, percentile=90, window_h=48)
    first = th.threshold_mm(BOX)
    calls = []
    monkeypatch.setattr(LocalZarrSource, "read", lambda self, *a, **k: calls.append(a) or 1 / 0)
    assert th.threshold_mm(BOX) == first and calls == []  # served from the in-memory cache


def test_event_above_the_percentile_exceeds_and_one_below_does_not(clim):
    ds, path = clim
    th = _entry_threshold(path)
    p95 = th.threshold_mm(BOX)
    mean = _region_mean(ds)
    acc = np.array([mean[i - 144:i].sum() * 0.5 for i in range(144, mean.size + 1)])  # 72 h ending at step i
    wettest = int(np.argmax(acc)) + 144
    driest = int(np.argmin(acc)) + 144
    assert acc.max() > p95 > acc.min()
    src = LocalZarrSource(path)
    region = Region("r", BOX)
    now_wet = START + timedelta(minutes=30 * wettest)
    ev = check_region(src, region, now_wet, hours=72)
    assert ev is not None
    j = th.judge(ev, src, now_wet)
    assert j.kind == "percentile" and j.exceeded
    assert j.threshold == pytest.approx(p95) and j.value == pytest.approx(acc.max(), rel=1e-5)
    row = watch_row("r", ev, th, source=src, now=now_wet)
    assert row["alert"] and row["threshold_kind"] == "percentile"
    assert row["threshold_mm"] == pytest.approx(p95) and row["accumulation_mm"] == pytest.approx(acc.max(), rel=1e-5)
    assert row["threshold_mm_h"] == pytest.approx(p95 / 72.0)
    alert = Alert.from_event(ev, th, source=src, now=now_wet)
    assert alert.threshold_kind == "percentile" and alert.threshold_mm == pytest.approx(p95)
    assert alert.percentile == 95.0 and alert.window_h == 72.0
    assert alert.accumulation_mm == pytest.approx(acc.max(), rel=1e-5)
    # the same event judged later, when the last 72 h hold less than the 95th percentile
    now_dry = START + timedelta(minutes=30 * driest)
    below = th.judge(ev, src, now_dry)
    assert not below.exceeded and below.value == pytest.approx(acc.min(), abs=1e-4)
    assert not watch_row("r", ev, th, source=src, now=now_dry)["alert"]


def test_default_and_ab_thresholds_say_their_kind(clim):
    ev = Event("r", datetime(2024, 7, 2, tzinfo=UTC), datetime(2024, 7, 2, 10, tzinfo=UTC), 0.9, 10.0, "s", BOX)
    assert Threshold().kind == "intensity-duration"
    row = watch_row("r", ev, Threshold())
    assert row["alert"] and row["threshold_kind"] == "intensity-duration"
    assert row["threshold_mm_h"] == pytest.approx(0.79877, abs=5e-5)
    j = Threshold(14.82, 0.39).judge(ev)
    assert j.kind == "intensity-duration" and not j.exceeded and j.value == 0.9
    alert = Alert.from_event(ev, Threshold())
    assert alert.threshold_kind == "intensity-duration" and alert.threshold_mm is None


# --------------------------------------------------------------------------- watch lists


def test_watchlist_percentile_relative_path_and_defaults(clim, tmp_path):
    _, path = clim
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precip.zarr").symlink_to(path, target_is_directory=True)
    wl_path = tmp_path / "watch.yaml"
    wl_path.write_text(
        "regions:\n"
        f"  - name: r\n    region: {','.join(map(str, BOX))}\n"
        "    threshold: {percentile: 95, climatology: data/precip.zarr}\n"
        f"  - name: s\n    region: {','.join(map(str, BOX))}\n"
        "    threshold: {percentile: 99.5, climatology: data/precip.zarr, window_h: 24}\n"
    )
    r, s = load_watchlist(wl_path).entries
    assert r.threshold.kind == "percentile" and r.threshold.percentile == 95.0
    assert r.threshold.window_h == 72.0  # the default accumulation window
    assert r.threshold.climatology == str(tmp_path / "data" / "precip.zarr")
    assert s.threshold.percentile == 99.5 and s.threshold.window_h == 24.0


@pytest.mark.parametrize("percentile", [50, 100, 20, 101, "x", True])
def test_watchlist_refuses_a_percentile_out_of_range(clim, percentile):
    _, path = clim
    with pytest.raises(WatchListError) as e:
        _entry_threshold(path, percentile=percentile)
    assert "percentile" in str(e.value) and "\n" not in e.value.message


def test_watchlist_refuses_a_missing_climatology(tmp_path):
    with pytest.raises(WatchListError) as e:
        _entry_threshold(tmp_path / "nope.zarr")
    assert "does not exist" in e.value.message and "\n" not in e.value.message


def test_watchlist_refuses_a_climatology_shorter_than_30_days(tmp_path):
    ds = make_synthetic_storm(BOX, "2024-07-01", "2024-07-20", seed=1, resolution=0.1)
    short = write_precipitation_zarr(ds, tmp_path / "short.zarr")
    with pytest.raises(WatchListError) as e:
        _entry_threshold(short)
    assert "too short to be a climatology" in e.value.message and "\n" not in e.value.message
    with pytest.raises(RainfallError, match="too short to be a climatology"):
        climatology_window_sums(short, BOX, 72.0)


def test_watchlist_refuses_bad_percentile_keys(clim):
    _, path = clim
    with pytest.raises(WatchListError, match="window_h"):
        _entry_threshold(path, window_h=0)
    with pytest.raises(WatchListError, match="unknown threshold key"):
        parse_watchlist({"regions": [{"name": "a", "region": "demo",
                                      "threshold": {"percentile": 95, "climatology": str(path), "a": 2.2}}]})


# --------------------------------------------------------------------------- old ledgers


def test_old_alerts_without_the_new_fields_still_load(tmp_path):
    old = {"id": "0123456789abcdef", "region": "r", "event_start": "2024-07-02T00:00:00+00:00",
           "event_end": "2024-07-02T10:00:00+00:00", "intensity_mm_h": 0.9, "duration_h": 10.0,
           "threshold_mm_h": 0.8, "a": 2.2, "b": 0.44, "source": "zarr:/x", "kind": "observed",
           "status": "triggered", "run_dir": None, "recorded": "2024-07-02T10:05:00+00:00"}
    ledger = AlertLedger(tmp_path / "alerts.jsonl")
    ledger.path.write_text(json.dumps(old) + "\n")
    rec = ledger.get(old["id"])
    names = {f.name for f in dataclasses.fields(Alert)}
    alert = Alert(**{k: v for k, v in rec.items() if k in names})
    assert alert.threshold_kind == "intensity-duration" and alert.threshold_mm is None
    assert alert.percentile is None and alert.window_h is None and alert.accumulation_mm is None
    assert alert.threshold_mm_h == 0.8 and alert.a == 2.2
