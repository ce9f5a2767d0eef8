"""Precipitation sources: the IMERG layout, the remote IMERG Zarr and a local Zarr.

Sources follow one :class:`PrecipitationSource` protocol (an I/O seam faked in
tests). Both implementations read the layout of Planetary Computer's
``gpm-imerg-hhr`` collection-level Zarr (GPM IMERG V06 Final, half-hourly,
0.1°): variable ``precipitationCal`` in ``mm/hr`` with dims
``(time, lon, lat)``, ``lat`` ascending, ``time`` the start of each 30-minute
interval. :func:`imerg_layout` reads those facts (asset href, ``xarray:open_kwargs``,
``xarray:storage_options``, variable, dims, step) from the collection JSON.

* :class:`ImergSource` opens the remote store through an injectable ``opener``
  (the default needs ``adlfs`` and, on Planetary Computer, a SAS token passed as
  ``storage_options={"credential": token}`` by the caller).
* :class:`LocalZarrSource` reads a local Zarr with the same layout, e.g. one
  written from :func:`pipeline.demo.storm.make_synthetic_storm` for the demo region.

What an event's rain amounts to (P, D, R_m) is :mod:`pipeline.rain.events`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from pipeline.core.errors import RainfallError
from pipeline.plan.regions import BBox

if TYPE_CHECKING:  # exported lazily by __getattr__ below (pipeline.rain.imerg imports this module)
    from pipeline.rain.imerg import ImergRunSource

__all__ = [
    "IMERG_COLLECTION_ID",
    "RAIN_SOURCES",
    "ImergLayout",
    "ImergRunSource",
    "ImergSource",
    "LocalZarrSource",
    "PrecipitationSource",
    "check_bbox",
    "check_window",
    "imerg_layout",
    "open_imerg_remote",
    "precipitation_source",
    "rain_source",
]

IMERG_COLLECTION_ID = "gpm-imerg-hhr"

_RATE_UNITS = {"mm/hr": 1.0, "mm/h": 1.0, "mm h-1": 1.0, "mm hr-1": 1.0, "kg m-2 s-1": 3600.0, "mm/s": 3600.0}



# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ImergLayout:
    """Facts about an IMERG-like precipitation Zarr, as the STAC collection states them."""

    href: str = "abfs://imerg/gpm-imerg-hhr.zarr"
    variable: str = "precipitationCal"
    units: str = "mm/hr"
    dims: tuple[str, ...] = ("time", "lon", "lat")
    lon: str = "lon"
    lat: str = "lat"
    time: str = "time"
    step_minutes: float = 30.0
    open_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"use_cftime": True, "consolidated": True})
    storage_options: Mapping[str, Any] = field(default_factory=lambda: {"account_name": "ai4edataeuwest"})
    asset_key: str = "zarr-abfs"


def _parse_iso_step_minutes(step: str) -> float:
    # e.g. "P0DT0H30M0S"
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", step)
    if not m:
        raise RainfallError(f"Cannot parse the time step {step!r} of the precipitation collection.")
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 1440 + h * 60 + mi + s / 60


def imerg_layout(collection: Mapping[str, Any] | str | os.PathLike, variable: str = "precipitationCal") -> ImergLayout:
    """Read an :class:`ImergLayout` from a ``gpm-imerg-hhr`` STAC collection (dict or JSON path).

    Uses the ``application/vnd+zarr`` asset (href, ``xarray:open_kwargs``,
    ``xarray:storage_options``), ``cube:variables[variable]`` (dims, unit) and
    ``cube:dimensions`` (which dim is x/lon, y/lat, and the time step).
    """
    if not isinstance(collection, Mapping):
        try:
            collection = json.loads(Path(collection).read_text())
        except (OSError, ValueError) as e:
            raise RainfallError(
                f"Cannot read the precipitation collection JSON {collection!s}: {e}.",
                hint="Pass the gpm-imerg-hhr collection document (a dict) or a readable JSON file.",
            ) from e
    assets = collection.get("assets", {})
    zarr_assets = [(k, a) for k, a in assets.items() if "zarr" in str(a.get("type", "")) or "zarr" in a.get("roles", [])]
    if not zarr_assets:
        raise RainfallError(
            f"Collection {collection.get('id')!r} has no Zarr asset (assets: {sorted(assets)}).",
            hint="Use Planetary Computer's gpm-imerg-hhr collection, whose 'zarr-abfs' asset holds the store.",
        )
    key, asset = zarr_assets[0]
    variables = collection.get("cube:variables", {})
    if variable not in variables:
        raise RainfallError(
            f"Variable {variable!r} is not in collection {collection.get('id')!r} "
            f"(data variables: {sorted(k for k, v in variables.items() if v.get('type') == 'data')}).",
            hint="Use 'precipitationCal' (calibrated IMERG precipitation, mm/hr).",
        )
    var = variables[variable]
    dims = tuple(var.get("dimensions", ()))
    cube_dims = collection.get("cube:dimensions", {})
    lon = next((k for k, v in cube_dims.items() if v.get("axis") == "x"), "lon")
    lat = next((k for k, v in cube_dims.items() if v.get("axis") == "y"), "lat")
    time = next((k for k, v in cube_dims.items() if v.get("type") == "temporal"), "time")
    step = cube_dims.get(time, {}).get("step")
    units = var.get("unit") or var.get("attrs", {}).get("units", "")
    if units not in _RATE_UNITS:
        raise RainfallError(f"Variable {variable!r} has unit {units!r}, not a precipitation rate.")
    return ImergLayout(
        href=asset["href"],
        variable=variable,
        units=units,
        dims=dims,
        lon=lon,
        lat=lat,
        time=time,
        step_minutes=_parse_iso_step_minutes(step) if step else 30.0,
        open_kwargs=dict(asset.get("xarray:open_kwargs", {})),
        storage_options=dict(asset.get("xarray:storage_options", {})),
        asset_key=key,
    )


# --------------------------------------------------------------------------- sources


@runtime_checkable
class PrecipitationSource(Protocol):
    """Anything that yields precipitation rate (mm/h) over a bbox and a time window."""

    def read(self, bbox: BBox, start: str | np.datetime64, end: str | np.datetime64) -> xr.DataArray:
        """Rate in mm/h, dims ``(time, lat, lon)``, cells intersecting ``bbox`` (lon/lat),
        times ``start <= t < end``; lazy where the store is."""
        ...


def _xarray_open_kwargs(open_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kw = dict(open_kwargs)
    if "use_cftime" in kw:  # deprecated spelling in recent xarray
        use = kw.pop("use_cftime")
        kw["decode_times"] = xr.coders.CFDatetimeCoder(use_cftime=use)
    return kw


def open_imerg_remote(layout: ImergLayout, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open the remote IMERG Zarr lazily (needs network, ``adlfs``, ``cftime`` and a SAS token).

    ``storage_options`` are merged over the collection's (pass
    ``{"credential": token}`` with a Planetary Computer SAS token).
    """
    so = {**layout.storage_options, **(storage_options or {})}
    try:
        return xr.open_zarr(layout.href, storage_options=so, **_xarray_open_kwargs(layout.open_kwargs))
    except Exception as e:  # pragma: no cover - needs the internet
        raise RainfallError(
            f"Cannot open the IMERG store {layout.href} ({type(e).__name__}: {e}).",
            hint="Check the network, install adlfs and cftime, and pass a Planetary Computer SAS token "
            "as storage_options={'credential': token}; or use --rain-intensity/--rain-duration.",
        ) from e


def _time_values_as_datetime64(t: np.ndarray) -> np.ndarray:
    if np.issubdtype(t.dtype, np.datetime64):
        return t.astype("datetime64[ns]")
    # cftime objects (use_cftime=True): go through ISO strings (the window is small).
    return np.array([np.datetime64(x.isoformat()) for x in t], dtype="datetime64[ns]")


def _subset(ds: xr.Dataset, layout: ImergLayout, bbox: BBox, start, end, name: str) -> xr.DataArray:
    if layout.variable not in ds.data_vars:
        raise RainfallError(
            f"{name}: variable {layout.variable!r} not found (have {sorted(map(str, ds.data_vars))}).",
            hint="Write the store in the gpm-imerg-hhr layout (variable precipitationCal, dims time/lon/lat).",
        )
    da_ = ds[layout.variable]
    for d in (layout.time, layout.lon, layout.lat):
        if d not in da_.dims:
            raise RainfallError(
                f"{name}: {layout.variable!r} has dims {da_.dims}, expected {layout.dims}.",
                hint="Write the store in the gpm-imerg-hhr layout (dims time, lon, lat).",
            )
    minx, miny, maxx, maxy = check_bbox(bbox)
    start64, end64 = check_window(start, end)
    lon = np.asarray(da_[layout.lon].values, dtype=np.float64)
    lat = np.asarray(da_[layout.lat].values, dtype=np.float64)
    half_x = 0.5 * (float(np.abs(np.diff(lon)).min()) if lon.size > 1 else 0.1)
    half_y = 0.5 * (float(np.abs(np.diff(lat)).min()) if lat.size > 1 else 0.1)
    ix = np.nonzero((lon + half_x > minx) & (lon - half_x < maxx))[0]
    iy = np.nonzero((lat + half_y > miny) & (lat - half_y < maxy))[0]
    if ix.size == 0 or iy.size == 0:
        raise RainfallError(
            f"{name}: bbox {bbox} is outside the precipitation grid "
            f"(lon {lon.min():g}..{lon.max():g}, lat {lat.min():g}..{lat.max():g}).",
            hint="Check the bbox is (min lon, min lat, max lon, max lat) in degrees.",
        )
    # Narrow by (inclusive) string slicing first; works for datetime64 and cftime indexes.
    s_str = str(start64.astype("datetime64[s]"))
    e_str = str(end64.astype("datetime64[s]"))
    sub = da_.isel({layout.lon: ix, layout.lat: iy}).sel({layout.time: slice(s_str, e_str)})
    t = _time_values_as_datetime64(np.asarray(sub[layout.time].values))
    keep = np.nonzero((t >= start64) & (t < end64))[0]
    if keep.size == 0:
        raise RainfallError(
            f"{name}: no precipitation data between {s_str} and {e_str}.",
            hint="Choose an event window inside the source's time range (IMERG V06 on Planetary "
            "Computer covers 2000-06-01..2021-05-31), or pass --rain-intensity/--rain-duration.",
        )
    sub = sub.isel({layout.time: keep}).assign_coords({layout.time: t[keep]})
    if "units" not in sub.attrs:  # never guessed: mm/h and kg m-2 s-1 differ 3600-fold
        raise RainfallError(
            f"{name}: {layout.variable!r} has no units attribute, so its rate cannot be read safely.",
            hint="Set the variable's units attribute (mm/hr, mm/h or kg m-2 s-1).",
        )
    factor = _RATE_UNITS.get(str(sub.attrs["units"]))
    if factor is None:
        raise RainfallError(
            f"{name}: {layout.variable!r} has units {sub.attrs.get('units')!r}, not a precipitation rate.",
            hint="Store precipitation as mm/hr.",
        )
    rate = sub.astype(np.float32)
    rate = rate.where(rate >= 0)  # IMERG missing codes (-9999.9) and negative noise → NaN
    if factor != 1.0:
        rate = rate * np.float32(factor)
    rate = rate.transpose(layout.time, layout.lat, layout.lon).rename(
        {layout.time: "time", layout.lat: "lat", layout.lon: "lon"}
    )
    rate.name = "precipitation"
    rate.attrs = {"units": "mm/h", "long_name": "precipitation rate", "step_minutes": layout.step_minutes}
    return rate


@dataclass(frozen=True)
class ImergSource:
    """GPM IMERG half-hourly precipitation from Planetary Computer's collection-level Zarr.

    ``opener(layout) -> xr.Dataset`` does the (remote) open and is injected, so
    everything else is tested against a local store of the same layout.
    """

    layout: ImergLayout = field(default_factory=ImergLayout)
    opener: Callable[[ImergLayout], xr.Dataset] = open_imerg_remote

    @classmethod
    def from_collection(
        cls,
        collection: Mapping[str, Any] | str | os.PathLike,
        opener: Callable[[ImergLayout], xr.Dataset] | None = None,
    ) -> ImergSource:
        layout = imerg_layout(collection)
        return cls(layout=layout, opener=opener or open_imerg_remote)

    def read(self, bbox: BBox, start, end) -> xr.DataArray:
        return _subset(self.opener(self.layout), self.layout, bbox, start, end, f"IMERG {self.layout.href}")


@dataclass(frozen=True)
class LocalZarrSource:
    """Precipitation from a local Zarr store in the gpm-imerg-hhr layout."""

    path: str | os.PathLike
    layout: ImergLayout = field(default_factory=ImergLayout)

    def open(self) -> xr.Dataset:
        p = Path(self.path)
        if not p.exists():
            raise RainfallError(
                f"Precipitation store {p} does not exist.",
                hint="Generate it (e.g. the demo generator's synthetic storm) or pass --rain-intensity/--rain-duration.",
            )
        try:
            return xr.open_zarr(p, consolidated=None)
        except Exception as e:
            raise RainfallError(f"Cannot open precipitation store {p}: {e}.", hint="Rewrite the store.") from e

    def read(self, bbox: BBox, start, end) -> xr.DataArray:
        return _subset(self.open(), self.layout, bbox, start, end, f"store {self.path}")


# --------------------------------------------------------------------------- validation helpers


def check_bbox(bbox: Sequence[float]) -> BBox:
    try:
        minx, miny, maxx, maxy = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise RainfallError(f"bbox {bbox!r} is not four numbers.", hint="Use (min lon, min lat, max lon, max lat).") from None
    if not (minx < maxx and miny < maxy and -180 <= minx and maxx <= 360 and -90 <= miny and maxy <= 90):
        raise RainfallError(
            f"bbox {bbox!r} is not a valid lon/lat box.", hint="Use (min lon, min lat, max lon, max lat) in degrees."
        )
    return minx, miny, maxx, maxy


def check_window(start, end) -> tuple[np.datetime64, np.datetime64]:
    try:
        s = np.datetime64(start, "ns")
        e = np.datetime64(end, "ns")
    except (TypeError, ValueError):
        raise RainfallError(f"Cannot parse the event window {start!r}..{end!r}.", hint="Use ISO dates, e.g. 2021-05-01.") from None
    if not s < e:
        raise RainfallError(f"Event window start {start} is not before end {end}.", hint="Swap or widen the dates.")
    return s, e


def precipitation_source(precip: str | os.PathLike | None) -> PrecipitationSource:
    """A local IMERG-layout Zarr, or (without one) IMERG on Planetary Computer, opened with a
    SAS token fetched when the store is first read (never logged or stored)."""
    if precip is not None:
        return LocalZarrSource(precip)

    def opener(layout: ImergLayout) -> xr.Dataset:  # pragma: no cover - needs the internet
        import planetary_computer

        account = layout.storage_options.get("account_name", "ai4edataeuwest")
        token = planetary_computer.sas.get_token(account, "imerg").token
        return open_imerg_remote(layout, {"credential": token})

    return ImergSource(opener=opener)



# --------------------------------------------------------------------------- named sources

#: Names accepted by :func:`rain_source` (the CLI's ``--rain-source``).
#: ``imerg-early`` / ``imerg-late``: current IMERG V07 Early (≈4 h latency) / Late (≈14 h) Run
#: from NASA GES DISC (needs EARTHDATA_TOKEN; 60°S–60°N; :mod:`pipeline.rain.imerg`);
#: ``imerg-v06-pc``: IMERG V06 Final on Planetary Computer (archive 2000-06..2021-05);
#: ``local-zarr``: a local Zarr in the gpm-imerg-hhr layout (needs ``path``).
RAIN_SOURCES: tuple[str, ...] = ("imerg-early", "imerg-late", "imerg-v06-pc", "local-zarr")


def rain_source(name: str, *, path: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None) -> PrecipitationSource:
    """The precipitation source called ``name`` (one of :data:`RAIN_SOURCES`).

    ``path`` is the store of ``local-zarr``; ``cache_dir`` where ``imerg-early``/``imerg-late``
    keep downloaded granules (default ``$XDG_CACHE_HOME/slidewatch/imerg/<run>``).
    Nothing is contacted until the source is read.
    """
    if name in ("imerg-early", "imerg-late"):
        from pipeline.rain.imerg import ImergRunSource

        return ImergRunSource(run=name.split("-", 1)[1], cache_dir=cache_dir)
    if name == "imerg-v06-pc":
        return precipitation_source(None)
    if name == "local-zarr":
        if path is None:
            raise RainfallError("Rain source 'local-zarr' needs the store's path.",
                                hint="Pass the path of a Zarr in the gpm-imerg-hhr layout.")
        return LocalZarrSource(path)
    raise RainfallError(f"Unknown rain source {name!r}.", hint=f"Use one of {', '.join(RAIN_SOURCES)}.")


def __getattr__(name: str) -> Any:
    # ImergRunSource lives in pipeline.rain.imerg (which imports this module); exported here lazily.
    if name == "ImergRunSource":
        from pipeline.rain.imerg import ImergRunSource

        return ImergRunSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
