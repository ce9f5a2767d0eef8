"""Spatial splits: empty blocks, buffers, user regions, explicit ids, JSON round trips."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import shapely
from models_testdata import CRS, grid_transform, write_geojson

from models.data import IGNORE
from models.data import BlockSplit as DataBlockSplit
from models.data import block_split as data_block_split
from models.splits import (
    UNUSED,
    BlockSplit,
    SplitSpec,
    block_split,
    make_split,
    split_from_ids,
    split_from_vector,
)
from pipeline.core.errors import InputDataError


def test_data_module_re_exports_the_split():
    assert DataBlockSplit is BlockSplit and data_block_split is block_split
    assert IGNORE == 255


def test_split_without_empty_blocks_is_the_one_earlier_versions_made():
    # assignments computed with the code before models.splits existed
    assert block_split((200, 300), 50, seed=3).assignment == (
        (0, 2, 0, 1, 0, 0), (1, 1, 2, 0, 0, 0), (1, 0, 0, 0, 2, 0), (0, 0, 1, 2, 0, 2),
    )
    y = np.zeros((200, 300), np.uint8)
    y[10, 10] = 1
    y[120, 260] = 1
    assert block_split((200, 300), 50, seed=5, positives=y).assignment == (
        (1, 0, 0, 0, 0, 1), (0, 2, 0, 1, 0, 0), (1, 0, 2, 2, 0, 0), (0, 0, 1, 0, 2, 2),
    )


@pytest.mark.parametrize("seed", range(4))
def test_empty_blocks_count_toward_no_quota(seed):
    # a 10×10 grid of blocks; only a 5-block-wide strip has data (the rest NaN → IGNORE)
    y = np.full((400, 400), IGNORE, np.uint8)
    y[:, :200] = 0
    y[5:400:40, 5:200:40] = 1
    s = block_split(y.shape, 40, (0.6, 0.2, 0.2), seed, positives=y)
    c = s.counts()
    assert c["unused"] == 50
    assert (c["train"], c["val"], c["test"]) == (30, 10, 10)  # 6:2:2 of the 50 used blocks
    for b in s.blocks("test") + s.blocks("val") + s.blocks("train"):
        assert (y[b.r0 : b.r1, b.c0 : b.c1] != IGNORE).any()
    assert not (s.mask("train") | s.mask("val") | s.mask("test"))[:, 200:].any()
    # a block with a single labelled pixel is used; min_valid_fraction can drop it
    y2 = np.full((80, 80), IGNORE, np.uint8)
    y2[:40] = 0
    y2[60, 60] = 0
    assert block_split(y2.shape, 40, seed=seed, positives=y2).counts()["unused"] == 1
    assert block_split(y2.shape, 40, seed=seed, positives=y2, min_valid_fraction=0.1).counts()["unused"] == 2


@pytest.mark.parametrize("buffer", [1, 7])
def test_buffer_keeps_splits_apart(buffer):
    s = block_split((120, 160), 40, (0.6, 0.2, 0.2), seed=2, buffer=buffer)
    masks = {k: s.mask(k) for k in ("train", "val", "test")}
    assert np.array_equal(masks["test"], s.block_mask("test"))  # test blocks stay whole
    from scipy import ndimage

    for near, far in (("train", "val"), ("train", "test"), ("val", "test")):
        # Chebyshev distance from every kept pixel of `near` to `far` is more than buffer
        d = ndimage.distance_transform_cdt(~s.block_mask(far), metric="chessboard")
        assert masks[near].any() and (d[masks[near]] > buffer).all()
        # and the pixels cut are exactly those within the buffer
    later = s.block_mask("val") | s.block_mask("test")
    d = ndimage.distance_transform_cdt(~later, metric="chessboard")
    assert np.array_equal(masks["train"], s.block_mask("train") & (d > buffer))
    y = np.zeros((120, 160), np.uint8)
    r = s.restrict_labels(y)
    kept = masks["train"] | masks["val"] | masks["test"]
    assert (r[~kept] == IGNORE).all() and (r[kept] == 0).all() and (y == 0).all()


def test_json_round_trip_and_old_json_still_loads():
    y = np.zeros((100, 100), np.uint8)
    y[:, 80:] = IGNORE
    s = block_split((100, 100), 20, seed=1, positives=y, buffer=3)
    d = json.loads(json.dumps(s.to_json()))
    assert BlockSplit.from_json(d) == s and d["buffer"] == 3 and d["codes"]["-1"] == "unused"
    assert any(v == UNUSED for row in d["assignment"] for v in row)
    old = {"shape": [64, 64], "block_size": 32, "seed": 0, "assignment": [[0, 1], [2, 0]],
           "codes": {"0": "train", "1": "val", "2": "test"}}
    o = BlockSplit.from_json(old)
    assert o.buffer == 0 and o.method == "random" and [b.id for b in o.blocks("test")] == ["r1c0"]


def test_split_from_ids():
    s = split_from_ids((100, 120), 40, {"val": ["r0c1"], "test": ["r2c0", "r2c2"]}, buffer=2)
    assert [b.id for b in s.blocks("test")] == ["r2c0", "r2c2"]
    assert [b.id for b in s.blocks("val")] == ["r0c1"]
    assert len(s.blocks("train")) == 6 and s.method == "ids" and s.buffer == 2
    valid = np.ones((100, 120), bool)
    valid[:40, :40] = False  # r0c0 empty: not trained on
    s2 = split_from_ids((100, 120), 40, {"test": ["r2c2"]}, valid=valid)
    assert "r0c0" not in [b.id for b in s2.blocks("train")] and s2.counts()["unused"] == 1
    with pytest.raises(InputDataError, match="r9c0"):
        split_from_ids((100, 120), 40, {"test": ["r9c0"]})
    with pytest.raises(InputDataError, match="both"):
        split_from_ids((100, 120), 40, {"test": ["r1c1"], "val": ["r1c1"]})


def test_split_from_vector_regions(tmp_path):
    t = grid_transform()
    size, bs = 120, 40  # 3×3 blocks

    def box(r0, r1, c0, c1):
        x0, y0 = t @ (c0, r0)
        x1, y1 = t @ (c1, r1)
        return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    polys = [box(0, 120, 0, 80), box(0, 40, 80, 120), box(80, 120, 80, 120), box(40, 55, 80, 120)]
    props = [{"split": "train"}, {"split": "Validation"}, {"split": "test"}, {"split": "test"}]
    path = write_geojson(tmp_path / "regions.geojson", polys, to_crs="EPSG:4326", props=props)
    s = split_from_vector(path, CRS, t, (size, size), bs, buffer=4)
    assert [b.id for b in s.blocks("test")] == ["r2c2"]  # r1c2 is less than half covered: unused
    assert [b.id for b in s.blocks("val")] == ["r0c2"]
    assert len(s.blocks("train")) == 6 and s.counts()["unused"] == 1
    assert s.method == "vector" and s.source.endswith("regions.geojson") and len(s.source_sha256) == 64
    assert BlockSplit.from_json(json.loads(json.dumps(s.to_json()))) == s
    bad = write_geojson(tmp_path / "bad.geojson", polys[:1], props=[{"split": "holdout"}])
    with pytest.raises(InputDataError, match="holdout"):
        split_from_vector(bad, CRS, t, (size, size), bs)
    nokey = write_geojson(tmp_path / "nokey.geojson", polys[:1], props=[{"fold": "test"}])
    with pytest.raises(InputDataError, match="no attribute 'split'"):
        split_from_vector(nokey, CRS, t, (size, size), bs)


def test_make_split_from_a_training_config(tmp_path):
    grid = SimpleNamespace(crs=CRS, transform=grid_transform(), shape=(120, 120))
    y = np.zeros((120, 120), np.uint8)
    y[100, 100] = 1
    cfg = SimpleNamespace(block_size=40, split=(0.6, 0.2, 0.2), seed=4)
    assert make_split(SplitSpec.from_config(cfg), grid, y) == block_split((120, 120), 40, seed=4, positives=y)
    cfg = SimpleNamespace(block_size=40, split=(0.6, 0.2, 0.2), seed=4, split_buffer=5,
                          split_blocks={"test": ["r0c0"]})
    s = make_split(SplitSpec.from_config(cfg), grid, y)
    assert s.method == "ids" and s.buffer == 5 and [b.id for b in s.blocks("test")] == ["r0c0"]


def test_train_uses_the_split_the_user_chose(tmp_path):
    """``train --test-blocks --val-blocks --split-buffer``: the checkpoint's split is the one
    asked for, with its buffer, and no buffered pixel is trained on."""
    from typer.testing import CliRunner

    from flows.cli import app
    from models.checkpoint import read_metadata
    from models.splits import BlockSplit
    from tests.models.models_testdata import write_factor_cube, write_geojson

    cube, _, polys = write_factor_cube(tmp_path / "c.zarr", size=192, seed=3, n_landslides=30)
    inv = write_geojson(tmp_path / "inv.geojson", polys)
    args = ["train", "--cube", str(cube), "--inventory", str(inv), "--out", str(tmp_path / "m"),
            "--epochs", "1", "--width", "4", "--depth", "2", "--chip-size", "64", "--block-size", "64",
            "--batch-size", "8", "--chips-per-epoch", "8", "--device", "cpu", "--threads", "1", "--no-progress",
            "--test-blocks", "r2c2", "--val-blocks", "r0c0", "--split-buffer", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    split = BlockSplit.from_json(read_metadata(tmp_path / "m" / "model.safetensors").provenance["split"])
    assert [b.id for b in split.blocks("test")] == ["r2c2"] and [b.id for b in split.blocks("val")] == ["r0c0"]
    assert split.buffer == 8
    train = split.mask("train")
    assert not train[120:128, 128:192].any() and not train[128:192, 120:128].any()  # 8 px around the test block
    assert train[100:118, 128:192].any()
    assert train[80:120, 0:60].all()
