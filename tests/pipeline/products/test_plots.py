"""The pictures: each is a valid 800 × 500 PNG, and what it draws is the data it was given
(read back from the Figure's artists before saving), checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pipeline.products.plots import (
    ALERT_PLOT,
    alert_plot,
    exceedance_ratio,
    pr_curve_plot,
    reliability_plot,
    run_plots_dir,
    save_plot,
    training_curves_plot,
)

pytestmark = pytest.mark.filterwarnings("error")

#: An intensity–duration alert: 3 mm/h over 20 h against Guzzetti's 2.20·D^-0.44.
ID_ALERT = {
    "id": "0123456789abcdef", "region": "upper $valley$", "event_start": "2024-08-29T07:00:00+00:00",
    "event_end": "2024-08-30T09:00:00+02:00", "intensity_mm_h": 3.0, "duration_h": 20.0,
    "threshold_mm_h": 2.20 * 20.0**-0.44, "a": 2.20, "b": 0.44, "source": "zarr:/p.zarr", "kind": "observed",
    "threshold_kind": "intensity-duration",
}
#: A forecast alert judged by a local 95th percentile of 72 h accumulations (80 mm).
PCT_ALERT = {
    **ID_ALERT, "kind": "forecast", "threshold_kind": "percentile", "threshold_mm": 80.0, "accumulation_mm": 120.0,
    "percentile": 95.0, "window_h": 72.0, "threshold_mm_h": 80.0 / 72.0,
}


def _line(fig, gid: str):  # type: ignore[no-untyped-def]
    found = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == gid]
    assert len(found) == 1, (gid, [ln.get_gid() for ax in fig.axes for ln in ax.lines])
    return found[0]


def _png(path) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_alert_plot_draws_the_event_on_the_intensity_duration_curve(tmp_path):  # type: ignore[no-untyped-def]
    fig = alert_plot(ID_ALERT)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    point = _line(fig, "event")
    assert point.get_xdata().tolist() == [20.0] and point.get_ydata().tolist() == [3.0]
    assert point.get_marker() == "o"  # observed: a filled circle
    curve = _line(fig, "threshold")
    d = np.asarray(curve.get_xdata(), dtype=float)
    assert d.min() <= 1.0 and d.max() >= 240.0  # the curve spans the event and beyond
    for sample in (1.0, 20.0, 240.0):  # 2.20 at 1 h; 0.58880 at 20 h and 0.19730 at 240 h (bc -l)
        got = np.interp(np.log(sample), np.log(d), np.log(np.asarray(curve.get_ydata(), dtype=float)))
        assert math.exp(got) == pytest.approx({1.0: 2.20, 20.0: 0.58880, 240.0: 0.19730}[sample], rel=2e-3)
    np.testing.assert_allclose(curve.get_ydata(), 2.20 * d**-0.44, rtol=1e-12)
    ratio = [t for t in ax.texts if t.get_gid() == "ratio"]
    assert len(ratio) == 1 and "5.10×" in ratio[0].get_text()  # 3 / 0.58880 = 5.095
    assert exceedance_ratio(ID_ALERT) == pytest.approx(3.0 / 0.58880, rel=1e-4)
    title = ax.get_title()
    assert "upper $valley$" in title and "observed" in title
    assert "2024-08-29 07:00" in title and "2024-08-30 07:00 UTC" in title  # +02:00 shown in UTC
    path = save_plot(fig, tmp_path / "alerts" / "a.png")  # a region name with $ is text, not mathtext
    assert _png(path) == (800, 500)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]  # no temporary file left


def test_alert_plot_of_a_percentile_threshold_and_a_forecast(tmp_path):  # type: ignore[no-untyped-def]
    fig = alert_plot(PCT_ALERT, others=[{"kind": "observed", "duration_h": 6.0, "intensity_mm_h": 0.5}])
    point = _line(fig, "event")
    assert point.get_xdata().tolist() == [20.0] and point.get_ydata().tolist() == [3.0]
    assert point.get_marker() == "D" and point.get_markerfacecolor() == "none"  # forecast: an open diamond
    observed = _line(fig, "other0")
    assert observed.get_marker() == "o" and observed.get_xdata().tolist() == [6.0]
    pct = _line(fig, "percentile")
    d = np.asarray(pct.get_xdata(), dtype=float)
    np.testing.assert_allclose(pct.get_ydata(), 80.0 / d, rtol=1e-12)  # constant 80 mm accumulation
    acc = _line(fig, "accumulation")
    assert acc.get_xdata().tolist() == [72.0] and acc.get_ydata()[0] == pytest.approx(120.0 / 72.0)
    np.testing.assert_allclose(_line(fig, "threshold").get_ydata(), 2.20 * d**-0.44, rtol=1e-12)  # the reference
    assert any("1.50×" in t.get_text() for t in fig.axes[0].texts)  # 120 / 80
    assert "forecast" in fig.axes[0].get_title()
    assert _png(save_plot(fig, tmp_path / "p.png")) == (800, 500)


def test_pr_curve_plot_draws_sklearns_curve(tmp_path):  # type: ignore[no-untyped-def]
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    y = rng.random(300) < 0.3
    p = np.round(np.clip(0.35 * y + rng.random(300) * 0.7, 0, 1), 2)  # ties included
    precision, recall, _ = sklearn_metrics.precision_recall_curve(y, p)
    op = {"threshold": 0.5, "precision": 0.61, "recall": 0.72}
    fig = pr_curve_plot({"model": {"precision": precision.tolist(), "recall": recall.tolist(),
                                   "average_precision": 0.7, "prevalence": float(y.mean()), "operating_point": op},
                         "empty": {"precision": [], "recall": []}})
    line = _line(fig, "pr:model")
    np.testing.assert_array_equal(line.get_xdata(), recall)
    np.testing.assert_array_equal(line.get_ydata(), precision)
    dot = _line(fig, "operating:model")
    assert dot.get_xdata().tolist() == [0.72] and dot.get_ydata().tolist() == [0.61]
    assert _line(fig, "prevalence:model").get_ydata()[0] == pytest.approx(y.mean())
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "model (AP 0.700)" in labels and any("empty: no landslide pixels" in s for s in labels)
    assert _png(save_plot(fig, tmp_path / "pr.png")) == (800, 500)


def test_reliability_plot_draws_the_bins_their_counts_and_the_class_thresholds(tmp_path):  # type: ignore[no-untyped-def]
    # hand-made bins: 4 bins, the third empty
    bins = {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "count": [10, 4, 0, 2],
            "mean_predicted": [0.1, 0.3, None, 0.9], "observed_frequency": [0.0, 0.25, None, 1.0],
            "class_thresholds": [0.2, 0.55]}
    fig = reliability_plot({"m": bins})
    line = _line(fig, "reliability:m")
    assert line.get_xdata().tolist() == [0.1, 0.3, 0.9] and line.get_ydata().tolist() == [0.0, 0.25, 1.0]
    bars = [r for ax in fig.axes for r in ax.patches if r.get_gid() == "count:m"]
    assert [r.get_height() for r in bars] == [10, 4, 0, 2]
    assert [r.get_x() for r in bars] == [0.0, 0.25, 0.5, 0.75]
    for name, t in (("medium", 0.2), ("high", 0.55)):
        lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == f"class:{name}:m"]
        assert lines and all(list(ln.get_xdata()) == [t, t] for ln in lines)
    assert _png(save_plot(fig, tmp_path / "rel.png")) == (800, 500)


def test_training_curves_plot_draws_the_history(tmp_path):  # type: ignore[no-untyped-def]
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_dice": 0.1 * e,
                "val_dice": math.nan if e == 2 else 0.08 * e} for e in (1, 2, 3)]
    fig = training_curves_plot(history, best_epoch=3)
    for key in ("train_loss", "val_loss", "train_dice"):
        line = _line(fig, key)
        assert line.get_xdata().tolist() == [1, 2, 3]
        assert line.get_ydata().tolist() == pytest.approx([h[key] for h in history])
    val_dice = _line(fig, "val_dice").get_ydata()
    assert math.isnan(val_dice[1]) and val_dice[2] == pytest.approx(0.24)  # an undefined Dice leaves a gap
    assert all(ln.get_xdata()[0] == 3 for ax in fig.axes for ln in ax.lines if ln.get_gid() == "best_epoch")
    old = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_dice": 0.1}]  # a history without train_dice
    assert [ln.get_gid() for ax in training_curves_plot(old).axes for ln in ax.lines] == ["train_loss", "val_loss",
                                                                                          "val_dice"]
    assert _png(save_plot(fig, tmp_path / "t.png")) == (800, 500)


def test_run_plots_dir_and_names(tmp_path):  # type: ignore[no-untyped-def]
    assert run_plots_dir(tmp_path / "run") == tmp_path / "run" / "plots"
    assert ALERT_PLOT == "alert.png"
