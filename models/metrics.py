"""Segmentation metrics in numpy: Dice/F1, IoU, precision, recall, ROC AUC, PR AUC
(average precision), recall by size, and block-bootstrap confidence intervals.

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
    "BOOTSTRAP_METRICS",
    "SIZE_CLASSES",
    "Confusion",
    "UnitCounts",
    "average_precision",
    "block_bootstrap",
    "confusion",
    "curve_metrics_from_counts",
    "dice",
    "iou",
    "metrics_from_confusion",
    "pr_steps",
    "precision",
    "recall",
    "recall_by_size",
    "roc_auc",
    "segmentation_metrics",
    "unit_counts",
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


def average_precision(prob, target, valid=None) -> float:
    """Area under the precision-recall curve as average precision, like scikit-learn's
    ``average_precision_score``: AP = Σₙ (Rₙ − Rₙ₋₁)·Pₙ over the thresholds at each
    distinct score, highest first (tied pixels form one step; no interpolation). Pixels
    with a non-finite score or outside ``valid`` are left out. ``nan`` without positives."""
    s = np.asarray(prob, dtype=np.float64)
    _, t, v = _prep(np.zeros(s.shape, bool), target, valid)
    ok = v & np.isfinite(s)
    s, t = s[ok], t[ok]
    n_pos = int(np.count_nonzero(t))
    if n_pos == 0:
        return float("nan")
    tp, ranked, _ = pr_steps(s, t)
    rec = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, rec]) * tp / ranked))


def pr_steps(score: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps of a precision-recall curve over finite scores ``score`` and boolean labels
    ``truth`` (flat): at each distinct score, highest first (tied pixels form one step), the
    true positives and the pixels scored at or above it, and that score. Precision is
    ``tp / ranked``, recall ``tp / truth.sum()``."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], truth[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last pixel of each distinct score
    return np.cumsum(t)[last], last + 1, s[last]


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
        "pr_auc": average_precision(prob, target, valid),
    }
    if by_size:
        for name, r in recall_by_size(pred, target, valid).items():
            row[f"recall_{name}"] = r["pixel_recall"]
    return row


# ----------------------------------------------------------------------------- bootstrap
#: metrics the block bootstrap gives intervals for
BOOTSTRAP_METRICS = (
    "dice", "iou", "precision", "recall", "auc", "pr_auc", "recall_small", "recall_medium", "recall_large",
)


@dataclass(frozen=True)
class UnitCounts:
    """What the bootstrap needs of each resampling unit (a block), as arrays over units:
    ``confusion (U, 4)`` tp/fp/fn/tn at the threshold; ``size_hits``/``size_pixels``
    ``(U, S)`` detected and total landslide pixels per size class (:data:`SIZE_CLASSES`
    order); ``pos``/``neg`` ``(U, K)`` landslide and background pixels per score bin
    (ascending). Bins are the distinct pooled scores (then AUC and AP from them are exact)
    when there are at most ``max_bins`` of them or units × distinct scores is at most
    ``exact_cells``; else ``max_bins`` pooled-score quantiles."""

    confusion: np.ndarray
    size_hits: np.ndarray
    size_pixels: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    exact_bins: bool

    @property
    def n_units(self) -> int:
        return int(self.confusion.shape[0])


#: Largest units × distinct scores for which the bootstrap's curves are exact (else binned).
EXACT_CELLS = 60_000_000
#: Score bins when the curves cannot be exact (quantiles of the pooled scores).
MAX_BINS = 65_536


def unit_counts(units, threshold: float = 0.5, max_bins: int = MAX_BINS,
                exact_cells: int = EXACT_CELLS) -> UnitCounts:
    """:class:`UnitCounts` from ``units``: a sequence of ``(prob, target, valid)`` arrays
    (any shapes; ``valid`` may be ``None``)."""
    units = list(units)
    prepped = []
    for prob, target, valid in units:
        prob = np.asarray(prob, dtype=np.float32)
        _, t, v = _prep(np.zeros(prob.shape, bool), target, valid)
        v = v & np.isfinite(prob)
        prepped.append((prob, t, v))
    pooled = np.concatenate([p[v] for p, _, v in prepped]) if prepped else np.empty(0, np.float32)
    uniq = np.unique(pooled)
    exact = uniq.size <= max_bins or uniq.size * max(len(prepped), 1) <= exact_cells
    if exact:
        edges, k = uniq, max(uniq.size, 1)
    else:
        edges = np.unique(np.quantile(pooled, np.linspace(0, 1, max_bins + 1)[1:-1]))
        k = edges.size + 1
    n = len(prepped)
    conf = np.zeros((n, 4), dtype=np.float64)
    hits = np.zeros((n, len(SIZE_CLASSES)), dtype=np.float64)
    pix = np.zeros((n, len(SIZE_CLASSES)), dtype=np.float64)
    pos = np.zeros((n, k), dtype=np.float32)  # counts per bin are small integers: exact in float32
    neg = np.zeros((n, k), dtype=np.float32)
    for i, (p, t, v) in enumerate(prepped):
        pred = p >= threshold
        c = confusion(pred, t, v)
        conf[i] = (c.tp, c.fp, c.fn, c.tn)
        for j, r in enumerate(recall_by_size(pred, t, v).values()):
            hits[i, j], pix[i, j] = r["detected_pixels"], r["pixels"]
        s, tt = p[v], t[v]
        idx = np.searchsorted(edges, s, side="left" if exact else "right")
        pos[i] = np.bincount(idx[tt], minlength=k)[:k]
        neg[i] = np.bincount(idx[~tt], minlength=k)[:k]
    return UnitCounts(conf, hits, pix, pos, neg, exact)


def curve_metrics_from_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision from landslide/background counts per score bin
    ``(..., K)`` (ascending score; pixels in one bin are ties). ``nan`` where a class is
    missing."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, -1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(-1) / (n_pos * n_neg)
        tp = np.cumsum(pos[..., ::-1], -1)  # descending thresholds
        fp = np.cumsum(neg[..., ::-1], -1)
        prec = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        ap = (pos[..., ::-1] * prec).sum(-1) / n_pos
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    ap = np.where(n_pos > 0, ap, np.nan)
    return auc, ap


def _metrics_from_sums(conf: np.ndarray, hits: np.ndarray, pix: np.ndarray, pos, neg) -> dict[str, np.ndarray]:
    tp, fp, fn = conf[..., 0], conf[..., 1], conf[..., 2]

    def ratio(a, b):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    auc, ap = curve_metrics_from_counts(pos, neg)
    out = {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "auc": auc,
        "pr_auc": ap,
    }
    for j, name in enumerate(SIZE_CLASSES):
        out[f"recall_{name}"] = ratio(hits[..., j], pix[..., j])
    return out


def block_bootstrap(
    counts: UnitCounts, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over resampling units (blocks): ``n_resamples``
    draws of as many units as there are, with replacement (seeded); every draw pools its
    units' counts (a unit drawn twice counts twice) and recomputes each metric of
    :data:`BOOTSTRAP_METRICS`. Returns ``{metric: (low, high)}`` at ``confidence``; draws
    where a metric is undefined (e.g. no landslide drawn) are left out of its interval.
    Fewer than two units give ``nan`` intervals (nothing to resample)."""
    n = counts.n_units
    nan = (float("nan"), float("nan"))
    if n < 2 or n_resamples < 1:
        return {m: nan for m in BOOTSTRAP_METRICS}
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)  # (R, U)
    # resamples in chunks, so that the (chunk, bins) curve arrays stay near 64 MB
    step = max(1, int(8_000_000 // max(counts.pos.shape[1], 1)))
    parts = []
    for i in range(0, n_resamples, step):
        wi = w[i:i + step]
        wf = wi.astype(np.float32)
        parts.append(_metrics_from_sums(wi @ counts.confusion, wi @ counts.size_hits, wi @ counts.size_pixels,
                                        wf @ counts.pos, wf @ counts.neg))
    vals = {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}
    lo_q, hi_q = 50 * (1 - confidence), 50 * (1 + confidence)
    out = {}
    for m in BOOTSTRAP_METRICS:
        v = vals[m][np.isfinite(vals[m])]
        out[m] = (float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q))) if v.size else nan
    return out


def pooled_from_counts(counts: UnitCounts) -> dict[str, float]:
    """The pooled metrics of all units once (each unit weight 1), from the counts."""
    w = np.ones((1, counts.n_units))
    vals = _metrics_from_sums(
        w @ counts.confusion, w @ counts.size_hits, w @ counts.size_pixels, w @ counts.pos, w @ counts.neg
    )
    return {k: float(v[0]) for k, v in vals.items()}
