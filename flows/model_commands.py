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
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.console import err_console, friendly_errors, out_console

if TYPE_CHECKING:
    from models.evaluate import EvaluationReport

__all__ = ["ablate", "evaluate", "metrics_table", "prepare", "train"]


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


_TEXT_COLUMNS = ("block", "split", "model", "channels", "metric", "checkpoint")


def metrics_table(rows: Sequence[dict], title: str, columns: Iterable[str] | None = None) -> Table:
    """A rich table of metric rows (floats to 3 decimals, NaN as a dash). Number columns
    never shrink below their widest cell, so a narrow console wraps, never truncates."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title)
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    for i, c in enumerate(cols):
        text = c in _TEXT_COLUMNS
        widest = max([len(row[i]) for row in cells] + [1])
        table.add_column(
            c, justify="left" if text else "right", overflow="fold", min_width=None if text else widest
        )
    for row in cells:
        table.add_row(*row)
    return table


def print_table(table: Table, stderr: bool = False) -> None:
    """Print a table whole: when the stream is not a terminal (a file, a pipe), the
    console is made wide enough that no cell is cut to ``0.…``."""
    from rich.console import Console

    console = err_console() if stderr else out_console()
    if not console.is_terminal:
        console = Console(stderr=stderr, width=max(console.width, 10_000))
    console.print(table)


def _write_json(doc: dict, target: str) -> None:
    """JSON to stdout (``-``) or a file."""
    import json
    import sys

    text = json.dumps(doc, indent=2, allow_nan=False)
    if target == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        Path(target).write_text(text + "\n")


def _channels(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(c.strip() for c in value.split(",") if c.strip())


class Outside(str, Enum):
    negative = "negative"
    ignore = "ignore"


@friendly_errors
def train(
    cube: Annotated[Path, typer.Option("--cube", help="Factor Zarr store (dims y, x) or chip store from `slidewatch prepare`.")],
    inventory: Annotated[
        Path,
        typer.Option(
            "--inventory",
            help="Landslide polygons (.geojson/.gpkg), a mask GeoTIFF, or (chip store) a folder of per-chip masks.",
        ),
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
    label_values: Annotated[
        str | None,
        typer.Option(
            "--label-values",
            help="Label convention, e.g. positive=2,negative=1,ignore=0 (several values: 2|3). "
            "Default: mask 0 = negative, 1 = landslide, nodata ignored, other values refused.",
        ),
    ] = None,
    label_field: Annotated[
        str | None,
        typer.Option("--label-field", help="Polygon attribute holding each feature's class (mapped by --label-values)."),
    ] = None,
    outside: Annotated[
        Outside | None,
        typer.Option("--outside", case_sensitive=False, help="Area outside every polygon: negative (default) or ignore."),
    ] = None,
    split_buffer: Annotated[int, typer.Option("--split-buffer", min=0, help="Pixels around val/test blocks left out of training.")] = 0,
    split_file: Annotated[
        Path | None,
        typer.Option("--split-file", help="Polygons (.geojson/.gpkg) whose 'split' attribute (train/val/test) assigns the blocks."),
    ] = None,
    val_blocks: Annotated[str | None, typer.Option("--val-blocks", help="Validation block ids, e.g. r0c1,r1c2 (see evaluate's table).")] = None,
    test_blocks: Annotated[str | None, typer.Option("--test-blocks", help="Test block ids, e.g. r2c0 (the rest trains).")] = None,
) -> None:
    """Train a landslide U-Net on a factor cube or chip store and an inventory (blocked split:
    random 6:2:2 of the non-empty blocks, or --split-file / --val-blocks --test-blocks)."""
    from models.checkpoint import read_metadata
    from models.data import check_channels
    from models.training import TrainConfig
    from models.training import train as run_train

    resolved = check_channels(cube, _channels(channels))  # before any work: one line naming missing channels

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
        channels=resolved,
        label_values=label_values,
        label_field=label_field,
        outside=outside.value if outside is not None else None,
        split_buffer=split_buffer,
        split_file=str(split_file) if split_file is not None else None,
        split_blocks=_block_lists(val_blocks, test_blocks),
    )
    config = TrainConfig(**cfg_kwargs)
    path = run_train(cube, inventory, out, config, progress=progress)
    meta = read_metadata(path)
    m = meta.metrics
    rows = [
        {"split": "val (best epoch)", **{k: m["val"].get(k) for k in ("dice", "iou", "precision", "recall")}},
        {"split": "test", **{k: m["test"].get(k) for k in ("dice", "iou", "precision", "recall")}},
    ]
    rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
    print_table(metrics_table(rows, f"{meta.architecture}: best epoch {m['best_epoch']} of {m['epochs_run']}"))
    out_console().print(f"checkpoint: {path}", soft_wrap=True)
    from pipeline.products.plots import TRAINING_CURVES_PLOT

    if (path.parent / TRAINING_CURVES_PLOT).is_file():
        out_console().print(f"training curves: {path.parent / TRAINING_CURVES_PLOT}", soft_wrap=True)


def _block_lists(val: str | None, test: str | None) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    from models.splits import parse_block_ids

    lists = tuple((name, tuple(parse_block_ids(ids))) for name, ids in (("val", val), ("test", test)) if ids)
    return lists or None


@friendly_errors
def prepare(
    inputs: Annotated[
        list[Path], typer.Argument(help="GeoTIFFs and/or folders of GeoTIFF chips (any grids and CRSs).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Chip store to write (Zarr v3).")],
    bands: Annotated[
        str | None,
        typer.Option("--bands", help="Band names in band order, e.g. B02,B03,B04,B08 (default: band descriptions)."),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels",
            help="Channels to write: bands and/or ndvi, ndwi, ndbi, ndmi, slope (default: every band + the indices and slope they allow).",
        ),
    ] = None,
    dem: Annotated[
        Path | None, typer.Option("--dem", help="DEM raster warped onto every chip (for dem and slope).")
    ] = None,
    tile: Annotated[int | None, typer.Option("--tile", min=16, help="Cut larger rasters into chips of this many px.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
) -> None:
    """Build a training store from your own GeoTIFFs (one chip per file), for `slidewatch train --cube`."""
    from pipeline.acquire.rasters import prepare_chip_store

    result = prepare_chip_store(
        inputs, out, bands=_channels(bands), channels=_channels(channels), dem=dem, tile=tile,
        overwrite=overwrite, on_chip=lambda name: err_console().print(f"chip {name}"),
    )
    crss = sorted({c["crs"] for c in result.chips})
    out_console().print(f"{len(result.chips)} chip(s) in {', '.join(crss)}; channels: {','.join(result.channels)}")
    out_console().print(f"store: {result.path}")


@friendly_errors
def evaluate(
    checkpoint: Annotated[
        list[Path],
        typer.Option("--checkpoint", help="model.safetensors from train; repeat it for several (e.g. one per seed)."),
    ],
    cube: Annotated[Path, typer.Option("--cube", help="Factor Zarr store.")],
    inventory: Annotated[Path, typer.Option("--inventory", help="Landslide polygons or mask GeoTIFF.")],
    split: Annotated[
        Split, typer.Option("--split", help="Held-out blocks recorded in the checkpoint, or 'all'.")
    ] = Split.test,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0)] = 0.5,
    block_size: Annotated[int | None, typer.Option("--block-size", help="Blocks for --split all.")] = None,
    context: Annotated[int, typer.Option("--context", min=0, help="Input margin around windows, px.")] = 32,
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
    resamples: Annotated[
        int, typer.Option("--resamples", min=0, help="Bootstrap resamples of blocks (0: no intervals).")
    ] = 1000,
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999)] = 0.95,
    boot_seed: Annotated[int, typer.Option("--boot-seed", help="Seed of the bootstrap.")] = 0,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the results as JSON to this file, or '-' for stdout.")
    ] = None,
    plots: Annotated[
        bool,
        typer.Option("--plots/--no-plots", help="Draw pr_curve.png and reliability.png beside the --json file "
                     "(several checkpoints in one picture), or else beside each checkpoint."),
    ] = True,
) -> None:
    """Metrics per held-out block and pooled, with bootstrap intervals, for one or more
    checkpoints on a cube + inventory; several checkpoints are summarised by mean and sd.
    Draws the pooled precision-recall curve and the reliability diagram (with the
    checkpoint's calibrated class thresholds) unless --no-plots."""
    from models.evaluate import REPORT_METRICS, across_checkpoints, evaluate_many

    reports = evaluate_many(
        checkpoint, cube, inventory, split.value, threshold, context, block_size, device.value,
        n_boot=resamples, confidence=confidence, boot_seed=boot_seed,
    )
    summary = across_checkpoints(reports) if len(reports) > 1 else None
    to_stderr = json_out == "-"  # keep stdout pure JSON
    pct = f"{confidence * 100:g} %"
    if len(reports) == 1:
        report = reports[0]
        cols = ["block", "split", "pixels", "landslide_px", "dice", "iou", "precision", "recall", "auc", "pr_auc",
                "recall_small", "recall_medium", "recall_large"]
        print_table(metrics_table(report.table_rows(), f"{checkpoint[0].name} on {split.value} blocks", cols),
                    to_stderr)
        b = report.bootstrap
        print_table(metrics_table(report.interval_rows(), "pooled", ["metric", "value", "low", "high"]), to_stderr)
        (err_console() if to_stderr else out_console()).print(
            f"low/high: {pct} percentile bootstrap interval, {b.get('n_units', 0)} blocks resampled "
            f"{b.get('resamples', 0)}× (seed {b.get('seed', 0)})"
            + ("; intervals need at least 2 scored blocks." if b.get("n_units", 0) < 2 else ""),
            soft_wrap=True,
        )
    else:
        rows = []
        for c, r in zip(checkpoint, reports):
            row = {"checkpoint": c.name if len({p.name for p in checkpoint}) == len(checkpoint) else str(c),
                   "blocks": r.overall.get("blocks"), "dice": r.overall.get("dice")}
            row["dice_low"], row["dice_high"] = r.intervals.get("dice", (math.nan, math.nan))
            row.update({k: r.overall.get(k) for k in REPORT_METRICS if k != "dice"})
            rows.append(row)
        print_table(metrics_table(rows, f"{len(reports)} checkpoints on their {split.value} blocks ({pct} interval of dice)"),
                    to_stderr)
        srows = [{"metric": m, **{k: v for k, v in d.items()}} for m, d in summary.items()]
        print_table(metrics_table(srows, "across checkpoints (sd with n − 1)", ["metric", "mean", "sd", "min", "max", "n"]),
                    to_stderr)
    for c, r in zip(checkpoint, reports):
        (err_console() if to_stderr else out_console()).print(f"sha256: {r.sha256}  {c}", soft_wrap=True)
    if json_out:
        doc = {"split": split.value, "threshold": threshold, "context": context,
               "reports": [r.to_json() for r in reports]}
        if summary is not None:
            doc["across_checkpoints"] = summary
        from models.evaluate import jsonable

        _write_json(jsonable(doc), json_out)
    if plots:
        for written in _evaluation_plots(checkpoint, reports, json_out, split.value):
            (err_console() if to_stderr else out_console()).print(f"plot: {written}", soft_wrap=True)


def _evaluation_plots(checkpoints: Sequence[Path], reports: Sequence[EvaluationReport], json_out: str | None,
                      split: str) -> list[Path]:
    """``pr_curve.png`` and ``reliability.png`` beside the JSON file (every report in one
    picture), or else beside each checkpoint (the reports of checkpoints in one folder
    together). Returns the paths written."""
    from pipeline.products.plots import (
        PR_CURVE_PLOT,
        RELIABILITY_PLOT,
        pr_curve_plot,
        reliability_plot,
        save_plot,
    )

    groups: dict[Path, list[tuple[Path, EvaluationReport]]] = {}
    for c, r in zip(checkpoints, reports):
        folder = Path(json_out).parent if json_out and json_out != "-" else Path(c).parent
        groups.setdefault(folder, []).append((Path(c), r))
    unique_names = len({Path(c).name for c in checkpoints}) == len(checkpoints)
    written = []
    for folder, members in groups.items():
        pr = {(c.name if unique_names else str(c)): r.curves.get("pr", {}) for c, r in members}
        rel = {(c.name if unique_names else str(c)): r.curves.get("reliability", {}) for c, r in members}
        title = f"{split} blocks" if len(members) > 1 else f"{members[0][0].name} on {split} blocks"
        written.append(save_plot(pr_curve_plot(pr, f"Precision-recall, {title}"), folder / PR_CURVE_PLOT))
        written.append(save_plot(reliability_plot(rel, f"Reliability, {title}"), folder / RELIABILITY_PLOT))
    return written


@friendly_errors
def ablate(
    cube: Annotated[Path, typer.Option("--cube", help="Factor Zarr store with the lsi variable.")],
    inventory: Annotated[Path, typer.Option("--inventory")],
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
    base_width: Annotated[int, typer.Option("--width", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds (e.g. 0,1,2): repeat everything per seed.")
    ] = None,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Comma-separated cube variables (default: 6 factors + lsi).")
    ] = None,
    block_size: Annotated[int, typer.Option("--block-size", min=16)] = 512,
    device: Annotated[Device, typer.Option("--device", case_sensitive=False)] = Device.auto,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    depth: Annotated[int, typer.Option("--depth", min=1, max=6)] = 4,
    chip_size: Annotated[int, typer.Option("--chip-size", min=16)] = 128,
    chips_per_epoch: Annotated[int | None, typer.Option("--chips-per-epoch", min=1)] = None,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    resamples: Annotated[int, typer.Option("--resamples", min=0, help="Bootstrap resamples of blocks.")] = 1000,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the rows as JSON to this file, or '-' for stdout.")
    ] = None,
) -> None:
    """Ablation on the test blocks: EnhancedUNet vs UNet vs LSI threshold, with/without LSI."""
    from models.evaluate import ablation, jsonable, summarise_ablation
    from models.training import TrainConfig

    try:
        seed_list = [int(v) for v in seeds.replace(" ", "").split(",") if v] if seeds else [seed]
    except ValueError:
        raise typer.BadParameter(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2.") from None
    cfg_kwargs = {"seed": seed_list[0], "block_size": block_size, "device": device.value, "num_threads": threads,
                  "depth": depth, "chip_size": chip_size, "chips_per_epoch": chips_per_epoch, "lr": lr}
    if _channels(channels):
        cfg_kwargs["channels"] = _channels(channels)
    config = TrainConfig(**cfg_kwargs)
    rows = ablation(cube, inventory, config, epochs=epochs, base_width=base_width, seeds=seed_list,
                    n_boot=resamples,
                    on_row=lambda r: err_console().print(f"done: seed {r['seed']} {r['model']} {r['channels']}"))
    to_stderr = json_out == "-"
    print_table(metrics_table(rows, "ablation (test blocks; dice_low/high: 95 % bootstrap interval over blocks)"),
                to_stderr)
    summary = summarise_ablation(rows) if len(seed_list) > 1 else []
    if summary:
        from models.evaluate import ABLATION_METRICS

        srows = [
            {"model": r["model"], "channels": r["channels"], "seeds": r["seeds"],
             **{m: f"{_fmt(r[f'{m}_mean'])} ± {_fmt(r[f'{m}_sd'])}" for m in ABLATION_METRICS}}
            for r in summary
        ]
        print_table(metrics_table(srows, f"mean ± sd over seeds {','.join(map(str, seed_list))}"), to_stderr)
    if json_out:
        _write_json(jsonable({"rows": rows, "across_seeds": summary}), json_out)
