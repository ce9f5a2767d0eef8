"""Train a landslide segmentation network from a factor cube and an inventory.

:func:`train` = :func:`prepare_data` (read cube, rasterise inventory, blocked split,
normalisation over the training blocks) + :func:`fit` (seeded training with early stopping
on validation Dice) + :func:`~models.checkpoint.save_checkpoint`. The ablation in
:mod:`models.evaluate` reuses :func:`prepare_data` and :func:`fit` in memory.

Defaults differ from the paper where the paper's choice suits a GPU and 50 epochs:
``lr=1e-3`` (paper 1e-5) so that a few CPU epochs learn something; the paper's batch 16,
128 px chips and 6:2:2 split are kept.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import HYPERPARAMETER_BOUNDS, save_checkpoint, sha256
from models.data import (
    IGNORE,
    BlockSplit,
    ChipLayout,
    ChipSampler,
    Grid,
    NormStats,
    block_split,
    compute_norm_stats,
    label_store,
    normalise,
    open_store,
)
from models.labels import LabelValues, label_provenance, parse_label_values
from models.splits import SplitSpec, make_split
from models.losses import make_loss
from models.metrics import Confusion, confusion, metrics_from_confusion
from models.networks import DEFAULT_CHANNELS, build_model, count_parameters, landslide_logit
from models.predictor import resolve_device
from pipeline.core.errors import InputDataError
from pipeline.core.files import atomic_write_text

__all__ = ["FitResult", "TrainConfig", "TrainingData", "fit", "prepare_data", "train"]

CHECKPOINT_NAME = "model.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all JSON-able; recorded in the checkpoint's provenance).

    Attributes:
        arch: ``"enhanced"`` (EnhancedUNet) or ``"unet"`` (plain U-Net).
        channels: cube variables used as input channels, in order.
        base_width, depth, num_classes: network size (see :mod:`models.networks`).
        chip_size: training/validation chip size in pixels.
        block_size: side of the split blocks in pixels (whole blocks go to one split).
        split: train/val/test fractions of blocks.
        batch_size, epochs, lr, weight_decay: optimisation (AdamW).
        patience: epochs without validation-Dice improvement before stopping.
        chips_per_epoch: training chips per epoch; ``None`` = as many as tile the
            training blocks (at least one batch).
        positive_fraction: share of chips centred near a landslide pixel.
        loss: ``"dice_bce"`` or ``"focal_dice"``.
        seed: seeds the split, sampling, augmentation and weights.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; mixed precision (fp16) on CUDA when
            ``amp``.
        num_threads: torch CPU threads for this process (``None`` leaves torch's default;
            on a small machine shared with other work, 1 can be several times faster).
        label_values: the label convention as ``--label-values`` takes it
            (``positive=2,negative=1,ignore=0``; see :mod:`models.labels`); ``None`` is
            the default (masks: 0 negative, 1 positive; polygons: every polygon positive).
        label_field: polygon attribute holding each feature's class (mapped by
            ``label_values``); ``None``: every polygon is a landslide.
        outside: the area outside every polygon: ``"negative"`` (default) or ``"ignore"``.
        split_buffer: px around validation and test blocks left out of training (and
            around test blocks out of validation), so neighbours do not leak.
        split_file: polygons whose ``split_attribute`` (train/val/test) assigns blocks
            (a block goes where polygons cover at least half of it); instead of random.
        split_blocks: explicit block ids per split, e.g. ``(("test", ("r2c0",)),)``.
    """

    arch: str = "enhanced"
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    base_width: int = 16
    depth: int = 4
    num_classes: int = 1
    chip_size: int = 128
    block_size: int = 512
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    batch_size: int = 16
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10
    chips_per_epoch: int | None = None
    positive_fraction: float = 0.5
    loss: str = "dice_bce"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_threads: int | None = None
    label_values: str | None = None
    label_field: str | None = None
    outside: str | None = None
    split_buffer: int = 0
    split_file: str | None = None
    split_attribute: str = "split"
    split_blocks: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        self.labels()  # a bad convention fails here, before any work
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))
        if self.block_size < self.chip_size:
            raise InputDataError(
                f"block_size {self.block_size} is smaller than chip_size {self.chip_size}.",
                "use blocks at least one chip wide.",
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise InputDataError("epochs and batch_size must be >= 1.", "give positive numbers.")
        for key, (lo, hi) in HYPERPARAMETER_BOUNDS.items():
            value = getattr(self, key, None)
            if value is not None and not lo <= value <= hi:
                raise InputDataError(f"{key} {value} is outside [{lo}, {hi}] (a network that size would not fit in memory).",
                                     f"use a {key} between {lo} and {hi}; the default width is 16, depth 4.")

    def labels(self) -> LabelValues:
        """The label convention (:func:`models.labels.parse_label_values`)."""
        return parse_label_values(self.label_values, self.outside)


@dataclass
class TrainingData:
    """A normalised cube in memory with its labels, grid, split and statistics."""

    x: np.ndarray  # (C, H, W) float32, normalised, NaN → 0
    y: np.ndarray  # (H, W) uint8: 1 landslide, 0 background, IGNORE unknown
    grid: Grid | None  # None for a chip store (see ``chips``)
    channels: tuple[str, ...]
    split: BlockSplit
    stats: NormStats
    provenance: dict = field(default_factory=dict)
    chips: ChipLayout | None = None  # chips laid side by side, one split block each

    def select(self, channels: Sequence[str]) -> TrainingData:
        """The same data restricted to (and reordered as) ``channels``."""
        idx = [self.channels.index(c) for c in channels]
        stats = NormStats(
            tuple(self.stats.mean[i] for i in idx), tuple(self.stats.std[i] for i in idx)
        )
        return replace(self, x=self.x[idx], channels=tuple(channels), stats=stats)


@dataclass
class FitResult:
    model: torch.nn.Module
    history: list[dict]
    best_epoch: int
    best_val: dict
    seconds: float


def _seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class _ShapeOnly:
    """A grid with a shape only (a chip store): enough for random or id splits."""

    shape: tuple[int, int]
    crs: None = None
    transform: None = None


def prepare_data(
    cube_path: str | Path, inventory_path: str | Path, config: TrainConfig
) -> TrainingData:
    """Read, label, split and normalise. Raises :class:`InputDataError` when the inventory
    puts no landslide pixel on the cube's grid.

    ``cube_path`` is a factor cube or a chip store (``slidewatch prepare``); a chip store's
    chips are laid side by side (:class:`~models.data.ChipLayout`) and each chip is one
    block of the split (``config.block_size`` does not apply). Labels follow
    ``config.labels()``; the convention is recorded in the provenance (``labels``).
    """
    store = open_store(cube_path, config.channels)
    labels = config.labels()
    y = label_store(store, inventory_path, labels=labels, label_field=config.label_field)
    x, grid, channels = store.x, store.grid, store.channels
    nodata = np.all(~np.isfinite(x), axis=0)
    if not np.any(y == 1):
        where = (
            f"the cube's grid (cube bounds {tuple(round(v, 1) for v in grid.bounds)} in {grid.crs})"
            if grid is not None
            else f"any of the {len(store.chips.names)} chips"  # type: ignore[union-attr]
        )
        raise InputDataError(
            f"inventory {inventory_path} puts no landslide pixel on {where} "
            f"(label convention: {labels.to_string()}).",
            "check that the inventory overlaps the data, is in a known CRS and that --label-values "
            "names the landslide value.",
        )
    block_size = store.chips.cell if store.chips is not None else config.block_size
    spec = replace(SplitSpec.from_config(config), block_size=block_size)
    if grid is None and spec.file:
        raise InputDataError(f"--split-file {spec.file} needs a georeferenced factor cube; {cube_path} is a chip store.",
                             "split a chip store by chip (--split-blocks, one block per chip) or at random.")
    split = make_split(spec, grid if grid is not None else _ShapeOnly(store.shape), y)
    y = split.restrict_labels(y)  # buffers and unused blocks are never trained on nor scored
    stats = compute_norm_stats(x, split.mask("train") & ~nodata)
    xn = normalise(x, stats)
    del x
    if grid is not None:
        grid_record = {
            "crs": grid.crs.to_string(),
            "transform": list(grid.transform)[:6],
            "shape": list(grid.shape),
        }
    else:
        grid_record = {"kind": "chips", "shape": list(store.shape)}
    provenance = {
        "cube": str(Path(cube_path).resolve()),
        "inventory": str(Path(inventory_path).resolve()),
        "inventory_sha256": sha256(inventory_path) if Path(inventory_path).is_file() else None,
        "grid": grid_record,
        "split": split.to_json(),
        "labels": label_provenance(labels, inventory_path, config.label_field),
        "landslide_pixels": {
            s: int(np.count_nonzero(split.mask(s) & (y == 1))) for s in ("train", "val", "test")
        },
    }
    if store.chips is not None:
        provenance["chips"] = store.chips.to_json()
    return TrainingData(xn, y, grid, channels, split, stats, provenance, chips=store.chips)


def _stack_tiles(sampler: ChipSampler, which: str) -> tuple[np.ndarray, np.ndarray]:
    tiles = list(sampler.tiles(which))
    if not tiles:
        return (
            np.empty((0, sampler.x.shape[0], sampler.chip_size, sampler.chip_size), np.float32),
            np.empty((0, sampler.chip_size, sampler.chip_size), np.uint8),
        )
    return np.stack([t[0] for t in tiles]), np.stack([t[1] for t in tiles])


def _to_torch(xb: np.ndarray, yb: np.ndarray, device: torch.device):
    x = torch.from_numpy(np.ascontiguousarray(xb)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(yb)).to(device)
    return x, (y == 1).float(), y != IGNORE


def evaluate_chips(
    model: torch.nn.Module,
    xs: np.ndarray,
    ys: np.ndarray,
    loss_fn: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    amp: bool = False,
) -> dict:
    """Loss and pooled pixel metrics (threshold 0.5) of ``model`` on labelled chips."""
    model.eval()
    total = Confusion()
    losses = []
    with torch.inference_mode():
        for i in range(0, len(xs), batch_size):
            x, t, v = _to_torch(xs[i : i + batch_size], ys[i : i + batch_size], device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logit = landslide_logit(model(x))
            losses.append(float(loss_fn(logit.float(), t, v)))
            pred = (logit > 0).cpu().numpy()
            total = total + confusion(pred, ys[i : i + batch_size], ys[i : i + batch_size] != IGNORE)
    out = metrics_from_confusion(total)
    out["loss"] = float(np.mean(losses)) if losses else float("nan")
    out["landslide_px"] = total.tp + total.fn
    return out


def fit(data: TrainingData, config: TrainConfig, progress: bool = False) -> FitResult:
    """Train a fresh network on ``data`` with ``config``; best weights by validation Dice.

    Early stopping monitors validation Dice; if the validation blocks hold no landslide
    pixel it monitors the negative validation loss instead.
    """
    _seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    model = build_model(
        config.arch,
        channels=data.channels,
        num_classes=config.num_classes,
        base_width=config.base_width,
        depth=config.depth,
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = make_loss(config.loss)
    sampler = ChipSampler(
        data.x, data.y, data.split, "train", config.chip_size, config.positive_fraction, config.seed
    )
    xv, yv = _stack_tiles(sampler, "val")
    if config.chips_per_epoch is None:
        area = int(data.split.mask("train").sum())
        n_chips = max(config.batch_size, math.ceil(area / config.chip_size**2))
    else:
        n_chips = max(1, config.chips_per_epoch)
    steps = math.ceil(n_chips / config.batch_size)

    history: list[dict] = []
    best_score, best_epoch, best_state, best_val = -math.inf, 0, None, {}
    since_best = 0
    t_start = time.perf_counter()

    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
        )
        bar.start()
        task = bar.add_task(f"train {model.architecture}", total=config.epochs * steps, info="")
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            train_losses = []
            hits = torch.zeros(3, dtype=torch.float64, device=device)  # tp, fp, fn of the training batches
            for _ in range(steps):
                xb, yb = sampler.sample(config.batch_size, augment=True)
                x, t, v = _to_torch(xb, yb, device)
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    logit = landslide_logit(model(x))
                loss = loss_fn(logit.float(), t, v)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                train_losses.append(float(loss.detach()))
                with torch.no_grad():
                    pred, pos = (logit.detach() > 0) & v, (t > 0.5) & v
                    hits += torch.stack([(pred & pos).sum(), (pred & ~pos).sum(), (~pred & pos).sum()]).double()
                if bar is not None:
                    bar.advance(task)
            val = evaluate_chips(model, xv, yv, loss_fn, device, config.batch_size, amp)
            has_pos = val["landslide_px"] > 0
            score = val["dice"] if has_pos else -val["loss"]
            if not math.isfinite(score):
                score = 0.0 if has_pos else -math.inf
            tp, fp, fn = (float(h) for h in hits.cpu())
            row = {
                "epoch": epoch,
                "train_loss": float(np.mean(train_losses)),
                "train_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else float("nan"),
                "val_loss": val["loss"],
                "val_dice": val["dice"],
                "val_iou": val["iou"],
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(row)
            if score > best_score:
                best_score, best_epoch, best_val = score, epoch, val
                best_state = copy.deepcopy(model.state_dict())
                since_best = 0
            else:
                since_best += 1
            if bar is not None:
                bar.update(
                    task,
                    info=f"epoch {epoch} loss {row['train_loss']:.3f} "
                    f"val dice {row['val_dice']:.3f} (best {best_epoch})",
                )
            if since_best >= config.patience:
                break
    finally:
        if bar is not None:
            bar.stop()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, history, best_epoch, best_val, time.perf_counter() - t_start)


def train(
    cube_path: str | Path,
    inventory_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train from a factor cube and an inventory; write ``out_dir/model.safetensors``.

    Also writes ``out_dir/training.json`` (config, per-epoch history, split) and
    ``out_dir/training_curves.png`` (train/val loss and Dice per epoch,
    :func:`pipeline.products.plots.training_curves_plot`). Returns the checkpoint
    path. The checkpoint's metrics hold the best validation metrics (on chips) and the
    pooled test metrics with bootstrap intervals, computed by
    :func:`models.evaluate.evaluate_split` exactly as ``slidewatch evaluate --split test``
    computes them on the saved checkpoint (use it for per-block numbers).
    """
    config = config or TrainConfig()
    data = prepare_data(cube_path, inventory_path, config)
    result = fit(data, config, progress=progress)
    # Final test: the path `slidewatch evaluate --split test` takes on the saved checkpoint
    # (same blocks, windows, context and scoring), from the best weights in memory.
    from models.evaluate import DEFAULT_CONTEXT, evaluate_split, in_memory_predictor

    device = next(result.model.parameters()).device
    report = evaluate_split(
        in_memory_predictor(result.model, data.channels, device=device),
        data.x, data.y, data.split, "test", 0.5, DEFAULT_CONTEXT, config.chip_size,
    )
    test = report.metrics()

    def _clean(d: dict) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "val": _clean(result.best_val),
        "test": _clean(test),
        "test_intervals": report.to_json()["intervals"],
        "test_bootstrap": report.to_json()["bootstrap"],
        "parameters": count_parameters(result.model),
        "train_seconds": round(result.seconds, 2),
    }
    provenance = {**data.provenance, "config": asdict(config)}
    # what the classes mean (thresholds from the validation blocks) and the world it learnt
    from models.calibration import class_thresholds, input_ranges, training_world

    in_memory = in_memory_predictor(result.model, data.channels, device=device)
    calibration = class_thresholds(in_memory, data.x, data.y, data.split, DEFAULT_CONTEXT, config.chip_size)
    inputs = input_ranges(data.x, data.stats, data.split.mask("train"), data.channels)
    world = training_world(str(cube_path), data.chips is not None)
    out_dir = Path(out_dir)
    path = save_checkpoint(
        out_dir / CHECKPOINT_NAME, result.model, data.stats, provenance=provenance, metrics=metrics,
        calibration=calibration, inputs=inputs, world=world,
    )
    atomic_write_text(
        out_dir / "training.json",
        json.dumps(
            {
                "checkpoint": path.name,
                "sha256": sha256(path),
                "config": asdict(config),
                "history": [_clean(h) for h in result.history],
                "metrics": metrics,
                "split": data.split.to_json(),
            },
            indent=2,
        ),
    )
    from pipeline.products.plots import (
        TRAINING_CURVES_PLOT,
        save_plot,
        training_curves_plot,
    )

    save_plot(training_curves_plot(result.history, result.best_epoch,
                                   f"{result.model.architecture}: best epoch {result.best_epoch} of "
                                   f"{len(result.history)}"), out_dir / TRAINING_CURVES_PLOT)
    return path
