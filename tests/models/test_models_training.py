"""End to end: train on a synthetic 256×256 factor Zarr, load, predict, evaluate, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows import model_commands
from models.checkpoint import load_checkpoint, read_metadata
from models.data import open_cube
from models.evaluate import ablation, evaluate
from models.networks import DEFAULT_CHANNELS
from models.predictor import Predictor
from models.training import TrainConfig, train
from models_testdata import write_factor_cube, write_geojson
from pipeline.core.errors import InputDataError
from models_testdata import torch_threads  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_threads")

TINY = dict(
    base_width=4, depth=2, chip_size=64, block_size=64, batch_size=8, chips_per_epoch=16,
    epochs=2, device="cpu", seed=0,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    cube, mask, polys = write_factor_cube(d / "cube.zarr", size=256, seed=0, n_landslides=24)
    inv = write_geojson(d / "inventory.geojson", polys, to_crs="EPSG:4326")
    return d, cube, inv, mask


@pytest.fixture(scope="module")
def trained(synthetic):
    d, cube, inv, _ = synthetic
    path = train(cube, inv, d / "run", TrainConfig(**TINY), progress=False)
    return path


def test_train_writes_a_loadable_checkpoint(synthetic, trained):
    d, cube, inv, mask = synthetic
    assert trained == d / "run" / "model.safetensors"
    model, meta = load_checkpoint(trained)
    assert meta.channels == DEFAULT_CHANNELS and meta.architecture == "EnhancedUNet"
    prov = meta.provenance
    assert prov["cube"].endswith("cube.zarr") and prov["inventory"].endswith("inventory.geojson")
    assert prov["grid"]["shape"] == [256, 256] and prov["split"]["block_size"] == 64
    assert sum(prov["landslide_pixels"].values()) == pytest.approx(mask.sum(), abs=10)
    assert prov["config"]["epochs"] == 2
    assert meta.metrics["epochs_run"] == 2 and 1 <= meta.metrics["best_epoch"] <= 2
    assert len(meta.normalisation.mean) == 7
    log = json.loads((d / "run" / "training.json").read_text())
    assert len(log["history"]) == 2 and log["sha256"]
    x, _, _ = open_cube(cube)
    prob = Predictor.from_checkpoint(trained, device="cpu")(x[None, :, :64, :64])
    assert prob.shape == (1, 64, 64) and np.isfinite(prob).all()


def test_train_records_the_history_and_draws_its_curves(synthetic, trained):
    from PIL import Image

    from pipeline.products.plots import training_curves_plot

    log = json.loads((trained.parent / "training.json").read_text())
    history = log["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"train_loss", "val_loss", "train_dice", "val_dice"} <= set(h)
        assert h["train_dice"] is None or 0.0 <= h["train_dice"] <= 1.0
    with Image.open(trained.parent / "training_curves.png") as im:
        assert im.format == "PNG" and im.size == (800, 500)
    fig = training_curves_plot(history, log["metrics"]["best_epoch"])
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines}
    assert list(lines["val_loss"].get_ydata()) == pytest.approx([h["val_loss"] for h in history])


def test_training_is_seeded(synthetic, trained, tmp_path):
    _, cube, inv, _ = synthetic
    again = train(cube, inv, tmp_path, TrainConfig(**{**TINY, "epochs": 1}), progress=False)
    a = read_metadata(trained).provenance["split"]
    b = read_metadata(again).provenance["split"]
    assert a == b


def test_evaluate_per_held_out_block(synthetic, trained):
    _, cube, inv, _ = synthetic
    report = evaluate(trained, cube, inv, split="test", device="cpu")
    split = read_metadata(trained).provenance["split"]
    n_test = sum(v == 2 for row in split["assignment"] for v in row)
    assert len(report.rows) == n_test and all(r["split"] == "test" for r in report.rows)
    assert report.overall["pixels"] == sum(r["pixels"] for r in report.rows)
    assert report.overall["landslide_px"] == sum(r["landslide_px"] for r in report.rows)
    assert 0 <= report.overall["auc"] <= 1
    everything = evaluate(trained, cube, inv, split="all", block_size=128, device="cpu")
    assert len(everything.rows) == 4 and everything.overall["pixels"] == 256 * 256


def test_evaluate_refuses_other_grid_for_held_out_blocks(synthetic, trained, tmp_path):
    d, _, inv, _ = synthetic
    other, _, polys = write_factor_cube(tmp_path / "other.zarr", size=128, seed=1)
    with pytest.raises(InputDataError, match="not on the grid"):
        evaluate(trained, other, inv, split="test", device="cpu")


def test_inventory_outside_the_cube_is_a_clear_error(synthetic, tmp_path):
    import shapely

    _, cube, _, _ = synthetic
    far = write_geojson(tmp_path / "far.geojson", [shapely.box(0, 0, 100, 100)], to_crs=None)
    with pytest.raises(InputDataError, match="no landslide pixel"):
        train(cube, far, tmp_path / "x", TrainConfig(**TINY), progress=False)


def test_ablation_rows(synthetic):
    _, cube, inv, _ = synthetic
    cfg = TrainConfig(**{**TINY, "chips_per_epoch": 8})
    rows = ablation(cube, inv, cfg, epochs=1, base_width=2)
    names = [(r["model"], r["channels"]) for r in rows]
    assert names == [
        ("EnhancedUNet", "7 (with LSI)"),
        ("UNet", "7 (with LSI)"),
        ("EnhancedUNet", "6 (without LSI)"),
        ("UNet", "6 (without LSI)"),
        ("LSI threshold", "1 (LSI only)"),
    ]
    lsi = rows[-1]
    assert lsi["auc"] > 0.8 and lsi["dice"] > 0.2  # the synthetic LSI carries signal
    assert all(math.isnan(r["dice"]) or 0 <= r["dice"] <= 1 for r in rows)


def _app():
    app = typer.Typer()
    app.command("train")(model_commands.train)
    app.command("evaluate")(model_commands.evaluate)
    return app


def test_cli_train_and_evaluate(synthetic, trained, tmp_path):
    _, cube, inv, _ = synthetic
    runner = CliRunner()
    res = runner.invoke(
        _app(),
        ["train", "--cube", str(cube), "--inventory", str(inv), "--out", str(tmp_path),
         "--epochs", "1", "--arch", "unet", "--width", "4", "--depth", "2", "--chip-size", "64",
         "--block-size", "64", "--batch-size", "8", "--chips-per-epoch", "8", "--device", "cpu",
         "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    assert "UNet" in res.output and (tmp_path / "model.safetensors").exists()
    assert f"training curves: {tmp_path / 'training_curves.png'}" in res.output.replace("\n", "")
    res = runner.invoke(
        _app(),
        ["evaluate", "--checkpoint", str(trained), "--cube", str(cube), "--inventory", str(inv),
         "--device", "cpu"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "overall" in res.output and "sha256" in res.output


def test_cli_errors_exit_non_zero_with_one_line(synthetic, tmp_path):
    _, cube, inv, _ = synthetic
    res = CliRunner().invoke(
        _app(),
        ["evaluate", "--checkpoint", str(tmp_path / "none.safetensors"), "--cube", str(cube),
         "--inventory", str(inv)],
    )
    assert res.exit_code == 2
    assert "does not exist" in res.output


@pytest.mark.parametrize("window", [None, 16, 25])
def test_predict_blocks_stitches_windows(window):
    from models.data import block_split
    from models.evaluate import predict_blocks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 70, 90)).astype(np.float32)
    calls = []

    def pointwise(batch):  # a fake Predictor: numpy in, numpy out
        calls.append(batch.shape)
        return 1 / (1 + np.exp(-batch[:, 0]))

    blocks = block_split((70, 90), 32).blocks()
    probs = predict_blocks(pointwise, x, blocks, context=5, window=window)
    full = 1 / (1 + np.exp(-x[0]))
    for b in blocks:
        np.testing.assert_allclose(probs[b.id], full[b.r0 : b.r1, b.c0 : b.c1], rtol=1e-6)
    if window == 16:
        assert any(s[0] > 1 for s in calls)  # equal windows are batched
