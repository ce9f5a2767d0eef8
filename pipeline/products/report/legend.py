"""What the report map's legend says: the meaning of each class, and of each float layer.

The class names and colours come from :mod:`pipeline.core.classes`; what a class *means*
depends on where its thresholds came from, which the store records
(``class_thresholds`` and ``class_thresholds_source`` of a ``risk.zarr`` zone group,
written by the risk stage):

* ``checkpoint calibration: ...``: thresholds calibrated on the model's validation blocks
  (:mod:`models.calibration`): **high** starts at the F1-best threshold, the model's own
  best guess that a pixel is a landslide; **medium** reaches down to where medium and high
  together hold at least 90 % of the validation landslide pixels; **low** is the rest, at
  most one in ten of them;
* ``given``: thresholds passed on the command line;
* ``default ...``: the uncalibrated defaults (:data:`pipeline.core.classes.PROBABILITY_THRESHOLDS`);
* an ``lsi_<zone>.zarr`` (no model): equal thirds of the LSI's 0..1 scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.classes import CLASS_COLOURS, CLASS_NAMES, LSI_THRESHOLDS, NODATA_COLOUR, PROBABILITY_THRESHOLDS

__all__ = ["LAYER_TEXT", "class_legend"]

#: Label and one-line meaning of each map layer (the class layer's depends on the store).
LAYER_TEXT: dict[str, tuple[str, str]] = {
    "susceptibility": ("susceptibility", "U-Net probability of a landslide under the reference event (R_m = 1), "
                                         "from rain-free inputs: the same whatever the weather."),
    "hazard": ("hazard", "probability of a landslide for this rainfall event: 1 − (1 − susceptibility)^R_m."),
    "probability": ("probability", "U-Net probability of an older mosaic (rain inside its input)."),
    "uncertainty": ("uncertainty", "spread of the susceptibility over the four flips of the input (0 = the passes "
                                   "agree); a cheap proxy, not a calibrated error bar."),
    "lsi": ("LSI", "Landslide Susceptibility Index from the six weighted factors (no model)."),
    "hillshade": ("hillshade", "relief from the run's own DEM, lit from the north-west (azimuth 315°, altitude 45°)."),
}

_NODATA_MEANING = ("no value: outside the region's polygon, no cloud-free Sentinel-2, no DEM, or the model did "
                   "not run (the quality flags of the zone say which).")


def _thresholds(attrs: Mapping[str, Any], class_attrs: Mapping[str, Any],
                default: tuple[float, float]) -> tuple[tuple[float, float], bool]:
    for t in (attrs.get("class_thresholds"), class_attrs.get("thresholds")):
        if isinstance(t, (list, tuple)) and len(t) == 2:
            try:
                return (float(t[0]), float(t[1])), True
            except (TypeError, ValueError):
                continue
    return default, False


def class_legend(kind: str, score: str | None, attrs: Mapping[str, Any],
                 class_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The class legend of one zone: a title, a note on the thresholds and, per class
    (low, medium, high, no data), its name, colour, rule and meaning.

    ``kind`` is ``"risk"`` (a ``risk.zarr`` group) or ``"lsi"``; ``score`` the variable the
    classes cut (``"hazard"``, ``"probability"`` of an older mosaic, or ``"lsi"``);
    ``attrs`` the group's attributes and ``class_attrs`` those of its class variable.
    """
    lsi = kind == "lsi" or score == "lsi"
    # an LSI store's group attributes may carry the model's thresholds: its classes record their own
    (t1, t2), recorded = _thresholds({} if lsi else attrs, class_attrs, LSI_THRESHOLDS if lsi else PROBABILITY_THRESHOLDS)
    source = str(attrs.get("class_thresholds_source") or "")
    name = "LSI" if lsi else (score or "probability")
    rules = (f"{name} < {t1:.3g}", f"{t1:.3g} ≤ {name} < {t2:.3g}", f"{name} ≥ {t2:.3g}")
    if lsi:
        title = "LSI class (no model in this store)"
        thirds = abs(t1 - LSI_THRESHOLDS[0]) < 1e-6 and abs(t2 - LSI_THRESHOLDS[1]) < 1e-6
        note = ("Thresholds: equal thirds of the LSI's 0..1 scale" if thirds else f"Thresholds {t1:.3g} and {t2:.3g} "
                "on the LSI") + " (not calibrated on landslides)."
        meanings = ("lowest part of the index.", "middle part of the index.",
                    "top part of the index: the weighted factors (steep, bare, wet) point to landslides.")
    elif source.startswith("checkpoint calibration"):
        title = f"Risk class: the {name} cut at thresholds calibrated on the model's validation data"
        note = ("Thresholds are on the model's output scale, which ranks pixels but is not a frequency: "
                "read the classes by the precision and recall stored with the checkpoint's calibration. "
                f"Method: {source.removeprefix('checkpoint calibration:').strip()}.")
        meanings = (
            "the rest: at most one in ten validation landslide pixels fall here.",
            "less likely than high, but where most of the validation landslides that high misses lie "
            "(medium and high together hold at least 90 % of them).",
            "at or above the F1-best threshold on validation data: the model's own best guess that the pixel "
            "is (or, for this event, would be) a landslide.",
        )
    else:
        why = "given on the command line" if source == "given" else \
            "the defaults: the checkpoint has no calibration" if source.startswith("default") or not source else source
        title = f"Risk class: the {name} cut at fixed thresholds"
        note = f"Thresholds {t1:.3g} and {t2:.3g} ({why}); they are not tuned on validation data."
        meanings = (f"{name} below {t1:.3g}.", f"{name} from {t1:.3g} to below {t2:.3g}.", f"{name} of {t2:.3g} or more.")
    if not recorded:
        note += " The store records no thresholds: the defaults are shown."
    rows = [{"name": n, "colour": c, "rule": r, "meaning": m}
            for n, c, r, m in zip(CLASS_NAMES, CLASS_COLOURS, rules, meanings)]
    rows.append({"name": "no data", "colour": NODATA_COLOUR, "rule": "255", "meaning": _NODATA_MEANING})
    return {"title": title, "note": note, "rows": rows, "thresholds": (t1, t2), "score": name}
