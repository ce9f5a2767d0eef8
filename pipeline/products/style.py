"""QGIS layer styles (``.qml``) for the exported rasters, generated from :mod:`pipeline.core.classes`.

QGIS loads ``<data source without extension>.qml`` as a layer's default style when the
layer is added (its "default style" sidecar), so a style written beside ``risk_utm48n_class.tif``
as ``risk_utm48n_class.qml`` (or beside ``risk_region_class.vrt`` as ``risk_region_class.qml``)
is applied on open, with nothing to click. :func:`write_style` writes such a sidecar.

Styles:

* class layers (``class``, ``susceptibility_class``): a *paletted* renderer with one entry
  per class code, labelled with :data:`~pipeline.core.classes.CLASS_NAMES` and coloured with
  :data:`~pipeline.core.classes.CLASS_RGBA` (the same colours as the COG's colour table,
  the quick-look and the report); the no-data code is left out, so it stays transparent;
* 0..1 scores (``hazard``, ``susceptibility``, ``probability``, ``lsi``): a *single band
  pseudocolour* ramp interpolated through the class colours, low at 0, medium at the first
  class threshold, high from the second (the probability thresholds, the LSI's own for
  ``lsi``, or those passed in), so the continuous layer reads like its classes;
* ``uncertainty`` (0..0.5): a light-to-dark purple ramp (:data:`UNCERTAINTY_RAMP`).

Other layers (``quality``, a bit field) get no style: QGIS shows their integer values.

An I/O module: it imports only slidewatch's foundation and the standard library.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

from pipeline.core.classes import (
    CLASS_CODES,
    CLASS_COLOURS,
    CLASS_NAMES,
    CLASS_RGBA,
    LSI_THRESHOLDS,
    PROBABILITY_THRESHOLDS,
    check_thresholds,
)
from pipeline.core.files import atomic_write_text

__all__ = [
    "CLASS_LAYERS",
    "QML_SUFFIX",
    "RAMP_LAYERS",
    "UNCERTAINTY_RAMP",
    "class_qml",
    "layer_qml",
    "ramp_qml",
    "style_path",
    "write_style",
]

#: Suffix of a QGIS style sidecar.
QML_SUFFIX = ".qml"
#: Layers drawn with the class palette.
CLASS_LAYERS: tuple[str, ...] = ("class", "susceptibility_class")
#: Layers drawn with a colour ramp, and their value range.
RAMP_LAYERS: dict[str, tuple[float, float]] = {
    "hazard": (0.0, 1.0), "susceptibility": (0.0, 1.0), "probability": (0.0, 1.0), "lsi": (0.0, 1.0),
    "uncertainty": (0.0, 0.5),
}
#: Colour ramp of the uncertainty (the ensemble spread, 0..0.5): light (agree) to dark purple.
UNCERTAINTY_RAMP: tuple[tuple[float, str], ...] = ((0.0, "#f2f0f7"), (0.1, "#bcbddc"), (0.25, "#807dba"), (0.5, "#4a1486"))
#: The QGIS version the documents are written for (older and newer QGIS 3 read them).
_QGIS_VERSION = "3.28.0-Firenze"


def _hex(rgba: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def _document(renderer: ET.Element) -> str:
    root = ET.Element("qgis", {"version": _QGIS_VERSION, "styleCategories": "Symbology"})
    pipe = ET.SubElement(root, "pipe")
    pipe.append(renderer)
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def _renderer(kind: str, **attrs: str) -> ET.Element:
    el = ET.Element("rasterrenderer", {"type": kind, "band": "1", "opacity": "1", "alphaBand": "-1",
                                      "nodataColor": "", **attrs})
    ET.SubElement(el, "rasterTransparency")
    return el


def class_qml() -> str:
    """A paletted QML style: one entry per class (code, name and colour from
    :mod:`pipeline.core.classes`); the no-data code has no entry, so it is not drawn."""
    el = _renderer("paletted")
    palette = ET.SubElement(el, "colorPalette")
    for code, name in zip(CLASS_CODES, CLASS_NAMES):
        r, g, b, a = CLASS_RGBA[code]
        ET.SubElement(palette, "paletteEntry", {"value": str(code), "color": _hex((r, g, b)), "alpha": str(a),
                                                "label": name})
    return _document(el)


def ramp_qml(stops: Sequence[tuple[float, str]], vmin: float, vmax: float) -> str:
    """A single band pseudocolour QML style interpolating ``stops`` (``(value, "#rrggbb")``,
    increasing values) between ``vmin`` and ``vmax``; values outside are drawn with the end colours."""
    values = [float(v) for v, _ in stops]
    if len(stops) < 2 or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"colour ramp stops must be two or more increasing values, got {values}")
    lo, hi = f"{float(vmin):g}", f"{float(vmax):g}"
    el = _renderer("singlebandpseudocolor", classificationMin=lo, classificationMax=hi)
    shader = ET.SubElement(ET.SubElement(el, "rastershader"), "colorrampshader", {
        "colorRampType": "INTERPOLATED", "classificationMode": "1", "clip": "0",
        "minimumValue": lo, "maximumValue": hi,
    })
    for value, colour in stops:
        ET.SubElement(shader, "item", {"value": f"{float(value):g}", "color": colour, "alpha": "255",
                                       "label": f"{float(value):g}"})
    return _document(el)


def _score_stops(thresholds: tuple[float, float]) -> list[tuple[float, str]]:
    t1, t2 = thresholds
    stops = [(0.0, CLASS_COLOURS[0]), (t1, CLASS_COLOURS[1]), (t2, CLASS_COLOURS[2]), (1.0, CLASS_COLOURS[2])]
    out: list[tuple[float, str]] = []
    for v, c in stops:  # a threshold at 0 or 1 merges with the end stop
        if out and v <= out[-1][0]:
            out[-1] = (out[-1][0], c)
        else:
            out.append((v, c))
    return out


def layer_qml(layer: str, thresholds: Sequence[float] | None = None) -> str | None:
    """The QML style of an exported layer (see the module docstring), or None for a layer
    without one. ``thresholds`` are the class thresholds of the 0..1 scores (default: the
    probability thresholds; ``lsi`` always uses the LSI's)."""
    if layer in CLASS_LAYERS:
        return class_qml()
    if layer == "uncertainty":
        return ramp_qml(UNCERTAINTY_RAMP, *RAMP_LAYERS[layer])
    if layer in RAMP_LAYERS:
        if layer == "lsi":
            t = LSI_THRESHOLDS
        else:
            raw = tuple(thresholds) if thresholds is not None else PROBABILITY_THRESHOLDS
            t = check_thresholds((raw[0], raw[1]), "probability")
        return ramp_qml(_score_stops(t), *RAMP_LAYERS[layer])
    return None


def style_path(raster: str | os.PathLike) -> Path:
    """The sidecar QGIS opens with ``raster``: the same folder and stem, suffix ``.qml``."""
    return Path(raster).with_suffix(QML_SUFFIX)


def write_style(raster: str | os.PathLike, layer: str, thresholds: Sequence[float] | None = None) -> Path | None:
    """Write ``layer``'s QML style beside ``raster`` (atomically) and return its path, or
    return None (writing nothing) for a layer without a style."""
    text = layer_qml(layer, thresholds)
    if text is None:
        return None
    return atomic_write_text(style_path(raster), text)

