"""The rainfall watch: watch lists, the intensity–duration threshold, rainfall events.

Pure library (no orchestration): :mod:`flows.prefect_flows` wires it into a Prefect flow.

* A **watch list** is a YAML file::

      regions:
        - name: upper-valley                 # output folder name and alert key
          region: 103.10,29.80,103.20,29.90  # built-in name | bbox w,s,e,n | GeoJSON path
          threshold: {a: 2.20, b: 0.44}      # optional: I = a · D^-b (I mm/h, D hours)

  GeoJSON paths are relative to the watch-list file.
* The **threshold** defaults to the global minimum intensity–duration threshold for shallow
  landslides of Guzzetti et al. (2008, Landslides 5:3-17): ``I = 2.20 · D^-0.44`` with I
  in mm/h and D in **hours** (the same curve ``pipeline.rain.sources.P0_MM_H`` is taken from).
* :func:`check_region` reads the last ``hours`` of precipitation over a region and finds
  the latest rainfall **event**: wet steps (some cell at or above the wet threshold)
  separated from earlier rain by at least ``min_gap_h`` dry hours. Its start is found by
  looking further back when the event reaches the start of the window, so the same
  event keeps the same start from one check to the next. I and D are
  :func:`pipeline.rain.sources.rain_event` over ``[event start, event end)`` (region means),
  D converted to hours.
* :func:`watch_row` is what a check reports per region; alerts and their ledger are
  :mod:`pipeline.rain.alerts`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import RainfallError, RegionError, TimeWindowError, WatchListError
from pipeline.rain.events import GUZZETTI_A, GUZZETTI_B, WET_THRESHOLD_MM_H
from pipeline.plan.regions import Region, parse_region

__all__ = [
    "GUZZETTI_A",
    "GUZZETTI_B",
    "Event",
    "Threshold",
    "WatchEntry",
    "WatchList",
    "WatchListError",
    "check_region",
    "exceeds",
    "forecast_as_event",
    "imagery_window",
    "STATIC_PERIODS",
    "load_watchlist",
    "parse_now",
    "parse_watchlist",
    "source_label",
    "threshold_mm_h",
    "watch_row",
]

#: Dry hours that separate two rainfall events.
MIN_GAP_H = 6.0
#: How far back :func:`check_region` looks for the start of an event that reaches the
#: start of the window, hours.
MAX_LOOKBACK_H = 240.0


# --------------------------------------------------------------------------- threshold


@dataclass(frozen=True)
class Threshold:
    """An intensity–duration threshold ``I = a · D^-b`` (I in mm/h, D in hours)."""

    a: float = GUZZETTI_A
    b: float = GUZZETTI_B

    def intensity(self, duration_h: float) -> float:
        """The threshold intensity (mm/h) at ``duration_h`` hours."""
        return threshold_mm_h(duration_h, self.a, self.b)


def threshold_mm_h(duration_h: float, a: float = GUZZETTI_A, b: float = GUZZETTI_B) -> float:
    """``a · D^-b`` in mm/h for a rain duration ``D`` in hours (``inf`` for D <= 0)."""
    if not duration_h > 0:
        return math.inf
    return float(a) * float(duration_h) ** (-float(b))


def exceeds(intensity_mm_h: float, duration_h: float, a: float = GUZZETTI_A, b: float = GUZZETTI_B) -> bool:
    """True when mean intensity ``I`` (mm/h) over ``D`` hours is at or above ``a · D^-b``.

    No rain (D <= 0, or NaN values) never exceeds.
    """
    if not (np.isfinite(intensity_mm_h) and np.isfinite(duration_h)) or duration_h <= 0:
        return False
    return float(intensity_mm_h) >= threshold_mm_h(duration_h, a, b)


# --------------------------------------------------------------------------- watch lists


@dataclass(frozen=True)
class WatchEntry:
    """One watched region: its name (output folder, alert key), the region, the region
    text as :func:`pipeline.plan.regions.parse_region` reads it (GeoJSON paths resolved) and its
    threshold."""

    name: str
    region: Region
    spec: str
    threshold: Threshold = field(default_factory=Threshold)


@dataclass(frozen=True)
class WatchList:
    """The regions a rainfall watch checks."""

    entries: tuple[WatchEntry, ...]
    path: Path | None = None

    def __iter__(self) -> Iterator[WatchEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WatchListError(f"{where}: threshold {what} = {value!r} is not a finite number.",
                             f"write e.g. 'threshold: {{a: {GUZZETTI_A}, b: {GUZZETTI_B}}}'.")
    return float(value)


def _parse_threshold(doc: Any, where: str) -> Threshold:
    if doc is None:
        return Threshold()
    if not isinstance(doc, Mapping):
        raise WatchListError(f"{where}: 'threshold' must be a mapping {{a, b}}, got {doc!r}.",
                             "write 'threshold: {a: 2.20, b: 0.44}' (I = a·D^-b, mm/h and hours) or leave it out.")
    unknown = sorted(set(doc) - {"a", "b"})
    if unknown:
        raise WatchListError(f"{where}: unknown threshold key(s) {unknown}.", "use only 'a' and 'b' (I = a·D^-b).")
    a = _number(doc.get("a", GUZZETTI_A), "a", where)
    b = _number(doc.get("b", GUZZETTI_B), "b", where)
    if a <= 0:
        raise WatchListError(f"{where}: threshold a = {a:g} must be > 0 (mm/h at D = 1 h).",
                             f"use e.g. Guzzetti et al. 2008's a = {GUZZETTI_A}.")
    if not 0 <= b < 2:
        raise WatchListError(
            f"{where}: threshold b = {b:g} is outside [0, 2); I = a·D^-b must fall with duration.",
            f"give the exponent's magnitude, e.g. b = {GUZZETTI_B} for I = 2.20·D^-0.44.")
    return Threshold(a, b)


def parse_watchlist(doc: Any, base: Path | None = None, source: str = "watch list") -> WatchList:
    """A :class:`WatchList` from a parsed YAML document (``{"regions": [...]}``).

    ``base`` is the folder relative GeoJSON paths are resolved against.
    """
    if not isinstance(doc, Mapping) or "regions" not in doc:
        raise WatchListError(f"{source} has no top-level 'regions:' list.",
                             "start the file with 'regions:' followed by '- name: ..., region: ...' entries.")
    unknown = sorted(set(doc) - {"regions"})
    if unknown:
        raise WatchListError(f"{source}: unknown top-level key(s) {unknown}.", "only 'regions:' is read.")
    items = doc["regions"]
    if not isinstance(items, list) or not items:
        raise WatchListError(f"{source}: 'regions' must be a non-empty list.",
                             "add at least one entry '- {name: ..., region: ...}'.")
    entries: list[WatchEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}, regions[{i}]"
        if not isinstance(item, Mapping):
            raise WatchListError(f"{where} is {item!r}, not a mapping.", "write '- {name: ..., region: ...}'.")
        bad = sorted(set(item) - {"name", "region", "threshold"})
        if bad:
            raise WatchListError(f"{where}: unknown key(s) {bad}.", "use name, region and (optionally) threshold.")
        spec = item.get("region")
        if isinstance(spec, (list, tuple)) and len(spec) == 4:
            spec = ",".join(str(v) for v in spec)
        if not isinstance(spec, str) or not spec.strip():
            raise WatchListError(f"{where} has no 'region'.",
                                 "give a built-in name, a bbox 'west,south,east,north' or a GeoJSON path.")
        text = spec.strip()
        if base is not None and text.lower().endswith((".geojson", ".json")) and not Path(text).is_absolute():
            text = str(base / text)
        try:
            region = parse_region(text)
        except RegionError as exc:
            raise WatchListError(f"{where}: {exc.message}", exc.hint) from None
        name = item.get("name", region.name)
        if not isinstance(name, str) or not name.strip():
            raise WatchListError(f"{where}: 'name' must be a non-empty string, got {name!r}.", "name the region.")
        name = name.strip()
        named = replace(region, name=name)
        if named.slug != name:
            raise WatchListError(f"{where}: name {name!r} is not usable as a folder name.",
                                 f"use letters, digits, '.', '_' or '-', e.g. {named.slug!r}.")
        if name in seen:
            raise WatchListError(f"{where}: name {name!r} is used twice.", "give every watched region its own name.")
        seen.add(name)
        entries.append(WatchEntry(name, named, text, _parse_threshold(item.get("threshold"), where)))
    return WatchList(tuple(entries))


#: Largest watch-list file read (bytes).
MAX_WATCHLIST_BYTES = 1_000_000


def _no_alias_loader():  # type: ignore[no-untyped-def]
    """yaml's SafeLoader refusing aliases (``*name``): an alias bomb expands a small file into
    gigabytes, and a watch list never needs one."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"aliases are not allowed (line {event.start_mark.line + 1})")
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_watchlist(path: str | os.PathLike) -> WatchList:
    """Read and validate a watch-list YAML file (see the module docstring)."""
    import yaml

    _NoAliasLoader = _no_alias_loader()
    path = Path(path)
    try:
        if path.stat().st_size > MAX_WATCHLIST_BYTES:
            raise WatchListError(f"Watch list {path} is {path.stat().st_size:,} bytes, over {MAX_WATCHLIST_BYTES:,}.",
                                 "a watch list names regions; keep it small (GeoJSON regions go in their own files).")
        doc = yaml.load(path.read_text(), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
    except FileNotFoundError:
        raise WatchListError(f"Watch list {path} does not exist.", "check the path.") from None
    except (OSError, yaml.YAMLError) as exc:
        raise WatchListError(f"Watch list {path} is not readable YAML ({exc}).", "fix the file's syntax.") from None
    return replace(parse_watchlist(doc, base=path.parent, source=f"watch list {path}"), path=path)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """A rainfall event over a region: ``[start, end)`` in UTC, mean intensity and wet hours."""

    region: str
    start: datetime
    end: datetime
    intensity_mm_h: float
    duration_h: float
    source: str
    bbox: tuple[float, float, float, float]

    @property
    def duration_days(self) -> float:
        return self.duration_h / 24.0


def source_label(source: Any) -> str:
    """A stable text naming a precipitation source (part of an alert's id)."""
    path = getattr(source, "path", None)
    if path is not None:
        return f"zarr:{Path(path).resolve()}"
    layout = getattr(source, "layout", None)
    href = getattr(layout, "href", None)
    if href:
        return f"imerg:{href}"
    return type(source).__name__


def _utc_naive(t: datetime | str | np.datetime64) -> np.datetime64:
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if isinstance(t, datetime):
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
        return np.datetime64(t, "s")
    return np.datetime64(t, "s")


def _to_datetime(t: np.datetime64) -> datetime:
    return datetime.fromisoformat(str(np.datetime64(t, "s"))).replace(tzinfo=timezone.utc)


def event_bounds(wet: np.ndarray, min_gap_steps: int) -> tuple[int, int] | None:
    """Indexes ``[i0, i1)`` of the latest run of wet steps, joining runs whose dry gaps are
    shorter than ``min_gap_steps``; ``None`` when nothing is wet."""
    idx = np.flatnonzero(np.asarray(wet, dtype=bool))
    if idx.size == 0:
        return None
    i1 = int(idx[-1]) + 1
    i0 = int(idx[-1])
    for k in range(idx.size - 2, -1, -1):
        if i0 - int(idx[k]) - 1 >= min_gap_steps:
            break
        i0 = int(idx[k])
    return i0, i1


def check_region(
    source: Any,
    region: Region,
    now: datetime | str | np.datetime64,
    hours: float = 72.0,
    *,
    wet_threshold_mm_h: float = WET_THRESHOLD_MM_H,
    min_gap_h: float = MIN_GAP_H,
    max_lookback_h: float = MAX_LOOKBACK_H,
) -> Event | None:
    """The latest rainfall event over ``region`` that was wet within the ``hours`` before
    ``now`` (UTC), or ``None`` when those hours were dry.

    ``source`` is a :class:`pipeline.rain.sources.PrecipitationSource`. The event's start is
    traced back past the window (up to ``max_lookback_h``) until ``min_gap_h`` dry hours
    precede it, so it does not move as ``now`` advances. I and D are the region means of
    :func:`pipeline.rain.sources.rain_event` over the event; D is returned in hours.
    """
    from pipeline.rain.events import rain_event

    if not hours > 0:
        raise RainfallError(f"Watch window hours={hours!r} must be > 0.", "use e.g. --hours 72.")
    end = _utc_naive(now)
    lookback = float(hours)
    while True:
        start = end - np.timedelta64(int(round(lookback * 3600)), "s")
        rate = source.read(tuple(region.bbox), start, end)
        series = np.asarray(rate.max(("lat", "lon"), skipna=True).values, dtype=np.float64)
        times = np.asarray(rate["time"].values).astype("datetime64[s]")
        step_h = float(rate.attrs.get("step_minutes", 30.0)) / 60.0
        wet = np.nan_to_num(series, nan=0.0) >= wet_threshold_mm_h
        gap = max(1, int(math.ceil(min_gap_h / step_h)))
        bounds = event_bounds(wet, gap)
        if bounds is None:
            return None
        i0, i1 = bounds
        # An event that reaches the start of what was read may have begun earlier: look further back.
        reaches_start = i0 == 0 and times[0] - start < np.timedelta64(int(round(step_h * 3600)), "s")
        if not reaches_start or lookback >= max_lookback_h:
            break
        lookback = min(max_lookback_h, lookback + hours)
    step = np.timedelta64(int(round(step_h * 3600)), "s")
    ev_start, ev_end = times[i0], times[i1 - 1] + step
    stats = rain_event(source, region.bbox, ev_start, ev_end, wet_threshold_mm_h=wet_threshold_mm_h).compute()
    return Event(
        region=region.name,
        start=_to_datetime(ev_start),
        end=_to_datetime(ev_end),
        intensity_mm_h=float(stats["intensity"]),
        duration_h=float(stats["duration"]) * 24.0,
        source=source_label(source),
        bbox=tuple(float(v) for v in region.bbox),  # type: ignore[arg-type]
    )


#: How a triggered run's imagery window is keyed: ``month`` (the ``days`` before the event's
#: month: every event of a month shares one window, so its cube and LSI are reused and an
#: alert recomputes only the rain-dependent layers) or ``event`` (the ``days`` ending on the
#: event's day: freshest imagery, a new cube for every event day).
STATIC_PERIODS: tuple[str, ...] = ("month", "event")


def imagery_window(event_start: datetime, days: int = 60, period: str = "event") -> tuple[date, date]:
    """The pre-event imagery window of a run triggered by an event: ``days`` whole days
    ending on the event's start date (``period="event"``) or on the last day of the month
    before it (``period="month"``; see :data:`STATIC_PERIODS`)."""
    if days < 1:
        raise RainfallError(f"Imagery window of {days} days is empty.", "use --window-days 1 or more (e.g. 60).")
    if period not in STATIC_PERIODS:
        raise RainfallError(f"Imagery period {period!r} is unknown.", f"use one of {', '.join(STATIC_PERIODS)}.")
    end = event_start.astimezone(timezone.utc).date() if event_start.tzinfo else event_start.date()
    if period == "month":
        end = end.replace(day=1) - timedelta(days=1)
    return end - timedelta(days=days - 1), end


def forecast_as_event(region: str, forecast: Any, bbox: tuple[float, float, float, float]) -> Event:
    """A forecast event (:class:`pipeline.rain.forecast.ForecastEvent`) as an :class:`Event`
    the threshold can judge: its rainy part, I = the mean rate while it rains, D = the hours
    at or above the wet threshold, over the lead window; the source names the run."""
    label = f"{forecast.source} run {forecast.run:%Y-%m-%dT%HZ}"
    return Event(region=region, start=forecast.lead_start, end=forecast.lead_end,
                 intensity_mm_h=float(forecast.wet_intensity_mm_h), duration_h=float(forecast.duration_days) * 24.0,
                 source=label, bbox=tuple(bbox))  # type: ignore[arg-type]


def parse_now(now: str | datetime | None) -> datetime:
    """The check time in UTC: ``None`` = now (whole seconds); naive times are UTC;
    TimeWindowError for text that is not an ISO date-time."""
    if now is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    if isinstance(now, datetime):
        return now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    try:
        t = datetime.fromisoformat(str(now).replace("Z", "+00:00"))
    except ValueError:
        raise TimeWindowError(f"now {now!r} is not an ISO date-time.", "use e.g. 2024-08-31T12:00 (UTC).") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def watch_row(name: str, event: Event | None, threshold: Threshold) -> dict[str, Any]:
    """What a check reports for one region: I, D, the threshold at D, whether it is exceeded,
    the event's bounds, and the fields the flow fills in (alert id, new, status, run dir)."""
    if event is None:
        return {"region": name, "intensity_mm_h": 0.0, "duration_h": 0.0, "threshold_mm_h": None,
                "alert": False, "new": False, "alert_id": None, "status": "dry", "run_dir": None,
                "event_start": None, "event_end": None}
    return {"region": name, "intensity_mm_h": event.intensity_mm_h, "duration_h": event.duration_h,
            "threshold_mm_h": threshold.intensity(event.duration_h),
            "alert": exceeds(event.intensity_mm_h, event.duration_h, threshold.a, threshold.b),
            "new": False, "alert_id": None, "status": "below threshold", "run_dir": None,
            "event_start": event.start.isoformat(), "event_end": event.end.isoformat()}

