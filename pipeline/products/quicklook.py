"""Quick-look PNG of the LSI (and risk classes), written atomically.

Uses matplotlib's object API with the Agg canvas directly (no pyplot, no global
backend switch). Large rasters are decimated by striding to at most
``max_pixels`` on the longer side before computing, so only a small part of a
lazy array is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.core.classes import CLASS_COLOURS
from pipeline.core.files import atomic_path
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

__all__ = ["write_quicklook"]

def _decimate(a: xr.DataArray, max_pixels: int) -> xr.DataArray:
    step = max(1, int(np.ceil(max(a.shape[-2:]) / max_pixels)))
    if step > 1:
        a = a.isel({a.dims[-2]: slice(None, None, step), a.dims[-1]: slice(None, None, step)})
    return a


def _extent(a: xr.DataArray):
    ydim, xdim = a.dims[-2:]
    if xdim in a.coords and ydim in a.coords and a.sizes[xdim] > 1 and a.sizes[ydim] > 1:
        x = a[xdim].values
        y = a[ydim].values
        dx, dy = x[1] - x[0], y[1] - y[0]
        return [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2]
    return None


def write_quicklook(
    lsi: xr.DataArray,
    path: str | os.PathLike,
    *,
    classes: xr.DataArray | None = None,
    title: str = "Landslide susceptibility index",
    label: str = "LSI",
    max_pixels: int = 1024,
    dpi: int = 100,
) -> Path:
    """Render ``lsi`` (0..1, viridis-like 'magma' colour map with a colorbar) and, if given,
    ``classes`` (0 low, 1 medium, 2 high, 255 no data) side by side; write a PNG atomically
    (temporary file in the target directory, then ``os.replace``). Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = _decimate(lsi, max_pixels)
    img = np.asarray(a.values, dtype=np.float32)
    panels = 2 if classes is not None else 1
    fig = Figure(figsize=(6 * panels, 5.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ext = _extent(a)
    ax = fig.add_subplot(1, panels, 1)
    im = ax.imshow(np.ma.masked_invalid(img), cmap="magma", vmin=0, vmax=1, extent=ext, interpolation="nearest")
    ax.set_title(label)
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(f"{label} (0 low .. 1 high)")
    if ext is not None:
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize=7)
    if classes is not None:
        c = np.asarray(_decimate(classes, max_pixels).values)
        cm = np.ma.masked_where(c > 2, c)
        cmap = ListedColormap(CLASS_COLOURS)
        norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
        ax2 = fig.add_subplot(1, panels, 2)
        im2 = ax2.imshow(cm, cmap=cmap, norm=norm, extent=ext, interpolation="nearest")
        ax2.set_title("risk class")
        cb2 = fig.colorbar(im2, ax=ax2, ticks=[0, 1, 2], shrink=0.85)
        cb2.ax.set_yticklabels(["low", "medium", "high"])
        if ext is not None:
            ax2.ticklabel_format(style="plain", useOffset=False)
            ax2.tick_params(labelsize=7)
    fig.suptitle(title.replace("$", r"\$"))  # a region name is text, never mathtext
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
