"""``slidewatch train`` and ``slidewatch evaluate``: wiring from the command line to ``models``.

Plain functions with typer annotations; the main CLI registers them with
``app.command("train")(train)`` and ``app.command("evaluate")(evaluate)`` (``ablate`` is
available the same way). No maths here: options are validated, passed to
:mod:`models`, and results printed as rich tables. Slidewatch errors print one line and
exit with the error's code (:func:`flows.console.friendly_errors`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.console import err_console, friendly_errors, out_console

__all__ = ["ablate", "evaluate", "metrics_table", "train"]


class Arch(str, Enum):
    enhanced = "enhanced"
    unet = "unet"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"
    all = "all"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.3f}"
    return "" if v is None else str(v)


def metrics_table(rows: Sequence[dict], title: str, columns: Iterable[str] | None = None) -> Table:
    """A rich table of metric rows (floats to 3 decimals, NaN as a dash)."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="left" if c in ("block", "split", "model", "channels") else "right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    return table


def _channels(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(c.strip() for c in value.split(",") if c.strip())


@friendly_errors
def train(
    cube: Annotated[Path, typer.Option("--cube", help="Factor Zarr store (dims y, x).")],
    inventory: Annotated[
        Path, typer.Option("--inventory", help="Landslide polygons (.geojson/.gpkg) or mask GeoTIFF.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder for model.safetensors.")],
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 50,
    arch: Annotated[Arch, typer.Option("--arch", case_sensitive=False)] = Arch.enhanced,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
    base_width: Annotated[int, typer.Option("--width", min=1, help="Base width.")] = 16,
    depth: Annotated[int, typer.Option("--depth", min=1, max=6)] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    chip_size: Annotated[int, typer.Option("--chip-size", min=16)] = 128,
    block_size: Annotated[int, typer.Option("--block-size", min=16)] = 512,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    patience: Annotated[int, typer.Option("--patience", min=1)] = 10,
    chips_per_epoch: Annotated[int | None, typer.Option("--chips-per-epoch", min=1)] = None,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Comma-separated cube variables (default: 6 factors + lsi).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train a landslide U-Net on a factor cube and an inventory (blocked split)."""
    from models.checkpoint import read_metadata
    from models.training import TrainConfig
    from models.training import train as run_train

    cfg_kwargs = dict(
        arch=arch.value,
        base_width=base_width,
        depth=depth,
        chip_size=chip_size,
        block_size=block_size,
        batch_size=batch_size,
        epochs=epochs,
        lr=lr,
        patience=patience,
        chips_per_epoch=chips_per_epoch,
        seed=seed,
        device=device.value,
        num_threads=threads,
    )
    if _channels(channels):
        cfg_kwargs["channels"] = _channels(channels)
    config = TrainConfig(**cfg_kwargs)
    path = run_train(cube, inventory, out, config, progress=progress)
    meta = read_metadata(path)
    m = meta.metrics
    rows = [
        {"split": "val (best epoch)", **{k: m["val"].get(k) for k in ("dice", "iou", "precision", "recall")}},
        {"split": "test", **{k: m["test"].get(k) for k in ("dice", "iou", "precision", "recall")}},
    ]
    rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
    out_console().print(
        metrics_table(rows, f"{meta.architecture}: best epoch {m['best_epoch']} of {m['epochs_run']}")
    )
    out_console().print(f"checkpoint: {path}")


@friendly_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="model.safetensors from train.")],
    cube: Annotated[Path, typer.Option("--cube", help="Factor Zarr store.")],
    inventory: Annotated[Path, typer.Option("--inventory", help="Landslide polygons or mask GeoTIFF.")],
    split: Annotated[
        Split, typer.Option("--split", help="Held-out blocks recorded in the checkpoint, or 'all'.")
    ] = Split.test,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0)] = 0.5,
    block_size: Annotated[int | None, typer.Option("--block-size", help="Blocks for --split all.")] = None,
    context: Annotated[int, typer.Option("--context", min=0, help="Input margin around blocks, px.")] = 32,
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
) -> None:
    """Metrics per held-out block and overall for a checkpoint on a cube + inventory."""
    from models.evaluate import evaluate as run_evaluate

    report = run_evaluate(
        checkpoint, cube, inventory, split.value, threshold, context, block_size, device.value
    )
    cols = ["block", "split", "pixels", "landslide_px", "dice", "iou", "precision", "recall", "auc",
            "recall_small", "recall_medium", "recall_large"]
    out_console().print(metrics_table(report.table_rows(), f"{checkpoint.name} on {split.value} blocks", cols))
    out_console().print(f"sha256: {report.sha256}")


@friendly_errors
def ablate(
    cube: Annotated[Path, typer.Option("--cube", help="Factor Zarr store with the lsi variable.")],
    inventory: Annotated[Path, typer.Option("--inventory")],
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
    base_width: Annotated[int, typer.Option("--width", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    block_size: Annotated[int, typer.Option("--block-size", min=16)] = 512,
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    depth: Annotated[int, typer.Option("--depth", min=1, max=6)] = 4,
    chip_size: Annotated[int, typer.Option("--chip-size", min=16)] = 128,
    chips_per_epoch: Annotated[int | None, typer.Option("--chips-per-epoch", min=1)] = None,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
) -> None:
    """Ablation on the test blocks: EnhancedUNet vs UNet vs LSI threshold, with/without LSI."""
    from models.evaluate import ablation
    from models.training import TrainConfig

    config = TrainConfig(seed=seed, block_size=block_size, device=device.value, num_threads=threads,
                         depth=depth, chip_size=chip_size, chips_per_epoch=chips_per_epoch, lr=lr)
    rows = ablation(cube, inventory, config, epochs=epochs, base_width=base_width,
                    on_row=lambda r: err_console().print(f"done: {r['model']} {r['channels']}"))
    out_console().print(metrics_table(rows, "ablation (test blocks)"))
