"""Current observed precipitation: GPM IMERG Early/Late V07 half-hourly granules from NASA.

IMERG V06 on Planetary Computer (:class:`pipeline.rain.sources.ImergSource`) ended on
2021-05-31. This module reads what NASA publishes now:

* :func:`read_imerg_hdf5` reads one half-hourly IMERG HDF5 granule: V07
  (``/Grid/precipitation``, dims ``(time, lon, lat)``, a ``time`` variable in seconds since
  1980-01-06 with ``calendar="julian"``) and the legacy near-real-time RT-H5
  (``/Grid/precipitationCal``, dims ``(lon, lat)``, no time variable: the ``FileHeader``'s
  ``StartGranuleDateTime`` is used). Units are read from the variable's ``units``/``Units``
  attribute and refused unless they are mm/hr-like; ``-9999.9`` fill becomes NaN.
* :func:`cmr_granule_search_url`, :func:`parse_cmr_granules` and
  :func:`search_imerg_granules` find the granules of ``GPM_3IMERGHHE`` (Early) or
  ``GPM_3IMERGHHL`` (Late), version 07, through NASA CMR's granule search (legacy JSON feed or
  UMM-G; the https "GET DATA" link is chosen over S3 and OPeNDAP; pages followed with the
  ``CMR-Search-After`` header, up to a cap).
* :class:`ImergRunSource` is a :class:`~pipeline.rain.sources.PrecipitationSource`: for a
  bbox and a window it searches CMR, downloads the granules to a cache folder (atomically,
  with Earthdata credentials from the environment) and returns ``(time, lat, lon)`` mm/h.
* :func:`read_imerg_gis_daily` reads the IMERG GIS daily GeoTIFFs that NASA's LHASA model
  uses (0.1 mm/day) as mm/h over the day.

What every remote source here needs and promises:

* **credentials**: an Earthdata login, ``EARTHDATA_TOKEN`` (a bearer token) or
  ``EARTHDATA_USERNAME`` + ``EARTHDATA_PASSWORD`` (sent only to the data host and
  urs.earthdata.nasa.gov, across the URS OAuth redirect). Read from the environment at each
  :meth:`ImergRunSource.read`, never stored on the source, logged or put in an error message
  (:func:`pipeline.core.secrets.redact` plus masking of the values themselves).
  Missing credentials are refused before any request.
* **latency**: Early ≈ 4 h, Late ≈ 14 h behind real time. A window ending later than
  ``now − latency`` logs one line saying the last hours are not available yet and uses what
  CMR has; a window starting after it is refused.
* **coverage**: 60°S–60°N (the band the merged precipitation field is valid in); bboxes
  reaching beyond are refused.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import h5py
import numpy as np
import requests
import xarray as xr

from pipeline.core.errors import AccountRequiredError, RainfallError
from pipeline.core.secrets import redact
from pipeline.plan.regions import BBox
from pipeline.rain.sources import check_bbox, check_window

__all__ = [
    "CMR_GRANULES_URL",
    "COVERAGE_LAT",
    "IMERG_RUNS",
    "EarthdataSession",
    "Granule",
    "ImergRun",
    "ImergRunSource",
    "cmr_granule_search_url",
    "parse_cmr_granules",
    "read_imerg_gis_daily",
    "read_imerg_hdf5",
    "search_imerg_granules",
]

log = logging.getLogger(__name__)

CMR_GRANULES_URL = "https://cmr.earthdata.nasa.gov/search/granules"
URS_HOST = "urs.earthdata.nasa.gov"
#: Latitude band of the IMERG precipitation field served by the current sources.
COVERAGE_LAT = (-60.0, 60.0)
IMERG_FILL = -9999.9
STEP_MINUTES = 30.0


@dataclass(frozen=True)
class ImergRun:
    """Facts about one IMERG near-real-time run at GES DISC."""

    run: str
    short_name: str
    version: str
    latency_hours: float
    label: str


IMERG_RUNS: Mapping[str, ImergRun] = {
    "early": ImergRun("early", "GPM_3IMERGHHE", "07", 4.0, "IMERG Early"),
    "late": ImergRun("late", "GPM_3IMERGHHL", "07", 14.0, "IMERG Late"),
}


def _run(run: str) -> ImergRun:
    try:
        return IMERG_RUNS[run]
    except (KeyError, TypeError):
        raise RainfallError(
            f"IMERG run {run!r} is not one of {' or '.join(repr(r) for r in IMERG_RUNS)}.",
            hint="Use run='early' (≈4 h latency) or run='late' (≈14 h latency).",
        ) from None


# --------------------------------------------------------------------------- HDF5 granules

#: Spellings of mm per hour accepted in a granule's units attribute (lower case, spaces collapsed).
_MM_PER_HOUR = frozenset({"mm/hr", "mm/h", "mm/hour", "mm hr-1", "mm h-1", "mm hour-1", "mm hr^-1", "mm h^-1",
                          "mm.hr-1", "mm.h-1", "mm hr**-1"})
_TIME_UNITS_RE = re.compile(
    r"^\s*(seconds|minutes|hours|days)\s+since\s+(\d{4}-\d{2}-\d{2})(?:[ T](\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?"
    r"\s*(?:UTC|GMT|Z)?\s*$",
    re.IGNORECASE,
)
_TIME_STEP = {"seconds": "s", "minutes": "m", "hours": "h", "days": "D"}
#: Between these dates the Julian and Gregorian calendars have the same leap years, so
#: counting seconds from an epoch gives the same date label in both.
_JULIAN_SAFE = (np.datetime64("1900-03-01"), np.datetime64("2100-02-28"))
_NAME_TIME_RE = re.compile(r"\.(\d{8})-S(\d{6})-E(\d{6})")


def _attr_str(obj: h5py.HLObject, *names: str) -> str | None:
    for n in names:
        if n in obj.attrs:
            v = obj.attrs[n]
            if isinstance(v, np.ndarray) and v.size == 1:
                v = v.reshape(()).item()
            if isinstance(v, (bytes, np.bytes_)):
                v = bytes(v).decode("utf-8", "replace")
            return str(v).strip()
    return None


def _attr_float(obj: h5py.HLObject, name: str) -> float | None:
    if name not in obj.attrs:
        return None
    v = obj.attrs[name]
    try:
        if isinstance(v, (bytes, np.bytes_)):
            v = bytes(v).decode()
        return float(np.asarray(v).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def _header_field(f: h5py.File, key: str) -> str | None:
    text = _attr_str(f, "FileHeader")
    if not text:
        return None
    m = re.search(rf"(?:^|[;\n])\s*{re.escape(key)}=([^;\n]*)", text)
    return m.group(1).strip() if m and m.group(1).strip() else None


def _decode_time_variable(var: h5py.Dataset, values: np.ndarray, name: str) -> np.ndarray:
    units = _attr_str(var, "units", "Units") or ""
    m = _TIME_UNITS_RE.match(units)
    if not m:
        raise RainfallError(f"{name}: cannot read the time units {units!r}.",
                            hint="Expect e.g. 'seconds since 1980-01-06 00:00:00 UTC' (IMERG V07).")
    step, day, clock = m.group(1).lower(), m.group(2), m.group(3) or "00:00:00"
    hh, rest = clock.split(":", 1)
    clock = f"{int(hh):02d}:{rest}" + (":00" if rest.count(":") == 0 else "")
    epoch = np.datetime64(f"{day}T{clock}", "ns")
    calendar = (_attr_str(var, "calendar") or "standard").lower()
    offsets = np.asarray(values).astype(np.int64).astype(f"timedelta64[{_TIME_STEP[step]}]")
    times = (epoch + offsets).astype("datetime64[ns]")
    if calendar in ("standard", "gregorian", "proleptic_gregorian"):
        return times
    if calendar == "julian":
        # IMERG V07 says calendar="julian" for GPS-epoch seconds. Dates from 1900-03-01 to
        # 2100-02-28 get the same label from an epoch in either calendar (same leap years), so
        # plain datetime64 arithmetic is exact there; outside, refuse rather than be 13 days off.
        lo, hi = _JULIAN_SAFE
        if lo <= epoch and (times.size == 0 or (times.min() >= lo and times.max() <= hi)):
            return times
        raise RainfallError(f"{name}: julian-calendar times outside 1900-03-01..2100-02-28 are not supported.",
                            hint="Convert the times with cftime first.")
    raise RainfallError(f"{name}: time calendar {calendar!r} is not supported (standard, gregorian or julian).",
                        hint="Use an IMERG granule as NASA distributes it.")


def _granule_start(f: h5py.File, path: Path) -> np.datetime64:
    start = _header_field(f, "StartGranuleDateTime")
    if start:
        try:
            return np.datetime64(start.rstrip("Z"), "ns")
        except ValueError:
            pass
    m = _NAME_TIME_RE.search(path.name)
    if m:
        d, s = m.group(1), m.group(2)
        return np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{s[:2]}:{s[2:4]}:{s[4:]}", "ns")
    raise RainfallError(f"{path.name}: no time variable, FileHeader start time or time in the file name.",
                        hint="Keep NASA's granule file name (…YYYYMMDD-Shhmmss-Ehhmmss…).")


def _cell_range(centres: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Indices of grid cells (given by their centres) whose extent intersects ``[lo, hi]``."""
    half = 0.5 * (float(np.abs(np.diff(centres)).min()) if centres.size > 1 else 0.1)
    return np.nonzero((centres + half > lo) & (centres - half < hi))[0]


def _rate_units_ok(units: str | None) -> bool:
    return units is not None and " ".join(units.lower().split()) in _MM_PER_HOUR


def read_imerg_hdf5(path: str | os.PathLike, bbox: Sequence[float] | None = None, *,
                    variable: str | None = None) -> xr.DataArray:
    """One IMERG half-hourly HDF5 granule as precipitation rate, dims ``(time, lat, lon)``, mm/h.

    ``variable`` defaults to ``precipitation`` (V07) or else ``precipitationCal`` (V06 and the
    legacy RT-H5). Dims come from the variable's ``DimensionNames`` (``time,lon,lat`` or
    ``lon,lat``: IMERG is lon-major), so the result is transposed to ``(time, lat, lon)`` with
    latitude ascending. Only the cells intersecting ``bbox`` (lon/lat degrees) are read.
    Time is the start of the half hour: ``time_bnds[:, 0]`` or ``time`` (its ``units`` and
    ``calendar`` attributes read), else the ``FileHeader``'s ``StartGranuleDateTime``.
    Fill values and negatives become NaN.
    """
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise RainfallError(f"IMERG granule {p} does not exist.", hint="Download it first.")
    if not h5py.is_hdf5(p):
        raise RainfallError(f"{name} is not an HDF5 file (an Earthdata login page or a partial download?).",
                            hint="Delete it and download it again with valid Earthdata credentials.")
    try:
        with h5py.File(p, "r") as f:
            return _read_granule(f, p, bbox, variable)
    except OSError as e:
        raise RainfallError(f"Cannot read the IMERG granule {name}: {e}.", hint="Delete it and download it again.") from e


def _read_granule(f: h5py.File, p: Path, bbox: Sequence[float] | None, variable: str | None) -> xr.DataArray:
    name = p.name
    grid = f.get("Grid")
    if not isinstance(grid, h5py.Group):
        raise RainfallError(f"{name} has no /Grid group, so it is not an IMERG granule.",
                            hint="Use a 3B-HHR IMERG half-hourly HDF5 granule.")
    candidates = [variable] if variable else ["precipitation", "precipitationCal"]
    var_name = next((v for v in candidates if isinstance(grid.get(v), h5py.Dataset)), None)
    if var_name is None:
        have = sorted(k for k, v in grid.items() if isinstance(v, h5py.Dataset))
        raise RainfallError(f"{name}: none of {candidates} in /Grid (have {have}).",
                            hint="Use an IMERG granule: V07 has /Grid/precipitation, older ones /Grid/precipitationCal.")
    ds = grid[var_name]
    units = _attr_str(ds, "units", "Units")
    if not _rate_units_ok(units):
        raise RainfallError(f"{name}: /Grid/{var_name} has units {units!r}, not a rate in mm/hr, so it is not read.",
                            hint="Use an IMERG half-hourly granule, whose precipitation is in mm/hr.")
    dims_attr = _attr_str(ds, "DimensionNames")
    dims = tuple(d.strip() for d in dims_attr.split(",")) if dims_attr else (
        ("time", "lon", "lat") if ds.ndim == 3 else ("lon", "lat"))
    if len(dims) != ds.ndim or not {"lon", "lat"} <= set(dims) or not set(dims) <= {"time", "lon", "lat"}:
        raise RainfallError(f"{name}: /Grid/{var_name} has dims {dims} and shape {ds.shape}, not (time,) lon, lat.",
                            hint="Use an IMERG half-hourly granule.")
    lon = np.round(np.asarray(grid["lon"][:], dtype=np.float64), 5)
    lat = np.round(np.asarray(grid["lat"][:], dtype=np.float64), 5)
    if (lon.size, lat.size) != (ds.shape[dims.index("lon")], ds.shape[dims.index("lat")]):
        raise RainfallError(f"{name}: lon/lat sizes {lon.size}/{lat.size} do not match {var_name} {ds.shape}.",
                            hint="The granule is damaged; download it again.")
    if bbox is not None:
        minx, miny, maxx, maxy = check_bbox(bbox)
        ix, iy = _cell_range(lon, minx, maxx), _cell_range(lat, miny, maxy)
        if ix.size == 0 or iy.size == 0:
            raise RainfallError(
                f"{name}: bbox {tuple(bbox)} is outside the granule grid "
                f"(lon {lon.min():g}..{lon.max():g}, lat {lat.min():g}..{lat.max():g}).",
                hint="Give the bbox as (min lon, min lat, max lon, max lat) in degrees, longitudes in -180..180.")
    else:
        ix, iy = np.arange(lon.size), np.arange(lat.size)
    sl = {"time": slice(None), "lon": slice(int(ix[0]), int(ix[-1]) + 1), "lat": slice(int(iy[0]), int(iy[-1]) + 1)}
    data = np.asarray(ds[tuple(sl[d] for d in dims)], dtype=np.float32)
    missing = np.zeros(data.shape, bool)
    for fill in {_attr_float(ds, "_FillValue"), _attr_float(ds, "CodeMissingValue"), IMERG_FILL}:
        if fill is not None:
            missing |= np.isclose(data, np.float32(fill), rtol=0, atol=1e-3)
    data[missing | ~(data >= 0)] = np.nan  # fill and negative codes (and NaN) → NaN
    if "time" not in dims:
        data, dims = data[np.newaxis], ("time", *dims)
        times = np.array([_granule_start(f, p)], dtype="datetime64[ns]")
    else:
        tvar = grid.get("time")
        if isinstance(tvar, h5py.Dataset):
            bnds = grid.get("time_bnds")
            raw = bnds[:, 0] if isinstance(bnds, h5py.Dataset) and bnds.ndim == 2 else tvar[:]
            times = _decode_time_variable(tvar, raw, name)
        else:
            times = np.array([_granule_start(f, p)], dtype="datetime64[ns]")
        if times.size != data.shape[dims.index("time")]:
            raise RainfallError(f"{name}: {times.size} times for {data.shape[dims.index('time')]} time steps.",
                                hint="The granule is damaged; download it again.")
    da = xr.DataArray(data, dims=dims, coords={"time": times, "lon": lon[sl["lon"]], "lat": lat[sl["lat"]]})
    da = da.transpose("time", "lat", "lon")
    if da.sizes["lat"] > 1 and da["lat"].values[0] > da["lat"].values[-1]:
        da = da.isel(lat=slice(None, None, -1))
    da.name = "precipitation"
    da.attrs = {"units": "mm/h", "long_name": "precipitation rate", "step_minutes": STEP_MINUTES,
                "variable": var_name, "granule": name}
    return da


# --------------------------------------------------------------------------- CMR granule search


@dataclass(frozen=True)
class Granule:
    """One CMR granule: id, file name, half-hour start/end and the https download link."""

    concept_id: str
    name: str
    start: np.datetime64
    end: np.datetime64
    url: str
    size_mb: float | None = None


def _iso_z(t: np.datetime64) -> str:
    return str(np.datetime64(t, "s")) + "Z"


def cmr_granule_search_url(run: str, bbox: Sequence[float], start, end, *, fmt: str = "umm_json",
                           page_size: int = 500, base_url: str = CMR_GRANULES_URL) -> str:
    """The CMR granule search URL for IMERG ``run`` (``early``/``late``, V07) over ``bbox`` and
    ``start..end`` (``fmt``: ``umm_json`` for UMM-G or ``json`` for the legacy feed)."""
    spec = _run(run)
    minx, miny, maxx, maxy = check_bbox(bbox)
    s, e = check_window(start, end)
    if fmt not in ("umm_json", "json"):
        raise RainfallError(f"CMR format {fmt!r} is not 'umm_json' or 'json'.", hint="Use fmt='umm_json'.")
    q = {
        "short_name": spec.short_name,
        "version": spec.version,
        "temporal": f"{_iso_z(s)},{_iso_z(e)}",
        "bounding_box": ",".join(f"{v:g}" for v in (minx, miny, maxx, maxy)),
        "page_size": str(int(page_size)),
        "sort_key": "start_date",
    }
    return f"{base_url}.{fmt}?{urlencode(q)}"


def _time(text: Any, what: str) -> np.datetime64:
    try:
        return np.datetime64(str(text).rstrip("Z").replace("+00:00", ""), "ms")
    except ValueError:
        raise RainfallError(f"CMR granule {what} {text!r} is not an ISO time.", hint="Check the CMR reply.") from None


def _is_https_download(url: str) -> bool:
    u = urlparse(url)
    return u.scheme == "https" and "opendap" not in url.lower() and "/dods/" not in u.path


def _pick(urls: Iterable[str], name: str | None) -> str | None:
    urls = [u for u in urls if _is_https_download(u)]
    if name:
        exact = [u for u in urls if u.rsplit("/", 1)[-1] == name]
        if exact:
            return exact[0]
    return urls[0] if urls else None


def _size_mb(size: Any, unit: str | None = "MB") -> float | None:
    try:
        v = float(size)
    except (TypeError, ValueError):
        return None
    return v * {"KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1024.0 ** 2}.get(str(unit or "MB").upper(), 1.0)


def _from_legacy(entry: Mapping[str, Any]) -> Granule:
    name = entry.get("producer_granule_id") or str(entry.get("title", "")).split(":")[-1] or None
    data_links = [lk.get("href", "") for lk in entry.get("links", [])
                  if str(lk.get("rel", "")).endswith("/data#") and not lk.get("inherited")]
    url = _pick(data_links, name)
    if url is None:
        raise RainfallError(f"CMR granule {entry.get('id')} ({name}) has no https data link (only {data_links}).",
                            hint="Download it another way (S3 from us-west-2), or pick another collection.")
    return Granule(concept_id=str(entry.get("id")), name=name or url.rsplit("/", 1)[-1],
                   start=_time(entry.get("time_start"), "start"), end=_time(entry.get("time_end"), "end"),
                   url=url, size_mb=_size_mb(entry.get("granule_size")))


def _from_umm(item: Mapping[str, Any]) -> Granule:
    meta, umm = item.get("meta", {}), item.get("umm", {})
    ids = umm.get("DataGranule", {}).get("Identifiers", [])
    name = next((i.get("Identifier") for i in ids if i.get("IdentifierType") == "ProducerGranuleId"), None)
    if not name and umm.get("GranuleUR"):
        name = str(umm["GranuleUR"]).split(":")[-1]
    related = umm.get("RelatedUrls", [])
    data_links = [r.get("URL", "") for r in related
                  if r.get("Type") == "GET DATA" and "OPENDAP" not in str(r.get("Subtype", "")).upper()]
    url = _pick(data_links, name)
    cid = meta.get("concept-id")
    if url is None:
        raise RainfallError(
            f"CMR granule {cid} ({name}) has no https 'GET DATA' link (links: {[r.get('Type') for r in related]}).",
            hint="Download it another way (S3 from us-west-2), or pick another collection.")
    rng = umm.get("TemporalExtent", {}).get("RangeDateTime", {})
    info = umm.get("DataGranule", {}).get("ArchiveAndDistributionInformation", [{}])
    size = _size_mb(info[0].get("Size"), info[0].get("SizeUnit")) if info else None
    return Granule(concept_id=str(cid), name=name or url.rsplit("/", 1)[-1],
                   start=_time(rng.get("BeginningDateTime"), "start"), end=_time(rng.get("EndingDateTime"), "end"),
                   url=url, size_mb=size)


def parse_cmr_granules(doc: Mapping[str, Any]) -> list[Granule]:
    """Granules of a CMR granule-search reply, legacy JSON (``feed.entry``) or UMM-G (``items``)."""
    if "feed" in doc:
        return [_from_legacy(e) for e in doc["feed"].get("entry", [])]
    if "items" in doc:
        return [_from_umm(i) for i in doc["items"]]
    if "errors" in doc:
        raise RainfallError(f"CMR answered with errors: {doc['errors']}.", hint="Check the search parameters.")
    raise RainfallError(f"Not a CMR granule-search reply (keys {sorted(doc)}).", hint="Use granules.json or .umm_json.")


def search_imerg_granules(run: str, bbox: Sequence[float], start, end, *, session: requests.Session | None = None,
                          page_size: int = 500, max_pages: int = 20, base_url: str = CMR_GRANULES_URL,
                          timeout_s: float = 60.0) -> list[Granule]:
    """All CMR granules of IMERG ``run`` over ``bbox`` and ``start..end``, paged with the
    ``CMR-Search-After`` header; refuses (one line) when more than ``max_pages`` pages exist.
    CMR search is public: no credentials are sent."""
    url = cmr_granule_search_url(run, bbox, start, end, page_size=page_size, base_url=base_url)
    own = session is None
    s = session or requests.Session()
    out: list[Granule] = []
    after: str | None = None
    try:
        for _ in range(max_pages):
            headers = {"Accept": "application/json", **({"CMR-Search-After": after} if after else {})}
            try:
                r = s.get(url, headers=headers, timeout=timeout_s)
            except requests.RequestException as e:
                raise RainfallError(f"CMR search failed ({type(e).__name__}: {redact(str(e))}).",
                                    hint="Check the network; CMR is at cmr.earthdata.nasa.gov.") from None
            if r.status_code != 200:
                raise RainfallError(f"CMR search answered HTTP {r.status_code}: {redact(r.text[:300])}.",
                                    hint="Check the search parameters, or retry later.")
            try:
                doc = r.json()
            except ValueError:
                raise RainfallError("CMR search did not answer JSON.", hint="Retry later.") from None
            page = parse_cmr_granules(doc)
            out.extend(page)
            hits = r.headers.get("CMR-Hits") or doc.get("hits")
            after = r.headers.get("CMR-Search-After")
            if not after or len(page) < page_size or (hits is not None and len(out) >= int(hits)):
                return out
        raise RainfallError(
            f"CMR found more than {max_pages * page_size} granules (max_pages={max_pages} × page_size={page_size}).",
            hint="Shorten the event window, or raise max_pages.")
    finally:
        if own:
            s.close()


# --------------------------------------------------------------------------- Earthdata download


class EarthdataSession(requests.Session):
    """A session that keeps the Authorization header across redirects between the data host
    and urs.earthdata.nasa.gov (Earthdata Login's OAuth round trip), and drops it on any other
    host change. No netrc lookup: credentials come only from what the caller passes."""

    AUTH_HOST = URS_HOST

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        headers = prepared_request.headers
        if "Authorization" in headers:
            was = urlparse(response.request.url).hostname
            now = urlparse(prepared_request.url).hostname
            if was != now and self.AUTH_HOST not in (was, now):
                del headers["Authorization"]


@dataclass(frozen=True)
class _Credentials:
    token: str | None
    basic: tuple[str, str] | None

    @property
    def secrets(self) -> tuple[str, ...]:
        import base64

        vals: list[str] = []
        if self.token:
            vals.append(self.token)
        if self.basic:
            vals += [self.basic[1], self.basic[0], base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()]
        return tuple(v for v in vals if len(v) >= 3)

    def __repr__(self) -> str:  # never show the values
        return "_Credentials(***)"


def _earthdata_credentials(label: str) -> _Credentials:
    token = os.environ.get("EARTHDATA_TOKEN", "").strip()
    user = os.environ.get("EARTHDATA_USERNAME", "").strip()
    pw = os.environ.get("EARTHDATA_PASSWORD", "")
    if token:
        return _Credentials(token=token, basic=None)
    if user and pw:
        return _Credentials(token=None, basic=(user, pw))
    if user or pw:
        have, lack = ("EARTHDATA_USERNAME", "EARTHDATA_PASSWORD") if user else ("EARTHDATA_PASSWORD", "EARTHDATA_USERNAME")
        raise AccountRequiredError(f"{label} needs an Earthdata login: {have} is set but {lack} is not.",
                                   hint="Set both, or set EARTHDATA_TOKEN to an Earthdata bearer token.")
    raise AccountRequiredError(
        f"{label} needs an Earthdata login, and EARTHDATA_TOKEN is not set.",
        hint="Set EARTHDATA_TOKEN to a bearer token from urs.earthdata.nasa.gov (or EARTHDATA_USERNAME and "
        "EARTHDATA_PASSWORD), or give the rain yourself (--rain-intensity/--rain-duration for a run, "
        "--precip with a local store for the watch).")


def _scrub(text: str, secrets: Sequence[str]) -> str:
    out = redact(text)
    for s in secrets:
        out = out.replace(s, "***")
    return " ".join(out.split())  # one line


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slidewatch" / "imerg"


def _utc_now() -> np.datetime64:
    return np.datetime64(_dt.datetime.now(_dt.UTC).replace(tzinfo=None), "s")


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ImergRunSource:
    """GPM IMERG Early or Late Run V07, half-hourly 0.1°, from GES DISC through NASA CMR.

    ``read(bbox, start, end)`` returns precipitation rate in mm/h, dims ``(time, lat, lon)``,
    times ``start <= t < end`` (each the start of a half hour), like every
    :class:`~pipeline.rain.sources.PrecipitationSource`.

    * needs credentials: ``EARTHDATA_TOKEN`` (bearer) or ``EARTHDATA_USERNAME`` +
      ``EARTHDATA_PASSWORD``, read from the environment at each read, refused (one line,
      :class:`AccountRequiredError`) before any request when absent;
    * latency: Early ≈ 4 h, Late ≈ 14 h; a window ending after ``now − latency`` logs one line
      and uses what exists (``attrs["available_until"]``); one starting after it is refused;
    * coverage: 60°S–60°N; bboxes reaching beyond are refused;
    * cost: every granule is a whole global file (≈10–20 MB); they are kept in ``cache_dir``
      (default ``$XDG_CACHE_HOME/slidewatch/imerg/<run>``), written atomically, and reused.

    ``session_factory`` and ``now`` are injection points for tests.
    """

    run: str = "early"
    cache_dir: str | os.PathLike | None = None
    session_factory: Callable[[], requests.Session] = field(default=EarthdataSession, repr=False)
    now: Callable[[], np.datetime64] | None = field(default=None, repr=False)
    cmr_url: str = CMR_GRANULES_URL
    page_size: int = 500
    max_pages: int = 20
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        _run(self.run)

    # --- what the source states about itself
    @property
    def spec(self) -> ImergRun:
        return _run(self.run)

    @property
    def short_name(self) -> str:
        return self.spec.short_name

    @property
    def latency_hours(self) -> float:
        return self.spec.latency_hours

    @property
    def needs_credentials(self) -> bool:
        return True

    def check_credentials(self) -> None:
        """Refuse (one line, nothing contacted) when no Earthdata login is in the environment."""
        _earthdata_credentials(self.spec.label)

    @property
    def coverage_lat(self) -> tuple[float, float]:
        return COVERAGE_LAT

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else _default_cache() / self.run

    # --- reading
    def read(self, bbox: BBox, start, end) -> xr.DataArray:
        spec = self.spec
        minx, miny, maxx, maxy = check_bbox(bbox)
        s, e = check_window(start, end)
        lo, hi = COVERAGE_LAT
        if miny < lo or maxy > hi:
            raise RainfallError(
                f"{spec.label} covers 60°S–60°N only; bbox {tuple(bbox)} reaches latitude "
                f"{miny if miny < lo else maxy:g}°.",
                hint="Use a region between 60°S and 60°N, or pass --rain-intensity/--rain-duration.")
        now = np.datetime64(self.now() if self.now is not None else _utc_now(), "s")
        available = now - np.timedelta64(round(spec.latency_hours * 3600), "s")
        if s >= available:
            raise RainfallError(
                f"{spec.label} has no data for {np.datetime64(s, 's')}..{np.datetime64(e, 's')} yet: it runs "
                f"≈{spec.latency_hours:g} h behind real time (data up to ≈{available} UTC).",
                hint="Use an earlier window, or a forecast source for the last hours.")
        if e > available:
            missing_h = float((e - available.astype("datetime64[ns]")) / np.timedelta64(1, "h"))
            log.warning("%s: the last %.1f h of the window (after %s UTC) are not available yet (≈%g h latency); "
                        "using the data up to then.", spec.label, missing_h, available, spec.latency_hours)
        creds = _earthdata_credentials(spec.label)  # before any request
        with self.session_factory() as session:
            granules = search_imerg_granules(self.run, (minx, miny, maxx, maxy), s, e, session=session,
                                             page_size=self.page_size, max_pages=self.max_pages,
                                             base_url=self.cmr_url, timeout_s=self.timeout_s)
            by_start: dict[np.datetime64, Granule] = {}
            for g in granules:
                t = np.datetime64(g.start, "ns")
                if s <= t < e:
                    by_start[t] = g  # CMR sorts by start; a later duplicate wins
            if not by_start:
                raise RainfallError(
                    f"{spec.label}: CMR lists no {spec.short_name} granules between {np.datetime64(s, 's')} and "
                    f"{np.datetime64(e, 's')}.",
                    hint="Check the window (Early/Late V07 exist from 2000-06 on), or retry later.")
            parts = []
            for t, g in sorted(by_start.items()):
                path = self._fetch(session, g, creds)
                da = read_imerg_hdf5(path, (minx, miny, maxx, maxy))
                got = da["time"].values[0]
                if abs(got - t) > np.timedelta64(60, "s"):
                    raise RainfallError(f"{g.name}: the file starts at {got}, but CMR says {g.start}.",
                                        hint=f"Delete {path} and read again.")
                parts.append(da)
        rate = xr.concat(parts, dim="time") if len(parts) > 1 else parts[0]
        rate.name = "precipitation"
        rate.attrs = {
            "units": "mm/h",
            "long_name": "precipitation rate",
            "step_minutes": STEP_MINUTES,
            "source": f"GPM IMERG {self.run.capitalize()} Run V07 ({spec.short_name}, NASA GES DISC)",
            "available_until": str(np.datetime64(min(e, available.astype("datetime64[ns]")), "s")),
            "granules": len(parts),
        }
        return rate

    def _fetch(self, session: requests.Session, g: Granule, creds: _Credentials) -> Path:
        label = self.spec.label
        if not _SAFE_NAME.match(g.name) or g.name in (".", ".."):
            raise RainfallError(f"{label}: CMR granule name {g.name!r} is not a plain file name.",
                                hint="Report this CMR record.")
        target = self.cache_path / g.name
        if target.is_file() and h5py.is_hdf5(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{g.name}.", suffix=".part")
        tmp = Path(tmp_name)
        problem: tuple[str, str] | None = None
        try:
            log.info("%s: downloading %s%s", label, g.name, f" ({g.size_mb:.1f} MB)" if g.size_mb else "")
            headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else None
            try:
                with os.fdopen(fd, "wb") as out, session.get(g.url, headers=headers, auth=creds.basic, stream=True,
                                                             timeout=self.timeout_s) as r:
                    if r.status_code != 200:
                        host = urlparse(r.url).hostname
                        hint = ("Check EARTHDATA_TOKEN (or EARTHDATA_USERNAME/EARTHDATA_PASSWORD) and that "
                                "'NASA GESDISC DATA ARCHIVE' is authorised in your Earthdata profile."
                                if r.status_code in (401, 403) or host == URS_HOST else "Retry later.")
                        problem = (f"HTTP {r.status_code} {r.reason or ''} from {host} for {g.name}", hint)
                    else:
                        for chunk in r.iter_content(chunk_size=1 << 20):
                            out.write(chunk)
            except requests.RequestException as e:
                problem = (f"{type(e).__name__}: {e}", "Check the network, or retry later.")
            if problem is None and not h5py.is_hdf5(tmp):
                problem = (f"the server did not return an HDF5 file for {g.name} (an Earthdata login page?)",
                           "Check EARTHDATA_TOKEN (or EARTHDATA_USERNAME/EARTHDATA_PASSWORD).")
            if problem is None:
                os.replace(tmp, target)
                return target
        finally:
            if tmp.exists():
                tmp.unlink()
        # raised outside the except blocks, so no exception that saw the credentials is chained
        raise RainfallError(_scrub(f"{label}: downloading failed: {problem[0]}.", creds.secrets), hint=problem[1])


# --------------------------------------------------------------------------- IMERG GIS daily GeoTIFFs

_GIS_DAY_RE = re.compile(r"\.(\d{8})-S(\d{6})-E(\d{6})\.")


def read_imerg_gis_daily(path: str | os.PathLike, bbox: Sequence[float] | None = None, *,
                         scale_mm_per_day: float = 0.1) -> xr.DataArray:
    """An IMERG GIS daily GeoTIFF (the ``…1day.tif``/``…1day.liquid.tif`` NASA's LHASA reads) as
    the mean precipitation rate over that day: dims ``(time, lat, lon)``, mm/h, one time step of
    1440 minutes starting at 00:00 UTC of the day the file closes.

    Pixel values are 0.1 mm/day (LHASA divides by 10 for mm/day), so mm/h = value × 0.1 / 24.
    The day is taken from the file name, which names the day's last half hour
    (``3B-HHR-E.MS.MRG.3IMERG.YYYYMMDD-S233000-E235959.1410.V07C.1day.tif``). The file's
    ``nodata`` and negative values become NaN. Only lon/lat (geographic CRS) rasters are read.

    Tested only with a GeoTIFF made in the test: no real IMERG GIS file could be found in any
    reachable public repository, so layout details beyond the LHASA facts (e.g. the exact
    nodata code) are unverified.
    """
    import rasterio

    p = Path(path)
    m = _GIS_DAY_RE.search(p.name)
    if not m:
        raise RainfallError(f"{p.name}: no YYYYMMDD-Shhmmss-Ehhmmss in the file name, so its day is unknown.",
                            hint="Keep NASA's IMERG GIS file name.")
    d = m.group(1)
    day = np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T00:00", "ns")
    try:
        src = rasterio.open(p)
    except Exception as e:  # rasterio raises RasterioIOError and friends
        raise RainfallError(f"Cannot open the IMERG GIS GeoTIFF {p.name}: {e}.", hint="Download it again.") from e
    with src:
        if src.crs is None or not src.crs.is_geographic:
            raise RainfallError(f"{p.name}: CRS {src.crs} is not geographic lon/lat.",
                                hint="Use the IMERG GIS GeoTIFF as distributed (EPSG:4326).")
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise RainfallError(f"{p.name}: rotated rasters are not supported.", hint="Use the file as distributed.")
        lon = np.round(t.c + t.a * (np.arange(src.width) + 0.5), 6)
        lat = np.round(t.f + t.e * (np.arange(src.height) + 0.5), 6)
        if bbox is not None:
            minx, miny, maxx, maxy = check_bbox(bbox)
            ix, iy = _cell_range(lon, minx, maxx), _cell_range(lat, miny, maxy)
            if ix.size == 0 or iy.size == 0:
                raise RainfallError(f"{p.name}: bbox {tuple(bbox)} is outside the raster.",
                                    hint="Give the bbox as (min lon, min lat, max lon, max lat) in degrees.")
        else:
            ix, iy = np.arange(src.width), np.arange(src.height)
        from rasterio.windows import Window

        win = Window(int(ix[0]), int(iy[0]), int(ix[-1]) - int(ix[0]) + 1, int(iy[-1]) - int(iy[0]) + 1)
        raw = src.read(1, window=win).astype(np.float64)
        nodata = src.nodata
    if nodata is not None:
        raw[np.isclose(raw, nodata)] = np.nan
    raw[~(raw >= 0)] = np.nan
    rate = (raw * scale_mm_per_day / 24.0).astype(np.float32)
    da = xr.DataArray(rate[np.newaxis], dims=("time", "lat", "lon"),
                      coords={"time": [day], "lat": lat[iy[0]:iy[-1] + 1], "lon": lon[ix[0]:ix[-1] + 1]})
    if da.sizes["lat"] > 1 and da["lat"].values[0] > da["lat"].values[-1]:
        da = da.isel(lat=slice(None, None, -1))
    da.name = "precipitation"
    da.attrs = {"units": "mm/h", "long_name": "mean precipitation rate over the day", "step_minutes": 1440.0,
                "source": f"IMERG GIS daily GeoTIFF {p.name}"}
    return da
