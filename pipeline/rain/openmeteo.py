"""Open-Meteo precipitation: JSON and FlatBuffers responses read into hourly rates, and a
keyless point-forecast :class:`~pipeline.rain.forecast.ForecastSource`.

* :func:`read_openmeteo_json` reads ``hourly.precipitation`` of a ``/v1/forecast`` JSON
  response (a dict, a list of them for several locations, JSON text or a file). Units must
  be ``mm`` (``hourly_units.precipitation``; ``precipitation_unit=inch`` is refused). Open-Meteo
  labels an hourly precipitation value with the *end* of its hour ("sum of the preceding
  hour"), in local time when ``timezone`` was asked for: the reader applies the response's
  ``utc_offset_seconds`` and moves each label to the *start* of its hour, so ``time`` is UTC
  hour starts, the layout of :func:`pipeline.rain.forecast.hourly_rates` and
  :func:`pipeline.rain.events.rain_event` (``attrs["step_minutes"] = 60``, mm/h).
* Several models in one request (``models=a,b``) suffix every key (``precipitation_a``,
  ``precipitation_b``); ``model=`` picks one and ambiguous or absent keys are refused.
* :func:`read_openmeteo_flatbuffers` reads the ``format=flatbuffers`` body (size-prefixed
  ``WeatherApiResponse`` messages, one per location and model) with ``openmeteo_sdk``.
* :func:`read_openmeteo_hourly` is the generic layer under both: any hourly variable, values
  and units as the response states them, time labels converted to UTC but not moved.
* One location gives dims ``(time, lat, lon)`` with ``lat``/``lon`` of length 1; several
  give ``(time, location)`` with ``lat``/``lon`` coordinates on ``location``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline.core.errors import RainfallError
from pipeline.rain.events import WET_THRESHOLD_MM_H
from pipeline.rain.forecast import ForecastEvent, PrecipMessage, _utc, forecast_event
from pipeline.rain.sources import check_bbox

__all__ = [
    "OPEN_METEO_FORECAST_URL",
    "OpenMeteoSource",
    "read_openmeteo_flatbuffers",
    "read_openmeteo_hourly",
    "read_openmeteo_json",
]

OPEN_METEO_FORECAST_URL = "https://api.open-meteo.com/v1/forecast"

#: Hourly precipitation-amount variables (all "sum of the preceding hour", in mm by default).
_PRECIP_VARIABLES = ("precipitation", "rain", "showers")


@dataclass(frozen=True)
class _Series:
    lat: float
    lon: float
    time_utc: np.ndarray  # datetime64[ns], Open-Meteo's labels converted to UTC
    values: np.ndarray  # float64, NaN for null
    units: str
    interval_s: int
    key: str


# --------------------------------------------------------------------------- JSON


def _load_json(doc_or_path: Any) -> list[dict]:
    doc = doc_or_path
    if isinstance(doc, (str, os.PathLike)) and not (isinstance(doc, str) and doc.lstrip().startswith(("{", "["))):
        p = Path(doc)
        try:
            doc = p.read_bytes()
        except OSError as e:
            raise RainfallError(f"Cannot read Open-Meteo response {p}: {e}.") from e
    if isinstance(doc, (bytes, bytearray)):
        if not bytes(doc).lstrip()[:1] in (b"{", b"["):
            raise RainfallError(
                "Open-Meteo response is not JSON (a format=flatbuffers body?).",
                hint="Use read_openmeteo_flatbuffers for format=flatbuffers responses.",
            )
        doc = doc.decode("utf-8")
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as e:
            raise RainfallError(f"Open-Meteo response is not valid JSON ({e}).") from e
    docs = doc if isinstance(doc, list) else [doc]
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise RainfallError("Open-Meteo response is not a JSON object (or a list of them).")
    for d in docs:
        if d.get("error"):
            raise RainfallError(f"Open-Meteo answered with an error: {d.get('reason', 'no reason given')}.")
    return docs


def _pick_key(block: dict, variable: str, model: str | None, where: str) -> str:
    keys = [k for k in block if k != "time"]
    plain = variable in block
    suffixed = sorted(k for k in keys if k.startswith(variable + "_") and k[len(variable) + 1 :] not in ("", "unit"))
    # "precipitation_probability" and "precipitation_hours" are other variables, not models.
    suffixed = [k for k in suffixed if k[len(variable) + 1 :] not in ("probability", "hours", "sum")]
    listing = ", ".join(keys) or "nothing"
    if model is None:
        if plain:
            return variable
        if len(suffixed) == 1:
            return suffixed[0]
        if suffixed:
            models = ", ".join(k[len(variable) + 1 :] for k in suffixed)
            raise RainfallError(
                f"{where}: {variable!r} comes from several models ({models}); pass model= to pick one.",
                hint=f"e.g. model={suffixed[0][len(variable) + 1:]!r}.",
            )
        raise RainfallError(f"{where} has no {variable!r}; it holds: {listing}.", hint=f"Request hourly={variable}.")
    key = f"{variable}_{model}"
    if key in block:
        return key
    raise RainfallError(
        f"{where} has no {key!r} for model {model!r}; it holds: {listing}.",
        hint="Pass model=None for a single-model response, or one of the suffixes listed.",
    )


def _json_times(raw: list, offset_s: int, where: str) -> np.ndarray:
    if raw and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in raw):
        # timeformat=unixtime: seconds since 1970 in UTC already (Open-Meteo applies no offset).
        return np.asarray(raw, dtype="int64").astype("datetime64[s]").astype("datetime64[ns]")
    try:
        local = np.array([np.datetime64(str(t), "ns") for t in raw])
    except ValueError as e:
        raise RainfallError(f"{where}: cannot parse hourly.time ({e}).") from e
    return local - np.timedelta64(int(offset_s), "s")


def _json_series(docs: list[dict], variable: str, model: str | None) -> list[_Series]:
    out = []
    for i, d in enumerate(docs):
        where = "Open-Meteo response" + (f" (location {i + 1})" if len(docs) > 1 else "")
        hourly = d.get("hourly")
        if not isinstance(hourly, dict) or "time" not in hourly:
            raise RainfallError(f"{where} has no hourly block; it holds: {', '.join(d) or 'nothing'}.")
        key = _pick_key(hourly, variable, model, f"{where} hourly block")
        units = str((d.get("hourly_units") or {}).get(key, ""))
        offset = d.get("utc_offset_seconds", 0)
        if not isinstance(offset, int) or (offset and not d.get("timezone")):
            raise RainfallError(f"{where}: utc_offset_seconds={offset!r} without a timezone.")
        times = _json_times(hourly["time"], offset, where)
        values = np.array([np.nan if v is None else v for v in hourly[key]], dtype=np.float64)
        if values.shape != times.shape:
            raise RainfallError(f"{where}: {key} has {values.size} values for {times.size} times.")
        step = np.diff(times).astype("timedelta64[s]").astype(int)
        interval = int(step[0]) if step.size else 3600
        out.append(_Series(float(d["latitude"]), float(d["longitude"]), times, values, units, interval, key))
    return out


# --------------------------------------------------------------------------- FlatBuffers


def _sdk():
    try:
        from openmeteo_sdk.Model import Model
        from openmeteo_sdk.Unit import Unit
        from openmeteo_sdk.Variable import Variable
        from openmeteo_sdk.WeatherApiResponse import WeatherApiResponse
    except ImportError as e:  # pragma: no cover - openmeteo_sdk is a pinned dependency
        raise RainfallError(
            f"Cannot import openmeteo_sdk ({e}).", hint="pip install openmeteo_sdk (pure Python, needs flatbuffers)."
        ) from e
    return WeatherApiResponse, Variable, Unit, Model


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _fb_series(data: Any, variable: str, model: str | None) -> list[_Series]:
    WeatherApiResponse, Variable, Unit, Model = _sdk()
    if isinstance(data, (str, os.PathLike)):
        try:
            data = Path(data).read_bytes()
        except OSError as e:
            raise RainfallError(f"Cannot read Open-Meteo response {data}: {e}.") from e
    buf = bytes(data)
    if buf.lstrip()[:1] in (b"{", b"["):
        raise RainfallError("Open-Meteo response is JSON, not FlatBuffers.", hint="Use read_openmeteo_json.")
    var_names, unit_names, model_names = _enum_names(Variable), _enum_names(Unit), _enum_names(Model)
    alt = {"temperature_2m": ("temperature", 2)}.get(variable, (variable, None))
    want = getattr(Variable, alt[0], None)
    if want is None:
        raise RainfallError(f"openmeteo_sdk knows no variable {variable!r}.")
    responses = []
    pos = 0
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise RainfallError(f"FlatBuffers response: {len(buf) - pos} stray bytes at offset {pos}.")
        size = int.from_bytes(buf[pos : pos + 4], "little")
        if size <= 0 or pos + 4 + size > len(buf):
            raise RainfallError(f"FlatBuffers response: message at offset {pos} claims {size} bytes; the body is truncated.")
        responses.append(WeatherApiResponse.GetRootAs(buf, pos + 4))
        pos += 4 + size
    if not responses:
        raise RainfallError("FlatBuffers response is empty.")
    if model is not None:
        mine = [r for r in responses if model_names.get(r.Model()) == model]
        if not mine:
            have = sorted({model_names.get(r.Model(), str(r.Model())) for r in responses})
            raise RainfallError(f"FlatBuffers response has no model {model!r}; it holds: {', '.join(have)}.")
        responses = mine
    else:
        have = sorted({model_names.get(r.Model(), str(r.Model())) for r in responses})
        locs = {r.LocationId() for r in responses}
        if len(responses) > len(locs):
            raise RainfallError(
                f"FlatBuffers response holds several models ({', '.join(have)}); pass model= to pick one."
            )
    out = []
    for i, r in enumerate(responses):
        where = f"FlatBuffers response (location {r.LocationId() + 1})"
        h = r.Hourly()
        if h is None:
            raise RainfallError(f"{where} has no hourly block.")
        found, listing = None, []
        for j in range(h.VariablesLength()):
            v = h.Variables(j)
            name = var_names.get(v.Variable(), str(v.Variable()))
            listing.append(f"{name}{'_' + str(v.Altitude()) + 'm' if v.Altitude() else ''}")
            if v.Variable() == want and (alt[1] is None or v.Altitude() == alt[1]):
                if found is not None:
                    raise RainfallError(f"{where} holds {variable!r} more than once (members/levels?).")
                found = v
        if found is None:
            raise RainfallError(f"{where} has no hourly {variable!r}; it holds: {', '.join(listing) or 'nothing'}.")
        interval = int(h.Interval())
        n = found.ValuesLength()
        times = (np.int64(h.Time()) + interval * np.arange(n, dtype=np.int64)).astype("datetime64[s]").astype("datetime64[ns]")
        values = found.ValuesAsNumpy().astype(np.float64) if n else np.zeros(0)
        units = {"millimetre": "mm", "celsius": "°C", "inch": "inch"}.get(unit_names.get(found.Unit(), ""), unit_names.get(found.Unit(), "?"))
        out.append(_Series(float(r.Latitude()), float(r.Longitude()), times, values, units, interval, variable))
    return out


# --------------------------------------------------------------------------- series → DataArray


def _to_dataarray(series: list[_Series], name: str) -> xr.DataArray:
    t0 = series[0].time_utc
    for s in series[1:]:
        if s.time_utc.shape != t0.shape or not np.array_equal(s.time_utc, t0):
            raise RainfallError("Open-Meteo locations of one response have different time axes.")
    if len(series) == 1:
        s = series[0]
        return xr.DataArray(
            s.values[:, None, None], dims=("time", "lat", "lon"),
            coords={"time": t0, "lat": [s.lat], "lon": [s.lon]}, name=name,
        )
    return xr.DataArray(
        np.stack([s.values for s in series], axis=1), dims=("time", "location"),
        coords={"time": t0, "lat": ("location", [s.lat for s in series]), "lon": ("location", [s.lon for s in series])},
        name=name,
    )


def read_openmeteo_hourly(src: Any, variable: str, *, model: str | None = None) -> xr.DataArray:
    """Any hourly variable of an Open-Meteo response (JSON, or FlatBuffers bytes/``.fb`` file),
    values and ``attrs["units"]`` as the response states them, ``time`` = the response's labels in
    UTC (not moved: for sums these label the end of the interval)."""
    if isinstance(src, (bytes, bytearray)) and bytes(src).lstrip()[:1] not in (b"{", b"[") or isinstance(src, (os.PathLike, str)) and str(src).endswith(".fb"):
        series = _fb_series(src, variable, model)
    else:
        series = _json_series(_load_json(src), variable, model)
    units = {s.units for s in series}
    da = _to_dataarray(series, variable)
    da.attrs = {"units": units.pop() if len(units) == 1 else ",".join(sorted(units)), "source_key": series[0].key}
    return da


def _precip(series: list[_Series], variable: str) -> xr.DataArray:
    if variable not in _PRECIP_VARIABLES:
        raise RainfallError(f"{variable!r} is not an hourly precipitation amount; use one of {', '.join(_PRECIP_VARIABLES)}.")
    for s in series:
        if s.units != "mm":
            raise RainfallError(
                f"Open-Meteo {s.key} is in {s.units or 'unstated units'!r}, not mm.",
                hint="Request precipitation_unit=mm (the default).",
            )
        if s.interval_s != 3600 or (s.time_utc.size > 1 and np.any(np.diff(s.time_utc) != np.timedelta64(1, "h"))):
            raise RainfallError(f"Open-Meteo {s.key} is not on a regular hourly axis (interval {s.interval_s} s).")
    # Hourly sums label the end of their hour; mm over one hour = mm/h.
    shifted = [
        _Series(s.lat, s.lon, s.time_utc - np.timedelta64(1, "h"), s.values, "mm/h", 3600, s.key) for s in series
    ]
    da = _to_dataarray(shifted, "precipitation").astype(np.float32)
    da.attrs = {
        "units": "mm/h",
        "long_name": f"precipitation rate (Open-Meteo hourly {series[0].key}, sum of the hour)",
        "step_minutes": 60.0,
        "time_label": "start of the hour, UTC",
        "source_key": series[0].key,
    }
    return da


def read_openmeteo_json(doc_or_path: Any, *, model: str | None = None, variable: str = "precipitation") -> xr.DataArray:
    """Hourly precipitation (mm/h, float32, NaN for null) of an Open-Meteo JSON response.

    ``doc_or_path``: a parsed response (dict, or list for several locations), JSON text/bytes,
    or a file path. ``time``: UTC start of each hour (labels minus ``utc_offset_seconds``,
    minus one hour). ``model``: the suffix of a multi-model response (``"ecmwf_ifs025"`` picks
    ``precipitation_ecmwf_ifs025``). Raises :class:`RainfallError` for units other than mm,
    for an absent key or several models without ``model=`` (listing the keys there), and for
    a FlatBuffers body.
    """
    return _precip(_json_series(_load_json(doc_or_path), variable, model), variable)


def read_openmeteo_flatbuffers(data_or_path: Any, *, model: str | None = None, variable: str = "precipitation") -> xr.DataArray:
    """The same DataArray as :func:`read_openmeteo_json`, from a ``format=flatbuffers`` body
    (bytes or a file): size-prefixed ``WeatherApiResponse`` messages decoded with ``openmeteo_sdk``
    (times there are UTC seconds already). ``model``: an ``openmeteo_sdk.Model`` name."""
    return _precip(_fb_series(data_or_path, variable, model), variable)


# --------------------------------------------------------------------------- source


@dataclass
class OpenMeteoSource:
    """Open-Meteo forecast (CC BY 4.0, "Weather data by Open-Meteo.com"), keyless, over HTTP.

    * A **point forecast at the bbox centre**, not an area mean: one request to ``/v1/forecast``
      for ``hourly=precipitation`` (mm, sum of each hour) at the centre of the bbox. The P and D
      of the :class:`~pipeline.rain.forecast.ForecastEvent` are that point's; a large bbox is
      represented by one point.
    * Models: ``models="best_match"`` (default) lets Open-Meteo blend the best local
      high-resolution models (e.g. DWD ICON-D2/ICON-EU, Météo-France AROME, NOAA HRRR) with global
      ones (ECMWF IFS, NOAA GFS, DWD ICON) for the location; or name one, e.g. ``"ecmwf_ifs025"``,
      ``"gfs_seamless"``, ``"icon_seamless"``.
    * Update cadence: Open-Meteo ingests each model run as it is published (local models hourly to
      3-hourly, global ones every 6 h, a few hours after the run) and always serves the newest.
      It does not report the run: ``ForecastEvent.run`` is the start of the lead window. For an
      ``issued_before`` in the past it still serves today's newest runs (a note says so), not the
      forecast that was available then.
    * Requests the hours ``[issued_before rounded down, + lead_hours)`` (``start_hour``/``end_hour``
      in GMT); ``session``: anything with ``get`` (tests pass a fake); ``timeout_s`` per request.
    """

    name: str = "Open-Meteo forecast"
    models: str = "best_match"
    url: str = OPEN_METEO_FORECAST_URL
    session: Any = None
    timeout_s: float = 30.0
    wet_threshold_mm_h: float = WET_THRESHOLD_MM_H

    def request(self, lat: float, lon: float, start: datetime, end: datetime) -> Any:
        import requests

        params = {
            "latitude": f"{lat:.4f}",
            "longitude": f"{lon:.4f}",
            "hourly": "precipitation",
            "models": self.models,
            "timezone": "GMT",
            "precipitation_unit": "mm",
            # precipitation at label T is the sum of [T-1h, T): ask for the labels ending each hour
            "start_hour": f"{start + timedelta(hours=1):%Y-%m-%dT%H:%M}",
            "end_hour": f"{end:%Y-%m-%dT%H:%M}",
        }
        get = self.session.get if self.session is not None else requests.get
        try:
            r = get(self.url, params=params, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise RainfallError(f"{self.name}: cannot reach {self.url} ({type(e).__name__}).", hint="Check the network.") from e
        if r.status_code != 200:
            try:
                reason = r.json().get("reason", "")
            except (ValueError, AttributeError):
                reason = ""
            raise RainfallError(f"{self.name}: HTTP {r.status_code} from {self.url}{': ' + reason if reason else ''}.")
        try:
            return r.json()
        except ValueError as e:
            raise RainfallError(f"{self.name}: the answer is not JSON ({e}).") from e

    def forecast(self, bbox: Sequence[float], issued_before: datetime, lead_hours: int) -> ForecastEvent:
        box = check_bbox(bbox)
        if not (isinstance(lead_hours, int) and lead_hours > 0):
            raise RainfallError(f"lead_hours={lead_hours!r} must be a positive whole number of hours.")
        lon = 0.5 * (box[0] + box[2])
        lon = (lon + 180.0) % 360.0 - 180.0
        lat = 0.5 * (box[1] + box[3])
        start = _utc(issued_before).replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=lead_hours)
        rates = read_openmeteo_json(self.request(lat, lon, start, end), model=None)
        t0 = np.datetime64(start.replace(tzinfo=None), "ns")
        want = t0 + np.arange(lead_hours).astype("timedelta64[h]")
        sub = rates.reindex(time=want)
        gaps = np.nonzero(np.isnan(sub.values.reshape(lead_hours, -1)).any(axis=1))[0]
        if gaps.size:
            first = want[gaps[0]]
            raise RainfallError(
                f"{self.name}: no precipitation value for {gaps.size} of the {lead_hours} hours from {start:%Y-%m-%d %H}Z "
                f"(first {str(first)[:13]}Z; the answer covers {str(rates.time.values[0])[:13]}Z.."
                f"{str(rates.time.values[-1])[:13]}Z).",
                hint="Shorten lead_hours to the model's horizon (best_match reaches about 7-16 days).",
            )
        notes = []
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        if start < now - timedelta(hours=1):
            notes.append(
                f"{self.name}: {start:%Y-%m-%d %H}Z is in the past; Open-Meteo serves its newest runs, "
                "not the forecast issued then."
            )
        run = start
        messages = [
            PrecipMessage(
                number=k + 1, short_name="precipitation", run=run, start_h=float(k), end_h=float(k + 1),
                kind="accumulation", units="mm", grid_type="point", field=sub.isel(time=k, drop=True),
            )
            for k in range(lead_hours)
        ]
        return forecast_event(
            messages, box, (0.0, float(lead_hours)), source=f"{self.name} ({self.models}, point {lat:.3f}N {lon:.3f}E)",
            wet_threshold_mm_h=self.wet_threshold_mm_h, notes=notes,
        )
