"""Evaluation a reviewer would accept: one prediction path for train and evaluate,
bootstrap intervals, several seeds, JSON, readable tables in files, buffers, ablate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from models_testdata import (
    torch_threads,  # noqa: F401  (fixture)
    write_factor_cube,
    write_geojson,
)
from typer.testing import CliRunner

from flows import model_commands
from models.checkpoint import read_metadata, sha256
from models.data import IGNORE, block_split
from models.evaluate import across_checkpoints, evaluate, evaluate_split
from models.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_threads")

TINY = {
    "base_width": 4, "depth": 2, "chip_size": 32, "block_size": 64, "batch_size": 8, "chips_per_epoch": 16,
    "epochs": 2, "device": "cpu", "seed": 0, "lr": 1e-2,
}
KEYS = ("pixels", "landslide_px", "dice", "iou", "precision", "recall", "auc", "pr_auc",
        "recall_small", "recall_medium", "recall_large")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    cube, _, polys = write_factor_cube(d / "cube.zarr", size=256, seed=2, n_landslides=30)
    inv = write_geojson(d / "inventory.geojson", polys, to_crs="EPSG:4326")
    return d, cube, inv


@pytest.fixture(scope="module")
def checkpoints(data):
    d, cube, inv = data
    return [train(cube, inv, d / f"seed{s}", TrainConfig(**{**TINY, "seed": s}), progress=False) for s in (0, 1)]


def _same(a, b):
    return (a is None and (b is None or math.isnan(b))) or a == b


def test_train_test_metrics_equal_evaluate_on_the_saved_checkpoint(data, checkpoints):
    _, cube, inv = data
    for path in checkpoints:
        recorded = read_metadata(path).metrics["test"]
        report = evaluate(path, cube, inv, split="test", device="cpu")
        for k in KEYS:
            assert _same(recorded[k], report.overall[k]), (k, recorded[k], report.overall[k])
        iv = read_metadata(path).metrics["test_intervals"]
        assert iv["dice"] == report.to_json()["intervals"]["dice"]


def test_report_has_intervals_seeded_and_bracketing(data, checkpoints):
    _, cube, inv = data
    a = evaluate(checkpoints[0], cube, inv, split="test", device="cpu", n_boot=500, boot_seed=3)
    b = evaluate(checkpoints[0], cube, inv, split="test", device="cpu", n_boot=500, boot_seed=3)
    assert a.to_json() == b.to_json()
    assert a.bootstrap["n_units"] == len(a.rows) >= 2 and a.bootstrap["resamples"] == 500
    for m in ("dice", "iou", "precision", "recall", "auc", "pr_auc"):
        lo, hi = a.intervals[m]
        v = a.overall[m]
        assert lo <= hi and (math.isnan(v) or lo - 1e-9 <= v <= hi + 1e-9), m
    assert "recall_small" in a.overall and "recall_small" in a.intervals


def test_across_checkpoints_mean_and_spread(data, checkpoints):
    _, cube, inv = data
    reps = [evaluate(c, cube, inv, split="test", device="cpu", n_boot=50) for c in checkpoints]
    s = across_checkpoints(reps)
    d = [r.overall["dice"] for r in reps]
    assert s["dice"]["n"] == 2 and s["dice"]["mean"] == pytest.approx(np.mean(d))
    assert s["dice"]["sd"] == pytest.approx(np.std(d, ddof=1))


def test_scoring_leaves_out_buffers_and_empty_blocks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 96, 128)).astype(np.float32)
    y = (rng.random((96, 128)) < 0.2).astype(np.uint8)
    y[:, 96:] = IGNORE  # an empty column of blocks
    split = block_split(y.shape, 32, (0.5, 0.25, 0.25), seed=1, positives=y, buffer=4)
    assert split.counts()["unused"] == 3

    def sigmoid(batch):
        return 1 / (1 + np.exp(-batch[:, 0]))

    for which in ("train", "val", "test"):
        rep = evaluate_split(sigmoid, x, y, split, which, n_boot=20)
        m = split.mask(which) & (y != IGNORE)
        assert rep.overall["pixels"] == m.sum()
        assert rep.overall["landslide_px"] == (m & (y == 1)).sum()
        assert all(r["block"] not in ("r0c3", "r1c3", "r2c3") for r in rep.rows)
    assert split.mask("train").sum() < split.block_mask("train").sum()


def _app():
    app = typer.Typer()
    app.command("evaluate")(model_commands.evaluate)
    app.command("ablate")(model_commands.ablate)
    return app


def test_cli_evaluate_json_and_a_table_readable_in_a_file(data, checkpoints, tmp_path):
    _, cube, inv = data
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(
        _app(),
        ["evaluate", "--checkpoint", str(checkpoints[0]), "--cube", str(cube), "--inventory", str(inv),
         "--device", "cpu", "--json", str(out), "--resamples", "200"],
        env={"COLUMNS": "80"},  # what a redirected stdout gets
    )
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and "overall" in res.output and "pr_auc" in res.output
    doc = json.loads(out.read_text())
    rep = doc["reports"][0]
    assert rep["sha256"] == sha256(checkpoints[0])
    assert rep["overall"]["dice"] == pytest.approx(read_metadata(checkpoints[0]).metrics["test"]["dice"])
    assert set(rep["intervals"]["dice"]) == {"low", "high"} and rep["bootstrap"]["resamples"] == 200
    assert len(rep["blocks"]) == rep["overall"]["blocks"]
    # every number the table prints is the JSON's, to 3 decimals
    assert f"{rep['overall']['dice']:.3f}" in res.output
    # --json - : stdout is JSON only
    res = CliRunner().invoke(
        _app(),
        ["evaluate", "--checkpoint", str(checkpoints[0]), "--checkpoint", str(checkpoints[1]),
         "--cube", str(cube), "--inventory", str(inv), "--device", "cpu", "--json", "-", "--resamples", "50"],
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["reports"]) == 2 and doc["across_checkpoints"]["dice"]["n"] == 2
    assert "across checkpoints" in res.stderr


def test_cli_ablate_with_seeds_and_channels(data, tmp_path):
    _, cube, inv = data
    out = tmp_path / "ablate.json"
    res = CliRunner().invoke(
        _app(),
        ["ablate", "--cube", str(cube), "--inventory", str(inv), "--epochs", "1", "--width", "2",
         "--depth", "2", "--chip-size", "32", "--block-size", "64", "--chips-per-epoch", "8",
         "--device", "cpu", "--seeds", "0,1", "--channels", "slope,ndvi,lsi", "--resamples", "50",
         "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert {r["seed"] for r in rows} == {0, 1} and len(rows) == 10
    assert {r["channels"] for r in rows} == {"3 (with LSI)", "2 (without LSI)", "1 (LSI only)"}
    assert all("pr_auc" in r and "dice_low" in r for r in rows)
    assert len(doc["across_seeds"]) == 5 and all(s["seeds"] == 2 for s in doc["across_seeds"])
    assert "±" in res.output


# ----------------------------------------------------------------------------- curves and their pictures


def test_pr_curve_equals_sklearns_precision_recall_curve():
    from sklearn.metrics import precision_recall_curve

    from models.evaluate import pr_curve

    rng = np.random.default_rng(7)
    y = (rng.random(500) < 0.25).astype(np.uint8)
    p = np.round(np.clip(0.3 * y + 0.8 * rng.random(500), 0, 1), 2).astype(np.float32)  # many ties
    p[3] = np.nan  # a pixel without a score is left out
    ok = np.isfinite(p)
    precision, recall, thresholds = precision_recall_curve(y[ok], p[ok].astype(np.float64))
    got = pr_curve(p, y)
    np.testing.assert_allclose(got["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(got["recall"], recall, rtol=1e-12)
    np.testing.assert_allclose(got["thresholds"], thresholds, rtol=1e-7)
    assert got["points"] == precision.size and not got["thinned"]
    thin = pr_curve(p, y, max_points=10)
    assert thin["thinned"] and len(thin["precision"]) == 10 == len(thin["recall"])
    assert (thin["recall"][0], thin["precision"][-1], thin["recall"][-1]) == (recall[0], 1.0, 0.0)  # ends kept
    assert set(thin["precision"]) <= set(precision.tolist())
    assert pr_curve(p, np.zeros_like(y)) == {"precision": [], "recall": [], "thresholds": [], "points": 0,
                                             "thinned": False}


def test_reliability_bins_equal_a_hand_binning():
    from models.evaluate import reliability_bins

    p = np.array([0.05, 0.12, 0.15, 0.3, 0.31, 0.99, 1.0, np.nan, 0.0])
    y = np.array([0, 1, 0, 1, 1, 1, 0, 1, 0])
    got = reliability_bins(p, y, n_bins=4)  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert got["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert got["count"] == [4, 2, 0, 2]  # the NaN score is left out; p = 1 goes to the last bin
    assert got["mean_predicted"][0] == pytest.approx((0.05 + 0.12 + 0.15 + 0.0) / 4)
    assert got["mean_predicted"][1] == pytest.approx(0.305) and got["mean_predicted"][3] == pytest.approx(0.995)
    assert got["observed_frequency"][0] == pytest.approx(0.25)
    assert got["observed_frequency"][1] == 1.0 and got["observed_frequency"][3] == 0.5
    assert math.isnan(got["mean_predicted"][2]) and math.isnan(got["observed_frequency"][2])


def test_an_evaluation_carries_its_pooled_curves():
    from sklearn.metrics import precision_recall_curve

    from models.evaluate import reliability_bins

    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(1, 96, 128)), 1).astype(np.float32)  # ties, and fewer points than thinning
    y = (rng.random((96, 128)) < 0.2).astype(np.uint8)
    y[:10, :10] = IGNORE
    split = block_split(y.shape, 32, (0.5, 0.25, 0.25), seed=1, positives=y, buffer=4)

    def sigmoid(batch):
        return 1 / (1 + np.exp(-batch[:, 0]))

    rep = evaluate_split(sigmoid, x, y, split, "test", threshold=0.4, n_boot=0)
    m = split.mask("test") & (y != IGNORE)
    p = (1 / (1 + np.exp(-x[0])))[m]
    precision, recall, _ = precision_recall_curve(y[m] == 1, p.astype(np.float64))
    pr = rep.curves["pr"]
    np.testing.assert_allclose(pr["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(pr["recall"], recall, rtol=1e-12)
    assert pr["average_precision"] == rep.overall["pr_auc"] and pr["prevalence"] == pytest.approx((y[m] == 1).mean())
    assert pr["operating_point"] == {"threshold": 0.4, "precision": rep.overall["precision"],
                                     "recall": rep.overall["recall"]}
    hand = reliability_bins(p, y[m])
    assert rep.curves["reliability"]["count"] == hand["count"] and sum(hand["count"]) == m.sum()
    assert "curves" not in rep.to_json()  # the JSON stays as it was


def test_cli_evaluate_draws_the_pr_curve_and_the_reliability_diagram(data, checkpoints, tmp_path):
    from PIL import Image

    _, cube, inv = data
    for c in checkpoints:  # drawn by earlier evaluations of the shared checkpoints
        for name in ("pr_curve.png", "reliability.png"):
            (c.parent / name).unlink(missing_ok=True)
    base = ["evaluate", "--cube", str(cube), "--inventory", str(inv), "--device", "cpu", "--resamples", "0"]
    # with --json: beside the JSON file, both checkpoints in one picture
    out = tmp_path / "json" / "eval.json"
    out.parent.mkdir()
    res = CliRunner().invoke(_app(), [*base, "--checkpoint", str(checkpoints[0]), "--checkpoint",
                                      str(checkpoints[1]), "--json", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("pr_curve.png", "reliability.png"):
        path = out.parent / name
        assert f"plot: {path}" in res.output
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (800, 500)
    assert not (checkpoints[0].parent / "pr_curve.png").exists()
    # without --json: beside the checkpoint; the reliability diagram marks its class thresholds
    res = CliRunner().invoke(_app(), [*base, "--checkpoint", str(checkpoints[0])], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert (checkpoints[0].parent / "pr_curve.png").is_file() and (checkpoints[0].parent / "reliability.png").is_file()
    report = evaluate(checkpoints[0], cube, inv, device="cpu", n_boot=0)
    assert report.curves["reliability"]["class_thresholds"] == read_metadata(checkpoints[0]).calibration[
        "class_thresholds"]
    # --no-plots: nothing drawn
    res = CliRunner().invoke(_app(), [*base, "--checkpoint", str(checkpoints[1]), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert not (checkpoints[1].parent / "pr_curve.png").exists() and "plot:" not in res.output
