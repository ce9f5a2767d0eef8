"""Pictures where a picture serves better than numbers: a rainfall alert against its
threshold, an evaluation's precision-recall curve and reliability diagram, and a training
run's loss and Dice curves.

Every function here takes plain data (mappings, sequences of numbers: the alert record of
:class:`pipeline.rain.alerts.Alert` ``.as_dict()`` or a ledger line, the curves of
:class:`models.evaluate.EvaluationReport` ``.curves``, a training history) and returns a
:class:`matplotlib.figure.Figure` drawn on its own Agg canvas: no ``pyplot``, no global
backend switch, nothing left open. :func:`save_plot` writes one as a PNG atomically
(:func:`pipeline.core.files.atomic_path`) at the fixed size :data:`FIGSIZE_IN` ×
:data:`DPI` (800 × 500 px). Text that comes from users (region names, labels) is never read
as mathtext.

The PNG names are fixed, as the report looks for them: ``RUN/plots/alert.png``
(:func:`run_plots_dir`), and beside a checkpoint ``training_curves.png``,
``pr_curve.png`` and ``reliability.png``.

Each drawn data artist carries a ``gid`` (``threshold``, ``event``, ``pr``, ...), so
tests read the data back from the Figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

from pipeline.core.classes import CLASS_COLOURS, CLASS_NAMES
from pipeline.core.files import atomic_path
from pipeline.core.layout import RunLayout

__all__ = [
    "ALERT_PLOT",
    "DPI",
    "FIGSIZE_IN",
    "PR_CURVE_PLOT",
    "RELIABILITY_PLOT",
    "TRAINING_CURVES_PLOT",
    "alert_plot",
    "exceedance_ratio",
    "pr_curve_plot",
    "reliability_plot",
    "run_plots_dir",
    "save_plot",
    "training_curves_plot",
]

#: Figure size (inches) and resolution of every plot: 800 × 500 px.
FIGSIZE_IN: tuple[float, float] = (8.0, 5.0)
DPI = 100
#: File names the report looks for.
ALERT_PLOT = "alert.png"
PR_CURVE_PLOT = "pr_curve.png"
RELIABILITY_PLOT = "reliability.png"
TRAINING_CURVES_PLOT = "training_curves.png"

#: Colours and markers of the two kinds of rainfall event.
_KIND_STYLE: dict[str, dict[str, Any]] = {
    "observed": {"color": "#1f4e9c", "marker": "o", "markerfacecolor": "#1f4e9c"},
    "forecast": {"color": "#e66101", "marker": "D", "markerfacecolor": "none"},
}
_SERIES_COLOURS = ("#1f4e9c", "#e66101", "#5e3c99", "#1b9e77", "#d95f02", "#7570b3")


def run_plots_dir(run_dir: str | os.PathLike) -> Path:
    """``RUN/plots``: where a run's pictures go (the report shows every PNG there)."""
    return RunLayout(Path(run_dir)).plots


def _figure(layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_plot(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a reader never sees a part); returns
    the path. The size is the figure's own (no tight cropping), so every PNG is 800 × 500 px."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _num(rec: Mapping[str, Any], key: str) -> float | None:
    v = rec.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def exceedance_ratio(alert: Mapping[str, Any]) -> float | None:
    """How far an alert is above its threshold: ``I / (a·D^-b)`` for an intensity–duration
    threshold, ``accumulation / percentile accumulation`` for a percentile one (``None``
    when the record lacks the numbers)."""
    if alert.get("threshold_kind", "intensity-duration") == "percentile":
        acc, thr = _num(alert, "accumulation_mm"), _num(alert, "threshold_mm")
        return acc / thr if acc is not None and thr else None
    i, thr = _num(alert, "intensity_mm_h"), _num(alert, "threshold_mm_h")
    if i is None or not thr:
        d, a, b = _num(alert, "duration_h"), _num(alert, "a"), _num(alert, "b")
        if i is None or d is None or a is None or b is None or d <= 0:
            return None
        thr = a * d ** -b
    return i / thr


class _PlainLogFormatter(LogFormatterSciNotation):
    """Log-axis tick labels as plain numbers (0.5, 2, 100), not 5×10⁻¹, on the ticks
    matplotlib would label anyway."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _utc(t: Any) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM`` in UTC (the text itself when it is not ISO)."""
    if not t:
        return "?"
    try:
        dt = datetime.fromisoformat(str(t))
    except ValueError:
        return str(t)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return f"{dt:%Y-%m-%d %H:%M}"


def _event_point(ax: Any, rec: Mapping[str, Any], gid: str) -> tuple[float, float] | None:
    d, i = _num(rec, "duration_h"), _num(rec, "intensity_mm_h")
    if d is None or i is None or d <= 0 or i <= 0:  # nothing to place on log axes
        return None
    kind = str(rec.get("kind") or "observed")
    style = _KIND_STYLE.get(kind, _KIND_STYLE["observed"])
    ax.plot([d], [i], linestyle="none", markersize=10, markeredgewidth=2, zorder=5, gid=gid,
            label=f"{kind} event: I = {i:.2f} mm/h over D = {d:.1f} h", **style)
    return d, i


def alert_plot(alert: Mapping[str, Any], others: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """A rainfall alert on log–log intensity–duration axes.

    ``alert`` is an alert record (:meth:`pipeline.rain.alerts.Alert.as_dict`, or its ledger
    line): the event is drawn at (``duration_h``, ``intensity_mm_h``), filled blue when
    ``kind`` is ``observed``, an open orange diamond when ``forecast``; ``others`` are more
    events of the same region (e.g. the observed rain under a forecast alert), drawn alike.
    The threshold ``I = a·D^-b`` is drawn as a line (``gid="threshold"``); for a
    ``percentile`` threshold the percentile accumulation is drawn as the line of constant
    accumulation ``I = threshold_mm / D`` (``gid="percentile"``) with the accumulation
    judged at ``D = window_h`` (``gid="accumulation"``), and ``a·D^-b`` stays as a grey
    reference. The exceedance ratio (:func:`exceedance_ratio`) is written by the event; the
    title names the region, the kind and the event's time (UTC).
    """
    fig = _figure()
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    pts = [p for p in (_event_point(ax, alert, "event"),
                       *(_event_point(ax, o, f"other{n}") for n, o in enumerate(others))) if p is not None]
    percentile = alert.get("threshold_kind") == "percentile"
    window_h, thr_mm, acc_mm = _num(alert, "window_h"), _num(alert, "threshold_mm"), _num(alert, "accumulation_mm")
    xs = [d for d, _ in pts] + ([window_h] if percentile and window_h else [])
    lo = min([1.0, *(x / 3.0 for x in xs)])
    hi = max([240.0, *(x * 3.0 for x in xs)])
    dd = np.geomspace(lo, hi, 200)
    a, b = _num(alert, "a"), _num(alert, "b")
    if a is not None and b is not None and a > 0:
        label = f"I = {a:g}·D^-{b:g}" + (" (intensity–duration reference)" if percentile else " (threshold)")
        ax.plot(dd, a * dd ** -b, color="0.55" if percentile else "#b2182b", linestyle="--" if percentile else "-",
                linewidth=1.2 if percentile else 2.0, gid="threshold", label=label)
    if percentile and thr_mm and window_h:
        pct = _num(alert, "percentile")
        ax.plot(dd, thr_mm / dd, color="#b2182b", linewidth=2.0, gid="percentile",
                label=(f"P{pct:g} " if pct is not None else "percentile ")
                + f"of {window_h:g} h accumulations: {thr_mm:.1f} mm (threshold)")
        if acc_mm is not None and acc_mm > 0:
            ax.plot([window_h], [acc_mm / window_h], linestyle="none", marker="s", markersize=8, color="#b2182b",
                    markerfacecolor="white", markeredgewidth=2, zorder=4, gid="accumulation",
                    label=f"accumulation judged: {acc_mm:.1f} mm over {window_h:g} h")
    ratio = exceedance_ratio(alert)
    if pts and ratio is not None:
        what = "accumulation / threshold" if percentile else "I / threshold"
        ax.annotate(f"{what} = {ratio:.2f}×", xy=pts[0], xytext=(0.98, 0.96), textcoords="axes fraction",
                    ha="right", va="top", fontsize=10, fontweight="bold", gid="ratio", parse_math=False,
                    bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6"},
                    arrowprops={"arrowstyle": "->", "color": "0.3"})
    ax.set_xlim(lo, hi)
    ax.set_ymargin(0.1)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(_PlainLogFormatter())
        axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("rain duration D (h)")
    ax.set_ylabel("mean intensity I (mm/h)")
    ax.grid(True, which="both", linewidth=0.4, alpha=0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    kind = str(alert.get("kind") or "observed")
    when = f"{_utc(alert.get('event_start'))} to {_utc(alert.get('event_end'))} UTC"
    ax.set_title(f"{alert.get('region', '?')}: {kind} rainfall alert\n{when}", parse_math=False)
    return fig


def _series_colour(n: int) -> str:
    return _SERIES_COLOURS[n % len(_SERIES_COLOURS)]


def _array(v: Any) -> np.ndarray:
    return np.asarray([np.nan if x is None else x for x in (v if v is not None else [])], dtype=np.float64)


def pr_curve_plot(curves: Mapping[str, Mapping[str, Any]], title: str = "Precision-recall") -> Figure:
    """Precision against recall, one line per entry of ``curves`` (label → curve).

    A curve is a mapping with ``precision`` and ``recall`` (equal-length sequences, as
    :func:`models.evaluate.pr_curve` gives them: scikit-learn's
    ``precision_recall_curve`` points), and optionally ``average_precision``,
    ``prevalence`` (drawn as the no-skill line) and ``operating_point``
    (``{"threshold", "precision", "recall"}``, marked). A curve without landslide pixels
    (empty) is named in the legend as such. Lines carry ``gid="pr:<label>"``."""
    fig = _figure()
    ax = fig.add_subplot()
    for n, (label, c) in enumerate(curves.items()):
        colour = _series_colour(n)
        p, r = _array(c.get("precision")), _array(c.get("recall"))
        ap = c.get("average_precision")
        if p.size == 0:
            ax.plot([], [], color=colour, label=f"{label}: no landslide pixels, no curve")
            continue
        name = f"{label} (AP {ap:.3f})" if isinstance(ap, (int, float)) and math.isfinite(ap) else label
        ax.plot(r, p, color=colour, linewidth=1.8, drawstyle="steps-post", gid=f"pr:{label}", label=name)
        prev = c.get("prevalence")
        if isinstance(prev, (int, float)) and math.isfinite(prev):
            ax.axhline(prev, color=colour, linestyle=":", linewidth=1.0, gid=f"prevalence:{label}",
                       label=f"no skill ({prev:.3f})")
        op = c.get("operating_point") or {}
        if op.get("precision") is not None and op.get("recall") is not None:
            ax.plot([op["recall"]], [op["precision"]], marker="o", markersize=8, color=colour, linestyle="none",
                    gid=f"operating:{label}", label=f"p ≥ {float(op.get('threshold', math.nan)):g}")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of landslide pixels found)")
    ax.set_ylabel("precision (share of flagged pixels that are landslides)")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, parse_math=False)
    return fig


def reliability_plot(series: Mapping[str, Mapping[str, Any]], title: str = "Reliability") -> Figure:
    """Observed landslide frequency against predicted probability, per probability bin,
    one series per entry of ``series`` (label → bins), with each bin's pixel count below.

    Bins are a mapping as :func:`models.evaluate.reliability_bins` gives them: ``edges``
    (n + 1), ``mean_predicted``, ``observed_frequency`` and ``count`` (n each; an empty
    bin has count 0 and NaN means, and is not drawn), and optionally ``class_thresholds``
    (``[medium, high]``: the calibrated class thresholds, drawn as vertical lines in the
    class colours). The diagonal is perfect calibration. Artists carry
    ``gid="reliability:<label>"`` (the line) and ``gid="count:<label>"`` (the bars)."""
    fig = _figure()
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(gs[0])
    axc = fig.add_subplot(gs[1], sharex=ax)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1.0, label="perfectly calibrated")
    k = max(len(series), 1)
    for n, (label, s) in enumerate(series.items()):
        colour = _series_colour(n)
        edges = _array(s.get("edges"))
        mean_p, freq, count = _array(s.get("mean_predicted")), _array(s.get("observed_frequency")), _array(s.get("count"))
        keep = (count > 0) & np.isfinite(mean_p) & np.isfinite(freq)
        ax.plot(mean_p[keep], freq[keep], marker="o", color=colour, linewidth=1.6, gid=f"reliability:{label}",
                label=label)
        if edges.size == count.size + 1 and count.size:
            width = np.diff(edges) / k
            axc.bar(edges[:-1] + n * width, count, width=width, align="edge", color=colour, alpha=0.7,
                    gid=f"count:{label}")
        for name, t, c in zip(CLASS_NAMES[1:], list(s.get("class_thresholds") or [])[:2], CLASS_COLOURS[1:]):
            if t is None or not math.isfinite(float(t)):
                continue
            for a in (ax, axc):
                a.axvline(float(t), color=c, linewidth=1.4, linestyle="-." if n else "-", gid=f"class:{name}:{label}")
            ax.text(float(t), 0.02, f" {name} ≥ {float(t):.3g}", color=c, fontsize=8, va="bottom", rotation=90,
                    transform=ax.get_xaxis_transform(), parse_math=False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("observed landslide frequency")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="best", fontsize=8)
    ax.tick_params(labelbottom=False)
    axc.set_xlabel("predicted probability (bin mean; bars: bins)")
    axc.set_ylabel("pixels")
    if any(np.nansum(_array(s.get("count"))) > 0 for s in series.values()):
        axc.set_yscale("log")
    ax.set_title(title, parse_math=False)
    return fig


def training_curves_plot(history: Sequence[Mapping[str, Any]], best_epoch: int | None = None,
                         title: str = "Training") -> Figure:
    """Loss (left) and Dice (right) per epoch from a training ``history`` (one mapping per
    epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_dice`` and, when recorded,
    ``train_dice``; a missing or undefined value leaves a gap). ``best_epoch`` is marked.
    Lines carry ``gid`` ``train_loss``, ``val_loss``, ``train_dice``, ``val_dice``."""
    fig = _figure()
    ax_loss, ax_dice = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = _array([h.get("epoch", n + 1) for n, h in enumerate(history)])
    for ax, keys, ylabel in ((ax_loss, ("train_loss", "val_loss"), "loss"),
                             (ax_dice, ("train_dice", "val_dice"), "Dice (F1) at p ≥ 0.5")):
        for key, colour in zip(keys, ("#1f4e9c", "#e66101")):
            if not any(key in h for h in history):
                continue
            ax.plot(epochs, _array([h.get(key) for h in history]), marker="o", markersize=3, color=colour,
                    linewidth=1.6, gid=key, label=key.replace("_", " "))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.5", linestyle=":", linewidth=1.2, gid="best_epoch",
                       label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if epochs.size:
        for ax in (ax_loss, ax_dice):
            ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    ax_dice.set_ylim(0, 1)
    fig.suptitle(title, parse_math=False)
    return fig
