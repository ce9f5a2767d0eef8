"""Held-out evaluation by block, with bootstrap intervals, across seeds, and the ablation
(enhanced vs plain U-Net vs LSI threshold).

One prediction path for everyone: :func:`evaluate_split` predicts the blocks of a split
with a Predictor (:func:`predict_blocks`: windows of the training chip size, each with
``context`` px of input around it, clipped at the cube edge; labels never cross the
block) and scores each block on the pixels its split counts (:meth:`BlockSplit.mask`:
buffers and empty blocks left out). ``slidewatch evaluate`` (:func:`evaluate`, from a
checkpoint file), the final test of ``slidewatch train`` (:func:`models.training.train`,
from the best weights in memory) and the ablation all call it, so train's test metrics
equal ``evaluate --split test`` on the saved checkpoint.

Curves: every report also carries its pooled precision-recall curve (:func:`pr_curve`, the
points of scikit-learn's ``precision_recall_curve``) and reliability bins
(:func:`reliability_bins`) in :attr:`EvaluationReport.curves`; ``slidewatch evaluate``
draws them (:mod:`pipeline.products.plots`).

Intervals: a percentile bootstrap over blocks (:func:`models.metrics.block_bootstrap`;
1000 seeded resamples, 95 %), for Dice, IoU, precision, recall, ROC AUC, PR AUC and
recall by size class. Several checkpoints (e.g. trained with different seeds) are
summarised by mean, standard deviation, min and max (:func:`across_checkpoints`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from models.checkpoint import CheckpointMetadata, read_metadata
from models.data import (
    IGNORE,
    SPLITS,
    Block,
    BlockSplit,
    NormStats,
    block_split,
)
from models.metrics import (
    SIZE_CLASSES,
    block_bootstrap,
    pr_steps,
    recall_by_size,
    segmentation_metrics,
    unit_counts,
)
from models.networks import count_parameters
from models.predictor import Predictor
from models.training import TrainConfig, TrainingData, fit, prepare_data
from pipeline.core.errors import CheckpointError, InputDataError

__all__ = [
    "DEFAULT_CONTEXT",
    "PR_CURVE_POINTS",
    "RELIABILITY_BINS",
    "EvaluationReport",
    "ablation",
    "across_checkpoints",
    "evaluate",
    "evaluate_many",
    "evaluate_split",
    "evaluation_curves",
    "in_memory_predictor",
    "jsonable",
    "lsi_threshold_baseline",
    "pr_curve",
    "predict_blocks",
    "reliability_bins",
    "score_blocks",
    "summarise_ablation",
    "summarise_seeds",
]

#: input margin (px) around every predicted window, in evaluate, train's final test and ablate
DEFAULT_CONTEXT = 32
#: the pooled metrics reported (and given intervals where the bootstrap supports them)
#: most points a precision-recall curve keeps (longer curves are thinned evenly, ends kept)
PR_CURVE_POINTS = 2000
#: equal-width probability bins of the reliability diagram
RELIABILITY_BINS = 10
REPORT_METRICS = ("dice", "iou", "precision", "recall", "auc", "pr_auc", "recall_small", "recall_medium", "recall_large")


def jsonable(v):
    """JSON-able: NaN/inf → None, numpy scalars → Python, recursively."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


@dataclass
class EvaluationReport:
    """Per-block rows, one pooled row over all evaluated blocks, and the pooled metrics'
    bootstrap intervals (``{metric: (low, high)}``; ``bootstrap`` says how). ``curves``:
    the pooled ``pr`` curve (:func:`pr_curve` with ``average_precision``, ``prevalence``
    and the ``operating_point`` at ``threshold``) and ``reliability`` bins
    (:func:`reliability_bins`, with the checkpoint's ``class_thresholds`` when it has them),
    for :mod:`pipeline.products.plots`; not part of :meth:`to_json`."""

    rows: list[dict]
    overall: dict
    checkpoint: str
    sha256: str | None
    split: str
    threshold: float
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)

    def table_rows(self) -> list[dict]:
        return [*self.rows, self.overall]

    def interval_rows(self) -> list[dict]:
        """One row per metric: ``metric``, ``value`` (pooled), ``low``, ``high``."""
        return [
            {"metric": m, "value": self.overall.get(m, math.nan),
             "low": self.intervals.get(m, (math.nan, math.nan))[0],
             "high": self.intervals.get(m, (math.nan, math.nan))[1]}
            for m in REPORT_METRICS
        ]

    def metrics(self) -> dict:
        """The pooled row without its ``block``/``split`` labels (what train records)."""
        return {k: v for k, v in self.overall.items() if k not in ("block", "split")}

    def to_json(self) -> dict:
        return jsonable(
            {
                "checkpoint": self.checkpoint,
                "sha256": self.sha256,
                "split": self.split,
                "threshold": self.threshold,
                "blocks": self.rows,
                "overall": self.overall,
                "intervals": {m: {"low": lo, "high": hi} for m, (lo, hi) in self.intervals.items()},
                "bootstrap": self.bootstrap,
            }
        )


def predict_blocks(
    predictor: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    blocks: Sequence[Block],
    context: int = DEFAULT_CONTEXT,
    window: int | None = None,
) -> dict[str, np.ndarray]:
    """Probability map per block: ``{block.id: (h, w) float32}`` from a Predictor.

    With ``window=None`` each block is one forward pass over the block grown by
    ``context`` px (clipped at the cube edge). With ``window`` (e.g. the training chip
    size) each block is cut into ``window`` px cores, each predicted with ``context`` px
    around it and cropped back; equal-shaped windows are batched. Windows close to the
    training chip size keep the enhanced network's global channel-attention pooling close
    to what it saw in training.
    """
    _, h, w = x.shape
    out: dict[str, np.ndarray] = {}
    for b in blocks:
        if window is None:
            cores = [(b.r0, b.r1, b.c0, b.c1)]
        else:
            cores = [
                (r, min(r + window, b.r1), c, min(c + window, b.c1))
                for r in range(b.r0, b.r1, window)
                for c in range(b.c0, b.c1, window)
            ]
        prob = np.empty((b.r1 - b.r0, b.c1 - b.c0), dtype=np.float32)
        groups: dict[tuple[int, int], list[tuple[int, ...]]] = {}
        for r0, r1, c0, c1 in cores:
            rr0, rr1 = max(0, r0 - context), min(h, r1 + context)
            cc0, cc1 = max(0, c0 - context), min(w, c1 + context)
            groups.setdefault((rr1 - rr0, cc1 - cc0), []).append((r0, r1, c0, c1, rr0, rr1, cc0, cc1))
        for items in groups.values():
            batch = np.stack([x[:, rr0:rr1, cc0:cc1] for (_, _, _, _, rr0, rr1, cc0, cc1) in items])
            for (r0, r1, c0, c1, rr0, _, cc0, _), pi in zip(items, predictor(batch)):
                prob[r0 - b.r0 : r1 - b.r0, c0 - b.c0 : c1 - b.c0] = pi[
                    r0 - rr0 : r1 - rr0, c0 - cc0 : c1 - cc0
                ]
        out[b.id] = prob
    return out


def score_blocks(
    probs: dict[str, np.ndarray],
    y: np.ndarray,
    blocks: Sequence[Block],
    split_of: dict,
    threshold: float,
    mask: np.ndarray | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    boot_seed: int = 0,
) -> tuple[list[dict], dict, dict, dict, tuple[np.ndarray, np.ndarray]]:
    """Per-block metric rows, a pooled row, bootstrap intervals, the bootstrap's
    settings and the pooled ``(probabilities, labels)`` of the counted pixels. Pixels count where ``y != IGNORE`` and ``mask`` (the split's
    :meth:`~BlockSplit.mask`) is set. Pooled: pixel counts, Dice etc. and both AUCs over
    all blocks' pixels; size-class recall pooled from per-block component counts (a
    landslide cut by a block edge counts as two). The bootstrap resamples blocks that
    have at least one counted pixel."""
    rows, all_p, all_y, units = [], [], [], []
    size_px: dict[str, list[int]] = {name: [0, 0] for name in SIZE_CLASSES}
    for b in blocks:
        yb = y[b.r0 : b.r1, b.c0 : b.c1]
        p = probs[b.id]
        valid = yb != IGNORE
        if mask is not None:
            valid &= mask[b.r0 : b.r1, b.c0 : b.c1]
        m = segmentation_metrics(p, yb, valid, threshold, by_size=False)
        for name, r in recall_by_size(p >= threshold, yb, valid).items():
            m[f"recall_{name}"] = r["pixel_recall"]
            size_px[name][0] += r["detected_pixels"]
            size_px[name][1] += r["pixels"]
        rows.append({"block": b.id, "split": split_of.get(b.id, ""), **m})
        all_p.append(p[valid])
        all_y.append(yb[valid])
        if valid.any():
            units.append((p, yb, valid))
    overall: dict = {"block": "overall", "split": ",".join(sorted({r["split"] for r in rows}))}
    intervals: dict = {}
    info = {"unit": "block", "n_units": len(units), "resamples": int(n_boot), "confidence": confidence,
            "seed": boot_seed, "method": "percentile"}
    pp, yy = (np.concatenate(all_p), np.concatenate(all_y)) if rows else (np.empty(0, np.float32), np.empty(0, np.uint8))
    if rows:
        overall.update(segmentation_metrics(pp, yy, None, threshold, by_size=False))
        for name, (hit, tot) in size_px.items():
            overall[f"recall_{name}"] = hit / tot if tot else math.nan
        counts = unit_counts(units, threshold)
        intervals = block_bootstrap(counts, n_boot, confidence, boot_seed)
        info["exact_bins"] = counts.exact_bins
    overall["blocks"] = len(units)
    return rows, overall, intervals, info, (pp, yy)


def _scores(prob, target) -> tuple[np.ndarray, np.ndarray]:
    """Finite scores (float64) and their 0/1 labels as booleans, flattened."""
    s = np.asarray(prob, dtype=np.float64).ravel()
    t = np.asarray(target).ravel() == 1
    ok = np.isfinite(s)
    return s[ok], t[ok]


def pr_curve(prob, target, max_points: int = PR_CURVE_POINTS) -> dict:
    """The precision-recall curve of scores ``prob`` against ``target == 1`` (pixels with a
    non-finite score left out): the points of scikit-learn's ``precision_recall_curve``,
    one per distinct score (ties form one step), thresholds ascending, ending at
    (recall 0, precision 1). Returns ``precision``, ``recall`` (lists), ``thresholds`` (one
    fewer), ``points`` (before thinning) and ``thinned``: a curve of more than
    ``max_points`` points keeps that many, evenly spaced along it, both ends kept. Empty
    lists when there is no landslide pixel (the curve is undefined)."""
    s, t = _scores(prob, target)
    n_pos = int(np.count_nonzero(t))
    if n_pos == 0:
        return {"precision": [], "recall": [], "thresholds": [], "points": 0, "thinned": False}
    tp, ranked, at = pr_steps(s, t)
    tp = tp.astype(np.float64)
    precision = np.r_[(tp / ranked)[::-1], 1.0]
    recall = np.r_[(tp / n_pos)[::-1], 0.0]
    thresholds = at[::-1]
    n = precision.size
    thinned = n > max_points
    if thinned:
        keep = np.unique(np.round(np.linspace(0, n - 1, max(max_points, 2))).astype(np.int64))
        precision, recall = precision[keep], recall[keep]
        thresholds = thresholds[keep[keep < n - 1]]
    return {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": thresholds.tolist(),
            "points": int(n), "thinned": bool(thinned)}


def reliability_bins(prob, target, n_bins: int = RELIABILITY_BINS) -> dict:
    """Scores ``prob`` (clipped to [0, 1]; non-finite ones left out) in ``n_bins`` equal bins
    (bin ``k`` holds ``floor(p · n_bins)``, p = 1 in the last): per bin the pixel ``count``,
    the ``mean_predicted`` score and the ``observed_frequency`` of ``target == 1`` (NaN for
    an empty bin), and the bin ``edges``."""
    s, t = _scores(prob, target)
    s = np.clip(s, 0.0, 1.0)
    k = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(k, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, np.bincount(k, weights=s, minlength=n_bins) / count, np.nan)
        freq = np.where(count > 0, np.bincount(k, weights=t.astype(np.float64), minlength=n_bins) / count, np.nan)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(), "count": count.tolist(),
            "mean_predicted": mean_p.tolist(), "observed_frequency": freq.tolist()}


def evaluation_curves(prob, target, threshold: float, overall: dict) -> dict:
    """``{"pr": ..., "reliability": ...}`` of pooled scores (see :class:`EvaluationReport`)."""
    pr = pr_curve(prob, target)
    _, t = _scores(prob, target)
    pr["average_precision"] = overall.get("pr_auc", math.nan)
    pr["prevalence"] = float(t.mean()) if t.size else math.nan
    pr["operating_point"] = {"threshold": float(threshold), "precision": overall.get("precision", math.nan),
                             "recall": overall.get("recall", math.nan)}
    return {"pr": jsonable(pr), "reliability": jsonable(reliability_bins(prob, target))}


def in_memory_predictor(model, channels: Sequence[str], device="auto") -> Predictor:
    """A Predictor over already-normalised inputs (identity statistics): the network
    fresh from training on :attr:`TrainingData.x`. Normalising raw inputs with the
    training statistics inside a checkpoint's Predictor gives the same numbers, bit for
    bit, so both score alike."""
    identity = NormStats((0.0,) * len(channels), (1.0,) * len(channels))
    meta = CheckpointMetadata(model.architecture, model.config(), tuple(channels), identity)
    return Predictor(model, meta, device=device)


def evaluate_split(
    predictor: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    split: BlockSplit,
    which: str,
    threshold: float = 0.5,
    context: int = DEFAULT_CONTEXT,
    window: int | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    boot_seed: int = 0,
    label: str | None = None,
) -> EvaluationReport:
    """Predict and score the blocks of one split (``train``/``val``/``test``) of
    ``split``: the one path behind ``evaluate``, train's final test and the ablation."""
    blocks = split.blocks(which)
    if not blocks:
        raise InputDataError(f"the split has no {which} blocks.", "choose another split or a smaller block size.")
    split_of = {b.id: label or which for b in blocks}
    probs = predict_blocks(predictor, x, blocks, context, window)
    rows, overall, intervals, info, (pooled_p, pooled_y) = score_blocks(
        probs, y, blocks, split_of, threshold, split.mask(which), n_boot, confidence, boot_seed
    )
    info.update({"context": context, "window": window, "buffer": split.buffer})
    curves = evaluation_curves(pooled_p, pooled_y, threshold, overall)
    return EvaluationReport(
        rows, overall, "", getattr(predictor, "checkpoint_sha256", None), label or which, threshold, intervals, info,
        curves,
    )


def _read_inputs(meta: CheckpointMetadata, cube_path, inventory_path):
    """Raw inputs, labels and grid as :func:`models.training.prepare_data` reads them: the
    store (factor cube or chip store), labelled with the convention the checkpoint was
    trained with (keep the two alike; ``test_evaluate`` checks train == evaluate)."""
    from models.data import label_store, open_store
    from models.labels import labels_from_provenance

    store = open_store(cube_path, meta.channels)
    labels, field_name = labels_from_provenance(meta.provenance.get("labels"))
    y = label_store(store, inventory_path, labels=labels, label_field=field_name)
    return store, y


def evaluate(
    checkpoint: str | Path,
    cube_path: str | Path,
    inventory_path: str | Path,
    split: str = "test",
    threshold: float = 0.5,
    context: int = DEFAULT_CONTEXT,
    block_size: int | None = None,
    device: str = "auto",
    window: int | None | str = "chip",
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    boot_seed: int = 0,
) -> EvaluationReport:
    """Metrics per held-out block (and pooled, with bootstrap intervals) for a
    checkpoint on a cube + inventory.

    ``split`` is ``"test"``/``"val"``/``"train"`` (the blocks recorded in the checkpoint,
    less their buffers; the cube must be on the training grid) or ``"all"`` (every
    non-empty block of a fresh ``block_size`` grid, e.g. for a different region).
    ``window="chip"`` predicts in windows of the training chip size (from the
    checkpoint; whole blocks if unknown), ``None`` whole blocks, an int that window
    size; ``context`` px of input surround each window. Raises :class:`CheckpointError`
    when the cube's channels or grid do not fit the checkpoint.
    """
    meta: CheckpointMetadata = read_metadata(checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    store, y = _read_inputs(meta, cube_path, inventory_path)
    x, grid, shape = store.x, store.grid, tuple(store.shape)
    predictor.check_channels(store.channels)

    if split == "all":
        bs = block_size or int(meta.provenance.get("split", {}).get("block_size", 512))
        bsplit = block_split(shape, bs, (1, 0, 0), valid=y != IGNORE)
        which = "train"  # every used block
    elif split in SPLITS:
        sj = meta.provenance.get("split")
        if not sj:
            raise CheckpointError(
                f"{checkpoint} records no train/val/test split.", "evaluate with --split all."
            )
        bsplit = BlockSplit.from_json(sj)
        g = meta.provenance.get("grid", {})
        if tuple(bsplit.shape) != shape or (
            grid is not None and g.get("transform") and not np.allclose(g["transform"], list(grid.transform)[:6])
        ):
            raise InputDataError(
                f"cube {cube_path} (shape {shape}) is not on the grid the checkpoint was "
                f"trained on (shape {tuple(bsplit.shape)}), so its held-out blocks do not apply.",
                "evaluate with --split all for a different region.",
            )
        if not bsplit.blocks(split):
            raise InputDataError(f"the checkpoint's split has no {split} blocks.")
        which = split
    else:
        raise InputDataError(f"unknown split {split!r}; choose train, val, test or all.")
    if window == "chip":
        window = (meta.provenance.get("config") or {}).get("chip_size")
    report = evaluate_split(
        predictor, x, y, bsplit, which, threshold, context, window, n_boot, confidence, boot_seed,
        label="all" if split == "all" else None,
    )
    report.checkpoint = str(checkpoint)
    if meta.calibration.get("class_thresholds"):
        report.curves["reliability"]["class_thresholds"] = list(meta.calibration["class_thresholds"])
    return report


def evaluate_many(checkpoints: Sequence[str | Path], *args, **kwargs) -> list[EvaluationReport]:
    """:func:`evaluate` for each checkpoint (e.g. one per training seed)."""
    return [evaluate(c, *args, **kwargs) for c in checkpoints]


def across_checkpoints(reports: Sequence[EvaluationReport], metrics: Sequence[str] = REPORT_METRICS) -> dict:
    """``{metric: {"mean", "sd", "min", "max", "n"}}`` of the pooled metrics over several
    reports (``sd`` with ``n - 1``; NaN below two); undefined values are left out."""
    return summarise_seeds([r.overall for r in reports], metrics)


def summarise_seeds(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Mean, sample standard deviation, min, max and count of each metric over ``rows``."""
    out = {}
    for m in metrics:
        v = np.array([r.get(m, math.nan) for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        out[m] = {
            "mean": float(v.mean()) if v.size else math.nan,
            "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "min": float(v.min()) if v.size else math.nan,
            "max": float(v.max()) if v.size else math.nan,
            "n": int(v.size),
        }
    return out


# ----------------------------------------------------------------------------- ablation
def _best_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """Threshold on ``score`` maximising Dice over labelled pixels (quantile grid)."""
    v = y != IGNORE
    s, t = score[v], y[v] == 1
    if not t.any():
        return float(np.nanmedian(s)) if s.size else 0.0
    qs = np.unique(np.quantile(s, np.linspace(0.5, 0.999, 120)))
    best, best_q = -1.0, qs[-1]
    for q in qs:
        p = s >= q
        tp = np.count_nonzero(p & t)
        d = 2 * tp / (np.count_nonzero(p) + np.count_nonzero(t))
        if d > best:
            best, best_q = d, q
    return float(best_q)


def lsi_threshold_baseline(data: TrainingData, lsi_channel: str = "lsi", n_boot: int = 1000) -> dict:
    """Threshold the LSI channel alone: threshold fit on validation blocks (max Dice),
    scored on the test blocks like the networks (:func:`score_blocks`). AUCs use the raw
    score (threshold-free). The threshold is in normalised LSI units (z-score with the
    training blocks' mean/std). Returns the pooled metrics, ``threshold`` and
    ``intervals``."""
    i = data.channels.index(lsi_channel)
    lsi = data.x[i]
    yv = np.where(data.split.mask("val"), data.y, IGNORE)
    thr = _best_threshold(lsi, yv)
    test_blocks = data.split.blocks("test")
    probs = {b.id: lsi[b.r0 : b.r1, b.c0 : b.c1] for b in test_blocks}
    _, overall, intervals, _, _ = score_blocks(
        probs, data.y, test_blocks, {b.id: "test" for b in test_blocks}, thr, data.split.mask("test"), n_boot
    )
    return {**overall, "threshold": thr, "intervals": intervals}


ABLATION_METRICS = ("dice", "iou", "precision", "recall", "auc", "pr_auc")


def _ablation_row(model: str, channels: str, seed: int, parameters: int, epochs: int, train_s: float,
                  thr: float, overall: dict, intervals: dict) -> dict:
    row = {"model": model, "channels": channels, "seed": seed, "parameters": parameters, "epochs": epochs,
           "train_s": train_s, "threshold": round(thr, 4)}
    for k in ABLATION_METRICS:
        row[k] = overall.get(k, math.nan)
    lo, hi = intervals.get("dice", (math.nan, math.nan))
    row["dice_low"], row["dice_high"] = lo, hi
    return row


def ablation(
    cube_path: str | Path,
    inventory_path: str | Path,
    config: TrainConfig | None = None,
    epochs: int = 3,
    base_width: int = 8,
    archs: Sequence[str] = ("enhanced", "unet"),
    context: int = DEFAULT_CONTEXT,
    progress: bool = False,
    on_row: Callable[[dict], None] | None = None,
    tune_threshold: bool = True,
    seeds: Sequence[int] | None = None,
    n_boot: int = 1000,
) -> list[dict]:
    """EnhancedUNet vs plain UNet vs LSI threshold, with and without the LSI channel.

    Every network is trained from scratch on the same blocked split and seed (``epochs``
    epochs at ``base_width``, other settings from ``config``, channels from
    ``config.channels``) and scored on the test blocks by :func:`evaluate_split`, the path
    ``evaluate`` uses. With ``tune_threshold`` every variant's probability threshold is
    chosen on the validation blocks (max Dice), as for the LSI threshold, so the
    comparison is fair; otherwise networks use 0.5. ``seeds`` (default: ``config.seed``)
    repeats everything per seed (split, sampling and weights); :func:`summarise_ablation`
    gives mean and spread. Returns one row per variant and seed: ``model``, ``channels``,
    ``seed``, ``parameters``, ``epochs``, ``train_s``, ``threshold``, the pooled test
    metrics (``dice``, ``iou``, ``precision``, ``recall``, ``auc``, ``pr_auc``) and the
    Dice bootstrap interval (``dice_low``, ``dice_high``).
    """
    config = config or TrainConfig()
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for seed in (list(seeds) if seeds else [config.seed]):
        cfg_seed = replace(config, seed=int(seed))
        data = prepare_data(cube_path, inventory_path, cfg_seed)
        with_lsi = list(data.channels)
        variants: list[tuple[str, list[str]]] = [("with LSI", with_lsi)]
        if "lsi" in with_lsi and len(with_lsi) > 1:
            variants.append(("without LSI", [c for c in with_lsi if c != "lsi"]))
        for label, chans in variants:
            sub = data.select(chans)
            for arch in archs:
                cfg = replace(cfg_seed, arch=arch, epochs=epochs, base_width=base_width, channels=tuple(chans))
                t0 = time.perf_counter()
                res = fit(sub, cfg, progress=progress)
                train_s = time.perf_counter() - t0
                pred = in_memory_predictor(res.model, chans, device=cfg.device)
                thr = 0.5
                if tune_threshold:
                    val_blocks = sub.split.blocks("val")
                    vp = predict_blocks(pred, sub.x, val_blocks, context, cfg.chip_size)
                    vmask = sub.split.mask("val")
                    thr = _best_threshold(
                        np.concatenate([vp[b.id].ravel() for b in val_blocks]),
                        np.concatenate(
                            [np.where(vmask[b.r0:b.r1, b.c0:b.c1], sub.y[b.r0:b.r1, b.c0:b.c1], IGNORE).ravel()
                             for b in val_blocks]
                        ),
                    )
                rep = evaluate_split(pred, sub.x, sub.y, sub.split, "test", thr, context, cfg.chip_size, n_boot)
                emit(_ablation_row(res.model.architecture, f"{len(chans)} ({label})", int(seed),
                                   count_parameters(res.model), len(res.history), round(train_s, 1), thr,
                                   rep.overall, rep.intervals))
        if "lsi" in data.channels:
            m = lsi_threshold_baseline(data, n_boot=n_boot)
            emit(_ablation_row("LSI threshold", "1 (LSI only)", int(seed), 1, 0, 0.0, m["threshold"], m,
                               m["intervals"]))
    return rows


def summarise_ablation(rows: Sequence[dict], metrics: Sequence[str] = ABLATION_METRICS) -> list[dict]:
    """One row per (model, channels) over seeds: ``seeds`` (count) and per metric its
    ``<metric>_mean`` and ``<metric>_sd``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["channels"]), []).append(r)
    out = []
    for (model, chans), rs in groups.items():
        summ = summarise_seeds(rs, metrics)
        row = {"model": model, "channels": chans, "seeds": len(rs)}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_sd"] = summ[m]["mean"], summ[m]["sd"]
        out.append(row)
    return out
