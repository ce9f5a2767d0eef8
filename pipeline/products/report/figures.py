"""The report's figures: PNG plots of the run and of its model, embedded as data URIs.

Looked for, in this order (absent ones are simply not shown):

* ``RUN/plots/*.png``, sorted by name: ``alert.png`` (the rainfall that triggered the run,
  drawn by the watch) is linked from the page's alert; any other plot is shown with its
  file name as caption;
* beside the checkpoint recorded in ``run.json`` (``"checkpoint"``: a path as given to
  ``slidewatch run``, so a relative one is tried from the current folder, then from the run
  folder): ``training_curves.png``, ``pr_curve.png`` and ``reliability.png``, linked from
  the provenance table's checkpoint row.

A file that is not a PNG, or larger than :data:`MAX_BYTES`, is left out and the page says
so (the report stays one file of reasonable size).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.layout import RunLayout
from pipeline.products.plots import ALERT_PLOT, PR_CURVE_PLOT, RELIABILITY_PLOT, TRAINING_CURVES_PLOT

__all__ = ["MAX_BYTES", "MODEL_FIGURES", "Figure", "find_figures"]

#: Largest figure embedded, bytes.
MAX_BYTES = 8 * 1024 * 1024
#: The model's figures beside its checkpoint, with their captions.
MODEL_FIGURES: dict[str, str] = {
    TRAINING_CURVES_PLOT: "Training curves of the checkpoint: loss and validation scores per epoch.",
    PR_CURVE_PLOT: "Precision–recall curve of the checkpoint on the split `slidewatch evaluate` ran (named in its title).",
    RELIABILITY_PLOT: "Reliability diagram of the checkpoint's probabilities on the split `slidewatch evaluate` ran (named in its title).",
}
_ALERT_CAPTION = "The rainfall alert that triggered this run: the observed or forecast rain against the threshold."
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Figure:
    """One embedded figure: its element id, where it belongs (``alert``, ``run`` or
    ``model``), caption, source file and data URI."""

    id: str
    where: str
    caption: str
    path: Path
    uri: str


def _checkpoint_dir(run_dir: Path, checkpoint: object) -> Path | None:
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        return None
    p = Path(checkpoint).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, run_dir / p]
    for c in candidates:
        if c.parent.is_dir() and (c.is_file() or any((c.parent / n).is_file() for n in MODEL_FIGURES)):
            return c.parent
    return None


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


def find_figures(run_dir: Path, run: Mapping[str, Any]) -> tuple[list[Figure], list[str]]:
    """The run's figures (see the module notes) and one line per file left out."""
    found: list[tuple[str, str, str, Path]] = []
    plots = RunLayout(Path(run_dir)).plots
    if plots.is_dir():
        for png in sorted(plots.glob("*.png")):
            if png.name == ALERT_PLOT:
                found.append(("fig-alert", "alert", _ALERT_CAPTION, png))
            else:
                caption = f"{png.stem.replace('_', ' ')} (plots/{png.name})."
                found.append((f"fig-plot-{_slug(png.stem)}", "run", caption, png))
    model_dir = _checkpoint_dir(Path(run_dir), run.get("checkpoint"))
    if model_dir is not None:
        for name, caption in MODEL_FIGURES.items():
            png = model_dir / name
            if png.is_file():
                found.append((f"fig-model-{_slug(png.stem)}", "model", caption, png))
    figures, skipped = [], []
    for fid, where, caption, png in found:
        try:
            size = png.stat().st_size
            if size > MAX_BYTES:
                skipped.append(f"{png.name} left out: {size / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB limit.")
                continue
            data = png.read_bytes()
        except OSError as exc:
            skipped.append(f"{png.name} left out: it could not be read ({exc.strerror or exc}).")
            continue
        if not data.startswith(_PNG_MAGIC):
            skipped.append(f"{png.name} left out: not a PNG file.")
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        figures.append(Figure(fid, where, caption, png, uri))
    return figures, skipped
