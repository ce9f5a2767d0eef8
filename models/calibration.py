"""What a trained model's classes mean, and the world it was trained in.

**Class thresholds** come from the validation blocks (never the test blocks), from the
model's probabilities there, and are stored in the checkpoint:

* **high** starts at the probability whose yes/no call is best on validation: the
  threshold that maximises F1 (Dice) between "probability ≥ t" and the landslide labels.
  "High" therefore means *the model's own best guess that this pixel is (or would be, under
  the reference event) a landslide*; its validation precision and recall are stored.
* **medium** starts at the highest probability at which medium and high together hold
  :data:`MEDIUM_RECALL` (90 %) of the validation landslide pixels, or, when high alone
  already holds that many, half of the landslide pixels high misses (a model that finds
  98 % with "high" gets a "medium" band that finds 99 %). "Medium" therefore means *less
  likely than high, but where most of the known landslides that high misses lie*.
* **low** is the rest: at most one in ten validation landslide pixels fall there.

The thresholds are on the model's output scale: a network trained with a Dice loss gives
scores that rank well but are not frequencies, so a "high" threshold of 0.02 is not a 2 %
chance; the stored precision and recall say what the classes achieve.

When the validation blocks hold no landslide pixel the training blocks are used, and the
method says so.

**The training world** (:func:`training_world`): the channels' training ranges (0.5th and
99.5th percentiles of the training pixels, raw units), which inference compares its inputs
with (:mod:`pipeline.predict.drift`), and what the training store says of itself: its
factor normalisation ranges, LSI parameters, rain and hazard mode, region and window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.data import IGNORE, NormStats
from models.splits import BlockSplit

__all__ = ["CALIBRATION_VERSION", "INPUT_QUANTILES", "MEDIUM_RECALL", "class_thresholds", "input_ranges", "thresholds_from_scores",
           "training_world"]

#: Share of validation landslide pixels that medium + high together hold.
MEDIUM_RECALL = 0.9
#: Bumped when the class calibration changes (the demo's cached model is then retrained).
CALIBRATION_VERSION = 2
#: The quantiles of the training pixels a checkpoint records per channel.
INPUT_QUANTILES: tuple[float, float] = (0.005, 0.995)
#: Store attributes copied into a checkpoint's ``world``.
_WORLD_ATTRS = ("normalisation_ranges", "lsi_params", "lsi_calibration", "hazard_mode", "rain_intensity_mm_h",
                "rain_duration_days", "rain_multiplier", "rain_source", "region", "time_start", "time_end",
                "slidewatch_fingerprint", "slidewatch_version")


def thresholds_from_scores(prob: np.ndarray, y: np.ndarray, medium_recall: float = MEDIUM_RECALL) -> dict[str, Any]:
    """The two class thresholds from probabilities ``prob`` and 0/1 labels ``y`` (1-D, same
    length), with what they achieve. Exact: every distinct probability is a candidate."""
    p = np.asarray(prob, dtype=np.float64)
    t = np.asarray(y).astype(bool)
    order = np.argsort(-p, kind="mergesort")
    p, t = p[order], t[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    last = np.r_[p[1:] != p[:-1], True]  # the end of each run of equal probabilities
    tp, fp, cand = tp[last], fp[last], p[last]
    pos = int(t.sum())
    recall = tp / max(pos, 1)
    precision = tp / np.maximum(tp + fp, 1)
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    i_high = int(np.argmax(f1))
    target = max(medium_recall, recall[i_high] + (1.0 - recall[i_high]) / 2.0)
    reach = recall >= target - 1e-12
    i_med = int(np.argmax(reach)) if reach.any() else len(cand) - 1
    i_med = max(i_med, i_high)  # medium starts at or below high
    t_high, t_med = float(cand[i_high]), float(cand[i_med])
    if not t_med < t_high:  # no room between them: medium is an empty band just below high
        t_med = float(np.nextafter(np.float32(t_high), np.float32(0)))
    return {
        "class_thresholds": [t_med, t_high],
        "high": {"precision": float(precision[i_high]), "recall": float(recall[i_high]), "f1": float(f1[i_high])},
        "medium_or_high": {"precision": float(precision[i_med]), "recall": float(recall[i_med])},
        "pixels": int(p.size),
        "landslide_pixels": pos,
    }


def class_thresholds(predictor: Any, x: np.ndarray, y: np.ndarray, split: BlockSplit, context: int,
                     window: int | None) -> dict[str, Any]:
    """Calibrate the class thresholds on the validation blocks (see the module docstring);
    ``predictor`` as :func:`models.evaluate.predict_blocks` takes it."""
    from models.evaluate import predict_blocks

    for which in ("val", "train"):
        blocks = split.blocks(which)
        if not blocks:
            continue
        keep = split.mask(which) & (y != IGNORE)
        if not np.any(keep & (y == 1)):
            continue
        probs = predict_blocks(predictor, x, blocks, context, window)
        ps, ys = [], []
        for b in blocks:
            k = keep[b.r0:b.r1, b.c0:b.c1] & np.isfinite(probs[b.id])
            ps.append(probs[b.id][k])
            ys.append(y[b.r0:b.r1, b.c0:b.c1][k] == 1)
        out = thresholds_from_scores(np.concatenate(ps), np.concatenate(ys))
        out["method"] = (f"{which} blocks: high = the F1-best threshold, medium = the highest threshold with "
                         f"recall >= max({MEDIUM_RECALL:g}, half-way from high's recall to 1)")
        out["blocks"] = which
        return out
    return {}


def input_ranges(x_norm: np.ndarray, stats: NormStats, mask: np.ndarray, channels: Sequence[str],
                 quantiles: tuple[float, float] = INPUT_QUANTILES) -> dict[str, Any]:
    """Per-channel ranges of the training pixels in raw units (``x_norm`` is normalised
    with ``stats``; ``mask`` selects the training pixels)."""
    ranges = {}
    for i, name in enumerate(channels):
        v = x_norm[i][mask]
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        lo, hi = np.quantile(v.astype(np.float64), quantiles)
        scale, shift = float(stats.std[i]), float(stats.mean[i])
        ranges[name] = [float(lo) * scale + shift, float(hi) * scale + shift]
    return {"ranges": ranges, "quantiles": list(quantiles)}


def training_world(store_path: str, chips: bool) -> dict[str, Any]:
    """What the training store says of itself (a factor store's attributes; a chip store's
    chip list is in the provenance already)."""
    if chips:
        return {"kind": "chips"}
    import zarr

    try:
        attrs = dict(zarr.open_group(str(store_path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - a store without readable attributes: record nothing
        return {}
    return {k: attrs[k] for k in _WORLD_ATTRS if k in attrs}
