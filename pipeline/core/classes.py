"""The risk-class vocabulary: codes, names, colours, thresholds, CF flag attributes and the
one classify kernel. Every store, COG, quick-look and report takes its classes from here.

Foundation: imports nothing of ours but the errors.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.core.errors import InputDataError

__all__ = [
    "CLASS_CODES",
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "CLASS_RGBA",
    "LSI_THRESHOLDS",
    "NODATA_CLASS",
    "NODATA_COLOUR",
    "PROBABILITY_THRESHOLDS",
    "check_thresholds",
    "class_attrs",
    "classify",
]

#: Class codes (uint8) and their names, low to high.
CLASS_CODES: tuple[int, int, int] = (0, 1, 2)
CLASS_NAMES: tuple[str, str, str] = ("low", "medium", "high")
#: The class code of a pixel without a value: the Zarr ``fill_value``/CF ``_FillValue`` of
#: every class layer (GDAL's nodata), never a class (0 low is a class, never a fill).
NODATA_CLASS = 255

#: Colours of the classes low, medium, high (quick-look, class COG, HTML report alike).
CLASS_COLOURS: tuple[str, str, str] = ("#1a9850", "#fd8d3c", "#d73027")
#: Colour of "no data" where it is drawn (the report); the class COG makes it transparent.
NODATA_COLOUR = "#9e9e9e"
#: RGBA colour table of the class COG (no data transparent).
CLASS_RGBA: dict[int, tuple[int, int, int, int]] = {
    **{k: (int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16), 255) for k, h in zip(CLASS_CODES, CLASS_COLOURS)},
    NODATA_CLASS: (0, 0, 0, 0),
}

#: Default thresholds between low/medium and medium/high on the U-Net probability.
PROBABILITY_THRESHOLDS: tuple[float, float] = (0.3, 0.6)
#: Default thresholds on the LSI: equal thirds of its 0..1 scale.
LSI_THRESHOLDS: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)

Score = Literal["probability", "LSI", "susceptibility", "hazard"]


def check_thresholds(thresholds: tuple[float, float], score: Score = "probability") -> tuple[float, float]:
    """``(t1, t2)`` as floats; :class:`InputDataError` unless ``0 <= t1 < t2 <= 1``."""
    t1, t2 = (float(t) for t in thresholds)
    if not 0 <= t1 < t2 <= 1:
        if score == "LSI":
            raise InputDataError(f"Risk thresholds {thresholds} must satisfy 0 <= t1 < t2 <= 1.", hint="e.g. (1/3, 2/3).")
        raise InputDataError(f"class thresholds {thresholds} must satisfy 0 <= t1 < t2 <= 1.", "e.g. 0.3,0.6.")
    return t1, t2


def classify(values: np.ndarray, t1: float, t2: float) -> np.ndarray:
    """uint8 classes from a score: 0 below ``t1``, 1 from ``t1``, 2 from ``t2``;
    :data:`NODATA_CLASS` where the score is not finite (NaN)."""
    v = np.asarray(values)
    out = np.full(v.shape, NODATA_CLASS, dtype=np.uint8)
    ok = np.isfinite(v)
    out[ok] = (v[ok] >= t1).astype(np.uint8) + (v[ok] >= t2).astype(np.uint8)
    return out


def class_attrs(thresholds: tuple[float, float], score: Score = "probability") -> dict:
    """CF attributes of a class layer (``flag_values``/``flag_meanings``, thresholds, a comment)."""
    t1, t2 = (float(t) for t in thresholds)
    if score == "LSI":
        comment = f"low: LSI < {t1:.4g}; medium: {t1:.4g} <= LSI < {t2:.4g}; high: LSI >= {t2:.4g}; 255: no data"
    else:
        comment = f"from {score}: low < {t1:.4g} <= medium < {t2:.4g} <= high; 255: no data"
    long_name = {"susceptibility": "landslide susceptibility class",
                 "hazard": "landslide hazard class for the event"}.get(score, "landslide risk class")
    return {
        "units": "1",
        "long_name": long_name,
        "flag_values": list(CLASS_CODES),
        "flag_meanings": " ".join(CLASS_NAMES),
        "thresholds": [t1, t2],
        "comment": comment,
    }
