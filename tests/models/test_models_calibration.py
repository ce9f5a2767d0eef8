"""Class thresholds calibrated on validation data, and the training world a checkpoint carries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.calibration import MEDIUM_RECALL, thresholds_from_scores
from pipeline.core.errors import CheckpointError


def test_thresholds_by_hand() -> None:
    # probabilities high to low with their labels
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    out = thresholds_from_scores(p, y)
    # F1 at each cut: 0.9 -> 2/5, 0.8 -> 4/6=.667, 0.7 -> 4/7, 0.6 -> 6/8=.75, 0.5 -> 6/9, 0.4 -> 6/10, 0.3 -> 8/11=.727
    t_med, t_high = out["class_thresholds"]
    assert t_high == 0.6 and out["high"]["f1"] == pytest.approx(0.75)
    assert out["high"]["precision"] == pytest.approx(0.75) and out["high"]["recall"] == pytest.approx(0.75)
    # recall >= 0.9 first reached at 0.3 (all 4 landslides)
    assert t_med == 0.3 and out["medium_or_high"]["recall"] == 1.0 >= MEDIUM_RECALL
    assert out["landslide_pixels"] == 4 and out["pixels"] == 10


def test_ties_and_a_single_level_still_give_ordered_thresholds() -> None:
    out = thresholds_from_scores(np.full(6, 0.4), np.array([1, 0, 1, 0, 0, 0]))
    t_med, t_high = out["class_thresholds"]
    assert t_med < t_high == pytest.approx(0.4)


def _ckpt(tmp_path, **meta):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import EnhancedUNet

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "m.safetensors", EnhancedUNet(("slope", "dem"), base_width=4, depth=2),
                           NormStats((0.0, 0.0), (1.0, 1.0)), **meta)


def test_calibration_inputs_and_world_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.checkpoint import read_metadata

    cal = {"class_thresholds": [0.2, 0.55], "method": "val blocks"}
    inputs = {"ranges": {"slope": [0.0, 42.5], "dem": [100.0, 2000.0]}, "quantiles": [0.005, 0.995]}
    world = {"lsi_params": {"centre": 0.3}, "rain_multiplier": None, "hazard_mode": "decoupled"}
    meta = read_metadata(_ckpt(tmp_path, calibration=cal, inputs=inputs, world=world))
    assert meta.calibration == cal and meta.inputs == inputs and meta.world == world


@pytest.mark.parametrize("meta, needle", [
    ({"calibration": {"class_thresholds": [0.7, 0.2]}}, "0 <= t1 < t2 <= 1"),
    ({"calibration": {"class_thresholds": [0.1, float("nan")]}}, "0 <= t1 < t2 <= 1"),
    ({"inputs": {"ranges": {"slope": [1.0]}}}, "training input ranges of ['slope']"),
    ({"inputs": {"ranges": {"ndvi": [0.0, 1.0]}}}, "training input ranges of ['ndvi']"),
])
def test_bad_calibration_or_ranges_are_refused(tmp_path, meta, needle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match=__import__("re").escape(needle)):
        _ckpt(tmp_path, **meta)


def test_metadata_objects_of_the_wrong_type_are_refused() -> None:
    from models.checkpoint import CheckpointMetadata

    doc = {"format": "slidewatch-checkpoint", "format_version": 1, "architecture": "UNet",
           "hyperparameters": {"base_width": 4, "depth": 2}, "channels": ["slope"],
           "normalisation": {"mean": [0.0], "std": [1.0]}, "world": "everywhere"}
    with pytest.raises(CheckpointError, match="metadata 'world' must be a JSON object"):
        CheckpointMetadata.from_json(json.loads(json.dumps(doc)))


def test_training_calibrates_classes_and_records_its_world(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`train` stores thresholds from the validation blocks that order as documented, and the
    training ranges of every channel."""
    pytest.importorskip("torch")
    from models.checkpoint import read_metadata
    from models.training import TrainConfig, train
    from tests.models.models_testdata import write_factor_cube, write_geojson

    cube, _, polys = write_factor_cube(tmp_path / "c.zarr", size=192, seed=4, n_landslides=30)
    inv = write_geojson(tmp_path / "inv.geojson", polys)
    config = TrainConfig(epochs=2, base_width=4, depth=2, chip_size=64, block_size=64, batch_size=8,
                         chips_per_epoch=16, device="cpu", num_threads=1, seed=0)
    meta = read_metadata(train(cube, inv, tmp_path / "m", config, progress=False))
    t_med, t_high = meta.calibration["class_thresholds"]
    assert 0 <= t_med < t_high <= 1 and meta.calibration["blocks"] in ("val", "train")
    assert meta.calibration["medium_or_high"]["recall"] >= MEDIUM_RECALL
    assert set(meta.inputs["ranges"]) == set(meta.channels)
    lo, hi = meta.inputs["ranges"]["slope"]
    assert lo < hi


def test_a_confident_model_still_gets_a_medium_band() -> None:
    """High alone finds 98 of 100 landslide pixels: medium reaches half of the two it misses."""
    rng = np.random.default_rng(1)
    p_pos = np.r_[rng.uniform(0.5, 1.0, 98), 0.2, 0.05]
    p_neg = rng.uniform(0.0, 0.3, 2000)
    p = np.r_[p_pos, p_neg]
    y = np.r_[np.ones(100, int), np.zeros(2000, int)]
    out = thresholds_from_scores(p, y)
    t_med, t_high = out["class_thresholds"]
    assert out["high"]["recall"] == pytest.approx(0.98)
    assert t_med == pytest.approx(0.2) and t_med < t_high  # the 99th landslide pixel is medium
    assert out["medium_or_high"]["recall"] == pytest.approx(0.99)
