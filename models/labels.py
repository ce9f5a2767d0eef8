"""The label convention: which inventory values are landslides, which are not, which are unknown.

Training and evaluation work on uint8 labels: ``1`` landslide (positive), ``0`` not a
landslide (negative), :data:`IGNORE` (255) unknown (left out of the loss and the metrics).
A :class:`LabelValues` says how an inventory's own values map onto those three:

* a **mask raster**: each pixel value; nodata and NaN are always unknown. The default
  (:data:`MASK_DEFAULT`) is ``0`` negative, ``1`` positive; any other value is refused
  (one line naming the values and ``--label-values``), never silently a landslide. A
  standard ``0 unlabelled / 1 non-landslide / 2 landslide`` mask trains with
  ``--label-values positive=2,negative=1,ignore=0``.
* **polygons** with a class attribute (``--label-field class``): each feature's value
  of that attribute, mapped the same way (values are matched as text, case-insensitively;
  ``2`` matches ``2.0``; a missing attribute is the value ``null``). Without a field every
  polygon is a landslide (the default, as before).
* the area **outside** every polygon: ``outside="negative"`` (default) or ``"ignore"``
  when the inventory only covers what it marks (then only negative polygons give
  negatives).

:func:`parse_label_values` reads the command-line form
``positive=2,negative=1,ignore=0[,outside=ignore]`` (several values per class joined with
``|``: ``positive=2|3``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputDataError

__all__ = [
    "IGNORE",
    "LABEL_VALUES_FLAG",
    "MASK_DEFAULT",
    "NEGATIVE",
    "POSITIVE",
    "LabelValues",
    "label_provenance",
    "labels_from_provenance",
    "parse_label_values",
]

POSITIVE = 1
NEGATIVE = 0
IGNORE = 255

#: The command-line option that sets the convention (named in error messages).
LABEL_VALUES_FLAG = "--label-values"

_CLASSES = ("positive", "negative", "ignore")
_OUTSIDE = ("negative", "ignore")


def _key(value: object) -> str:
    """A value as matching text: numbers canonical (``2``, ``2.0`` and ``"2"`` agree),
    text stripped and case-folded, a missing value ``null``."""
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "null"
    text = str(value).strip()
    try:
        f = float(text)
    except ValueError:
        return text.casefold()
    if math.isfinite(f) and f == int(f):
        return str(int(f))
    return repr(f)


@dataclass(frozen=True)
class LabelValues:
    """How inventory values map to positive / negative / ignore (see the module docstring).

    Values are kept as text (``"2"``, ``"landslide"``); a value may sit in one class only.
    """

    positive: tuple[str, ...] = ("1",)
    negative: tuple[str, ...] = ("0",)
    ignore: tuple[str, ...] = ()
    outside: str = "negative"

    def __post_init__(self) -> None:
        for name in _CLASSES:
            vals = getattr(self, name)
            if isinstance(vals, str | int | float):
                vals = (vals,)
            object.__setattr__(self, name, tuple(_key(v) for v in vals))
        if not self.positive:
            raise InputDataError(
                "the label convention names no positive (landslide) value.",
                f"give one, e.g. {LABEL_VALUES_FLAG} positive=2,negative=1,ignore=0.",
            )
        seen: dict[str, str] = {}
        for name in _CLASSES:
            for v in getattr(self, name):
                if v in seen and seen[v] != name:
                    raise InputDataError(
                        f"label value {v!r} is both {seen[v]} and {name}.",
                        f"list each value in one class of {LABEL_VALUES_FLAG}.",
                    )
                seen[v] = name
        if self.outside not in _OUTSIDE:
            raise InputDataError(
                f"outside={self.outside!r} is not a choice for the area outside the polygons.",
                "use outside=negative (the default) or outside=ignore (unlabelled).",
            )

    # ------------------------------------------------------------------ mapping
    def code_of(self, value: object) -> int | None:
        """1, 0 or :data:`IGNORE` for one inventory value; None when the convention lacks it."""
        k = _key(value)
        if k in self.positive:
            return POSITIVE
        if k in self.negative:
            return NEGATIVE
        if k in self.ignore:
            return IGNORE
        return None

    def uncovered(self, values: Iterable[object]) -> list[str]:
        """The distinct values (as text, sorted) the convention does not cover."""
        return sorted({_key(v) for v in values if self.code_of(v) is None}, key=_sort_key)

    def refuse(self, values: Iterable[object], source: str) -> None:
        """Raise one :class:`InputDataError` line naming values the convention lacks."""
        missing = self.uncovered(values)
        if missing:
            shown = ", ".join(missing[:12]) + (f" (+{len(missing) - 12} more)" if len(missing) > 12 else "")
            raise InputDataError(
                f"{source} has label value(s) {shown} that the label convention "
                f"({self.to_string()}) does not cover.",
                f"say what they are with {LABEL_VALUES_FLAG}, e.g. "
                f"{LABEL_VALUES_FLAG} positive=2,negative=1,ignore=0.",
            )

    def map_array(self, data: np.ndarray, valid: np.ndarray | None = None, source: str = "mask") -> np.ndarray:
        """uint8 codes for a numeric array; pixels where ``valid`` is False are :data:`IGNORE`.

        Values the convention does not cover raise (:meth:`refuse`); text values in the
        convention that are not numbers simply never match a raster.
        """
        data = np.asarray(data)
        valid = np.ones(data.shape, bool) if valid is None else np.asarray(valid, bool)
        if np.issubdtype(data.dtype, np.floating):
            valid = valid & np.isfinite(data)
        present = np.unique(data[valid])
        self.refuse(present.tolist(), source)
        out = np.full(data.shape, IGNORE, dtype=np.uint8)
        for v in present.tolist():
            out[valid & (data == v)] = self.code_of(v)
        return out

    # ------------------------------------------------------------------ text / JSON
    def to_string(self) -> str:
        parts = [f"{name}={'|'.join(getattr(self, name))}" for name in _CLASSES if getattr(self, name)]
        if self.outside != "negative":
            parts.append(f"outside={self.outside}")
        return ",".join(parts)

    def to_json(self) -> dict:
        return {
            "positive": list(self.positive),
            "negative": list(self.negative),
            "ignore": list(self.ignore),
            "outside": self.outside,
        }

    @classmethod
    def from_json(cls, d: Mapping) -> LabelValues:
        return cls(
            tuple(d.get("positive") or ()),
            tuple(d.get("negative") or ()),
            tuple(d.get("ignore") or ()),
            str(d.get("outside") or "negative"),
        )


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


#: The default for mask rasters: 0 negative, 1 positive, nodata/NaN unknown, others refused.
MASK_DEFAULT = LabelValues()


def parse_label_values(text: str | None, outside: str | None = None) -> LabelValues:
    """Parse ``positive=2,negative=1,ignore=0[,outside=ignore]`` (``|`` joins several
    values of one class). ``None`` or empty gives :data:`MASK_DEFAULT`. A class left out is
    empty (so ``positive=2`` alone refuses any other value). ``outside``, when given,
    sets the area outside the polygons (it must agree with ``outside=`` in the text)."""
    if not text or not text.strip():
        lv = MASK_DEFAULT
        if outside is not None and outside != lv.outside:
            lv = LabelValues(lv.positive, lv.negative, lv.ignore, outside)
        return lv
    fields: dict[str, tuple[str, ...]] = {}
    text_outside = None
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, vals = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in (*_CLASSES, "outside"):
            raise InputDataError(
                f"cannot read {part!r} in {LABEL_VALUES_FLAG} {text!r}.",
                "write class=value pairs: positive=2,negative=1,ignore=0 (several values as 2|3).",
            )
        if name == "outside":
            text_outside = vals.strip().lower()
            continue
        if name in fields:
            raise InputDataError(f"{name} is given twice in {LABEL_VALUES_FLAG} {text!r}.", "give it once, values joined with |.")
        items = tuple(v.strip() for v in vals.split("|") if v.strip())
        if not items:
            raise InputDataError(f"{name}= has no value in {LABEL_VALUES_FLAG} {text!r}.", "give a value or leave the class out.")
        fields[name] = items
    if outside is not None and text_outside is not None and outside != text_outside:
        raise InputDataError(
            f"{LABEL_VALUES_FLAG} says outside={text_outside} but --outside says {outside}.",
            "give the area outside the polygons once.",
        )
    return LabelValues(
        fields.get("positive", ()),
        fields.get("negative", ()),
        fields.get("ignore", ()),
        outside or text_outside or "negative",
    )


def label_provenance(labels: LabelValues | None, inventory: str | Path, label_field: str | None = None) -> dict:
    """What a checkpoint records as ``labels``: the inventory kind, the convention
    (``values``, as :meth:`LabelValues.to_json`; ``text`` as ``--label-values`` takes it),
    the class attribute, and the rule in words. :func:`labels_from_provenance` reads it back."""
    p = Path(inventory)
    lv = labels or MASK_DEFAULT
    if p.is_dir():
        kind = "mask folder"
    elif p.suffix.lower() in (".tif", ".tiff"):
        kind = "mask"
    else:
        kind = "polygons"
    if kind == "polygons" and label_field is None:
        rule = f"every polygon positive; outside the polygons {lv.outside}"
    elif kind == "polygons":
        rule = f"attribute {label_field!r}: {lv.to_string()}; outside the polygons {lv.outside}"
    else:
        rule = f"mask values: {lv.to_string()}; nodata and NaN ignored; other values refused"
    return {"kind": kind, "field": label_field, "values": lv.to_json(), "text": lv.to_string(), "rule": rule}


def labels_from_provenance(record: Mapping | None) -> tuple[LabelValues, str | None]:
    """The convention and class attribute a checkpoint was trained with (the defaults for
    checkpoints from before conventions were recorded)."""
    if not record:
        return MASK_DEFAULT, None
    return LabelValues.from_json(record.get("values") or {}), record.get("field")
