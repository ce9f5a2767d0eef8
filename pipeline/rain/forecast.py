"""Forecast rainfall, keyless: ECMWF open data (IFS) and NOAA GFS, turned into an event's P and D.

Four layers, each usable alone:

1. :func:`read_grib_precipitation` reads *every* precipitation message of a GRIB2 file
   with ecCodes' Python bindings (not cfgrib, which keeps only the first of two
   accumulation windows of one variable). Each :class:`PrecipMessage` carries its
   accumulation window (start/end step in hours, from the message's end-of-interval
   and time-range keys, never from the file name), the units the message states
   (``m``, ``kg m**-2``, ``kg m**-2 s**-1``) and the field converted to mm (accumulations)
   or mm/h (rates), cropped to a lon/lat bbox. Regular lat/lon grids give 1-D ``lat``/``lon``
   coordinates; other grids (HRRR Lambert, RDPA polar stereographic) are read through the
   message's own ``latitudes``/``longitudes`` and give dims ``(y, x)`` with 2-D ``lat``/``lon``.
2. :func:`accumulation_windows` turns the messages of one run into disjoint buckets
   (run totals differenced, buckets kept, duplicates checked), and :func:`hourly_rates`
   spreads each bucket *evenly* over its hours (a 6-h bucket of 12 mm is 2 mm/h for six
   hours: the model says nothing finer). :func:`forecast_event` feeds that hourly series to
   :func:`pipeline.rain.events.rain_event`, so P and D mean exactly what they mean for
   observed rain: P = mean rate over the whole lead window (dry hours included), D = hours
   at or above the wet threshold / 24, area means weighted by cos(lat).
3. Index parsers for byte-range downloads: :func:`parse_ecmwf_index` (ECMWF ``.index``,
   JSON lines) and :func:`parse_wgrib2_idx` (NOAA ``.idx``), with :func:`ecmwf_index_ranges`
   and :func:`idx_ranges` picking the precipitation messages' byte ranges.
4. Sources behind :class:`ForecastSource`: :class:`EcmwfOpenDataSource` (the
   ``ecmwf-opendata`` client) and :class:`GfsSource` (``.idx`` byte ranges over HTTP).
   Both are keyless and global; each picks the newest run that should be published by
   ``issued_before`` (never a run in the future) and falls back one run, announced in one
   log line, when that run is not published yet.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from pipeline.core.errors import RainfallError
from pipeline.plan.regions import BBox
from pipeline.rain.events import WET_THRESHOLD_MM_H, rain_event, rainfall_multiplier
from pipeline.rain.sources import check_bbox

__all__ = [
    "ByteRange",
    "EcmwfOpenDataSource",
    "ForecastEvent",
    "ForecastSource",
    "GfsSource",
    "IdxEntry",
    "PrecipMessage",
    "accumulation_windows",
    "ecmwf_index_ranges",
    "forecast_event",
    "hourly_rates",
    "idx_ranges",
    "latest_run",
    "parse_ecmwf_index",
    "parse_wgrib2_idx",
    "read_grib_precipitation",
    "in_grib_process",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- 1. GRIB2 reader

#: Units a precipitation message may state (ecCodes' spelling) → (factor to mm or mm/h, kind).
_UNITS: dict[str, tuple[float, str]] = {
    "m": (1000.0, "accumulation"),  # ECMWF tp: metres of water
    "kg m**-2": (1.0, "accumulation"),  # 1 kg m-2 of water = 1 mm
    "kg m-2": (1.0, "accumulation"),
    "mm": (1.0, "accumulation"),
    "kg m**-2 s**-1": (3600.0, "rate"),  # ECMWF tprate, GFS PRATE: per second → per hour
    "kg m-2 s-1": (3600.0, "rate"),
    "m s**-1": (3_600_000.0, "rate"),
}
#: (discipline, parameterCategory, parameterNumber) of WMO total-precipitation parameters.
_WMO_PRECIP = {(0, 1, 8): "kg m**-2", (0, 1, 52): "kg m**-2 s**-1", (0, 1, 7): "kg m**-2 s**-1"}
#: ECMWF-local total precipitation (tp, metres) is 0/1/193 *only* at centre ecmf; elsewhere
#: 193 is another local parameter (e.g. CMC's analysis confidence index in RDPA files).
_ECMWF_LOCAL_TP = (0, 1, 193)
_PRECIP_SHORT_NAMES = {"tp", "tprate", "prate"}
_TIME_UNIT_HOURS = {0: 1 / 60, 1: 1.0, 2: 24.0, 10: 3.0, 11: 6.0, 12: 12.0, 13: 1 / 3600}


@dataclass(frozen=True)
class PrecipMessage:
    """One precipitation message of a GRIB2 file, cropped to a bbox.

    ``start_h``/``end_h``: the accumulation window in hours after ``run`` (equal for an
    instantaneous rate). ``kind``: ``"accumulation"`` (``field`` in mm over the window) or
    ``"rate"`` (``field`` in mm/h). ``units``: what the message itself states.
    ``field``: float32, NaN where the message's bitmap marks a missing value; dims
    ``(lat, lon)`` (both ascending) on regular lat/lon grids, else ``(y, x)`` with 2-D
    ``lat``/``lon`` coordinates.
    """

    number: int
    short_name: str
    run: datetime
    start_h: float
    end_h: float
    kind: str
    units: str
    grid_type: str
    field: xr.DataArray = field(repr=False)

    @property
    def window(self) -> tuple[float, float]:
        return (self.start_h, self.end_h)


def _eccodes():
    try:
        import eccodes
    except Exception as e:  # pragma: no cover - eccodes is a pinned dependency
        raise RainfallError(
            f"Cannot import eccodes ({type(e).__name__}: {e}).",
            hint="pip install eccodes (its wheels bundle the ecCodes library as eccodeslib).",
        ) from e
    return eccodes


def _get(ec, h, key, default=None):
    try:
        if not ec.codes_is_defined(h, key):
            return default
        return ec.codes_get(h, key)
    except ec.CodesInternalError:
        return default


def _signed32(v: int) -> int:
    # RDPA stores lengthOfTimeRange = -24 as 4294967272 (an unsigned 32-bit field).
    return v - 2**32 if v >= 2**31 else v


def _is_precip(ec, h) -> tuple[bool, str]:
    """(is it precipitation, the units it states) from the message's own keys."""
    disc = (_get(ec, h, "discipline"), _get(ec, h, "parameterCategory"), _get(ec, h, "parameterNumber"))
    short = str(_get(ec, h, "shortName", ""))
    units = str(_get(ec, h, "units", "unknown"))
    centre = str(_get(ec, h, "centre", ""))
    if disc == _ECMWF_LOCAL_TP:
        return (centre == "ecmf" and short == "tp"), units
    if disc in _WMO_PRECIP:
        # ecCodes reads the units from the WMO code table 4.2 entry; files whose local
        # tables hide it ("unknown", e.g. RDPA) get the WMO table's units for that number.
        return True, units if units in _UNITS else _WMO_PRECIP[disc]
    return (short in _PRECIP_SHORT_NAMES and units in _UNITS), units


def _window_hours(ec, h, run: datetime) -> tuple[float, float]:
    """Start and end of the statistical-processing window, hours after the run."""
    pdt = _get(ec, h, "productDefinitionTemplateNumber")
    if _get(ec, h, "yearOfEndOfOverallTimeInterval") is not None and pdt not in (0, 1):
        end = datetime(
            int(_get(ec, h, "yearOfEndOfOverallTimeInterval")),
            int(_get(ec, h, "monthOfEndOfOverallTimeInterval")),
            int(_get(ec, h, "dayOfEndOfOverallTimeInterval")),
            int(_get(ec, h, "hourOfEndOfOverallTimeInterval")),
            int(_get(ec, h, "minuteOfEndOfOverallTimeInterval", 0)),
            tzinfo=UTC,
        )
        unit = int(_get(ec, h, "indicatorOfUnitForTimeRange", 1))
        if unit not in _TIME_UNIT_HOURS:
            raise RainfallError(f"GRIB message has an unknown time-range unit code {unit}.")
        length = abs(_signed32(int(_get(ec, h, "lengthOfTimeRange", 0)))) * _TIME_UNIT_HOURS[unit]
        end_h = (end - run).total_seconds() / 3600.0
        return end_h - length, end_h
    # Instantaneous (PDT 4.0/4.1): the forecast time itself.
    unit = int(_get(ec, h, "indicatorOfUnitOfTimeRange", 1))
    t = float(_get(ec, h, "forecastTime", 0)) * _TIME_UNIT_HOURS.get(unit, 1.0)
    return t, t


def _regular_ll(ec, h, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ni, nj = int(_get(ec, h, "Ni")), int(_get(ec, h, "Nj"))
    if _get(ec, h, "jPointsAreConsecutive", 0) or _get(ec, h, "alternativeRowScanning", 0):
        raise RainfallError("GRIB regular_ll grid with column-major or alternating scanning is not supported.")
    lat0 = float(_get(ec, h, "latitudeOfFirstGridPointInDegrees"))
    lon0 = float(_get(ec, h, "longitudeOfFirstGridPointInDegrees"))
    di = float(_get(ec, h, "iDirectionIncrementInDegrees"))
    dj = float(_get(ec, h, "jDirectionIncrementInDegrees"))
    lat = lat0 + (dj if _get(ec, h, "jScansPositively", 0) else -dj) * np.arange(nj)
    lon = lon0 + (-di if _get(ec, h, "iScansNegatively", 0) else di) * np.arange(ni)
    lon = (lon + 180.0) % 360.0 - 180.0
    grid = values.reshape(nj, ni)
    iy, ix = np.argsort(lat, kind="stable"), np.argsort(lon, kind="stable")
    return np.round(lat[iy], 6), np.round(lon[ix], 6), grid[iy][:, ix]


def _crop_regular(lat, lon, grid, bbox: BBox | None, name: str) -> xr.DataArray:
    if bbox is not None:
        minx, miny, maxx, maxy = bbox
        hx = 0.5 * (float(np.diff(lon).min()) if lon.size > 1 else 0.0)
        hy = 0.5 * (float(np.diff(lat).min()) if lat.size > 1 else 0.0)
        ix = np.nonzero((lon + hx > minx) & (lon - hx < maxx))[0]
        iy = np.nonzero((lat + hy > miny) & (lat - hy < maxy))[0]
        if ix.size == 0 or iy.size == 0:
            raise RainfallError(
                f"{name}: bbox {bbox} is outside the grid (lon {lon.min():g}..{lon.max():g}, lat {lat.min():g}..{lat.max():g}).",
                hint="Check the bbox is (min lon, min lat, max lon, max lat) in degrees.",
            )
        lat, lon, grid = lat[iy], lon[ix], grid[np.ix_(iy, ix)]
    return xr.DataArray(grid, dims=("lat", "lon"), coords={"lat": lat, "lon": lon})


def _projected(ec, h, values: np.ndarray, bbox: BBox | None, name: str) -> xr.DataArray:
    nx = int(_get(ec, h, "Nx", _get(ec, h, "Ni")))
    ny = int(_get(ec, h, "Ny", _get(ec, h, "Nj")))
    if _get(ec, h, "jPointsAreConsecutive", 0) or _get(ec, h, "alternativeRowScanning", 0):
        raise RainfallError(f"{name}: column-major or alternating scanning is not supported.")
    lat = ec.codes_get_array(h, "latitudes").reshape(ny, nx)
    lon = (ec.codes_get_array(h, "longitudes").reshape(ny, nx) + 180.0) % 360.0 - 180.0
    grid = values.reshape(ny, nx)
    if bbox is not None:
        minx, miny, maxx, maxy = bbox
        inside = (lon >= minx) & (lon <= maxx) & (lat >= miny) & (lat <= maxy)
        if not inside.any():
            raise RainfallError(
                f"{name}: bbox {bbox} holds no point of the {_get(ec, h, 'gridType')} grid.",
                hint="Check the bbox is (min lon, min lat, max lon, max lat) in degrees inside the model's domain.",
            )
        rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        lat, lon, grid = lat[sl], lon[sl], grid[sl]
    return xr.DataArray(grid, dims=("y", "x"), coords={"lat": (("y", "x"), lat), "lon": (("y", "x"), lon)})


#: The process that decodes GRIB files (see :func:`read_grib_precipitation`), started once.
_GRIB_WORKER: Any = None


def _grib_worker() -> Any:
    global _GRIB_WORKER
    if _GRIB_WORKER is None:
        import atexit
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _GRIB_WORKER = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_GRIB_WORKER.shutdown, wait=False, cancel_futures=True)
    return _GRIB_WORKER


def read_grib_precipitation(path: str | os.PathLike, bbox: Sequence[float] | None = None) -> list[PrecipMessage]:
    """Every precipitation message of a GRIB2 file, in file order, cropped to ``bbox``.

    The file is decoded in a separate, reused worker process: the ecCodes wheels load their
    bundled libraries (eckit, and with it a PROJ and an SQLite of their own) with
    ``RTLD_GLOBAL``, which in this process would take over pyproj's and rasterio's PROJ
    ("no database context specified") and crash the interpreter at exit. See
    :func:`decode_grib_precipitation` for what is read.
    """
    from concurrent.futures.process import BrokenProcessPool

    try:
        return _grib_worker().submit(decode_grib_precipitation, str(path), bbox).result()
    except BrokenProcessPool:  # the worker died (killed, out of memory): one clear line, a fresh worker next time
        global _GRIB_WORKER
        _GRIB_WORKER = None
        raise RainfallError(f"The GRIB decoding process died while reading {Path(path).name}.",
                            hint="Retry; if it dies again, check the file and the free memory.") from None


def in_grib_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run in the GRIB worker process (where ecCodes may be imported); ``fn``
    must be importable by name (a module-level function)."""
    return _grib_worker().submit(fn, *args).result()


def decode_grib_precipitation(path: str | os.PathLike, bbox: Sequence[float] | None = None) -> list[PrecipMessage]:
    """Every precipitation message of a GRIB2 file, in file order, cropped to ``bbox``
    (in this process: call :func:`read_grib_precipitation` instead).

    Precipitation is recognised from the message's parameter keys: WMO 0/1/8 (APCP, total
    precipitation, kg m-2), 0/1/52 (total precipitation rate, kg m-2 s-1), 0/1/7 (PRATE)
    and ECMWF's local 0/1/193 ``tp`` (m) from centre ``ecmf``. Other messages (temperature,
    other centres' local parameters) are skipped. Raises :class:`RainfallError` for an
    unreadable file, a file with no precipitation message, or units it cannot convert.
    """
    ec = _eccodes()
    p = Path(path)
    box = None
    if bbox is not None:
        box = check_bbox(bbox)
        if box[0] >= 180.0:  # 0..360 longitudes → -180..180
            box = (box[0] - 360.0, box[1], box[2] - 360.0, box[3])
    out: list[PrecipMessage] = []
    number = 0
    try:
        fh = p.open("rb")
    except OSError as e:
        raise RainfallError(f"Cannot open GRIB file {p}: {e}.") from e
    with fh:
        while True:
            try:
                h = ec.codes_grib_new_from_file(fh)
            except Exception as e:
                raise RainfallError(f"{p.name}: GRIB message {number + 1} cannot be decoded ({e}).") from e
            if h is None:
                break
            number += 1
            try:
                is_p, units = _is_precip(ec, h)
                if not is_p:
                    continue
                if units not in _UNITS:
                    raise RainfallError(
                        f"{p.name} message {number}: precipitation units {units!r} are not known.",
                        hint=f"Known units: {sorted(_UNITS)}.",
                    )
                factor, kind = _UNITS[units]
                d, t = int(_get(ec, h, "dataDate")), int(_get(ec, h, "dataTime"))
                run = datetime(d // 10000, d // 100 % 100, d % 100, t // 100, t % 100, tzinfo=UTC)
                start_h, end_h = _window_hours(ec, h, run)
                values = ec.codes_get_values(h).astype(np.float64)
                if _get(ec, h, "bitmapPresent", 0):
                    values[values == float(_get(ec, h, "missingValue", 9999))] = np.nan
                values = (values * factor).astype(np.float32)
                grid_type = str(_get(ec, h, "gridType", "unknown"))
                name = f"{p.name} message {number}"
                if grid_type == "regular_ll":
                    da = _crop_regular(*_regular_ll(ec, h, values), box, name)
                else:
                    da = _projected(ec, h, values, box, name)
                da.name = "precipitation"
                da.attrs = {
                    "units": "mm" if kind == "accumulation" else "mm/h",
                    "source_units": units,
                    "window_h": f"{start_h:g}-{end_h:g}",
                }
                short = str(_get(ec, h, "shortName", "unknown"))
                out.append(PrecipMessage(number, short, run, start_h, end_h, kind, units, grid_type, da))
            finally:
                ec.codes_release(h)
    if number == 0:
        raise RainfallError(f"{p} holds no GRIB message.", hint="Check the download (an HTML error page?).")
    if not out:
        raise RainfallError(f"{p} holds {number} GRIB messages but none is precipitation.")
    return out


# --------------------------------------------------------------------------- 2. accumulations → P, D

#: Differences of run totals below this (mm) are packing noise and set to 0; below its
#: negative, the messages do not belong to one run (or one grid) and are refused.
_NEGATIVE_TOLERANCE_MM = 0.5


def accumulation_windows(messages: Iterable[PrecipMessage]) -> xr.DataArray:
    """Disjoint accumulation buckets (mm) of one forecast run, dims ``(window, *grid)``.

    Takes every accumulation message (rates are ignored): run totals ``0-t`` (ECMWF ``tp``,
    GFS ``0-18 h``), buckets ``s-e`` (GFS ``12-18 h``) in any mix. The accumulated amount
    A(t) since the run start is propagated from A(0) = 0 through every window (A(e) =
    A(s) + bucket, or A(s) = A(e) - bucket), so ``0-6`` plus ``12-18`` plus ``0-18`` gives
    A(6), A(12), A(18); consecutive differences are the buckets. Windows given twice must
    agree (within 0.5 mm). Differences within -0.5 mm are packing noise, set to 0; lower
    ones are refused. Windows not reachable from A(0) are kept as they are when they
    overlap nothing. Coordinates ``start_h``/``end_h`` on ``window``; attrs ``run``.
    """
    acc = [m for m in messages if m.kind == "accumulation"]
    if not acc:
        raise RainfallError("No accumulation message to build precipitation windows from.")
    runs = {m.run for m in acc}
    if len(runs) > 1:
        raise RainfallError(f"Accumulations come from several runs {sorted(map(str, runs))}; use one run.")
    template = acc[0].field
    for m in acc:
        if m.field.shape != template.shape or any(
            not np.allclose(m.field[c].values, template[c].values) for c in ("lat", "lon")
        ):
            raise RainfallError(f"Message {m.number} ({m.window}) is on another grid or crop than message {acc[0].number}.")
    fields = {(m.start_h, m.end_h): m.field.values.astype(np.float64) for m in acc}
    for m in acc:  # duplicates (GFS f006 writes 0-6 twice) must agree
        if not _agree(fields[m.window], m.field.values):
            raise RainfallError(f"Two messages for window {m.window} h disagree.")
    known: dict[float, np.ndarray] = {0.0: np.zeros(template.shape)}
    pending = [w for w in fields if w[0] != w[1]]
    changed = True
    while changed:
        changed = False
        for s, e in pending:
            v = fields[(s, e)]
            if s in known and e not in known:
                known[e], changed = known[s] + v, True
            elif e in known and s not in known:
                known[s], changed = known[e] - v, True
            elif s in known and e in known and not _agree(known[e] - known[s], v):
                raise RainfallError(f"Window {s:g}-{e:g} h disagrees with the other windows of the run.")
    steps = sorted(known)
    buckets = [(a, b, known[b] - known[a]) for a, b in itertools.pairwise(steps)]
    for s, e in pending:
        if s not in known or e not in known:
            if any(s < b and a < e for a, b, _ in buckets):
                raise RainfallError(f"Window {s:g}-{e:g} h cannot be placed among the run's other windows.")
            buckets.append((s, e, fields[(s, e)]))
    if not buckets:
        raise RainfallError("Only zero-length accumulations (step 0): nothing has accumulated yet.")
    buckets.sort(key=lambda b: b[0])
    data = np.stack([b[2] for b in buckets])
    worst = np.nanmin(data)
    if worst < -_NEGATIVE_TOLERANCE_MM:
        raise RainfallError(
            f"Precipitation windows give a negative bucket ({worst:.2f} mm): the messages mix runs or grids.",
            hint="Pass the messages of one run only.",
        )
    data = np.where(data < 0, 0.0, data).astype(np.float32)
    out = xr.DataArray(
        data,
        dims=("window", *template.dims),
        coords={
            **{k: v for k, v in template.coords.items()},
            "start_h": ("window", np.array([b[0] for b in buckets])),
            "end_h": ("window", np.array([b[1] for b in buckets])),
        },
        name="precipitation",
        attrs={"units": "mm", "run": acc[0].run.isoformat()},
    )
    return out


def _agree(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all((np.abs(a - b) <= _NEGATIVE_TOLERANCE_MM + 0.05 * np.abs(b)) | np.isnan(a) | np.isnan(b)))


def hourly_rates(windows: xr.DataArray, start_h: float, end_h: float) -> xr.DataArray:
    """Hourly precipitation rate (mm/h), dims ``(time, *grid)``, over hours ``[start_h, end_h)``
    after the run, each bucket spread evenly over its hours (the model gives nothing finer).

    ``time`` is the start of each hour (UTC, datetime64), ``attrs["step_minutes"] = 60``:
    the layout :func:`pipeline.rain.events.rain_event` reads. Raises when the buckets do not
    cover the requested hours or do not fall on whole hours.
    """
    s0, e0 = math.floor(start_h), math.ceil(end_h)
    if not e0 > s0:
        raise RainfallError(f"Lead window {start_h:g}..{end_h:g} h is empty.")
    starts, ends = windows["start_h"].values, windows["end_h"].values
    if any(float(x) != int(x) for x in (*starts, *ends)):
        raise RainfallError("Accumulation windows are not on whole hours; hourly spreading needs them.")
    grid_dims = windows.dims[1:]
    rate = np.full((e0 - s0, *windows.shape[1:]), np.nan, dtype=np.float32)
    for k, (a, b) in enumerate(zip(starts.astype(int), ends.astype(int))):
        lo, hi = max(a, s0), min(b, e0)
        if hi > lo:
            rate[lo - s0 : hi - s0] = windows.values[k] / np.float32(b - a)
    missing = np.nonzero(np.all(np.isnan(rate.reshape(rate.shape[0], -1)), axis=1))[0]
    if missing.size:
        raise RainfallError(
            f"The forecast's accumulations cover {starts.min():g}..{ends.max():g} h, not hour {s0 + int(missing[0])} "
            f"of the lead window {s0}..{e0} h.",
            hint="Fetch steps up to the end of the lead window.",
        )
    run = np.datetime64(datetime.fromisoformat(windows.attrs["run"]).replace(tzinfo=None), "ns")
    time = run + np.arange(s0, e0).astype("timedelta64[h]")
    coords = {k: v for k, v in windows.coords.items() if k not in ("start_h", "end_h")}
    out = xr.DataArray(rate, dims=("time", *grid_dims), coords={**coords, "time": time}, name="precipitation")
    out.attrs = {"units": "mm/h", "long_name": "precipitation rate (forecast buckets spread evenly)", "step_minutes": 60.0}
    return out


@dataclass(frozen=True)
class _RatesSource:
    """An in-memory :class:`~pipeline.rain.sources.PrecipitationSource` over hourly forecast rates."""

    rates: xr.DataArray

    def read(self, bbox, start, end) -> xr.DataArray:
        t = self.rates["time"].values
        keep = (t >= np.datetime64(start, "ns")) & (t < np.datetime64(end, "ns"))
        return self.rates.isel(time=np.nonzero(keep)[0])


@dataclass(frozen=True)
class ForecastEvent:
    """A forecast rainfall event over a region.

    ``run``: the model run (UTC). ``lead_start``/``lead_end``: the event window (UTC), also
    as hours after the run in ``lead_window_h``. ``intensity_mm_h`` (P) and ``duration_days``
    (D): as :func:`pipeline.rain.events.rain_event` defines them (P the mean rate over the
    whole window, dry hours included; D the time at or above ``wet_threshold_mm_h``), area
    means. ``total_mm``: area-mean accumulation over the window; ``wet_intensity_mm_h``: the
    mean rate over the rainy part (``total_mm / (24 D)``, 0 when D = 0). ``windows``: the
    run's buckets ``(start_h, end_h, area-mean mm)`` as read. ``source``: e.g.
    ``"ECMWF IFS open data 0p25"``. ``notes``: one-line announcements (run fallback).
    """

    source: str
    run: datetime
    lead_start: datetime
    lead_end: datetime
    lead_window_h: tuple[float, float]
    intensity_mm_h: float
    duration_days: float
    total_mm: float
    wet_intensity_mm_h: float
    windows: tuple[tuple[float, float, float], ...]
    wet_threshold_mm_h: float = WET_THRESHOLD_MM_H
    notes: tuple[str, ...] = ()

    @property
    def multiplier(self) -> float:
        """R_m of :func:`pipeline.rain.events.rainfall_multiplier` for this P and D."""
        return float(rainfall_multiplier(self.intensity_mm_h, self.duration_days))

    def describe(self) -> str:
        return (
            f"{self.source} run {self.run:%Y-%m-%d %H}Z, {self.lead_start:%Y-%m-%d %H}Z..{self.lead_end:%Y-%m-%d %H}Z: "
            f"P {self.intensity_mm_h:.2f} mm/h, D {self.duration_days:.2f} d, {self.total_mm:.1f} mm"
        )


def _area_mean(x: xr.DataArray) -> xr.DataArray:
    w = np.cos(np.deg2rad(x["lat"]))
    grid = [d for d in x.dims if d in ("lat", "lon", "y", "x")]
    valid = x.notnull()
    return (x.fillna(0) * w).sum(grid) / (w * valid).sum(grid)


def forecast_event(
    messages: Iterable[PrecipMessage],
    bbox: Sequence[float],
    lead_window_h: tuple[float, float],
    *,
    source: str,
    wet_threshold_mm_h: float = WET_THRESHOLD_MM_H,
    notes: Sequence[str] = (),
) -> ForecastEvent:
    """P, D and the per-window accumulations of one run's messages over ``lead_window_h``
    (hours after the run, e.g. ``(0, 72)``), with :func:`pipeline.rain.events.rain_event`."""
    windows = accumulation_windows(messages)
    start_h, end_h = lead_window_h
    rates = hourly_rates(windows, start_h, end_h)
    t0, t1 = rates["time"].values[0], rates["time"].values[-1] + np.timedelta64(1, "h")
    ev = rain_event(_RatesSource(rates), tuple(bbox), t0, t1, wet_threshold_mm_h=wet_threshold_mm_h).compute()
    p, d = float(ev["intensity"]), float(ev["duration"])
    hours = rates.sizes["time"]
    total = p * hours
    run = datetime.fromisoformat(windows.attrs["run"])
    per_window = _area_mean(windows).values
    return ForecastEvent(
        source=source,
        run=run,
        lead_start=run + timedelta(hours=math.floor(start_h)),
        lead_end=run + timedelta(hours=math.floor(start_h) + hours),
        lead_window_h=(float(math.floor(start_h)), float(math.floor(start_h) + hours)),
        intensity_mm_h=p,
        duration_days=d,
        total_mm=total,
        wet_intensity_mm_h=total / (24.0 * d) if d > 0 else 0.0,
        windows=tuple(
            (float(a), float(b), float(v))
            for a, b, v in zip(windows["start_h"].values, windows["end_h"].values, per_window)
        ),
        wet_threshold_mm_h=float(wet_threshold_mm_h),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- 3. index files


@dataclass(frozen=True)
class ByteRange:
    """``bytes=offset-(offset+length-1)``; ``length=None`` means to the end of the file."""

    offset: int
    length: int | None

    @property
    def header(self) -> str:
        end = "" if self.length is None else str(self.offset + self.length - 1)
        return f"bytes={self.offset}-{end}"


def parse_ecmwf_index(text: str) -> list[dict[str, Any]]:
    """An ECMWF open-data ``.index`` file: one JSON object per line (``param``, ``step``,
    ``levtype``, optional ``levelist``, ``_offset``, ``_length``; key order varies)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            int(entry["_offset"]), int(entry["_length"])
        except (ValueError, KeyError, TypeError) as e:
            raise RainfallError(f"ECMWF index line {n} is not a JSON entry with _offset/_length ({e}).") from e
        out.append(entry)
    return out


def ecmwf_index_ranges(entries: Iterable[dict[str, Any]], params: Sequence[str] = ("tp",)) -> list[tuple[dict, ByteRange]]:
    """The entries (and byte ranges) of ``params`` (e.g. ``tp``, ``tprate``), in file order."""
    sel = [e for e in entries if e.get("param") in params]
    return [(e, ByteRange(int(e["_offset"]), int(e["_length"]))) for e in sorted(sel, key=lambda e: int(e["_offset"]))]


@dataclass(frozen=True)
class IdxEntry:
    """One line of a wgrib2 ``.idx`` inventory (``597:428448703:d=2025080100:APCP:surface:0-7 hour acc fcst:``)."""

    number: int
    offset: int
    length: int | None
    date: str
    variable: str
    level: str
    forecast: str

    @property
    def window_h(self) -> tuple[float, float] | None:
        """The accumulation/average window in hours (``0-7 hour acc`` → (0, 7)), or None."""
        m = re.match(r"(\d+)-(\d+) (min|hour|day) (?:acc|ave)", self.forecast)
        if not m:
            return None
        f = {"min": 1 / 60, "hour": 1.0, "day": 24.0}[m.group(3)]
        return float(m.group(1)) * f, float(m.group(2)) * f

    @property
    def byte_range(self) -> ByteRange:
        return ByteRange(self.offset, self.length)


def parse_wgrib2_idx(text: str) -> list[IdxEntry]:
    """A NOAA wgrib2 ``.idx``: message number, byte offset, date, variable, level, forecast;
    each message's length is the next offset minus its own (the last runs to the end)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(":")
        try:
            rows.append((int(parts[0]), int(parts[1]), parts[2].removeprefix("d="), parts[3], parts[4], parts[5]))
        except (IndexError, ValueError) as e:
            raise RainfallError(f".idx line {n} is not 'number:offset:d=date:VAR:level:forecast:' ({line!r}).") from e
    out = []
    for k, (num, off, date, var, level, fc) in enumerate(rows):
        nxt = rows[k + 1][1] if k + 1 < len(rows) else None
        out.append(IdxEntry(num, off, None if nxt is None else nxt - off, date, var, level, fc))
    return out


def idx_ranges(entries: Iterable[IdxEntry], variable: str = "APCP", level: str = "surface") -> list[IdxEntry]:
    """The ``.idx`` entries of ``variable`` at ``level`` (every window of it, not only the first)."""
    return [e for e in entries if e.variable == variable and e.level == level]


# --------------------------------------------------------------------------- 4. sources


@runtime_checkable
class ForecastSource(Protocol):
    """Anything that forecasts a rainfall event over a bbox.

    ``forecast(bbox, issued_before, lead_hours)`` uses the newest run published by
    ``issued_before`` (UTC; a naive datetime is taken as UTC; never a later run) and returns the :class:`ForecastEvent` of the
    ``lead_hours`` hours that follow ``issued_before`` (rounded down to the hour).
    """

    name: str

    def forecast(self, bbox: Sequence[float], issued_before: datetime, lead_hours: int) -> ForecastEvent: ...


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def latest_run(issued_before: datetime, cycle_hours: Sequence[int], delay: timedelta) -> datetime:
    """The newest run at one of ``cycle_hours`` (UTC) with ``run + delay <= issued_before``:
    the run expected to be published by then, never one in the future."""
    t = _utc(issued_before) - delay
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(3):
        d = day - timedelta(days=back)
        for h in sorted(cycle_hours, reverse=True):
            run = d + timedelta(hours=h)
            if run <= t:
                return run
    raise RainfallError(f"No run among cycles {list(cycle_hours)} before {issued_before}.")  # pragma: no cover


def _previous_run(run: datetime, cycle_hours: Sequence[int]) -> datetime:
    return latest_run(run - timedelta(seconds=1), cycle_hours, timedelta(0))


class NotPublished(RainfallError):
    """A run's files are not (yet) on the server."""


@dataclass
class _RunFetchingSource:
    """Shared logic: pick the run, fetch, fall back one run when not published, make the event."""

    name: str = ""
    cycle_hours: tuple[int, ...] = ()
    delay: timedelta = timedelta(0)
    wet_threshold_mm_h: float = WET_THRESHOLD_MM_H
    workdir: str | os.PathLike | None = None

    def steps_for(self, lead_end_h: float) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fetch(self, run: datetime, steps: Sequence[int], target: Path) -> list[Path]:  # pragma: no cover
        raise NotImplementedError

    def forecast(self, bbox: Sequence[float], issued_before: datetime, lead_hours: int) -> ForecastEvent:
        box = check_bbox(bbox)
        if not (isinstance(lead_hours, int) and lead_hours > 0):
            raise RainfallError(f"lead_hours={lead_hours!r} must be a positive whole number of hours.")
        issued = _utc(issued_before)
        run = latest_run(issued, self.cycle_hours, self.delay)
        notes: list[str] = []
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            for attempt in (0, 1):
                start_h = math.floor((issued - run).total_seconds() / 3600.0)
                steps = self.steps_for(start_h + lead_hours)
                try:
                    files = self.fetch(run, steps, Path(tmp) / f"{run:%Y%m%d%H}")
                    break
                except NotPublished as e:
                    if attempt:
                        raise
                    prev = _previous_run(run, self.cycle_hours)
                    note = f"{self.name}: run {run:%Y-%m-%d %H}Z is not published yet ({e.message}); using {prev:%Y-%m-%d %H}Z."
                    log.warning(note)
                    notes.append(note)
                    run = prev
            messages = [m for f in files for m in read_grib_precipitation(f, box)]
        return forecast_event(
            messages, box, (start_h, start_h + lead_hours), source=self.name,
            wet_threshold_mm_h=self.wet_threshold_mm_h, notes=notes,
        )


def _ecmwf_steps(lead_end_h: float) -> list[int]:
    """IFS open-data ``tp`` steps (run totals) up to ``lead_end_h``: every 3 h to 144 h,
    then every 6 h to 360 h (00/12 UTC runs)."""
    steps = [*range(3, 145, 3), *range(150, 361, 6)]
    need = [s for s in steps if s < lead_end_h]
    nxt = [s for s in steps if s >= lead_end_h]
    if not nxt:
        raise RainfallError(f"ECMWF open data forecasts reach 360 h, not {lead_end_h:g} h.")
    return [*need, nxt[0]]


@dataclass
class EcmwfOpenDataSource(_RunFetchingSource):
    """ECMWF IFS open-data forecasts (CC BY 4.0), keyless, through the ``ecmwf-opendata`` client.

    * What: ``tp`` total precipitation, run totals since the run start in **metres** (converted
      to mm), at steps 3, 6, ... 144 h then every 6 h to 360 h; 0.25° global grid (``resol``).
    * Runs: 00 and 12 UTC (this source uses only them: the long ones); published about 7-9 h
      after the run, so the run chosen is the newest with ``run + 8 h <= issued_before``,
      and one run earlier (announced in one log line) when that one is not there yet.
    * Download: the client reads each step file's ``.index`` (JSON lines) and fetches only
      the ``tp`` byte ranges (~0.6 MB a step at 0.25°); fields are cropped to the bbox after.
    * ``source``: ``"aws"`` (default: S3 mirror, archive from 2023), ``"ecmwf"``, ``"azure"``,
      ``"google"`` or a base URL (tests serve fixtures from a local server).
    """

    name: str = "ECMWF IFS open data 0p25"
    cycle_hours: tuple[int, ...] = (0, 12)
    delay: timedelta = timedelta(hours=8)
    source: str = "aws"
    model: str = "ifs"
    resol: str = "0p25"
    client_factory: Callable[[], Any] | None = None

    def steps_for(self, lead_end_h: float) -> list[int]:
        return _ecmwf_steps(lead_end_h)

    def client(self):
        if self.client_factory is not None:
            return self.client_factory()
        from ecmwf.opendata import Client

        custom = self.source.startswith(("http://", "https://"))
        return Client(
            source=self.source, model=self.model, resol=self.resol, maximum_retries=3, retry_after=5,
            source_accept_ranges=True if custom else None, source_accept_multiple_ranges=False if custom else None,
        )

    def fetch(self, run: datetime, steps: Sequence[int], target: Path) -> list[Path]:
        import requests

        target = target.with_suffix(".grib2")
        try:
            self.client().retrieve(
                date=run.strftime("%Y%m%d"), time=run.hour, step=list(steps), stream="oper", type="fc",
                param="tp", target=str(target),
            )
        except requests.HTTPError as e:
            if e.response is not None and e.response.status_code in (403, 404):
                raise NotPublished(f"HTTP {e.response.status_code} for {e.request.url if e.request else 'an index'}") from e
            raise RainfallError(f"{self.name}: download failed ({e}).", hint="Check the network.") from e
        except ValueError as e:  # the client's "Cannot find index entries matching ..."
            raise NotPublished(str(e)) from e
        except (OSError, requests.RequestException) as e:
            raise RainfallError(f"{self.name}: download failed ({type(e).__name__}: {e}).", hint="Check the network.") from e
        return [target]


GFS_AWS = "https://noaa-gfs-bdp-pds.s3.amazonaws.com"
GFS_NOMADS = "https://nomads.ncep.noaa.gov/pub/data/nccf/com/gfs/prod"


@dataclass
class GfsSource(_RunFetchingSource):
    """NOAA GFS 0.25° forecasts (U.S. Government work, no copyright), keyless.

    * What: ``APCP`` surface, kg m-2 (= mm): each file ``fNNN`` holds a bucket (e.g.
      ``12-18 h``, or ``6-7 h`` in hourly files) and the run total ``0-NNN h``; the windows
      are read from the messages, every one of them, and never assumed.
    * Files every ``step_hours`` (default 6; hourly files exist to 120 h, 3-hourly to 384 h).
    * Runs: 00, 06, 12, 18 UTC, published about 3.5-5 h after the run: the newest with
      ``run + 4 h <= issued_before``, else one run earlier (announced in one log line).
    * Download: only the APCP messages, by the byte ranges of each file's wgrib2 ``.idx``
      (``base``: the AWS bucket by default, or NOMADS, or any mirror with the same layout
      ``gfs.YYYYMMDD/HH/atmos/gfs.tHHz.pgrb2.0p25.fNNN``); cropped to the bbox after.
    """

    name: str = "NOAA GFS 0p25"
    cycle_hours: tuple[int, ...] = (0, 6, 12, 18)
    delay: timedelta = timedelta(hours=4)
    base: str = GFS_AWS
    step_hours: int = 6
    session: Any = None
    timeout_s: float = 60.0

    def steps_for(self, lead_end_h: float) -> list[int]:
        if self.step_hours not in (1, 3, 6) or (self.step_hours == 1 and lead_end_h > 120):
            raise RainfallError(f"GFS step_hours={self.step_hours} must be 1 (to 120 h), 3 or 6.")
        last = int(math.ceil(lead_end_h / self.step_hours) * self.step_hours)
        if last > 384:
            raise RainfallError(f"GFS forecasts reach 384 h, not {lead_end_h:g} h.")
        return list(range(self.step_hours, last + 1, self.step_hours))

    def url(self, run: datetime, step: int) -> str:
        return f"{self.base}/gfs.{run:%Y%m%d}/{run:%H}/atmos/gfs.t{run:%H}z.pgrb2.0p25.f{step:03d}"

    def _get(self, url: str, headers: dict | None = None) -> bytes:
        import requests

        sess = self.session or requests.Session()
        try:
            r = sess.get(url, headers=headers or {}, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise RainfallError(f"{self.name}: cannot reach {url} ({type(e).__name__}).", hint="Check the network.") from e
        if r.status_code in (403, 404):
            raise NotPublished(f"HTTP {r.status_code} for {url}")
        if r.status_code not in (200, 206):
            raise RainfallError(f"{self.name}: HTTP {r.status_code} for {url}.", hint="Retry later.")
        return r.content

    def fetch(self, run: datetime, steps: Sequence[int], target: Path) -> list[Path]:
        target.mkdir(parents=True, exist_ok=True)
        files = []
        for step in steps:
            url = self.url(run, step)
            entries = idx_ranges(parse_wgrib2_idx(self._get(url + ".idx").decode("utf-8", "replace")))
            if not entries:
                raise NotPublished(f"no APCP line in {url}.idx")
            f = target / f"f{step:03d}.grib2"
            with open(f, "wb") as out:
                out.writelines(self._get(url, {"Range": e.byte_range.header}) for e in entries)
            files.append(f)
        return files


#: Names accepted by :func:`forecast_source` (the watch's ``--forecast``).
FORECAST_SOURCES: tuple[str, ...] = ("ecmwf", "gfs", "open-meteo", "none")


def forecast_source(name: str) -> ForecastSource | None:
    """The forecast source called ``name``: ``ecmwf`` (ECMWF IFS open data, keyless),
    ``gfs`` (NOAA GFS, keyless), ``open-meteo`` (Open-Meteo point forecast at the bbox centre,
    keyless) or ``none`` (no forecast check). Nothing is contacted yet."""
    if name == "none":
        return None
    if name == "ecmwf":
        return EcmwfOpenDataSource()
    if name == "gfs":
        return GfsSource()
    if name == "open-meteo":
        # pipeline.rain.openmeteo imports this module, so import it here.
        from pipeline.rain.openmeteo import OpenMeteoSource

        return OpenMeteoSource()
    raise RainfallError(f"Unknown forecast source {name!r}.", hint=f"Use one of {', '.join(FORECAST_SOURCES)}.")
