"""Metrics against scikit-learn (when installed) and hand-written references; losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models_testdata import torch_threads  # noqa: F401  (fixture)

from models.losses import DiceBCELoss, FocalDiceLoss, dice_loss, focal_loss, make_loss
from models.metrics import (
    BOOTSTRAP_METRICS,
    Confusion,
    average_precision,
    block_bootstrap,
    confusion,
    curve_metrics_from_counts,
    dice,
    iou,
    pooled_from_counts,
    precision,
    recall,
    recall_by_size,
    roc_auc,
    segmentation_metrics,
    unit_counts,
)

pytestmark = pytest.mark.usefixtures("torch_threads")


def _masks(seed, shape=(40, 50), p=0.3):
    rng = np.random.default_rng(seed)
    target = (rng.random(shape) < p).astype(np.uint8)
    prob = np.clip(0.35 * target + rng.random(shape) * 0.8, 0, 1).astype(np.float32)
    prob[rng.random(shape) < 0.05] = 0.5  # ties
    return prob, target


def _reference(pred, t):
    tp = np.sum(pred & t)
    fp = np.sum(pred & ~t)
    fn = np.sum(~pred & t)
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn), tp / (tp + fp), tp / (tp + fn)


def _auc_reference(s, t):
    pos, neg = s[t], s[~t]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return gt / (pos.size * neg.size)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_reference_formulas(seed):
    prob, target = _masks(seed)
    pred = prob >= 0.5
    t = target == 1
    d, j, p, r = _reference(pred, t)
    assert dice(pred, target) == pytest.approx(d)
    assert iou(pred, target) == pytest.approx(j)
    assert precision(pred, target) == pytest.approx(p)
    assert recall(pred, target) == pytest.approx(r)
    assert roc_auc(prob, target) == pytest.approx(_auc_reference(prob.ravel(), t.ravel()))


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed")
    prob, target = _masks(seed)
    pred = prob >= 0.5
    yt, yp = target.ravel(), pred.ravel().astype(int)
    assert dice(pred, target) == pytest.approx(skm.f1_score(yt, yp))
    assert iou(pred, target) == pytest.approx(skm.jaccard_score(yt, yp))
    assert precision(pred, target) == pytest.approx(skm.precision_score(yt, yp))
    assert recall(pred, target) == pytest.approx(skm.recall_score(yt, yp))
    assert roc_auc(prob, target) == pytest.approx(skm.roc_auc_score(yt, prob.ravel()))


def test_valid_mask_excludes_pixels_and_empty_cases_are_nan():
    target = np.array([[1, 0], [255, 1]], dtype=np.uint8)
    pred = np.array([[1, 1], [1, 0]], dtype=bool)
    c = confusion(pred, target, target != 255)
    assert c == Confusion(tp=1, fp=1, fn=1, tn=0)
    z = np.zeros((3, 3), np.uint8)
    assert np.isnan(dice(z.astype(bool), z))
    assert np.isnan(roc_auc(np.random.rand(3, 3), z))
    assert Confusion(1, 2, 3, 4) + Confusion(1, 1, 1, 1) == Confusion(2, 3, 4, 5)


def test_recall_by_size_classes():
    t = np.zeros((60, 60), np.uint8)
    t[1:3, 1:3] = 1  # 4 px: small
    t[10:15, 10:15] = 1  # 25 px: medium
    t[30:45, 30:45] = 1  # 225 px: large
    pred = np.zeros_like(t, dtype=bool)
    pred[10:15, 10:13] = True  # 15 of 25 medium px
    pred[30:45, 30:45] = True
    r = recall_by_size(pred, t)
    assert r["small"]["count"] == 1 and r["small"]["pixel_recall"] == 0.0
    assert r["medium"]["pixel_recall"] == pytest.approx(15 / 25)
    assert r["medium"]["object_recall"] == 1.0  # >= 50 % of the component found
    assert r["large"]["pixel_recall"] == 1.0
    m = segmentation_metrics(pred.astype(np.float32), t)
    assert m["recall_large"] == 1.0 and m["landslide_px"] == 254


def test_losses_behave():
    torch.manual_seed(0)
    t = (torch.rand(2, 16, 16) > 0.7).float()
    good = (t * 2 - 1) * 8  # confident and right
    bad = -good
    for fn in (DiceBCELoss(), FocalDiceLoss(), make_loss("dice_bce"), make_loss("focal_dice")):
        assert float(fn(good, t)) < 0.05 < float(fn(bad, t))
    assert float(dice_loss(good, t)) < 0.01
    assert float(focal_loss(bad, t)) > float(focal_loss(good, t))
    # invalid pixels do not count
    valid = torch.zeros_like(t, dtype=torch.bool)
    valid[0] = True
    mixed = torch.where(valid, good, bad)
    assert float(DiceBCELoss()(mixed, t, valid)) < 0.05
    with pytest.raises(ValueError):
        make_loss("nope")


# ----------------------------------------------------------------------------- PR AUC, bootstrap
def test_average_precision_by_hand():
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.7 (neg: tie), 0.1 (pos), 0.05 (neg)
    prob = np.array([0.9, 0.8, 0.7, 0.7, 0.1, 0.05])
    t = np.array([1, 0, 1, 0, 1, 0], np.uint8)
    # thresholds 0.9: P=1, R=1/3; 0.8: R same; 0.7 (tie): P=2/4, R=2/3; 0.1: P=3/5, R=1
    assert average_precision(prob, t) == pytest.approx(1 / 3 * 1 + 1 / 3 * 0.5 + 1 / 3 * 0.6)
    assert average_precision(prob, t, np.array([1, 1, 1, 0, 1, 1], bool)) == pytest.approx(
        1 / 3 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4  # the tied negative left out
    )
    assert np.isnan(average_precision(prob, np.zeros(6, np.uint8)))
    assert segmentation_metrics(prob, t, by_size=False)["pr_auc"] == pytest.approx(average_precision(prob, t))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_scikit_learn(seed):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed")
    prob, target = _masks(seed)
    assert average_precision(prob, target) == pytest.approx(
        skm.average_precision_score(target.ravel(), prob.ravel()), rel=1e-12
    )
    v = np.random.default_rng(seed).random(target.shape) < 0.7
    assert average_precision(prob, target, v) == pytest.approx(
        skm.average_precision_score(target[v], prob[v]), rel=1e-12
    )


def _units(seed, n=6):
    prob, target = _masks(seed, shape=(12 * n, 30))
    prob = np.round(prob, 2)  # ties
    valid = np.random.default_rng(seed).random(target.shape) < 0.9
    return [(prob[12 * i : 12 * (i + 1)], target[12 * i : 12 * (i + 1)], valid[12 * i : 12 * (i + 1)]) for i in range(n)], (prob, target, valid)


@pytest.mark.parametrize("seed", range(3))
def test_pooled_counts_equal_exact_metrics(seed):
    units, (prob, target, valid) = _units(seed)
    c = unit_counts(units, threshold=0.5)
    assert c.exact_bins and c.n_units == 6
    pooled = pooled_from_counts(c)
    exact = segmentation_metrics(prob, target, valid, 0.5)
    for k in ("dice", "iou", "precision", "recall", "auc", "pr_auc"):
        assert pooled[k] == pytest.approx(exact[k], rel=1e-12), k
    # binned by quantiles (fewer bins than distinct scores) stays close
    coarse = pooled_from_counts(unit_counts(units, 0.5, max_bins=16))
    assert coarse["auc"] == pytest.approx(exact["auc"], abs=0.02)
    auc, ap = curve_metrics_from_counts(np.array([[0, 1, 1]]), np.array([[1, 1, 0]]))
    assert auc[0] == pytest.approx(0.875) and ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_block_bootstrap_is_seeded_and_brackets_the_pooled_value():
    units, (prob, target, valid) = _units(0, n=12)
    c = unit_counts(units)
    a = block_bootstrap(c, 1000, 0.95, seed=0)
    np.testing.assert_equal(a, block_bootstrap(c, 1000, 0.95, seed=0))
    assert a["dice"] != block_bootstrap(c, 1000, 0.95, seed=1)["dice"]
    assert set(a) == set(BOOTSTRAP_METRICS)
    pooled = segmentation_metrics(prob, target, valid)
    for k in ("dice", "iou", "precision", "recall", "auc", "pr_auc"):
        lo, hi = a[k]
        assert lo <= pooled[k] <= hi and hi - lo < 0.3, k
    narrow = block_bootstrap(c, 1000, 0.5, seed=0)
    assert narrow["dice"][1] - narrow["dice"][0] < a["dice"][1] - a["dice"][0]
    # identical blocks: every resample is the pooled value
    same = unit_counts([units[0]] * 5)
    lo, hi = block_bootstrap(same, 200)["dice"]
    assert lo == pytest.approx(hi) == pytest.approx(segmentation_metrics(*units[0])["dice"])
    # one block: nothing to resample
    assert all(np.isnan(v).all() for v in block_bootstrap(unit_counts(units[:1]), 100).values())


def test_bootstrap_curves_are_exact_for_many_distinct_scores():
    """Above 4096 distinct scores the bootstrap used quantile bins, whose AP missed the
    exact one by up to 0.02 on the demo (so the interval could exclude the pooled value);
    now the curves stay exact while units × distinct scores fit in memory."""
    from models.metrics import block_bootstrap, pooled_from_counts, unit_counts

    rng = np.random.default_rng(3)
    units = []
    for _ in range(4):
        t = rng.random((100, 100)) < 0.01
        p = np.where(t, rng.uniform(0.6, 1.0, t.shape), rng.beta(1, 30, t.shape))
        p = np.where(~t & (rng.random(t.shape) < 0.003), rng.uniform(0.6, 1.0, t.shape), p).astype(np.float32)
        units.append((p, t, None))
    counts = unit_counts(units)
    assert counts.exact_bins and counts.pos.shape[1] > 4096
    p_all = np.concatenate([u[0].ravel() for u in units])
    t_all = np.concatenate([u[1].ravel() for u in units])
    pooled = pooled_from_counts(counts)
    assert pooled["pr_auc"] == pytest.approx(average_precision(p_all, t_all), abs=1e-9)
    lo, hi = block_bootstrap(counts, 200)["pr_auc"]
    assert lo <= pooled["pr_auc"] <= hi
