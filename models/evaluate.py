"""Held-out evaluation by block, and the ablation (enhanced vs plain U-Net vs LSI threshold).

Every block is predicted as one window grown by ``context`` pixels on each side (inputs
only, clipped at the cube edge; labels never cross the block), then scored on its own
pixels. Rows are plain dicts, ready to print.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.checkpoint import CheckpointMetadata, read_metadata
from models.data import IGNORE, SPLITS, Block, BlockSplit, NormStats, block_split, open_cube, rasterize_inventory
from models.metrics import SIZE_CLASSES, recall_by_size, roc_auc, segmentation_metrics
from models.networks import count_parameters
from models.predictor import Predictor
from models.training import TrainConfig, TrainingData, fit, prepare_data
from pipeline.core.errors import CheckpointError, InputDataError

__all__ = ["EvaluationReport", "ablation", "evaluate", "lsi_threshold_baseline", "predict_blocks"]


@dataclass
class EvaluationReport:
    """Per-block rows and one pooled row over all evaluated blocks."""

    rows: list[dict]
    overall: dict
    checkpoint: str
    sha256: str | None
    split: str
    threshold: float

    def table_rows(self) -> list[dict]:
        return [*self.rows, self.overall]


def predict_blocks(
    predictor: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    blocks: Sequence[Block],
    context: int = 32,
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


def _score_blocks(
    probs: dict[str, np.ndarray], y: np.ndarray, blocks: Sequence[Block], split_of: dict, threshold: float
) -> tuple[list[dict], dict]:
    """Per-block metric rows and a pooled row (pixel counts and AUC over all blocks'
    pixels; size-class recall pooled from per-block component counts, so a landslide cut
    by a block edge counts as two)."""
    rows, all_p, all_y = [], [], []
    size_px: dict[str, list[int]] = {name: [0, 0] for name in SIZE_CLASSES}
    for b in blocks:
        yb = y[b.r0 : b.r1, b.c0 : b.c1]
        p = probs[b.id]
        valid = yb != IGNORE
        m = segmentation_metrics(p, yb, valid, threshold, by_size=False)
        for name, r in recall_by_size(p >= threshold, yb, valid).items():
            m[f"recall_{name}"] = r["pixel_recall"]
            size_px[name][0] += r["detected_pixels"]
            size_px[name][1] += r["pixels"]
        rows.append({"block": b.id, "split": split_of.get(b.id, ""), **m})
        all_p.append(p.ravel())
        all_y.append(yb.ravel())
    overall: dict = {"block": "overall", "split": ",".join(sorted({r["split"] for r in rows}))}
    if rows:
        overall.update(_pooled(np.concatenate(all_p), np.concatenate(all_y), threshold))
        for name, (hit, tot) in size_px.items():
            overall[f"recall_{name}"] = hit / tot if tot else math.nan
    return rows, overall


def _pooled(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """Pooled pixel metrics and AUC over 1-D pixel vectors (no size classes)."""
    return segmentation_metrics(p, y, y != IGNORE, threshold, by_size=False)


def evaluate(
    checkpoint: str | Path,
    cube_path: str | Path,
    inventory_path: str | Path,
    split: str = "test",
    threshold: float = 0.5,
    context: int = 32,
    block_size: int | None = None,
    device: str = "auto",
    window: int | None | str = "chip",
) -> EvaluationReport:
    """Metrics per held-out block (and pooled) for a checkpoint on a cube + inventory.

    ``split`` is ``"test"``/``"val"``/``"train"`` (the blocks recorded in the checkpoint;
    the cube must be on the training grid) or ``"all"`` (every block of a fresh
    ``block_size`` grid, e.g. for a different region). ``window="chip"`` predicts in
    windows of the training chip size (from the checkpoint; whole blocks if unknown),
    ``None`` whole blocks, an int that window size; ``context`` px of input surround
    each window. Raises :class:`CheckpointError`
    when the cube's channels or grid do not fit the checkpoint.
    """
    meta: CheckpointMetadata = read_metadata(checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    x, grid, channels = open_cube(cube_path, meta.channels)
    predictor.check_channels(channels)
    y = rasterize_inventory(inventory_path, grid)
    y[np.all(~np.isfinite(x), axis=0)] = IGNORE

    if split == "all":
        bs = block_size or int(meta.provenance.get("split", {}).get("block_size", 512))
        bsplit = block_split(grid.shape, bs, (1, 0, 0))
        blocks = bsplit.blocks()
        split_of = {b.id: "all" for b in blocks}
    elif split in SPLITS:
        sj = meta.provenance.get("split")
        if not sj:
            raise CheckpointError(
                f"{checkpoint} records no train/val/test split.", "evaluate with --split all."
            )
        bsplit = BlockSplit.from_json(sj)
        g = meta.provenance.get("grid", {})
        if tuple(bsplit.shape) != tuple(grid.shape) or (
            g.get("transform") and not np.allclose(g["transform"], list(grid.transform)[:6])
        ):
            raise InputDataError(
                f"cube {cube_path} (shape {grid.shape}) is not on the grid the checkpoint was "
                f"trained on (shape {tuple(bsplit.shape)}), so its held-out blocks do not apply.",
                "evaluate with --split all for a different region.",
            )
        blocks = bsplit.blocks(split)
        if not blocks:
            raise InputDataError(f"the checkpoint's split has no {split} blocks.")
        split_of = {b.id: split for b in blocks}
    else:
        raise InputDataError(f"unknown split {split!r}; choose train, val, test or all.")
    if window == "chip":
        window = (meta.provenance.get("config") or {}).get("chip_size")
    probs = predict_blocks(predictor, x, blocks, context, window)
    rows, overall = _score_blocks(probs, y, blocks, split_of, threshold)
    return EvaluationReport(
        rows, overall, str(checkpoint), predictor.checkpoint_sha256, split, threshold
    )


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


def lsi_threshold_baseline(data: TrainingData, lsi_channel: str = "lsi") -> dict:
    """Threshold the LSI channel alone: threshold fit on validation blocks (max Dice),
    scored on the test blocks. AUC uses the raw score (threshold-free). The threshold is
    in normalised LSI units (z-score with the training blocks' mean/std)."""
    i = data.channels.index(lsi_channel)
    lsi = data.x[i]
    val = data.split.mask("val")
    yv = np.where(val, data.y, IGNORE)
    thr = _best_threshold(lsi, yv)
    test_blocks = data.split.blocks("test")
    ys, ss = [], []
    for b in test_blocks:
        ss.append(lsi[b.r0 : b.r1, b.c0 : b.c1].ravel())
        ys.append(data.y[b.r0 : b.r1, b.c0 : b.c1].ravel())
    s, y = np.concatenate(ss), np.concatenate(ys)
    # scale the score into [0, 1] monotonically so segmentation_metrics' threshold applies
    pred_prob = (s >= thr).astype(np.float32)
    m = _pooled(pred_prob, y, 0.5)
    m["auc"] = roc_auc(s, y, y != IGNORE)
    m["threshold"] = thr
    return m


def ablation(
    cube_path: str | Path,
    inventory_path: str | Path,
    config: TrainConfig | None = None,
    epochs: int = 3,
    base_width: int = 8,
    archs: Sequence[str] = ("enhanced", "unet"),
    context: int = 32,
    progress: bool = False,
    on_row: Callable[[dict], None] | None = None,
    tune_threshold: bool = True,
) -> list[dict]:
    """EnhancedUNet vs plain UNet vs LSI threshold, with and without the LSI channel.

    Every network is trained from scratch on the same blocked split and seed (``epochs``
    epochs at ``base_width``, other settings from ``config``) and scored on the test
    blocks. With ``tune_threshold`` every variant's probability threshold is chosen on the
    validation blocks (max Dice), as for the LSI threshold, so the comparison is fair;
    otherwise networks use 0.5. Returns one row per variant: ``model``, ``channels``,
    ``parameters``, ``epochs``, ``train_s``, ``threshold`` and the pooled test metrics
    (``dice``, ``iou``, ``precision``, ``recall``, ``auc``).
    """
    config = config or TrainConfig()
    data = prepare_data(cube_path, inventory_path, config)
    with_lsi = list(data.channels)
    variants: list[tuple[str, list[str]]] = [("with LSI", with_lsi)]
    if "lsi" in with_lsi and len(with_lsi) > 1:
        variants.append(("without LSI", [c for c in with_lsi if c != "lsi"]))
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    test_blocks = data.split.blocks("test")
    split_of = {b.id: "test" for b in test_blocks}
    for label, chans in variants:
        sub = data.select(chans)
        for arch in archs:
            cfg = replace(config, arch=arch, epochs=epochs, base_width=base_width, channels=tuple(chans))
            t0 = time.perf_counter()
            res = fit(sub, cfg, progress=progress)
            train_s = time.perf_counter() - t0
            identity = NormStats((0.0,) * len(chans), (1.0,) * len(chans))
            meta = CheckpointMetadata(
                res.model.architecture, res.model.config(), tuple(chans), identity
            )
            pred = Predictor(res.model, meta, device=cfg.device)
            thr = 0.5
            if tune_threshold:
                val_blocks = data.split.blocks("val")
                vp = predict_blocks(pred, sub.x, val_blocks, context, cfg.chip_size)
                thr = _best_threshold(
                    np.concatenate([vp[b.id].ravel() for b in val_blocks]),
                    np.concatenate([sub.y[b.r0 : b.r1, b.c0 : b.c1].ravel() for b in val_blocks]),
                )
            probs = predict_blocks(pred, sub.x, test_blocks, context, cfg.chip_size)
            _, overall = _score_blocks(probs, sub.y, test_blocks, split_of, thr)
            emit(
                {
                    "model": res.model.architecture,
                    "channels": f"{len(chans)} ({label})",
                    "parameters": count_parameters(res.model),
                    "epochs": len(res.history),
                    "train_s": round(train_s, 1),
                    "threshold": round(thr, 4),
                    **{k: overall.get(k, math.nan) for k in ("dice", "iou", "precision", "recall", "auc")},
                }
            )
    if "lsi" in data.channels:
        m = lsi_threshold_baseline(data)
        emit(
            {
                "model": "LSI threshold",
                "channels": "1 (LSI only)",
                "parameters": 1,
                "epochs": 0,
                "train_s": 0.0,
                "threshold": round(m["threshold"], 4),
                **{k: m.get(k, math.nan) for k in ("dice", "iou", "precision", "recall", "auc")},
            }
        )
    return rows
