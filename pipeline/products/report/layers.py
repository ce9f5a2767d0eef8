"""The report map's layers as images: block reduction, colour stretches, palette PNGs.

Every layer of a zone is drawn on one image grid, the zone's grid reduced by ``factor ×
factor`` blocks from its north-west corner (:func:`pipeline.products.report.summarise_zone`),
so the layers and the hillshade line up pixel for pixel:

* the class layer: the *highest* class in the block (:func:`block_max_class`, small
  high-risk spots stay visible), no data (255) only when the whole block is no data, drawn
  in :data:`pipeline.core.classes.CLASS_COLOURS` and ``NODATA_COLOUR``;
* float layers (susceptibility, hazard, uncertainty; ``probability`` of older mosaics, the
  LSI when there is no model layer): the mean of the block's finite values
  (:func:`block_mean`), NaN when it has none (drawn transparent);
* the hillshade: :func:`pipeline.products.report.hillshade.hillshade` of the block-mean DEM
  with the reduced pixel size, in grey.

Colour stretch (:func:`stretch`): model scores rank pixels but crowd near 0 (the demo's
median susceptibility is 1e-4 while its "high" class starts at 0.017), so a float layer
is coloured on a **log** scale from ``lo`` (the 2nd percentile of its positive values) to
``hi`` (its largest value) when that spans more than a decade, else linearly between its
smallest and largest values. Susceptibility, hazard and probability share one stretch
(the same colour means the same value in each); the legend prints the stretch and marks
the class thresholds on it.

Images are palette PNGs (8 bits a pixel, one transparent index), embedded as data URIs.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.core.classes import CLASS_COLOURS, NODATA_CLASS, NODATA_COLOUR

__all__ = [
    "PROBABILITY_LAYERS",
    "RAMPS",
    "Stretch",
    "block_max_class",
    "block_mean",
    "class_png",
    "float_png",
    "hillshade_png",
    "ramp_colours",
    "stretch",
]

#: Float layers on the probability scale: they share one colour stretch.
PROBABILITY_LAYERS: tuple[str, ...] = ("susceptibility", "hazard", "probability")
#: Matplotlib colour map of each float layer.
RAMPS: dict[str, str] = {"susceptibility": "magma", "hazard": "magma", "probability": "magma", "lsi": "magma",
                         "uncertainty": "viridis"}
#: Palette index of a transparent pixel in the float and hillshade PNGs.
_TRANSPARENT = 255
#: Ramp steps of a float layer (palette indices 0 .. _STEPS - 1).
_STEPS = 254


def block_max_class(classes: np.ndarray, factor: int) -> np.ndarray:
    """Reduce a class raster by ``factor × factor`` blocks: the highest class in each block.

    Classes are 0 low, 1 medium, 2 high; any other value is no data and wins only when
    the whole block is no data (then 255). Edges that are not a whole block are padded
    with no data, so the result has shape ``ceil(h / factor), ceil(w / factor)``.
    """
    c = np.asarray(classes)
    if factor < 1:
        raise ValueError("factor must be >= 1")
    valid = (c >= 0) & (c <= 2)  # NaN (a decoded _FillValue) and any other value: no data
    rank = np.where(valid, np.nan_to_num(c).astype(np.int16) + 1, 0).astype(np.uint8)  # no data 0, low 1 ..
    h, w = rank.shape
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    if (hh, ww) != (h, w):
        rank = np.pad(rank, ((0, hh - h), (0, ww - w)), constant_values=0)
    m = rank.reshape(hh // factor, factor, ww // factor, factor).max(axis=(1, 3))
    return np.where(m == 0, NODATA_CLASS, m - 1).astype(np.uint8)


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of the finite values in each ``factor × factor`` block (float32; NaN where a
    block has none). Edges that are not a whole block average the pixels they have."""
    v = np.asarray(values, dtype=np.float64)
    if factor < 1:
        raise ValueError("factor must be >= 1")
    h, w = v.shape
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    ok = np.isfinite(v)
    s = np.where(ok, v, 0.0)
    if (hh, ww) != (h, w):
        s = np.pad(s, ((0, hh - h), (0, ww - w)))
        ok = np.pad(ok, ((0, hh - h), (0, ww - w)))
    shape = (hh // factor, factor, ww // factor, factor)
    total = s.reshape(shape).sum(axis=(1, 3))
    n = ok.reshape(shape).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)


# --------------------------------------------------------------------------- stretch


@dataclass(frozen=True)
class Stretch:
    """Values ``lo .. hi`` mapped to the colour ramp, on a log or a linear scale."""

    lo: float
    hi: float
    log: bool

    def position(self, values: np.ndarray | float) -> np.ndarray:
        """0 .. 1 along the ramp (clipped; NaN stays NaN)."""
        v = np.asarray(values, dtype=np.float64)
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (np.log10(np.maximum(v, self.lo)) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        return np.where(np.isfinite(v), np.clip(t, 0.0, 1.0), np.nan)

    def value_at(self, t: float) -> float:
        """The value at position ``t`` (0 .. 1) of the ramp."""
        if self.log:
            return float(10 ** (math.log10(self.lo) + t * (math.log10(self.hi) - math.log10(self.lo))))
        return float(self.lo + t * (self.hi - self.lo))

    def describe(self) -> str:
        """One line for the legend."""
        scale = "log scale" if self.log else "linear scale"
        return f"{scale}, {self.lo:.3g} to {self.hi:.3g}"


def stretch(arrays: Iterable[np.ndarray]) -> Stretch | None:
    """The colour stretch of one or more float layers (see the module notes); ``None``
    when they hold no finite value."""
    finite = [a[np.isfinite(a)] for a in (np.asarray(x, dtype=np.float64) for x in arrays)]
    values = np.concatenate(finite) if finite else np.empty(0)
    if values.size == 0:
        return None
    vmin, vmax = float(values.min()), float(values.max())
    positive = values[values > 0]
    if positive.size and vmax > 0:
        lo = max(float(np.percentile(positive, 2)), vmax * 1e-6)
        if vmax / lo > 10:
            return Stretch(lo, vmax, True)
    if vmax <= vmin:
        return Stretch(vmin, vmin + (abs(vmin) * 1e-6 or 1e-6), False)
    return Stretch(vmin, vmax, False)


# --------------------------------------------------------------------------- PNGs


@functools.cache
def _ramp_lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    lut = colormaps[name](np.linspace(0.0, 1.0, _STEPS))[:, :3]
    return np.round(lut * 255).astype(np.uint8)


def ramp_colours(name: str, stops: int = 11) -> list[str]:
    """``stops`` hex colours evenly along a float layer's ramp (for the legend's gradient)."""
    lut = _ramp_lut(RAMPS.get(name, "magma"))
    idx = np.round(np.linspace(0, _STEPS - 1, stops)).astype(int)
    return ["#" + "".join(f"{c:02x}" for c in lut[i]) for i in idx]


def _hex(colour: str) -> list[int]:
    return [int(colour[i:i + 2], 16) for i in (1, 3, 5)]


def _png(index: np.ndarray, palette: Iterable[int], *, bits: int = 8, transparent: int | None = None) -> str:
    from PIL import Image

    idx = np.ascontiguousarray(index, dtype=np.uint8)
    im = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
    pal = list(palette)
    im.putpalette(pal + [0] * (768 - len(pal)))
    buf = io.BytesIO()
    extra = {"transparency": transparent} if transparent is not None else {}
    im.save(buf, format="PNG", bits=bits, compress_level=6, optimize=False, **extra)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def class_png(image: np.ndarray) -> str:
    """The class image (0, 1, 2, anything else no data) as a 2-bit palette PNG data URI in
    the class colours, no data in ``NODATA_COLOUR``."""
    idx = np.where(image <= 2, image, 3).astype(np.uint8)
    pal = [c for hexc in (*CLASS_COLOURS, NODATA_COLOUR) for c in _hex(hexc)]
    return _png(idx, pal, bits=2)


def float_png(values: np.ndarray, how: Stretch, ramp: str) -> str:
    """A float layer as a palette PNG data URI: ``how`` maps values onto the ``ramp``'s
    254 colours, NaN is transparent."""
    t = how.position(values)
    idx = np.where(np.isfinite(t), np.round(np.nan_to_num(t) * (_STEPS - 1)), _TRANSPARENT).astype(np.uint8)
    pal = [int(c) for c in _ramp_lut(RAMPS.get(ramp, "magma")).ravel()]
    return _png(idx, pal, transparent=_TRANSPARENT)


def hillshade_png(shade: np.ndarray) -> str:
    """A hillshade (0..1, NaN) as a grey palette PNG data URI (0 black .. 1 white, NaN transparent)."""
    s = np.asarray(shade, dtype=np.float64)
    idx = np.where(np.isfinite(s), np.round(np.clip(np.nan_to_num(s), 0, 1) * (_STEPS - 1)), _TRANSPARENT)
    grey = np.round(np.arange(_STEPS) * 255 / (_STEPS - 1)).astype(int)
    return _png(idx.astype(np.uint8), [int(g) for g in np.repeat(grey, 3)], transparent=_TRANSPARENT)
