"""A self-contained, offline HTML report of a run's risk mosaic.

:func:`write_report` reads a run directory ``OUT/<region>/<start>_<end>/`` and writes one
HTML file (default ``<run>/report.html``) with everything inline: no external scripts,
styles, fonts or tiles, so it opens offline and can be mailed as one attachment.

The page holds, per UTM zone (one ``risk.zarr`` group each; when ``risk.zarr`` is absent
the ``risk_class`` of ``lsi_<zone>.zarr`` is used and the page says so):

* a map of the risk classes: an embedded palette PNG (base64) drawn on a ``<canvas>``
  with a small inline pan/zoom script (mouse wheel, drag, +/−/reset buttons, the
  ``+``/``-``/``0``/arrow keys; ``report.html#zoom=4`` opens zoomed in), a legend, a scale
  bar that follows the zoom, the CRS name and a live lon/lat cursor readout;
* area per class (km² and %), no-data area, quality-flag areas, the mean probability
  (or mean LSI when there is no probability), a heatmap of high-risk share per grid
  cell and a table of the cells with most high-risk area;
* the run's provenance (region, window, STAC item ids per collection, checkpoint hash,
  model, rain parameters, software version) from the group attributes and ``run.json``;
* the rainfall alert that triggered the run (``run.json`` ``alert``), or "manual run".

Downsampling is a bounded-memory block reduction: the raster is read tile by tile (one
chunk-sized, block-aligned window at a time) and each ``f × f`` block of grid pixels
becomes one map pixel showing the *highest* class present in the block (no data only when
the whole block is no data), so small high-risk spots stay visible at any reduction.
Statistics are exact: they are accumulated from the full-resolution tiles in the same pass.

Coordinates: for UTM grids (EPSG 326zz/327zz) the script converts grid metres to lon/lat
with the inverse transverse-Mercator series of Snyder (1987, USGS PP 1395, eqs. 8-12 to
8-25) on WGS 84. Measured in Chromium against PROJ at latitudes 0.5-83.5° N/S and up to
3.5° from the central meridian, the largest error is 1.1 mm (0.2 mm within 2°);
``tests/flows/test_report_browser.py`` checks the map corners against pyproj. For any other
projected CRS the page interpolates bilinearly between lon/lat nodes precomputed with
pyproj on a 9 × 9 lattice over the extent (error grows with the extent's curvature; the
page states which method it uses).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.core.classes import CLASS_COLOURS, CLASS_NAMES, NODATA_CLASS as _NODATA_CLASS, NODATA_COLOUR
from pipeline.core.errors import InputDataError, StoreError
from pipeline.core.quality import QualityFlag

__all__ = [
    "ZoneSource",
    "ZoneSummary",
    "block_max_class",
    "find_sources",
    "summarise_zone",
    "write_report",
]

_MAX_CELLS = 4096
_NOT_RECORDED = "not recorded"
_CORE_KEYS = ("region", "time_window", "slidewatch_version", "checkpoint_sha256", "model",
              "rain_intensity_mm_h", "rain_duration_days", "rain_multiplier")
_PROVENANCE_KEYS = (
    "region",
    "time_window",
    "slidewatch_version",
    "checkpoint_sha256",
    "model",
    "rain_intensity_mm_h",
    "rain_duration_days",
    "rain_multiplier",
    "rain_source",
    "rain",
    "stac_url",
    "region_bbox",
    "finished",
    "slidewatch_complete",
)


@dataclass(frozen=True)
class ZoneSource:
    """Where one zone's classes come from: a ``risk.zarr`` group or an ``lsi_<zone>.zarr``."""

    zone: str
    path: Path
    group: str | None
    kind: str  # "risk" or "lsi"


@dataclass
class ZoneSummary:
    """Exact statistics and the downsampled class image of one zone.

    ``class_px`` counts pixels of low, medium, high and no data; ``cells`` has shape
    ``(rows, cols, 4)`` with the same counts per ``cell_px``-square grid cell.
    """

    zone: str
    source: ZoneSource
    crs_name: str
    crs_wkt: str
    epsg: int | None
    utm: tuple[int, bool] | None  # (zone number, south)
    shape: tuple[int, int]
    x0: float
    y1: float
    res_x: float
    res_y: float
    factor: int
    image: np.ndarray
    class_px: np.ndarray
    cell_px: int
    cells: np.ndarray
    cell_prob_sum: np.ndarray
    cell_prob_n: np.ndarray
    value_name: str | None  # "probability", "lsi" or None
    value_sum_by_class: np.ndarray = field(default_factory=lambda: np.zeros(4))
    value_n_by_class: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))
    quality_hist: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    lonlat_corners: list[tuple[float, float]] = field(default_factory=list)
    lonlat_nodes: list[list[tuple[float, float]]] | None = None

    @property
    def pixel_area_m2(self) -> float:
        return abs(self.res_x * self.res_y)

    def km2(self, px: float) -> float:
        """Area of ``px`` grid pixels in km²."""
        return float(px) * self.pixel_area_m2 / 1e6


# --------------------------------------------------------------------------- sources


def _zarr_groups(path: Path) -> list[str]:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any zarr failure is a store problem
        raise StoreError(
            f"{path} could not be opened as a Zarr group ({type(exc).__name__}: {exc}).",
            "rerun the risk stage of the run, or delete the damaged store and run again.",
        ) from exc
    names = sorted(root.group_keys())
    if not names and "risk_class" in root:
        return [""]  # a single-zone store without groups
    return names


def find_sources(run_dir: Path) -> tuple[list[ZoneSource], bool]:
    """The zones of a run and whether they fall back to the LSI stores.

    Prefers ``risk.zarr`` (one group per zone, each must hold ``risk_class``); falls back
    to ``lsi_<zone>.zarr``. Raises :class:`StoreError` when neither is there.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StoreError(
            f"run directory {run_dir} does not exist.",
            "pass the folder of a finished run, e.g. out/<region>/<start>_<end>.",
        )
    risk = run_dir / "risk.zarr"
    if risk.is_dir():
        groups = _zarr_groups(risk)
        if groups:
            return [ZoneSource(g or "zone", risk, g or None, "risk") for g in groups], False
    lsi = sorted(p for p in run_dir.glob("lsi_*.zarr") if p.is_dir())
    if lsi:
        return [ZoneSource(p.name[len("lsi_"):-len(".zarr")], p, None, "lsi") for p in lsi], True
    what = "risk.zarr has no zone group" if risk.is_dir() else "no risk.zarr"
    raise StoreError(
        f"{run_dir} holds no risk mosaic: {what} and no lsi_<zone>.zarr.",
        "pass the run directory OUT/<region>/<start>_<end> of a finished `slidewatch run` "
        "(or run it first); the report needs risk.zarr or lsi_<zone>.zarr.",
    )


def _open(src: ZoneSource) -> xr.Dataset:
    try:
        with warnings.catch_warnings():  # stores written without consolidated metadata are fine here
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
            ds = xr.open_zarr(src.path, group=src.group, decode_coords="all", consolidated=None)
    except Exception as exc:  # noqa: BLE001
        where = f"{src.path}" + (f" group {src.group!r}" if src.group else "")
        raise StoreError(
            f"{where} could not be opened ({type(exc).__name__}: {exc}).",
            "rerun the stage that writes it, or delete the damaged store and run again.",
        ) from exc
    if "risk_class" not in ds:
        raise InputDataError(
            f"{src.path}{'/' + src.group if src.group else ''} has no risk_class variable.",
            "rerun the LSI/risk stage so the store holds risk_class (uint8, 0/1/2, 255 no data).",
        )
    return ds


# --------------------------------------------------------------------------- reduction


def block_max_class(classes: np.ndarray, factor: int) -> np.ndarray:
    """Reduce a class raster by ``factor × factor`` blocks: the highest class in each block.

    Classes are 0 low, 1 medium, 2 high; any other value is no data and wins only when
    the whole block is no data (then 255). Edges that are not a whole block are padded
    with no data, so the result has shape ``ceil(h / factor), ceil(w / factor)``.
    """
    c = np.asarray(classes)
    if factor < 1:
        raise ValueError("factor must be >= 1")
    valid = (c >= 0) & (c <= 2)  # NaN (a decoded _FillValue) and any other value: no data
    rank = np.where(valid, np.nan_to_num(c).astype(np.int16) + 1, 0).astype(np.uint8)  # no data 0, low 1 ..
    h, w = rank.shape
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    if (hh, ww) != (h, w):
        rank = np.pad(rank, ((0, hh - h), (0, ww - w)), constant_values=0)
    m = rank.reshape(hh // factor, factor, ww // factor, factor).max(axis=(1, 3))
    return np.where(m == 0, _NODATA_CLASS, m - 1).astype(np.uint8)


def _class_index(c: np.ndarray) -> np.ndarray:
    """0, 1, 2 for low/medium/high; 3 for no data (255, NaN or any other value)."""
    return np.where((c >= 0) & (c <= 2), np.nan_to_num(c), 3).astype(np.intp)


def _tile_size(ds: xr.Dataset, factor: int) -> int:
    chunks = ds["risk_class"].chunks
    base = int(chunks[0][0]) if chunks else 512
    base = max(base, 64)
    return factor * max(1, -(-base // factor))


def _crs_info(ds: xr.Dataset, zone: str):  # type: ignore[no-untyped-def]
    import rioxarray  # noqa: F401  (registers .rio)
    from pyproj import CRS

    rcrs = ds.rio.crs
    if rcrs is None:
        raise InputDataError(
            f"zone {zone}: the store has no CRS (no spatial_ref grid mapping).",
            "write the store with rioxarray's write_crs (the pipeline's georeference()).",
        )
    crs = CRS.from_user_input(rcrs.to_wkt())
    if not crs.is_projected:
        raise InputDataError(
            f"zone {zone}: CRS {crs.name} is not projected, so pixel areas are not in metres.",
            "write the risk mosaic on the pipeline's UTM grid.",
        )
    utm = None
    if crs.utm_zone:
        utm = (int(crs.utm_zone[:-1]), crs.utm_zone[-1].upper() == "S")
    return crs, utm


def summarise_zone(src: ZoneSource, *, max_pixels: int = 2048, cell_px: int = 512) -> ZoneSummary:
    """Read one zone tile by tile: exact class/quality/probability statistics, per-cell
    counts and the block-max class image (at most ``max_pixels`` on the long side)."""
    from pyproj import Transformer

    ds = _open(src)
    if ds["risk_class"].dims != ("y", "x"):
        raise InputDataError(
            f"zone {src.zone}: risk_class has dims {ds['risk_class'].dims}, expected ('y', 'x').",
            "write the risk mosaic with dims (y, x).",
        )
    crs, utm = _crs_info(ds, src.zone)
    tr = ds.rio.transform()
    if tr.b != 0 or tr.d != 0 or tr.e >= 0:
        raise InputDataError(
            f"zone {src.zone}: the grid is not north-up (transform {tuple(tr)[:6]}).",
            "write the risk mosaic on the pipeline's north-up UTM grid.",
        )
    h, w = ds.sizes["y"], ds.sizes["x"]
    factor = max(1, math.ceil(max(h, w) / max_pixels))
    while math.ceil(h / cell_px) * math.ceil(w / cell_px) > _MAX_CELLS:
        cell_px *= 2
    ncy, ncx = math.ceil(h / cell_px), math.ceil(w / cell_px)
    value_name = "probability" if "probability" in ds else ("lsi" if "lsi" in ds else None)
    names = ["risk_class"] + ([value_name] if value_name else []) + (["quality"] if "quality" in ds else [])
    image = np.full((math.ceil(h / factor), math.ceil(w / factor)), _NODATA_CLASS, dtype=np.uint8)
    class_px = np.zeros(4, dtype=np.int64)
    cells = np.zeros(ncy * ncx * 4, dtype=np.int64)
    cell_sum = np.zeros(ncy * ncx, dtype=np.float64)
    cell_n = np.zeros(ncy * ncx, dtype=np.int64)
    vsum = np.zeros(4, dtype=np.float64)
    vn = np.zeros(4, dtype=np.int64)
    qhist = np.zeros(256, dtype=np.int64) if "quality" in ds else None
    tile = _tile_size(ds, factor)
    sub = ds[names]
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        crow = (np.arange(r0, r1) // cell_px)[:, None] * ncx
        for c0 in range(0, w, tile):
            c1 = min(w, c0 + tile)
            block = sub.isel(y=slice(r0, r1), x=slice(c0, c1)).compute()
            cls = np.asarray(block["risk_class"].values)
            ci = _class_index(cls)
            class_px += np.bincount(ci.ravel(), minlength=4)
            cell = crow + (np.arange(c0, c1) // cell_px)[None, :]
            cells += np.bincount((cell * 4 + ci).ravel(), minlength=cells.size)
            image[r0 // factor:(r1 + factor - 1) // factor, c0 // factor:(c1 + factor - 1) // factor] = (
                block_max_class(cls, factor)
            )
            if value_name:
                v = np.asarray(block[value_name].values, dtype=np.float64)
                ok = np.isfinite(v)
                vsum += np.bincount(ci[ok], weights=v[ok], minlength=4)
                vn += np.bincount(ci[ok], minlength=4)
                cell_sum += np.bincount(cell[ok], weights=v[ok], minlength=cell_sum.size)
                cell_n += np.bincount(cell[ok], minlength=cell_n.size)
            if qhist is not None:
                q = np.asarray(block["quality"].values).astype(np.uint8)
                qhist += np.bincount(q.ravel(), minlength=256)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y1 = float(tr.c), float(tr.f)
    x1, y0 = x0 + w * tr.a, y1 + h * tr.e
    corners = [tuple(map(float, to_ll.transform(x, y))) for x, y in ((x0, y1), (x1, y1), (x1, y0), (x0, y0))]
    nodes = None
    if utm is None:
        xs, ys = np.linspace(x0, x1, 9), np.linspace(y1, y0, 9)
        nodes = [[tuple(map(float, to_ll.transform(x, y))) for x in xs] for y in ys]
    return ZoneSummary(
        zone=src.zone, source=src, crs_name=crs.name, crs_wkt=crs.to_wkt(), epsg=crs.to_epsg(), utm=utm,
        shape=(h, w), x0=x0, y1=y1, res_x=float(tr.a), res_y=float(-tr.e), factor=factor, image=image,
        class_px=class_px, cell_px=cell_px, cells=cells.reshape(ncy, ncx, 4),
        cell_prob_sum=cell_sum.reshape(ncy, ncx), cell_prob_n=cell_n.reshape(ncy, ncx),
        value_name=value_name, value_sum_by_class=vsum, value_n_by_class=vn, quality_hist=qhist,
        attrs=dict(ds.attrs), lonlat_corners=corners, lonlat_nodes=nodes,
    )


# --------------------------------------------------------------------------- rendering helpers


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    idx = np.where(image <= 2, image, 3).astype(np.uint8)
    pal: list[int] = []
    for hexc in (*CLASS_COLOURS, NODATA_COLOUR):
        pal += [int(hexc[i:i + 2], 16) for i in (1, 3, 5)]
    im = Image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes())
    im.putpalette(pal + [0] * (768 - len(pal)))
    buf = io.BytesIO()
    im.save(buf, format="PNG", bits=2, compress_level=6)  # 4 colours: a 2-bit palette PNG
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _json_script(obj: object) -> str:
    text = json.dumps(obj, separators=(",", ":"), default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _maybe_json(v: object) -> object:
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _fmt_value(v: object) -> str:
    """HTML for an attribute value: dicts as nested tables, lists joined, floats trimmed."""
    v = _maybe_json(v)
    if isinstance(v, Mapping):
        if not v:
            return "<em>empty</em>"
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt_value(x)}</td></tr>" for k, x in v.items())
        return f'<table class="kv inner">{rows}</table>'
    if isinstance(v, (list, tuple)):
        return _esc(", ".join(_plain(x) for x in v)) if v else "<em>none</em>"
    return _esc(_plain(v))


def _plain(v: object) -> str:
    if v is None:
        return "none"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "nan" if not math.isfinite(f) else f"{f:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _fmt_km2(km2: float, total: float) -> str:
    if total >= 1000:
        return f"{km2:,.1f}"
    if total >= 10:
        return f"{km2:,.2f}"
    return f"{km2:,.4f}"


def _pct(part: float, whole: float) -> str:
    return "–" if whole <= 0 else f"{100.0 * part / whole:.1f} %"


def _fmt_ll(lon: float, lat: float) -> str:
    return f"{abs(lat):.5f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.5f}° {'E' if lon >= 0 else 'W'}"


def _heat_colour(frac: float) -> str:
    lo, hi = (0xFF, 0xF5, 0xF0), (0xA5, 0x0F, 0x15)
    t = min(1.0, max(0.0, frac))
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(lo, hi))


# --------------------------------------------------------------------------- sections


def _alert_html(alert: object) -> str:
    alert = _maybe_json(alert)
    if not alert:
        return ('<section class="alert manual" id="alert" data-alert="none">'
                "<p><strong>Trigger: manual run</strong> (no rainfall alert triggered this run).</p></section>")
    if not isinstance(alert, Mapping):
        return (f'<section class="alert" id="alert" data-alert="yes">'
                f"<p><strong>Trigger: rainfall alert</strong>: {_esc(_plain(alert))}</p></section>")

    def pick(*keys: str) -> object:
        for k in keys:
            if k in alert and alert[k] is not None:
                return alert[k]
        return None

    parts = []
    i = pick("intensity_mm_h", "intensity", "rain_intensity_mm_h")
    d = pick("duration_days", "duration", "rain_duration_days")
    t = pick("threshold", "threshold_mm_h", "threshold_intensity_mm_h")
    when = pick("time", "triggered_at", "datetime", "issued", "at")
    if i is not None:
        parts.append(f"intensity {_esc(_plain(i))} mm/h")
    if d is not None:
        parts.append(f"over {_esc(_plain(d))} days")
    if t is not None:
        parts.append(f"threshold {_fmt_value(t)}")
    if when is not None:
        parts.append(f"at {_esc(_plain(when))}")
    head = "; ".join(parts) if parts else "see the details below"
    return (f'<section class="alert" id="alert" data-alert="yes">'
            f"<p><strong>Trigger: rainfall alert</strong>: {head}.</p>"
            f"<details><summary>alert record</summary>{_fmt_value(alert)}</details></section>")


def _window_from_dir(run_dir: Path) -> str | None:
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})_(\d{4})(\d{2})(\d{2})", run_dir.name)
    return None if m is None else "{}-{}-{} to {}-{}-{}".format(*m.groups())


def _provenance(zones: list[ZoneSummary], run: Mapping[str, Any], run_dir: Path | None = None) -> dict[str, object]:
    """Provenance values: ``run.json`` first, then the first zone's attributes; the core keys
    always appear ("not recorded" when neither has them)."""
    prov: dict[str, object] = {}
    for key in _PROVENANCE_KEYS:
        if key in run and run[key] is not None:
            prov[key] = run[key]
            continue
        for z in zones:
            if key in z.attrs:
                prov[key] = z.attrs[key]
                break
    if "time_window" not in prov and run_dir is not None and _window_from_dir(run_dir):
        prov["time_window"] = f"{_window_from_dir(run_dir)} (from the run directory name)"
    if "region" not in prov and run_dir is not None:
        prov["region"] = f"{run_dir.parent.name} (from the run directory path)"
    for key in _CORE_KEYS:
        prov.setdefault(key, _NOT_RECORDED)
    return {k: prov[k] for k in (*_PROVENANCE_KEYS, *prov) if k in prov}


def _items_for(z: ZoneSummary, run: Mapping[str, Any]) -> dict[str, list[str]]:
    """STAC item ids per collection: the zone's attrs, else run.json's zone record, else run.json."""
    zones = run.get("zones")
    zone_record = zones.get(z.zone) if isinstance(zones, Mapping) else None
    candidates = [z.attrs.get("input_items"), run.get("input_items")]
    if isinstance(zone_record, Mapping):
        candidates.insert(1, zone_record.get("input_items"))
    items = next((c for c in map(_maybe_json, candidates) if isinstance(c, Mapping)), None)
    if items is None:
        return {}
    return {str(k): [str(i) for i in (v if isinstance(v, (list, tuple)) else [v])] for k, v in items.items()}


def _provenance_html(zones: list[ZoneSummary], run: Mapping[str, Any], run_dir: Path) -> str:
    prov = _provenance(zones, run, run_dir)
    rows = "".join(
        f'<tr data-key="{_esc(k)}"><th>{_esc(k)}</th><td>{_fmt_value(v)}</td></tr>' for k, v in prov.items()
    )
    if not rows:
        rows = '<tr><td colspan="2"><em>no provenance attributes found</em></td></tr>'
    items_html = []
    for z in zones:
        items = _items_for(z, run)
        if not items:
            items_html.append(f"<h3>STAC items: {_esc(z.zone)}</h3><p><em>none recorded</em></p>")
            continue
        lis = "".join(
            f'<li><strong>{_esc(c)}</strong> ({len(ids)} item{"" if len(ids) == 1 else "s"})<ul class="ids">'
            + "".join(f"<li><code>{_esc(i)}</code></li>" for i in ids)
            + "</ul></li>"
            for c, ids in items.items()
        )
        items_html.append(f"<h3>STAC items: {_esc(z.zone)}</h3><ul>{lis}</ul>")
    extra = []
    for z in zones:
        other = {k: v for k, v in z.attrs.items() if k not in _PROVENANCE_KEYS and k != "input_items"}
        if other:
            body = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt_value(v)}</td></tr>" for k, v in other.items())
            extra.append(f"<details><summary>All attributes of {_esc(z.zone)}</summary>"
                         f'<table class="kv">{body}</table></details>')
    return (f'<section id="provenance"><h2>Parameters and provenance</h2>'
            f'<table class="kv" id="prov-table">{rows}</table>{"".join(items_html)}{"".join(extra)}</section>')


def _stats_html(z: ZoneSummary) -> str:
    total_px = int(z.class_px.sum())
    total = z.km2(total_px)
    valid_px = int(z.class_px[:3].sum())
    vname = z.value_name
    rows = []
    for k, name in enumerate((*CLASS_NAMES, "no data")):
        px = int(z.class_px[k])
        colour = CLASS_COLOURS[k] if k < 3 else NODATA_COLOUR
        mean = "–"
        if vname and z.value_n_by_class[k] > 0:
            mean = f"{z.value_sum_by_class[k] / z.value_n_by_class[k]:.3f}"
        rows.append(
            f'<tr class="cls" data-class="{_esc(name)}" data-px="{px}" data-km2="{z.km2(px)!r}">'
            f'<td><span class="sw" style="background:{colour}"></span>{_esc(name)}</td>'
            f"<td>{px:,}</td><td>{_fmt_km2(z.km2(px), total)}</td><td>{_pct(px, total_px)}</td>"
            f"<td>{_pct(px, valid_px) if k < 3 else '–'}</td><td>{mean}</td></tr>"
        )
    n_all = int(z.value_n_by_class.sum())
    mean_all = f"{z.value_sum_by_class.sum() / n_all:.4f}" if vname and n_all else "–"
    rows.append(
        f'<tr class="total" data-px="{total_px}" data-km2="{total!r}"><td>total</td><td>{total_px:,}</td>'
        f"<td>{_fmt_km2(total, total)}</td><td>100.0 %</td><td>–</td><td>{mean_all}</td></tr>"
    )
    vlabel = f"mean {vname}" if vname else "mean probability"
    mean_line = (f'<p class="mean" data-mean-name="{_esc(vname or "")}" data-mean="{mean_all}">Mean {_esc(vname)} '
                 f"over {n_all:,} pixels with a value: <strong>{mean_all}</strong>"
                 + (" (no probability in this store; LSI shown instead)." if vname == "lsi" else ".")
                 + "</p>") if vname else "<p class=\"mean\">No probability or LSI values in this store.</p>"
    table = (f'<table class="stats" id="stats-{_esc(z.zone)}"><thead><tr><th>class</th><th>pixels</th>'
             f"<th>area km²</th><th>% of grid</th><th>% of valid</th><th>{_esc(vlabel)}</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    return f"<h3>Area per class</h3>{table}{mean_line}{_quality_html(z)}"


def _quality_html(z: ZoneSummary) -> str:
    if z.quality_hist is None:
        return ""
    bits = [(int(f.value), str(f.name).lower()) for f in QualityFlag if f.value] + []
    values = np.arange(256)
    total_px = int(z.quality_hist.sum())
    ok_px = int(z.quality_hist[0])
    rows = [f'<tr data-bit="0" data-px="{ok_px}"><td>0</td><td>ok (no flag)</td>'
            f"<td>{_fmt_km2(z.km2(ok_px), z.km2(total_px))}</td><td>{_pct(ok_px, total_px)}</td></tr>"]
    for bit, name in bits:
        px = int(z.quality_hist[(values & bit) != 0].sum())
        rows.append(f'<tr data-bit="{bit}" data-px="{px}"><td>{bit}</td><td>{_esc(name)}</td>'
                    f"<td>{_fmt_km2(z.km2(px), z.km2(total_px))}</td><td>{_pct(px, total_px)}</td></tr>")
    return ('<details class="quality"><summary>Quality flags (area where each bit is set; bits combine)</summary>'
            '<table class="stats"><thead><tr><th>bit</th><th>meaning</th><th>area km²</th><th>% of grid</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>")


def _cells_html(z: ZoneSummary, top: int) -> str:
    from pyproj import Transformer

    ncy, ncx, _ = z.cells.shape
    cell_km = z.cell_px * z.res_x / 1000
    valid = z.cells[..., :3].sum(axis=2)
    high = z.cells[..., 2]
    size = max(4, min(28, int(420 / max(ncx, 1))))
    rects = []
    for r in range(ncy):
        for c in range(ncx):
            v = int(valid[r, c])
            frac = high[r, c] / v if v else 0.0
            fill = _heat_colour(frac) if v else NODATA_COLOUR
            tip = (f"cell r{r} c{c}: high {_fmt_km2(z.km2(high[r, c]), 1)} km²"
                   + (f" ({100 * frac:.1f} % of valid)" if v else " (no data)"))
            rects.append(f'<rect x="{c * size}" y="{r * size}" width="{size}" height="{size}" fill="{fill}">'
                         f"<title>{_esc(tip)}</title></rect>")
    svg = (f'<svg class="heat" width="{ncx * size}" height="{ncy * size}" viewBox="0 0 {ncx * size} {ncy * size}" '
           f'role="img" aria-label="high-risk share per cell">{"".join(rects)}</svg>')
    order = sorted(((int(high[r, c]), int(z.cells[r, c, 1]), r, c) for r in range(ncy) for c in range(ncx)),
                   reverse=True)
    order = [o for o in order if o[0] > 0][:top]
    to_ll = Transformer.from_crs(z.crs_wkt, "EPSG:4326", always_xy=True)
    trs = []
    for hi, _, r, c in order:
        cx = z.x0 + (c + 0.5) * z.cell_px * z.res_x
        cy = z.y1 - (r + 0.5) * z.cell_px * z.res_y
        lon, lat = to_ll.transform(cx, cy)
        cnt = z.cells[r, c]
        n = z.cell_prob_n[r, c]
        mean = f"{z.cell_prob_sum[r, c] / n:.3f}" if n else "–"
        tot = z.km2(cnt.sum())
        trs.append(
            f'<tr data-cell="{r},{c}" data-high-px="{hi}"><td>r{r} c{c}</td><td>{_esc(_fmt_ll(lon, lat))}</td>'
            + "".join(f"<td>{_fmt_km2(z.km2(cnt[k]), tot)}</td>" for k in (2, 1, 0, 3))
            + f"<td>{_pct(hi, int(cnt[:3].sum()))}</td><td>{mean}</td></tr>"
        )
    table = ("<p><em>No high-risk pixels in this zone.</em></p>" if not trs else
             f'<table class="stats cells"><thead><tr><th>cell</th><th>centre (lat, lon)</th><th>high km²</th>'
             f"<th>medium km²</th><th>low km²</th><th>no data km²</th><th>high % of valid</th>"
             f"<th>mean {_esc(z.value_name or 'value')}</th></tr></thead><tbody>{''.join(trs)}</tbody></table>")
    legend = (f'<div class="heatlegend"><span>0 %</span><span class="grad"></span><span>100 % high</span>'
              f'<span class="sw" style="background:{NODATA_COLOUR}"></span><span>no data</span></div>')
    return (f'<h3>Per grid cell ({cell_km:g} km × {cell_km:g} km, {z.cell_px} px; {ncy} × {ncx} cells)</h3>'
            f'<div class="cellwrap"><div><p class="note">Share of high risk per cell (row 0 is north):</p>'
            f"{svg}{legend}</div><div><p class=\"note\">Top {len(trs)} cells by high-risk area:</p>{table}</div></div>")


def _map_html(z: ZoneSummary) -> str:
    zid = "".join(ch if ch.isalnum() else "-" for ch in z.zone)
    h, w = z.shape
    ih, iw = z.image.shape
    cfg = {
        "zone": z.zone,
        "iw": iw, "ih": ih,
        "x0": z.x0, "y1": z.y1,
        "px_x": z.res_x * z.factor, "px_y": z.res_y * z.factor,
        "res": z.res_x, "factor": z.factor,
        "width_m": w * z.res_x, "height_m": h * z.res_y,
        "utm": list(z.utm) if z.utm else None,
        "nodes": z.lonlat_nodes,
        "names": [*CLASS_NAMES, "no data"],
        "colours": [*CLASS_COLOURS, NODATA_COLOUR],
    }
    method = ("inverse transverse Mercator (Snyder series, WGS 84), within ~1 mm of PROJ"
              if z.utm else "bilinear between 9 × 9 lon/lat nodes precomputed with PROJ")
    legend = "".join(
        f'<li><span class="sw" style="background:{col}"></span>{_esc(name)}</li>'
        for col, name in zip((*CLASS_COLOURS, NODATA_COLOUR), (*CLASS_NAMES, "no data"))
    )
    corners = " · ".join(
        f"{lab} {_esc(_fmt_ll(lon, lat))}" for lab, (lon, lat) in zip(("NW", "NE", "SE", "SW"), z.lonlat_corners)
    )
    crs = f"{z.crs_name}" + (f" (EPSG:{z.epsg})" if z.epsg else "")
    return f"""
<div class="sw-map" id="map-{_esc(zid)}" data-cfg="cfg-{_esc(zid)}" data-zone="{_esc(z.zone)}"
     data-corners-pyproj="{_esc(json.dumps(z.lonlat_corners))}">
  <div class="toolbar">
    <button type="button" data-act="in" title="zoom in (+)" aria-label="zoom in">+</button>
    <button type="button" data-act="out" title="zoom out (-)" aria-label="zoom out">&minus;</button>
    <button type="button" data-act="reset" title="fit the whole zone (0)">reset</button>
    <span class="hint">wheel or +/- to zoom, drag or arrow keys to pan</span>
    <span class="crs">CRS: <strong>{_esc(crs)}</strong></span>
  </div>
  <div class="stage">
    <canvas tabindex="0" aria-label="risk class map of zone {_esc(z.zone)}"></canvas>
    <img class="sw-src" alt="" src="{_png_data_uri(z.image)}" hidden>
    <div class="scalebar" data-metres=""><div class="bar"></div><span class="label"></span></div>
    <ul class="legend">{legend}</ul>
    <div class="readout" aria-live="polite">move the pointer over the map</div>
  </div>
  <p class="note">{w:,} × {h:,} grid pixels of {z.res_x:g} m; 1 map pixel = {z.factor} × {z.factor} grid pixels
  ({z.factor * z.res_x:g} m) showing the highest class in the block. Corners: {corners}.
  Lon/lat readout: {_esc(method)}. <span class="corners-js"></span></p>
  <script type="application/json" id="cfg-{_esc(zid)}">{_json_script(cfg)}</script>
</div>"""


_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:10px 18px}
header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:#cfd8dc;font-size:13px}
main{padding:8px 18px 30px;max-width:1400px}
h2{font-size:17px;margin:16px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:14px 0 4px}
.alert{border-left:5px solid #d73027;background:#fff3f0;padding:4px 12px;margin:8px 0}
.alert p{margin:2px 0}
.alert.manual{border-color:#78909c;background:#eceff1}
.warn{border-left:5px solid #ff9800;background:#fff8e1;padding:6px 12px;margin:8px 0}
.sw-map{margin:6px 0}
.toolbar{display:flex;gap:6px;align-items:center;flex-wrap:wrap;margin-bottom:4px}
.toolbar button{font-size:15px;min-width:34px;padding:2px 8px;cursor:pointer}
.toolbar .hint{color:#666;font-size:12px}
.toolbar .crs{margin-left:auto;font-size:13px}
.stage{position:relative;width:100%;height:min(66vh,620px);min-height:260px;border:1px solid #90a4ae;background:#fff}
.stage canvas{width:100%;height:100%;display:block;cursor:grab;touch-action:none}
.stage canvas:active{cursor:grabbing}
.legend{position:absolute;top:8px;right:8px;margin:0;padding:6px 10px;list-style:none;background:rgba(255,255,255,.9);border:1px solid #bbb;font-size:13px}
.legend li{display:flex;align-items:center;gap:6px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #555;vertical-align:middle;margin-right:5px}
.scalebar{position:absolute;left:10px;bottom:10px;background:rgba(255,255,255,.85);padding:3px 6px;font-size:12px}
.scalebar .bar{height:6px;border:2px solid #222;border-top:0}
.readout{position:absolute;right:8px;bottom:8px;background:rgba(255,255,255,.9);padding:3px 8px;font:12px ui-monospace,Menlo,Consolas,monospace}
.note{color:#555;font-size:12px;margin:4px 0}
table{border-collapse:collapse;margin:4px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.stats td{text-align:right}
table.stats td:first-child{text-align:left}
table.kv th{background:#f0f0f0;font-weight:600;white-space:nowrap}
table.inner{margin:0}
ul.ids{columns:2;font-size:12px;margin:2px 0 6px}
.cellwrap{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.heat rect{stroke:#fff;stroke-width:.5}
.heatlegend{display:flex;gap:6px;align-items:center;font-size:12px;margin-top:4px}
.heatlegend .grad{display:inline-block;width:120px;height:10px;background:linear-gradient(90deg,#fff5f0,#a50f15);border:1px solid #999}
footer{color:#777;font-size:12px;padding:10px 18px}
"""

_JS = r"""
(function () {
  "use strict";
  var A = 6378137.0, F = 1 / 298.257223563, K0 = 0.9996;
  // Inverse UTM: Snyder (1987) USGS PP 1395, eqs. 8-12..8-25, WGS 84.
  function utmInverse(E, N, zone, south) {
    var e2 = F * (2 - F), ep2 = e2 / (1 - e2);
    var x = E - 500000.0, y = south ? N - 10000000.0 : N;
    var M = y / K0;
    var mu = M / (A * (1 - e2 / 4 - 3 * e2 * e2 / 64 - 5 * e2 * e2 * e2 / 256));
    var s = Math.sqrt(1 - e2), e1 = (1 - s) / (1 + s);
    var phi1 = mu + (3 * e1 / 2 - 27 * Math.pow(e1, 3) / 32) * Math.sin(2 * mu)
      + (21 * e1 * e1 / 16 - 55 * Math.pow(e1, 4) / 32) * Math.sin(4 * mu)
      + (151 * Math.pow(e1, 3) / 96) * Math.sin(6 * mu)
      + (1097 * Math.pow(e1, 4) / 512) * Math.sin(8 * mu);
    var sp = Math.sin(phi1), cp = Math.cos(phi1), tp = Math.tan(phi1);
    var C1 = ep2 * cp * cp, T1 = tp * tp;
    var w = 1 - e2 * sp * sp;
    var N1 = A / Math.sqrt(w), R1 = A * (1 - e2) / Math.pow(w, 1.5);
    var D = x / (N1 * K0);
    var lat = phi1 - (N1 * tp / R1) * (D * D / 2
      - (5 + 3 * T1 + 10 * C1 - 4 * C1 * C1 - 9 * ep2) * Math.pow(D, 4) / 24
      + (61 + 90 * T1 + 298 * C1 + 45 * T1 * T1 - 252 * ep2 - 3 * C1 * C1) * Math.pow(D, 6) / 720);
    var lon0 = ((zone - 1) * 6 - 180 + 3) * Math.PI / 180;
    var lon = lon0 + (D - (1 + 2 * T1 + C1) * Math.pow(D, 3) / 6
      + (5 - 2 * C1 + 28 * T1 - 3 * C1 * C1 + 8 * ep2 + 24 * T1 * T1) * Math.pow(D, 5) / 120) / cp;
    return [lon * 180 / Math.PI, lat * 180 / Math.PI];
  }
  function nodesInverse(cfg, E, N) {
    var n = cfg.nodes, m = n.length - 1, k = n[0].length - 1;
    var u = (E - cfg.x0) / cfg.width_m * k, v = (cfg.y1 - N) / cfg.height_m * m;
    var i = Math.min(Math.max(Math.floor(v), 0), m - 1), j = Math.min(Math.max(Math.floor(u), 0), k - 1);
    var fv = v - i, fu = u - j, out = [0, 0];
    for (var c = 0; c < 2; c++) {
      out[c] = (1 - fv) * ((1 - fu) * n[i][j][c] + fu * n[i][j + 1][c])
        + fv * ((1 - fu) * n[i + 1][j][c] + fu * n[i + 1][j + 1][c]);
    }
    return out;
  }
  function toLonLat(cfg, E, N) {
    return cfg.utm ? utmInverse(E, N, cfg.utm[0], cfg.utm[1]) : nodesInverse(cfg, E, N);
  }
  function fmtLL(ll) {
    var lon = ll[0], lat = ll[1];
    return Math.abs(lat).toFixed(5) + "\u00b0 " + (lat >= 0 ? "N" : "S") + ", "
      + Math.abs(lon).toFixed(5) + "\u00b0 " + (lon >= 0 ? "E" : "W");
  }
  function niceMetres(m) {
    var p = Math.pow(10, Math.floor(Math.log10(m))), r = m / p;
    return (r >= 5 ? 5 : r >= 2 ? 2 : 1) * p;
  }
  function initMap(el) {
    var cfg = JSON.parse(document.getElementById(el.getAttribute("data-cfg")).textContent);
    var canvas = el.querySelector("canvas"), img = el.querySelector("img.sw-src");
    var ctx = canvas.getContext("2d");
    var bar = el.querySelector(".scalebar"), readout = el.querySelector(".readout");
    var W = 1, H = 1, s = 1, tx = 0, ty = 0, fitS = 1, dpr = window.devicePixelRatio || 1;
    var probe = null;
    try {
      var pc = document.createElement("canvas");
      pc.width = cfg.iw; pc.height = cfg.ih;
      var pctx = pc.getContext("2d");
      pctx.drawImage(img, 0, 0);
      probe = pctx.getImageData(0, 0, cfg.iw, cfg.ih).data;
    } catch (err) { probe = null; }
    function resize() {
      var r = canvas.getBoundingClientRect();
      W = Math.max(1, r.width); H = Math.max(1, r.height);
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    }
    function fit() {
      fitS = Math.min(W / cfg.iw, H / cfg.ih);
      s = fitS; tx = (W - cfg.iw * s) / 2; ty = (H - cfg.ih * s) / 2;
    }
    function scaleBar() {
      var mpp = cfg.px_x / s;  // metres per CSS pixel
      var metres = niceMetres(mpp * 120);
      bar.querySelector(".bar").style.width = (metres / mpp).toFixed(1) + "px";
      bar.querySelector(".label").textContent = metres >= 1000 ? (metres / 1000) + " km" : metres + " m";
      bar.setAttribute("data-metres", String(metres));
      bar.setAttribute("data-px", (metres / mpp).toFixed(2));
    }
    function draw() {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, W, H);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, tx, ty, cfg.iw * s, cfg.ih * s);
      scaleBar();
      el.setAttribute("data-zoom", (s / fitS).toFixed(4));
    }
    function zoomAt(k, sx, sy) {
      var ns = Math.min(Math.max(s * k, fitS * 0.25), Math.max(fitS * 2, 16 * cfg.factor));
      k = ns / s; tx = sx - (sx - tx) * k; ty = sy - (sy - ty) * k; s = ns; draw();
    }
    function world(sx, sy) {
      var ix = (sx - tx) / s, iy = (sy - ty) / s;
      return [cfg.x0 + ix * cfg.px_x, cfg.y1 - iy * cfg.px_y, ix, iy];
    }
    function show(sx, sy, prefix) {
      var w = world(sx, sy);
      if (w[2] < 0 || w[3] < 0 || w[2] >= cfg.iw || w[3] >= cfg.ih) {
        readout.textContent = "outside the grid";
        return;
      }
      var txt = fmtLL(toLonLat(cfg, w[0], w[1])) + " | E " + w[0].toFixed(0) + " N " + w[1].toFixed(0);
      if (probe) {
        var o = (Math.floor(w[3]) * cfg.iw + Math.floor(w[2])) * 4, best = 3, bd = 1e9;
        for (var c = 0; c < 4; c++) {
          var h = cfg.colours[c], d = 0;
          for (var b = 0; b < 3; b++) d += Math.abs(parseInt(h.substr(1 + 2 * b, 2), 16) - probe[o + b]);
          if (d < bd) { bd = d; best = c; }
        }
        txt += " | " + cfg.names[best];
      }
      readout.textContent = (prefix || "") + txt;
    }
    function local(e) { var r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      var p = local(e); zoomAt(Math.exp(-e.deltaY * 0.0015), p[0], p[1]);
    }, { passive: false });
    var drag = null;
    canvas.addEventListener("pointerdown", function (e) {
      drag = local(e); canvas.setPointerCapture(e.pointerId); canvas.focus();
    });
    canvas.addEventListener("pointermove", function (e) {
      var p = local(e);
      if (drag) { tx += p[0] - drag[0]; ty += p[1] - drag[1]; drag = p; draw(); }
      show(p[0], p[1]);
    });
    function endDrag() { drag = null; }
    canvas.addEventListener("pointerup", endDrag);
    canvas.addEventListener("pointercancel", endDrag);
    el.querySelectorAll("button[data-act]").forEach(function (b) {
      b.addEventListener("click", function () {
        var a = b.getAttribute("data-act");
        if (a === "in") zoomAt(1.5, W / 2, H / 2);
        else if (a === "out") zoomAt(1 / 1.5, W / 2, H / 2);
        else { fit(); draw(); }
      });
    });
    el.addEventListener("keydown", function (e) {
      var k = e.key, done = true;
      if (k === "+" || k === "=") zoomAt(1.5, W / 2, H / 2);
      else if (k === "-" || k === "_") zoomAt(1 / 1.5, W / 2, H / 2);
      else if (k === "0") { fit(); draw(); }
      else if (k === "ArrowLeft") { tx += 60; draw(); }
      else if (k === "ArrowRight") { tx -= 60; draw(); }
      else if (k === "ArrowUp") { ty += 60; draw(); }
      else if (k === "ArrowDown") { ty -= 60; draw(); }
      else done = false;
      if (done) e.preventDefault();
    });
    window.addEventListener("resize", function () {  // keep the view centre and the relative zoom
      var cx = (W / 2 - tx) / s, cy = (H / 2 - ty) / s, rel = s / fitS;
      resize();
      fitS = Math.min(W / cfg.iw, H / cfg.ih);
      s = fitS * rel; tx = W / 2 - cx * s; ty = H / 2 - cy * s;
      draw();
    });
    resize(); fit(); draw();
    var hz = /(?:^#|&)zoom=([0-9.]+)/.exec(window.location.hash);  // report.html#zoom=4 opens zoomed in
    if (hz && parseFloat(hz[1]) > 0) zoomAt(parseFloat(hz[1]), W / 2, H / 2);
    var x1 = cfg.x0 + cfg.width_m, y0 = cfg.y1 - cfg.height_m;
    var corners = [[cfg.x0, cfg.y1], [x1, cfg.y1], [x1, y0], [cfg.x0, y0]].map(function (p) {
      return toLonLat(cfg, p[0], p[1]);
    });
    el.setAttribute("data-corners-js", JSON.stringify(corners));
    el.querySelector(".corners-js").textContent = "Script check, NW corner: " + fmtLL(corners[0]) + ".";
    show(W / 2, H / 2, "view centre: ");
    el.setAttribute("data-probe", probe ? "1" : "0");
    el.setAttribute("data-ready", "1");
  }
  function start() {
    var maps = document.querySelectorAll(".sw-map"), ok = 0;
    maps.forEach(function (el) {
      try { initMap(el); ok++; } catch (err) { el.setAttribute("data-error", String(err)); }
    });
    document.documentElement.setAttribute("data-sw-ready", ok === maps.length ? "1" : "partial");
  }
  if (document.readyState === "complete") start(); else window.addEventListener("load", start);
})();
"""


def _page(zones: list[ZoneSummary], run: Mapping[str, Any], fallback: bool, run_dir: Path) -> str:
    prov = _provenance(zones, run)
    region = prov.get("region", run_dir.parent.name)
    if region == _NOT_RECORDED:
        region = run_dir.parent.name
    window = _maybe_json(prov.get("time_window"))
    if window == _NOT_RECORDED:
        window = _window_from_dir(run_dir) or run_dir.name
    if isinstance(window, (list, tuple)):
        window = " to ".join(str(w) for w in window)
    title = f"slidewatch risk report: {_plain(region)}, {_plain(window)}"
    warn = ""
    if fallback:
        warn += ('<p class="warn" id="fallback"><strong>No risk.zarr in this run</strong>: the map and statistics '
                 "show the LSI risk classes from lsi_&lt;zone&gt;.zarr (no U-Net probability). Run the risk stage "
                 "for the model's classes.</p>")
    incomplete = [z.zone for z in zones if z.attrs.get("slidewatch_complete") is not True]
    if incomplete:
        warn += (f'<p class="warn" id="incomplete">Not marked complete (slidewatch_complete): '
                 f"{_esc(', '.join(incomplete))}. Figures may describe a partial store.</p>")
    sections = []
    for z in zones:
        src = f"{z.source.path.name}" + (f" group {z.source.group}" if z.source.group else "")
        sections.append(
            f'<section class="zone" id="zone-{_esc(z.zone)}"><h2>Zone {_esc(z.zone)} '
            f'<small>({_esc(src)})</small></h2>{_map_html(z)}{_stats_html(z)}{_cells_html(z, 10)}</section>'
        )
    total_px = np.sum([z.class_px for z in zones], axis=0)
    area = [sum(z.km2(z.class_px[k]) for z in zones) for k in range(4)]
    overall = ""
    if len(zones) > 1:
        tot = sum(area)
        cells = "".join(
            f'<tr data-class="{_esc(n)}"><td>{_esc(n)}</td><td>{int(total_px[k]):,}</td>'
            f"<td>{_fmt_km2(area[k], tot)}</td><td>{_pct(area[k], tot)}</td></tr>"
            for k, n in enumerate((*CLASS_NAMES, "no data"))
        )
        overall = (f'<section id="overall"><h2>All zones</h2><table class="stats"><thead><tr><th>class</th>'
                   f"<th>pixels</th><th>area km²</th><th>% of grid</th></tr></thead><tbody>{cells}</tbody></table>"
                   "</section>")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="slidewatch {_esc(__version__)}">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{_esc(title)}</h1>
<p>Run directory {_esc(run_dir.name)} · {len(zones)} zone(s) ·
report generated {_esc(now)} by slidewatch {_esc(__version__)}</p></header>
<main>
{warn}
{_alert_html(run.get("alert"))}
{overall}
{"".join(sections)}
{_provenance_html(zones, run, run_dir)}
</main>
<footer>Self-contained offline report: the map is an embedded image; nothing is loaded from the network.
Classes: 0 low, 1 medium, 2 high, 255 no data. Areas count grid pixels × pixel area in the grid CRS.</footer>
<script>{_JS}</script>
</body>
</html>
"""


def _read_run_json(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise InputDataError(f"{path} is not valid JSON ({exc}).",
                             "fix or delete run.json; the report also works without it.") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"{path} holds {type(data).__name__}, not an object.",
                             "fix or delete run.json; the report also works without it.")
    return data


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    max_pixels: int = 2048,
    cell_px: int = 512,
    zones: Iterable[str] | None = None,
) -> Path:
    """Write the run's self-contained HTML report and return its path.

    ``run_dir`` is ``OUT/<region>/<start>_<end>``; ``out`` defaults to
    ``<run_dir>/report.html``. The class map is reduced to at most ``max_pixels`` on its
    long side; statistics per cell use ``cell_px``-square cells (doubled until there
    are at most 4096 cells). ``zones`` limits the report to some zone names. Raises
    :class:`StoreError` when the run has neither ``risk.zarr`` nor ``lsi_<zone>.zarr``.
    """
    if max_pixels < 16:
        raise InputDataError(f"max_pixels={max_pixels} is too small.", "use at least 16 (default 2048).")
    if cell_px < 1:
        raise InputDataError(f"cell_px={cell_px} must be positive.", "use e.g. 512 (one chunk).")
    run_dir = Path(run_dir)
    sources, fallback = find_sources(run_dir)
    if zones is not None:
        wanted = set(zones)
        sources = [s for s in sources if s.zone in wanted]
        if not sources:
            raise InputDataError(f"none of the zones {sorted(wanted)} is in {run_dir}.",
                                 "leave out the zone filter or name a zone of the run (e.g. utm48n).")
    run = _read_run_json(run_dir)
    summaries = [summarise_zone(s, max_pixels=max_pixels, cell_px=cell_px) for s in sources]
    path = Path(out) if out is not None else run_dir / "report.html"
    _write_atomic(path, _page(summaries, run, fallback, run_dir))
    return path
