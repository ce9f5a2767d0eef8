"""The shared vocabulary in pipeline.core: classes, run layout, provenance records, files, stats."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.classes import CLASS_RGBA, NODATA_CLASS, check_thresholds, class_attrs, classify
from pipeline.core.config import TimeWindow
from pipeline.core.errors import InputDataError, StoreError, TimeWindowError
from pipeline.core.files import atomic_path, atomic_write_text, fingerprint
from pipeline.core.layout import RunLayout, read_run_json, run_dir_for, write_run_json
from pipeline.core.provenance import Rain, RunProvenance
from pipeline.core.stats import nan_percentiles, nanquantile_axis0, roc_auc


def test_classify_by_hand() -> None:
    p = np.array([0.0, 0.299, 0.3, 0.59, 0.6, 1.0, np.nan], dtype=np.float32)
    assert classify(p, 0.3, 0.6).tolist() == [0, 0, 1, 1, 2, 2, NODATA_CLASS]
    assert CLASS_RGBA[NODATA_CLASS][3] == 0 and CLASS_RGBA[2] == (0xD7, 0x30, 0x27, 255)
    with pytest.raises(InputDataError, match="class thresholds"):
        check_thresholds((0.6, 0.3))
    with pytest.raises(InputDataError, match="Risk thresholds"):
        check_thresholds((0.5, 1.5), "LSI")
    attrs = class_attrs((0.3, 0.6))
    assert attrs["flag_values"] == [0, 1, 2] and attrs["flag_meanings"] == "low medium high"


def test_fingerprint_is_sha256_of_canonical_json() -> None:
    doc = {"b": [1, 2], "a": {"z": 1.5, "y": None}}
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(doc) == expected == fingerprint({"a": {"y": None, "z": 1.5}, "b": [1, 2]})
    assert fingerprint({"d": date(2024, 1, 2)}) == fingerprint({"d": "2024-01-02"})


def test_atomic_write_follows_the_umask_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello" and stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "hello" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_run_layout_and_run_json(tmp_path: Path) -> None:
    run = run_dir_for(tmp_path, "demo", date(2024, 7, 1), date(2024, 8, 31))
    assert run == tmp_path.resolve() / "demo" / "20240701_20240831"
    layout = RunLayout(run)
    assert layout.lsi("utm48n").name == "lsi_utm48n.zarr" and RunLayout.zone_of(layout.cube("utm48s")) == "utm48s"
    assert layout.risk_quicklook("utm48n") == run / "exports" / "risk_utm48n.png"
    assert read_run_json(run) == {}
    write_run_json(run, {"b": 1, "a": date(2024, 1, 1)})
    assert read_run_json(run) == {"a": "2024-01-01", "b": 1}
    layout.run_json.write_text("[1]")
    with pytest.raises(InputDataError, match="not an object"):
        read_run_json(run)
    with pytest.raises(StoreError, match="outside the output root"):
        run_dir_for(tmp_path, "../..", date(2024, 7, 1), date(2024, 8, 31), name="evil")


def test_provenance_round_trips_through_each_stores_attributes() -> None:
    rain = Rain(4.5, 2.0, 3.1, "explicit")
    prov = RunProvenance.for_run("demo", (103.0, 29.5, 103.2, 29.7), TimeWindow(date(2024, 7, 1), date(2024, 8, 31)),
                                 {"sentinel-2-l2a": ["a", "b"]}).with_rain(rain)
    cube, lsi, risk = prov.to_attrs("cube"), prov.to_attrs("lsi"), prov.to_attrs("risk")
    assert set(cube) == {"region", "region_bbox", "time_start", "time_end", "input_items"}
    assert lsi["rain_multiplier"] == 3.1 and "region_bbox" not in lsi
    assert risk["time_window"] == ["2024-07-01", "2024-08-31"] and "time_start" not in risk
    for attrs in (lsi, risk):
        back = RunProvenance.from_attrs(json.loads(json.dumps(attrs)))
        assert (back.region, back.time_start, back.time_end, back.rain) == ("demo", "2024-07-01", "2024-08-31", rain)
    assert RunProvenance.from_attrs(cube).region_bbox == (103.0, 29.5, 103.2, 29.7)
    assert Rain.from_attrs({}) is None
    assert RunProvenance("r", None, None).to_attrs("risk")["rain_multiplier"] is None


def test_time_window_parse() -> None:
    assert TimeWindow.parse("2024-07-01", "2024-07-03").days() == 3
    with pytest.raises(TimeWindowError, match="--end 2024-06-01 is before --start"):
        TimeWindow.parse("2024-07-01", "2024-06-01")
    with pytest.raises(TimeWindowError, match="start '2024/07/01' is not a date"):
        TimeWindow.parse("2024/07/01", "2024-07-02", ("start", "end"))


def test_nan_quantiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:, 0, 0] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanpercentile(x, [10, 90], axis=0)
    np.testing.assert_allclose(nan_percentiles(x, (10.0, 90.0)), ref, atol=1e-6)
    np.testing.assert_allclose(nanquantile_axis0(x, 0.1), ref[0], atol=1e-6)
    assert np.isnan(nan_percentiles(np.empty((0, 2, 2)), (50.0,))).all()


def test_roc_auc_against_pairs_by_hand() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, np.nan, 0.4])
    labels = np.array([0, 0, 1, 1, 1, 1])
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4: pairs won 1 + 2 + 1.5 of 6 (a tie counts half)
    assert roc_auc(scores, labels) == pytest.approx(4.5 / 6)
    assert np.isnan(roc_auc(scores, np.zeros(6)))
