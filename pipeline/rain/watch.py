"""The rainfall watch: watch lists, the intensity–duration threshold, rainfall events.

Pure library (no orchestration): :mod:`flows.prefect_flows` wires it into a Prefect flow.

* A **watch list** is a YAML file::

      regions:
        - name: upper-valley                 # output folder name and alert key
          region: 103.10,29.80,103.20,29.90  # built-in name | bbox w,s,e,n | GeoJSON path
          threshold: {a: 2.20, b: 0.44}      # optional: I = a · D^-b (I mm/h, D hours)
        - name: lower-valley
          region: shapes/lower.geojson
          threshold: {percentile: 95, climatology: data/precip.zarr, window_h: 72}  # local percentile

  GeoJSON paths are relative to the watch-list file.
* The **threshold** defaults to the global minimum intensity–duration threshold for shallow
  landslides of Guzzetti et al. (2008, Landslides 5:3-17): ``I = 2.20 · D^-0.44`` with I
  in mm/h and D in **hours** (the same curve ``pipeline.rain.sources.P0_MM_H`` is taken from).
* A **local percentile threshold** (``threshold: {percentile: 95, climatology: precip.zarr,
  window_h: 72}``; the path is relative to the watch-list file, ``window_h`` defaults to 72 h,
  ``percentile`` lies in (50, 100)) judges rain against the precipitation source's own
  climatology at that place, as NASA's LHASA does (Kirschbaum & Stanley 2018, Earth's Future
  6:505-523, "Satellite-based assessment of rainfall-triggered landslide hazard for situational
  awareness"): the threshold is the ``percentile``-th percentile (numpy's linear interpolation)
  of the region-mean rainfall accumulated over ``window_h`` hours, taken over every window of
  the climatology store (all of it, in the layout :class:`pipeline.rain.sources.LocalZarrSource`
  reads), windows starting at its first step and sliding by one day; missing steps count as dry.
  It is computed once per region (bbox) and climatology and cached in memory
  (:func:`climatology_window_sums`). An event **exceeds** it when the region-mean accumulation
  over the ``window_h`` hours before the check time ``now`` (read from the watch's source) is
  strictly above it; without a source (e.g. a forecast event) the event's own total ``I · D``
  is compared instead. Region means are cos(lat)-weighted, as in
  :func:`pipeline.rain.sources.rain_event`. A climatology shorter than
  :data:`MIN_CLIMATOLOGY_DAYS` days is refused. :meth:`Threshold.judge` says which kind of
  threshold judged an event (``Threshold.kind``: ``intensity-duration`` or ``percentile``).
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
    "ID_KIND",
    "Judgement",
    "MIN_CLIMATOLOGY_DAYS",
    "PERCENTILE_KIND",
    "Threshold",
    "accumulation_mm",
    "climatology_window_sums",
    "clear_climatology_cache",
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


#: :attr:`Threshold.kind` of the intensity–duration curve ``I = a · D^-b`` (the default).
ID_KIND = "intensity-duration"
#: :attr:`Threshold.kind` of a local percentile of the source's climatology (LHASA-style).
PERCENTILE_KIND = "percentile"
#: Default accumulation window of a percentile threshold, hours.
DEFAULT_WINDOW_H = 72.0
#: Shortest climatology a percentile threshold accepts, days.
MIN_CLIMATOLOGY_DAYS = 30.0


@dataclass(frozen=True)
class Judgement:
    """How a threshold judged an event: its ``kind``, whether it is ``exceeded``, the
    ``threshold`` and the event's ``value`` in ``units`` (``mm/h`` for intensity–duration:
    I against a·D^-b; ``mm`` for percentile: the accumulation over ``window_h`` hours against
    the climatology's percentile), and ``threshold_mm_h`` (the percentile as a mean rate over
    ``window_h``)."""

    kind: str
    exceeded: bool
    threshold: float
    value: float
    units: str
    threshold_mm_h: float
    window_h: float | None = None
    percentile: float | None = None


@dataclass(frozen=True)
class Threshold:
    """An intensity–duration threshold ``I = a · D^-b`` (I in mm/h, D in hours), or, with
    ``kind="percentile"`` (:meth:`local_percentile`), the ``percentile`` of the region-mean
    ``window_h``-hour accumulations of the ``climatology`` store (see the module docstring)."""

    a: float = GUZZETTI_A
    b: float = GUZZETTI_B
    kind: str = ID_KIND
    percentile: float | None = None
    climatology: str | None = None
    window_h: float | None = None

    @classmethod
    def local_percentile(cls, percentile: float, climatology: str | os.PathLike,
                         window_h: float = DEFAULT_WINDOW_H) -> Threshold:
        """A local percentile threshold (``a``, ``b`` keep their defaults and are not used)."""
        return cls(kind=PERCENTILE_KIND, percentile=float(percentile), climatology=str(climatology),
                   window_h=float(window_h))

    def intensity(self, duration_h: float) -> float:
        """The threshold intensity (mm/h) at ``duration_h`` hours."""
        return threshold_mm_h(duration_h, self.a, self.b)

    def threshold_mm(self, bbox: tuple[float, float, float, float]) -> float:
        """A percentile threshold's value over ``bbox``: mm accumulated over ``window_h`` hours."""
        if self.kind != PERCENTILE_KIND or self.climatology is None or self.percentile is None:
            raise RainfallError(f"A {self.kind} threshold has no percentile value in mm.",
                                "use Threshold.local_percentile(...) for a percentile threshold.")
        window_h = float(self.window_h if self.window_h is not None else DEFAULT_WINDOW_H)
        return float(np.percentile(climatology_window_sums(self.climatology, bbox, window_h), self.percentile))

    def judge(self, event: Event, source: Any = None, now: datetime | str | np.datetime64 | None = None) -> Judgement:
        """Judge ``event``. Intensity–duration: I against ``a · D^-b`` (:func:`exceeds`).
        Percentile: the region-mean accumulation over the ``window_h`` hours before ``now``
        (default: the event's end) read from ``source``, or without a source the event's
        total ``I · D``, strictly above :meth:`threshold_mm` over the event's bbox."""
        if self.kind == ID_KIND:
            thr = self.intensity(event.duration_h)
            return Judgement(ID_KIND, exceeds(event.intensity_mm_h, event.duration_h, self.a, self.b), thr,
                             float(event.intensity_mm_h), "mm/h", thr)
        if self.kind != PERCENTILE_KIND:
            raise RainfallError(f"Threshold kind {self.kind!r} is unknown.", f"use {ID_KIND!r} or {PERCENTILE_KIND!r}.")
        window_h = float(self.window_h if self.window_h is not None else DEFAULT_WINDOW_H)
        thr = self.threshold_mm(event.bbox)
        if source is not None:
            value = accumulation_mm(source, event.bbox, event.end if now is None else now, window_h)
        else:
            value = float(event.intensity_mm_h) * float(event.duration_h)
        exceeded = bool(np.isfinite(value) and value > thr)
        return Judgement(PERCENTILE_KIND, exceeded, thr, value, "mm", thr / window_h, window_h, self.percentile)


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


# --------------------------------------------------------------------------- local percentile

_CLIMATOLOGY_CACHE: dict[tuple[str, tuple[float, ...], float], np.ndarray] = {}


def clear_climatology_cache() -> None:
    """Forget the cached climatology window sums (e.g. after rewriting a store)."""
    _CLIMATOLOGY_CACHE.clear()


def _climatology_times(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """The time steps (datetime64[s]) and step (hours) of a climatology store; RainfallError
    when it is missing, unreadable or shorter than :data:`MIN_CLIMATOLOGY_DAYS` days."""
    from pipeline.rain.sources import LocalZarrSource, _time_values_as_datetime64

    src = LocalZarrSource(path)
    if not Path(path).exists():
        raise RainfallError(f"Climatology {path} does not exist.",
                            "point 'climatology:' at a precipitation Zarr (relative to the watch list).")
    ds = src.open()
    tname = src.layout.time
    if tname not in ds.coords and tname not in ds.variables:
        raise RainfallError(f"Climatology {path} has no {tname!r} coordinate.",
                            "write it in the layout of the watch's precipitation store.")
    times = np.sort(_time_values_as_datetime64(np.asarray(ds[tname].values)).astype("datetime64[s]"))
    step_h = float(src.layout.step_minutes) / 60.0
    days = 0.0 if times.size == 0 else ((times[-1] - times[0]) / np.timedelta64(1, "s") / 3600.0 + step_h) / 24.0
    if days < MIN_CLIMATOLOGY_DAYS:
        raise RainfallError(
            f"Climatology {path} covers {days:.1f} days, too short to be a climatology "
            f"(at least {MIN_CLIMATOLOGY_DAYS:g} days).",
            "use years of the source's own precipitation at that place (LHASA uses the whole record).")
    return times, step_h


def _region_mean_mm_h(rate: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """Times, cos(lat)-weighted region-mean rate (mm/h; NaN cells ignored, all-NaN steps 0)
    and step (hours) of a ``(time, lat, lon)`` rate from a source's ``read``."""
    w = np.cos(np.deg2rad(rate["lat"])).astype(np.float64)
    valid = rate.notnull()
    num = (rate.fillna(0).astype(np.float64) * w).sum(("lat", "lon"))
    den = (valid * w).sum(("lat", "lon"))
    num, den = np.asarray(num.values, dtype=np.float64), np.asarray(den.values, dtype=np.float64)
    mean = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    times = np.asarray(rate["time"].values).astype("datetime64[s]")
    return times, mean, float(rate.attrs.get("step_minutes", 30.0)) / 60.0


def accumulation_mm(source: Any, bbox: tuple[float, float, float, float],
                    now: datetime | str | np.datetime64, window_h: float = DEFAULT_WINDOW_H) -> float:
    """Region-mean rainfall (mm) accumulated over the ``window_h`` hours before ``now``."""
    end = _utc_naive(now)
    start = end - np.timedelta64(round(float(window_h) * 3600), "s")
    _, mean, step_h = _region_mean_mm_h(source.read(tuple(bbox), start, end))
    return float(mean.sum() * step_h)


def climatology_window_sums(path: str | os.PathLike, bbox: tuple[float, float, float, float],
                            window_h: float = DEFAULT_WINDOW_H) -> np.ndarray:
    """Region-mean ``window_h``-hour accumulations (mm) over the whole climatology store at
    ``path``, windows starting at its first step and sliding by one day (missing steps are
    dry). Computed once per (store, bbox, window) and cached in memory."""
    from pipeline.rain.sources import LocalZarrSource

    key = (str(Path(path).resolve()), tuple(round(float(v), 9) for v in bbox), float(window_h))
    cached = _CLIMATOLOGY_CACHE.get(key)
    if cached is not None:
        return cached
    if not (math.isfinite(float(window_h)) and window_h > 0):
        raise RainfallError(f"Percentile window_h={window_h!r} must be > 0 hours.", "use e.g. window_h: 72.")
    times, step_h = _climatology_times(path)
    step = np.timedelta64(round(step_h * 3600), "s")
    t, mean, step_h = _region_mean_mm_h(LocalZarrSource(path).read(tuple(bbox), times[0], times[-1] + step))
    step_s = step_h * 3600.0
    idx = np.rint((t - times[0]) / np.timedelta64(1, "s") / step_s).astype(np.int64)
    n = round(((times[-1] - times[0]) / np.timedelta64(1, "s")) / step_s) + 1
    series = np.zeros(n, dtype=np.float64)
    series[idx] = mean  # a regular grid: steps the store lacks are dry
    n_win = round(float(window_h) / step_h)
    n_day = max(1, round(24.0 / step_h))
    if n_win < 1 or n_win > n:
        raise RainfallError(
            f"Percentile window_h={window_h:g} h does not fit the climatology {path} "
            f"({n * step_h / 24:.1f} days of {step_h * 60:g}-minute steps).",
            "use a window of at least one step and shorter than the climatology.")
    cs = np.concatenate([[0.0], np.cumsum(series)])
    starts = np.arange(0, n - n_win + 1, n_day)
    sums = (cs[starts + n_win] - cs[starts]) * step_h
    sums.setflags(write=False)
    _CLIMATOLOGY_CACHE[key] = sums
    return sums


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


def _parse_percentile_threshold(doc: Mapping[str, Any], where: str, base: Path | None) -> Threshold:
    hint = "write e.g. 'threshold: {percentile: 95, climatology: data/precip.zarr, window_h: 72}'."
    unknown = sorted(map(str, set(doc) - {"percentile", "climatology", "window_h"}))
    if unknown:
        raise WatchListError(f"{where}: unknown threshold key(s) {unknown} for a percentile threshold.",
                             "a percentile threshold takes only percentile, climatology and window_h.")
    p = doc.get("percentile")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 50 < p < 100:
        raise WatchListError(f"{where}: threshold percentile = {p!r} is not a number in (50, 100).", hint)
    w = doc.get("window_h", DEFAULT_WINDOW_H)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise WatchListError(f"{where}: threshold window_h = {w!r} must be a number of hours > 0.", hint)
    clim = doc.get("climatology")
    if not isinstance(clim, str) or not clim.strip():
        raise WatchListError(f"{where}: a percentile threshold needs 'climatology' (a precipitation Zarr path).", hint)
    path = Path(clim.strip()).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        raise WatchListError(f"{where}: climatology {path} does not exist.",
                             "give the precipitation Zarr's path, relative to the watch-list file.")
    try:
        _climatology_times(path)
    except RainfallError as exc:
        raise WatchListError(f"{where}: {exc.message}", exc.hint) from None
    return Threshold.local_percentile(float(p), str(path), float(w))


def _parse_threshold(doc: Any, where: str, base: Path | None = None) -> Threshold:
    if doc is None:
        return Threshold()
    if not isinstance(doc, Mapping):
        raise WatchListError(f"{where}: 'threshold' must be a mapping {{a, b}}, got {doc!r}.",
                             "write 'threshold: {a: 2.20, b: 0.44}' (I = a·D^-b, mm/h and hours) or leave it out.")
    if "percentile" in doc or "climatology" in doc:
        return _parse_percentile_threshold(doc, where, base)
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
        entries.append(WatchEntry(name, named, text, _parse_threshold(item.get("threshold"), where, base)))
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


def watch_row(name: str, event: Event | None, threshold: Threshold, *, source: Any = None,
              now: datetime | str | np.datetime64 | None = None) -> dict[str, Any]:
    """What a check reports for one region: I, D, the threshold (``threshold_kind``; at D for
    intensity–duration; for a percentile also ``threshold_mm`` and the ``accumulation_mm``
    over ``window_h`` before ``now`` read from ``source``, see :meth:`Threshold.judge`),
    whether it is exceeded, the event's bounds, and the fields the flow fills in (alert id,
    new, status, run dir)."""
    if event is None:
        return {"region": name, "intensity_mm_h": 0.0, "duration_h": 0.0, "threshold_mm_h": None,
                "alert": False, "new": False, "alert_id": None, "status": "dry", "run_dir": None,
                "event_start": None, "event_end": None, "threshold_kind": threshold.kind,
                "threshold_mm": None, "accumulation_mm": None}
    j = threshold.judge(event, source, now)
    row = {"region": name, "intensity_mm_h": event.intensity_mm_h, "duration_h": event.duration_h,
           "threshold_mm_h": j.threshold_mm_h, "alert": j.exceeded,
           "new": False, "alert_id": None, "status": "below threshold", "run_dir": None,
           "event_start": event.start.isoformat(), "event_end": event.end.isoformat(), "threshold_kind": j.kind,
           "threshold_mm": None, "accumulation_mm": None}
    if j.kind == PERCENTILE_KIND:
        row.update(threshold_mm=j.threshold, accumulation_mm=j.value, window_h=j.window_h, percentile=j.percentile)
    return row
