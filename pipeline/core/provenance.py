"""What a run was made from, as records that every stage, the export, the report and the
watch share, instead of string keys read back from Zarr attributes.

* :class:`Rain`: the rainfall event a run is scaled by.
* :class:`RunProvenance`: the region, time window, input items and rain of a run, with
  :meth:`RunProvenance.to_attrs` giving exactly the keys each store carries and
  :meth:`RunProvenance.from_attrs` reading any of them back.

Foundation: imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["RAIN_ATTRS", "Rain", "RunProvenance", "Stage"]

#: The store attributes a :class:`Rain` is written to, in field order.
RAIN_ATTRS: tuple[str, ...] = ("rain_intensity_mm_h", "rain_duration_days", "rain_multiplier", "rain_source")

Stage = Literal["cube", "lsi", "risk"]


@dataclass(frozen=True)
class Rain:
    """The rainfall event a run is scaled by: intensity P (mm/h), duration D (days), R_m."""

    intensity_mm_h: float | None
    duration_days: float | None
    multiplier: float
    source: str

    def to_attrs(self) -> dict[str, Any]:
        """``rain_intensity_mm_h``, ``rain_duration_days``, ``rain_multiplier``, ``rain_source``."""
        return dict(zip(RAIN_ATTRS, (self.intensity_mm_h, self.duration_days, self.multiplier, self.source)))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Rain | None:
        """The rain recorded in a store's attributes; ``None`` when it records none."""
        if attrs.get("rain_multiplier") is None:  # none recorded (e.g. a rain-free LSI store)
            return None
        p, d, m, s = (attrs.get(k) for k in RAIN_ATTRS)
        return cls(p, d, m, s)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunProvenance:
    """The region, time window (ISO days), input items and rain of a run."""

    region: str | None
    time_start: str | None
    time_end: str | None
    input_items: Any = None
    region_bbox: tuple[float, ...] | None = None
    rain: Rain | None = field(default=None)

    @classmethod
    def for_run(cls, region: str, bbox: Sequence[float], window: Any, input_items: Any = None) -> RunProvenance:
        """The provenance of a run of ``region`` (its lon/lat ``bbox``) over ``window`` (a
        :class:`~pipeline.core.config.TimeWindow`)."""
        return cls(region=region, time_start=window.start.isoformat(), time_end=window.end.isoformat(),
                   input_items=input_items, region_bbox=tuple(bbox))

    def with_rain(self, rain: Rain) -> RunProvenance:
        return replace(self, rain=rain)

    def to_attrs(self, stage: Stage) -> dict[str, Any]:
        """The provenance keys of a stage's store, as they have always been written:

        * ``cube``: region, region_bbox, time_start, time_end, input_items
        * ``lsi``: region, time_start, time_end, input_items, rain_*
        * ``risk``: region, time_window [start, end], input_items, rain_*
        """
        if stage == "cube":
            return {"region": self.region, "region_bbox": list(self.region_bbox or ()),
                    "time_start": self.time_start, "time_end": self.time_end, "input_items": self.input_items}
        rain_attrs = self.rain.to_attrs() if self.rain is not None else dict.fromkeys(RAIN_ATTRS)
        if stage == "lsi":
            return {"region": self.region, "time_start": self.time_start, "time_end": self.time_end,
                    "input_items": self.input_items, **rain_attrs}
        return {"region": self.region, "time_window": [self.time_start, self.time_end],
                "input_items": self.input_items, **rain_attrs}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> RunProvenance:
        """Read the provenance of any stage's store (missing keys become ``None``)."""
        start, end = attrs.get("time_start"), attrs.get("time_end")
        window = attrs.get("time_window")
        if start is None and end is None and isinstance(window, (list, tuple)) and len(window) == 2:
            start, end = window
        bbox = attrs.get("region_bbox")
        return cls(
            region=attrs.get("region"),
            time_start=start,
            time_end=end,
            input_items=attrs.get("input_items"),
            region_bbox=tuple(bbox) if isinstance(bbox, (list, tuple)) else None,
            rain=Rain.from_attrs(attrs),
        )
