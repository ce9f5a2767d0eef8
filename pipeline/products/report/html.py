"""The report page: what each section shows, laid out by Jinja2 templates.

The markup lives in ``templates/`` (package data): ``report.html.j2`` (the page, the alert,
the all-zones table, the figures and the provenance), ``map.html.j2`` (the map: zone switch,
layer control, legends), ``zone.html.j2`` (one zone: area per class, quality flags, grid
cells), ``report.css`` and ``report.js`` (the page's style and the map's wiring), and the
vendored map library ``leaflet.js``/``leaflet.css`` (Leaflet 1.9.4 from npm, BSD-2-Clause,
``leaflet-LICENSE.txt``; its control icons ``leaflet-*.png``). All are inlined, so the page
stays one offline file: the library's CSS has its ``url(images/...)`` icons replaced by
data URIs of the vendored PNGs (:func:`_leaflet_css`), and the library's text is
otherwise inlined byte for byte. Jinja2 autoescapes every value; only these assets and
the map's JSON configuration (written for a ``<script>`` element by :func:`_json_script`)
go in unescaped.

This module chooses and formats values (provenance precedence, alert fields, per-cell
ranking, number formats, the layers' colour stretches and legends); the statistics and
reduced images themselves come from :func:`summarise_zone`.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
from markupsafe import Markup

from pipeline import __version__
from pipeline.core.classes import CLASS_COLOURS, CLASS_NAMES, NODATA_COLOUR
from pipeline.core.quality import QualityFlag
from pipeline.products.report.figures import Figure
from pipeline.products.report.layers import (
    PROBABILITY_LAYERS, RAMPS, Stretch, class_png, float_png, hillshade_png, ramp_colours, stretch,
)
from pipeline.products.report.legend import LAYER_TEXT, class_legend
from pipeline.products.report.lonlat import TOLERANCE_M, lonlat_lattice

if TYPE_CHECKING:
    from pipeline.products.report import ZoneSummary

__all__ = ["render_page"]

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
#: Class names and colours in table order: low, medium, high, no data.
_NAMES = (*CLASS_NAMES, "no data")
_COLOURS = (*CLASS_COLOURS, NODATA_COLOUR)
#: Rows of the per-cell table: this many cells with the most high-risk area.
_TOP_CELLS = 10
#: Opacity of the data layers over the hillshade when the page opens (a slider changes it).
OPACITY = 0.7
#: Leaflet's icons referenced by its CSS, vendored beside it as ``leaflet-<name>``.
_LEAFLET_IMAGES = ("layers.png", "layers-2x.png", "marker-icon.png")


# --------------------------------------------------------------------------- formats


def _maybe_json(v: object) -> object:
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


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


def _json_script(obj: object) -> Markup:
    """JSON safe inside ``<script type="application/json">`` (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(obj, separators=(",", ":"), default=str)
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.products.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(plain=_plain, maybe_json=_maybe_json, km2=_fmt_km2, pct=_pct,
                       thousands="{:,}".format, g="{:g}".format)
    env.tests["listlike"] = lambda v: isinstance(v, (list, tuple))
    return env


def _asset(name: str) -> Markup:
    """The text of a static file in ``templates/`` (the page's CSS or script), unescaped."""
    env = _env()
    return Markup(env.loader.get_source(env, name)[0])  # type: ignore[union-attr]


def _leaflet_css() -> Markup:
    """Leaflet's stylesheet with its icons (``url(images/NAME)``) as data URIs of the
    vendored ``templates/leaflet-NAME`` files."""
    css = str(_asset("leaflet.css"))
    folder = importlib.resources.files("pipeline.products.report") / "templates"
    for name in _LEAFLET_IMAGES:
        data = (folder / f"leaflet-{name}").read_bytes()
        css = css.replace(f"url(images/{name})", "url(data:image/png;base64," + base64.b64encode(data).decode("ascii") + ")")
    return Markup(css)


# --------------------------------------------------------------------------- run-level values


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


def _alert(alert: object) -> dict[str, object] | None:
    """The triggering alert: ``None`` for a manual run, else its record and the fields shown
    in the headline (``parts``: intensity, duration, threshold, time, those present)."""
    alert = _maybe_json(alert)
    if not alert:
        return None
    if not isinstance(alert, Mapping):
        return {"record": alert, "parts": None}

    def pick(*keys: str) -> object:
        for k in keys:
            if k in alert and alert[k] is not None:
                return alert[k]
        return None

    parts = [
        ("intensity", pick("intensity_mm_h", "intensity", "rain_intensity_mm_h")),
        ("duration", pick("duration_days", "duration", "rain_duration_days")),
        ("threshold", pick("threshold", "threshold_mm_h", "threshold_intensity_mm_h")),
        ("time", pick("time", "triggered_at", "datetime", "issued", "at")),
    ]
    return {"record": alert, "parts": [(k, v) for k, v in parts if v is not None]}


def _overall(zones: list[ZoneSummary]) -> dict[str, object] | None:
    """Pixels and km² per class over all zones (only when there is more than one)."""
    if len(zones) < 2:
        return None
    total_px = np.sum([z.class_px for z in zones], axis=0)
    area = [sum(z.km2(z.class_px[k]) for z in zones) for k in range(4)]
    rows = [{"name": n, "px": int(total_px[k]), "km2": area[k]} for k, n in enumerate(_NAMES)]
    return {"rows": rows, "total": sum(area)}


# --------------------------------------------------------------------------- zone sections


def _zid(zone: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in zone)


def _class_score(z: ZoneSummary) -> str | None:
    """The score the class layer cuts: ``hazard``, an older mosaic's ``probability``, or ``lsi``."""
    if z.source.kind == "lsi":
        return "lsi"
    comment = str(z.class_attrs.get("comment", ""))
    for name in ("hazard", "probability", "susceptibility"):
        if f"from {name}" in comment:
            return name
    return z.value_name


def _stretches(z: ZoneSummary) -> dict[str, Stretch]:
    """Each float layer's colour stretch; the probability-scale layers share one."""
    out: dict[str, Stretch] = {}
    prob = [k for k in z.layers if k in PROBABILITY_LAYERS]
    shared = stretch(z.layers[k] for k in prob) if prob else None
    for key, values in z.layers.items():
        how = shared if key in PROBABILITY_LAYERS else stretch([values])
        if how is not None:
            out[key] = how
    return out


def _ramp(key: str, how: Stretch, legend: dict[str, Any]) -> dict[str, object]:
    """The legend block of one float layer: gradient, end values, threshold marks."""
    colours = ramp_colours(key)
    marks = []
    if key in PROBABILITY_LAYERS or key == legend["score"].lower():
        for name, t in zip(("medium", "high"), legend["thresholds"]):
            pos = float(how.position(t))
            if how.lo <= t <= how.hi:
                marks.append({"name": name, "value": f"{t:.3g}", "pct": f"{100 * pos:.1f}"})
    label, meaning = LAYER_TEXT.get(key, (key, ""))
    return {
        "key": key, "label": label, "meaning": meaning, "scale": how.describe(),
        "gradient": "linear-gradient(90deg," + ",".join(colours) + ")",
        "lo": f"{how.lo:.3g}", "mid": f"{how.value_at(0.5):.3g}", "hi": f"{how.hi:.3g}", "marks": marks,
    }


def _map(z: ZoneSummary) -> dict[str, object]:
    """The zone's map: its JSON configuration (layers as data URIs on the zone's frame),
    legend, ramps and notes."""
    h, w = z.shape
    ih, iw = z.image.shape
    nodes, error_m = z.lonlat_nodes, z.lonlat_error_m
    if nodes is None:  # a summary built by hand, not by summarise_zone
        lattice = lonlat_lattice(z.crs_wkt, z.x0, z.y1, w * z.res_x, h * z.res_y)
        nodes, error_m = lattice.nodes, lattice.max_error_m
    score = _class_score(z)
    legend = class_legend(z.source.kind, score, z.attrs, z.class_attrs)
    stretches = _stretches(z)
    class_label = "LSI class" if legend["score"] == "LSI" else "risk class"
    layers = [{"key": "class", "label": class_label, "uri": class_png(z.image)}]
    layers += [{"key": key, "label": LAYER_TEXT.get(key, (key, ""))[0],
                "uri": float_png(z.layers[key], how, RAMPS.get(key, "magma"))} for key, how in stretches.items()]
    # map units: grid metres from the zone's north-west corner (lat = N - y1, lng = E - x0)
    px_x, px_y = z.res_x * z.factor, z.res_y * z.factor
    crs = f"{z.crs_name}" + (f" (EPSG:{z.epsg})" if z.epsg else "")
    cfg = {
        "zone": z.zone, "zid": _zid(z.zone), "crs": crs,
        "iw": iw, "ih": ih,
        "x0": z.x0, "y1": z.y1,
        "px_x": px_x, "px_y": px_y,
        "res": z.res_x, "factor": z.factor,
        "width_m": w * z.res_x, "height_m": h * z.res_y,
        "bounds": [[-ih * px_y, 0.0], [0.0, iw * px_x]],
        "grid_bounds": [[-h * z.res_y, 0.0], [0.0, w * z.res_x]],
        "utm": list(z.utm) if z.utm else None,
        "nodes": nodes,
        "names": list(_NAMES),
        "colours": list(_COLOURS),
        "layers": [{**spec, "opacity": OPACITY} for spec in layers],
        "default": "class",
        "hillshade": hillshade_png(z.hillshade) if z.hillshade is not None else None,
    }
    n = len(nodes)
    within = "within 1 mm of PROJ" if error_m <= TOLERANCE_M else f"up to {error_m:.3g} m from PROJ"
    return {
        "zid": _zid(z.zone),
        "crs": crs,
        "corners_json": json.dumps(z.lonlat_corners),
        "corners": [(lab, _fmt_ll(lon, lat)) for lab, (lon, lat) in zip(("NW", "NE", "SE", "SW"), z.lonlat_corners)],
        "method": f"cubic interpolation between {n} × {n} lon/lat nodes precomputed with PROJ "
                  f"({within} halfway between nodes)",
        "cfg": _json_script(cfg),
        "legend": legend,
        "ramps": [_ramp(key, how, legend) for key, how in stretches.items()],
        "missing": [LAYER_TEXT[k][0] for k in ("susceptibility", "hazard", "uncertainty")
                    if z.source.kind == "risk" and k not in z.layers],
        "dem_source": z.dem_source,
        "dem_note": z.dem_note,
        "hillshade_text": LAYER_TEXT["hillshade"][1],
    }


def _stats(z: ZoneSummary) -> dict[str, object]:
    vname = z.value_name
    rows = []
    for k, name in enumerate(_NAMES):
        n = z.value_n_by_class[k]
        rows.append({
            "name": name, "colour": _COLOURS[k], "px": int(z.class_px[k]),
            "mean": f"{z.value_sum_by_class[k] / n:.3f}" if vname and n > 0 else "–",
        })
    n_all = int(z.value_n_by_class.sum())
    return {
        "rows": rows,
        "total_px": int(z.class_px.sum()),
        "valid_px": int(z.class_px[:3].sum()),
        "n_all": n_all,
        "mean_all": f"{z.value_sum_by_class.sum() / n_all:.4f}" if vname and n_all else "–",
        "label": f"mean {vname}" if vname else "mean probability",
    }


def _quality(z: ZoneSummary) -> dict[str, object] | None:
    """Pixels with each quality bit set (bit 0: pixels without any flag)."""
    if z.quality_hist is None:
        return None
    values = np.arange(256)
    rows = [{"bit": 0, "name": "ok (no flag)", "px": int(z.quality_hist[0])}]
    rows += [{"bit": int(f.value), "name": str(f.name).lower(), "px": int(z.quality_hist[(values & f.value) != 0].sum())}
             for f in QualityFlag if f.value]
    return {"rows": rows, "total_px": int(z.quality_hist.sum())}


def _cells(z: ZoneSummary, top: int) -> dict[str, object]:
    """The heatmap of high-risk share per cell and the ``top`` cells by high-risk area."""
    ncy, ncx, _ = z.cells.shape
    valid = z.cells[..., :3].sum(axis=2)
    high = z.cells[..., 2]
    size = max(4, min(28, int(420 / max(ncx, 1))))
    rects = []
    for r in range(ncy):
        for c in range(ncx):
            v = int(valid[r, c])
            frac = high[r, c] / v if v else 0.0
            tip = (f"cell r{r} c{c}: high {_fmt_km2(z.km2(high[r, c]), 1)} km²"
                   + (f" ({100 * frac:.1f} % of valid)" if v else " (no data)"))
            rects.append({"x": c * size, "y": r * size, "fill": _heat_colour(frac) if v else NODATA_COLOUR, "tip": tip})
    order = sorted(((int(high[r, c]), int(z.cells[r, c, 1]), r, c) for r in range(ncy) for c in range(ncx)),
                   reverse=True)
    order = [o for o in order if o[0] > 0][:top]
    rows = []
    for hi, _, r, c in order:
        lon, lat = z.to_lonlat(z.x0 + (c + 0.5) * z.cell_px * z.res_x, z.y1 - (r + 0.5) * z.cell_px * z.res_y)
        cnt = z.cells[r, c]
        n = z.cell_prob_n[r, c]
        tot = z.km2(cnt.sum())
        rows.append({
            "r": r, "c": c, "high_px": hi, "centre": _fmt_ll(lon, lat),
            "km2": [_fmt_km2(z.km2(cnt[k]), tot) for k in (2, 1, 0, 3)],
            "high_pct": _pct(hi, int(cnt[:3].sum())),
            "mean": f"{z.cell_prob_sum[r, c] / n:.3f}" if n else "–",
        })
    return {"ncy": ncy, "ncx": ncx, "size": size, "cell_km": z.cell_px * z.res_x / 1000, "rects": rects, "rows": rows}


def _zone(z: ZoneSummary) -> dict[str, object]:
    return {
        "z": z,
        "zid": _zid(z.zone),
        "source": f"{z.source.path.name}" + (f" group {z.source.group}" if z.source.group else ""),
        "map": _map(z),
        "stats": _stats(z),
        "quality": _quality(z),
        "cells": _cells(z, _TOP_CELLS),
    }


# --------------------------------------------------------------------------- the page


def render_page(zones: list[ZoneSummary], run: Mapping[str, Any], fallback: bool, run_dir: Path, *,
                figures: list[Figure] | None = None, figure_notes: list[str] | None = None) -> str:
    """The report page of ``zones`` (from :func:`summarise_zone`) as one HTML string.

    ``run`` is the run's ``run.json`` record (``{}`` when absent); ``fallback`` says the
    classes come from ``lsi_<zone>.zarr`` because the run has no ``risk.zarr``;
    ``figures`` are embedded in the Figures section (``figure_notes``: files left out).
    """
    prov = _provenance(zones, run)
    region = prov.get("region", run_dir.parent.name)
    if region == _NOT_RECORDED:
        region = run_dir.parent.name
    window = _maybe_json(prov.get("time_window"))
    if window == _NOT_RECORDED:
        window = _window_from_dir(run_dir) or run_dir.name
    if isinstance(window, (list, tuple)):
        window = " to ".join(str(w) for w in window)
    figures = list(figures or [])
    views = [_zone(z) for z in zones]
    return _env().get_template("report.html.j2").render(
        title=f"slidewatch risk report: {_plain(region)}, {_plain(window)}",
        version=__version__,
        run_name=run_dir.name,
        now=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        fallback=fallback,
        incomplete=[z.zone for z in zones if z.attrs.get("slidewatch_complete") is not True],
        no_dem=[(v["z"].zone, v["map"]["dem_note"]) for v in views if v["map"]["dem_note"]],
        alert=_alert(run.get("alert")),
        overall=_overall(zones),
        zones=views,
        provenance=_provenance(zones, run, run_dir),
        items=[(z.zone, _items_for(z, run)) for z in zones],
        extra=[(z.zone, {k: v for k, v in z.attrs.items() if k not in _PROVENANCE_KEYS and k != "input_items"})
               for z in zones],
        figures=figures,
        figure_notes=list(figure_notes or []),
        alert_figure=next((f for f in figures if f.where == "alert"), None),
        model_figures=[f for f in figures if f.where == "model"],
        classes=list(zip(_NAMES, _COLOURS)),
        nodata_colour=NODATA_COLOUR,
        opacity=OPACITY,
        leaflet_css=_leaflet_css(),
        leaflet_js=_asset("leaflet.js"),
        css=_asset("report.css"),
        js=_asset("report.js"),
    )
