"""Segmentation metrics in numpy: Dice/F1, IoU, precision, recall, ROC AUC, recall by size.

Conventions: ``target`` is a 0/1 mask, ``pred`` a boolean prediction (or ``prob >=
threshold``), ``valid`` an optional boolean mask of pixels that count. When a ratio's
denominator is zero (e.g. no landslide and none predicted) the metric is ``nan``, never a
silent 0 or 1, so averages over blocks can skip it explicitly.

Landslide size classes (connected components of the target, 8-connectivity, in pixels;
at 10 m one pixel is 100 m²):

* ``small``: fewer than 10 px (< 1,000 m²)
* ``medium``: 10 to 99 px (1,000-9,999 m²)
* ``large``: 100 px and more (>= 10,000 m²)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.core.stats import roc_auc as core_roc_auc

__all__ = [
    "SIZE_CLASSES",
    "Confusion",
    "confusion",
    "dice",
    "iou",
    "metrics_from_confusion",
    "precision",
    "recall",
    "recall_by_size",
    "roc_auc",
    "segmentation_metrics",
]

#: size class name -> [min_px, max_px) of a target connected component
SIZE_CLASSES: dict[str, tuple[int, float]] = {
    "small": (1, 10),
    "medium": (10, 100),
    "large": (100, float("inf")),
}
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Confusion:
    """Pixel counts; add two to pool blocks."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )


def _prep(pred, target, valid):
    pred = np.asarray(pred).astype(bool)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    t = target == 1
    if valid is None:
        v = np.ones(t.shape, dtype=bool)
    else:
        v = np.asarray(valid, dtype=bool)
        if v.shape != t.shape:
            raise ValueError(f"valid shape {v.shape} != target shape {t.shape}")
    return pred, t, v


def confusion(pred, target, valid=None) -> Confusion:
    """Pixel confusion counts of a boolean prediction against a 0/1 target."""
    p, t, v = _prep(pred, target, valid)
    p, t = p[v], t[v]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return Confusion(tp, fp, fn, int(p.size - tp - fp - fn))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def metrics_from_confusion(c: Confusion) -> dict[str, float]:
    """Dice (= F1), IoU, precision, recall from counts."""
    return {
        "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn),
        "precision": _ratio(c.tp, c.tp + c.fp),
        "recall": _ratio(c.tp, c.tp + c.fn),
    }


def dice(pred, target, valid=None) -> float:
    """Dice coefficient = F1 score of the landslide class."""
    return metrics_from_confusion(confusion(pred, target, valid))["dice"]


def iou(pred, target, valid=None) -> float:
    """Intersection over union (Jaccard) of the landslide class."""
    return metrics_from_confusion(confusion(pred, target, valid))["iou"]


def precision(pred, target, valid=None) -> float:
    return metrics_from_confusion(confusion(pred, target, valid))["precision"]


def recall(pred, target, valid=None) -> float:
    return metrics_from_confusion(confusion(pred, target, valid))["recall"]


def roc_auc(prob, target, valid=None) -> float:
    """Area under the ROC curve of ``prob`` against ``target == 1`` (ties count half; see
    :func:`pipeline.core.stats.roc_auc`). ``nan`` when only one class is present."""
    prob = np.asarray(prob, dtype=np.float64)
    _, t, v = _prep(np.zeros(prob.shape, bool), target, valid)
    return core_roc_auc(prob, t, v)


def recall_by_size(
    pred,
    target,
    valid=None,
    size_classes: dict[str, tuple[int, float]] = SIZE_CLASSES,
    hit_fraction: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Recall per landslide size class.

    For every size class returns ``count`` (target components), ``pixels``,
    ``detected_pixels``, ``detected_objects`` (raw counts, for pooling over blocks),
    ``pixel_recall`` (share of the class's landslide pixels predicted) and
    ``object_recall`` (share of components with at least ``hit_fraction`` of their pixels
    predicted). Components are 8-connected.
    """
    p, t, v = _prep(pred, target, valid)
    t = t & v
    labels, n = ndimage.label(t, structure=_EIGHT)
    out: dict[str, dict[str, float]] = {
        name: {
            "count": 0,
            "pixels": 0,
            "detected_pixels": 0,
            "detected_objects": 0,
            "pixel_recall": float("nan"),
            "object_recall": float("nan"),
        }
        for name in size_classes
    }
    if n == 0:
        return out
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(t, labels, idx)
    hits = ndimage.sum_labels(p & t, labels, idx)
    for name, (lo, hi) in size_classes.items():
        sel = (sizes >= lo) & (sizes < hi)
        if not sel.any():
            continue
        out[name] = {
            "count": int(sel.sum()),
            "pixels": int(sizes[sel].sum()),
            "detected_pixels": int(hits[sel].sum()),
            "detected_objects": int(np.sum(hits[sel] >= hit_fraction * sizes[sel])),
            "pixel_recall": float(hits[sel].sum() / sizes[sel].sum()),
            "object_recall": float(np.mean(hits[sel] >= hit_fraction * sizes[sel])),
        }
    return out


def segmentation_metrics(
    prob, target, valid=None, threshold: float = 0.5, by_size: bool = True
) -> dict[str, float]:
    """All scalar metrics for a probability map: counts, Dice, IoU, precision, recall, AUC,
    and (``by_size``) ``recall_small/medium/large`` (pixel recall by size class)."""
    prob = np.asarray(prob, dtype=np.float32)
    pred = prob >= threshold
    c = confusion(pred, target, valid)
    row: dict[str, float] = {
        "pixels": c.tp + c.fp + c.fn + c.tn,
        "landslide_px": c.tp + c.fn,
        **metrics_from_confusion(c),
        "auc": roc_auc(prob, target, valid),
    }
    if by_size:
        for name, r in recall_by_size(pred, target, valid).items():
            row[f"recall_{name}"] = r["pixel_recall"]
    return row
