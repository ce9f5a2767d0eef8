"""A self-contained, offline HTML report of a run's risk mosaic.

:func:`write_report` reads a run directory ``OUT/<region>/<start>_<end>/`` and writes one
HTML file (default ``<run>/report.html``) with everything inline: the map library
(Leaflet 1.9.4, vendored from npm in ``templates/`` with its licence), the styles, the
layer images and the figures, so it opens offline and can be mailed as one attachment.
Nothing is loaded from the network.

The page holds:

* a **map** (Leaflet) with, per UTM zone (one ``risk.zarr`` group each; when ``risk.zarr``
  is absent the ``lsi_<zone>.zarr`` stores and the page says so), the layers
  susceptibility, hazard, risk class and uncertainty (those the store holds) as image
  overlays over a **hillshade** of the run's own DEM (the ``dem`` of ``lsi_<zone>.zarr``,
  else of ``cube_<zone>.zarr``; without one the page says so and draws no hillshade); a
  layer control, a zone switch, a legend saying what each class means (:mod:`.legend`)
  and the colour ramps of the float layers, a scale bar and a live lon/lat readout;
* area per class (km² and %), no-data area, quality-flag areas, the mean hazard
  (an older mosaic's probability, or the mean LSI when there is neither), a heatmap of
  high-risk share per grid cell and a table of the cells with most high-risk area;
* the figures: ``RUN/plots/*.png`` (the watch's ``alert.png``) and the checkpoint's
  training curves, precision–recall curve and reliability diagram (:mod:`.figures`);
* the run's provenance (region, window, STAC item ids per collection, checkpoint hash,
  model, rain parameters, software version) from the group attributes and ``run.json``;
* the rainfall alert that triggered the run (``run.json`` ``alert``), or "manual run".

Map frame: each zone is shown in its own UTM grid, unprojected, with Leaflet's
``L.CRS.Simple``: map units are grid metres from the zone's north-west corner (east =
``E − x0``, north = ``N − y1``), so distances and the scale bar are exact in the grid CRS
and every layer (and the hillshade) is one image on the same bounds, aligned pixel for
pixel. Lon/lat are shown by the readout (:mod:`.lonlat`: within 1 mm of PROJ), not used
to place the images, so nothing is resampled twice.

Downsampling is a bounded-memory block reduction (:mod:`.layers`): the stores are read
tile by tile (one chunk-sized, block-aligned window at a time); each ``f × f`` block of
grid pixels becomes one map pixel: the *highest* class in the block for the class layer
(no data only when the whole block is no data, so small high-risk spots stay visible), the
mean of the block's values for the float layers and the DEM. The hillshade is computed
from the block-mean DEM with the map pixel size (:mod:`.hillshade`). Statistics are exact:
they are accumulated from the full-resolution tiles in the same pass.

This module reads the stores and computes the statistics; :mod:`.html` renders them with
the Jinja2 templates shipped in ``templates/`` (package data).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.core.classes import NODATA_CLASS
from pipeline.core.config import DEFAULT_CHUNK
from pipeline.core.errors import InputDataError, StoreError
from pipeline.core.files import atomic_write_text
from pipeline.core.layout import RunLayout, read_run_json
from pipeline.products.report.figures import find_figures
from pipeline.products.report.hillshade import hillshade
from pipeline.products.report.html import render_page
from pipeline.products.report.layers import block_max_class, block_mean
from pipeline.products.report.lonlat import lonlat_lattice

__all__ = [
    "FLOAT_LAYERS",
    "ZoneSource",
    "ZoneSummary",
    "block_max_class",
    "find_sources",
    "hillshade",
    "summarise_zone",
    "write_report",
]

#: Float layers drawn on the map, in the layer control's order, when the store holds them
#: (``probability``: older mosaics). ``lsi`` is drawn only when there is none of these.
FLOAT_LAYERS: tuple[str, ...] = ("susceptibility", "hazard", "probability", "uncertainty")

#: At most this many statistics cells per zone (``cell_px`` doubles until they fit).
_MAX_CELLS = 4096


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
    ``lonlat_nodes`` is the lattice the page interpolates lon/lat from (see
    :mod:`pipeline.products.report.lonlat`), ``lonlat_error_m`` its largest distance from PROJ.
    ``layers`` holds the block-mean float layers on ``image``'s grid, ``hillshade`` the
    relief of the block-mean DEM on the same grid (``None`` without a DEM, ``dem_note``
    then says why); ``dem_source`` names the store the DEM came from.
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
    value_name: str | None  # "hazard", "probability" (older mosaics), "lsi" or None
    value_sum_by_class: np.ndarray = field(default_factory=lambda: np.zeros(4))
    value_n_by_class: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))
    quality_hist: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    lonlat_corners: list[tuple[float, float]] = field(default_factory=list)
    lonlat_nodes: list[list[list[float]]] | None = None
    lonlat_error_m: float = float("nan")
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    hillshade: np.ndarray | None = None
    dem_source: str | None = None
    dem_note: str | None = None
    class_attrs: dict = field(default_factory=dict)

    @property
    def pixel_area_m2(self) -> float:
        """Area of one grid pixel in m² (in the grid CRS)."""
        return abs(self.res_x * self.res_y)

    def km2(self, px: float) -> float:
        """Area of ``px`` grid pixels in km²."""
        return float(px) * self.pixel_area_m2 / 1e6

    def to_lonlat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lon/lat (degrees, WGS 84) of grid coordinates ``x``, ``y`` (metres), with PROJ."""
        from pyproj import Transformer

        return Transformer.from_crs(self.crs_wkt, "EPSG:4326", always_xy=True).transform(x, y)


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
    layout = RunLayout(run_dir)
    risk = layout.risk
    if risk.is_dir():
        groups = _zarr_groups(risk)
        if groups:
            return [ZoneSource(g or "zone", risk, g or None, "risk") for g in groups], False
    lsi = layout.lsi_stores()
    if lsi:
        return [ZoneSource(RunLayout.zone_of(p), p, None, "lsi") for p in lsi], True
    what = "risk.zarr has no zone group" if risk.is_dir() else "no risk.zarr"
    raise StoreError(
        f"{run_dir} holds no risk mosaic: {what} and no lsi_<zone>.zarr.",
        "pass the run directory OUT/<region>/<start>_<end> of a finished `slidewatch run` "
        "(or run it first); the report needs risk.zarr or lsi_<zone>.zarr.",
    )


def _open_zarr(path: Path, group: str | None = None) -> xr.Dataset:
    with warnings.catch_warnings():  # stores written without consolidated metadata are fine here
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
        return xr.open_zarr(path, group=group, decode_coords="all", consolidated=None)


def _open(src: ZoneSource) -> xr.Dataset:
    try:
        ds = _open_zarr(src.path, src.group)
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


def _on_grid(dem: xr.DataArray, ds: xr.Dataset, name: str) -> tuple[xr.DataArray | None, str]:
    """``dem`` on ``ds``'s ``(y, x)`` grid (lazy), or None and why it cannot be."""
    import rioxarray  # noqa: F401  (registers .rio)

    if set(dem.dims) != {"y", "x"}:
        return None, f"{name} has dims {dem.dims}, not (y, x)"
    theirs, ours = dem.rio.crs, ds.rio.crs
    if theirs is not None and ours is not None and theirs != ours:
        return None, f"{name} is in {theirs}, the zone in {ours}"
    dem = dem.transpose("y", "x")
    if dem.sizes == ds["risk_class"].sizes and np.array_equal(dem["x"], ds["x"]) and np.array_equal(dem["y"], ds["y"]):
        return dem, ""
    tol = 0.01 * abs(float(ds.rio.resolution()[0]))
    on = dem.reindex(y=ds["y"], x=ds["x"], method="nearest", tolerance=tol)  # lazy; NaN off the DEM's grid
    hit_x = np.isin(np.round(ds["x"].values / tol), np.round(dem["x"].values / tol)).any()
    hit_y = np.isin(np.round(ds["y"].values / tol), np.round(dem["y"].values / tol)).any()
    if not (hit_x and hit_y):
        return None, f"{name} is on another grid (no pixel centre in common with the zone)"
    return on, ""


def _find_dem(src: ZoneSource, ds: xr.Dataset) -> tuple[xr.DataArray | None, str]:
    """The zone's elevation on its grid (lazy) and where it comes from; or None and why.

    Looks for a ``dem`` variable in the zone's own store, then in ``lsi_<zone>.zarr`` (the
    factor) and ``cube_<zone>.zarr`` (the band) of the run folder.
    """
    if "dem" in ds:
        return ds["dem"], f"{src.path.name} (dem)"
    layout = RunLayout(src.path.parent)
    zone = str(ds.attrs.get("zone") or src.zone)
    reasons = []
    for path in (layout.lsi(zone), layout.cube(zone)):
        if path == src.path or not path.is_dir():
            continue
        try:
            other = _open_zarr(path)
        except Exception as exc:  # noqa: BLE001 - a damaged store only costs the hillshade
            reasons.append(f"{path.name} could not be opened ({type(exc).__name__})")
            continue
        if "dem" not in other:
            continue
        dem, why = _on_grid(other["dem"], ds, path.name)
        if dem is not None:
            return dem, f"{path.name} (dem)"
        reasons.append(why)
    names = list(dict.fromkeys([src.path.name, layout.lsi(zone).name, layout.cube(zone).name]))
    looked = f"no dem variable in {', '.join(names[:-1])} or {names[-1]}"
    return None, "; ".join(reasons) if reasons else looked


# --------------------------------------------------------------------------- reduction


def _class_index(c: np.ndarray) -> np.ndarray:
    """0, 1, 2 for low/medium/high; 3 for no data (255, NaN or any other value)."""
    return np.where((c >= 0) & (c <= 2), np.nan_to_num(c), 3).astype(np.intp)


def _tile_size(ds: xr.Dataset, factor: int) -> int:
    chunks = ds["risk_class"].chunks
    base = int(chunks[0][0]) if chunks else DEFAULT_CHUNK
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


def summarise_zone(src: ZoneSource, *, max_pixels: int = 1024, cell_px: int = DEFAULT_CHUNK) -> ZoneSummary:
    """Read one zone tile by tile: exact class/quality/probability statistics, per-cell
    counts, the block-max class image, the block-mean float layers and the hillshade of the
    block-mean DEM, all on one image grid (at most ``max_pixels`` on the long side).

    Memory stays bounded: one chunk-sized, block-aligned tile is in memory at a time, plus
    the reduced images. ``cell_px`` is the edge of the statistics cells, doubled until there
    are at most 4096. Raises :class:`InputDataError` when the grid is not a north-up
    projected ``(y, x)`` grid. A zone without a DEM gets no hillshade (``dem_note`` says why).
    """
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
    value_name = next((n for n in ("hazard", "probability", "lsi") if n in ds), None)
    float_names = [n for n in FLOAT_LAYERS if n in ds] or (["lsi"] if "lsi" in ds else [])
    dem, dem_where = _find_dem(src, ds)
    names = list(dict.fromkeys(["risk_class", *([value_name] if value_name else []), *float_names,
                                *(["quality"] if "quality" in ds else [])]))
    sub = ds[names].reset_coords(drop=True)
    if dem is not None:
        sub = sub.assign(_dem=dem.reset_coords(drop=True).astype(np.float32))
    ih, iw = math.ceil(h / factor), math.ceil(w / factor)
    image = np.full((ih, iw), NODATA_CLASS, dtype=np.uint8)
    layers = {n: np.full((ih, iw), np.nan, dtype=np.float32) for n in float_names}
    dem_image = np.full((ih, iw), np.nan, dtype=np.float32) if dem is not None else None
    class_px = np.zeros(4, dtype=np.int64)
    cells = np.zeros(ncy * ncx * 4, dtype=np.int64)
    cell_sum = np.zeros(ncy * ncx, dtype=np.float64)
    cell_n = np.zeros(ncy * ncx, dtype=np.int64)
    vsum = np.zeros(4, dtype=np.float64)
    vn = np.zeros(4, dtype=np.int64)
    qhist = np.zeros(256, dtype=np.int64) if "quality" in ds else None
    tile = _tile_size(ds, factor)
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
            window = (slice(r0 // factor, (r1 + factor - 1) // factor), slice(c0 // factor, (c1 + factor - 1) // factor))
            image[window] = block_max_class(cls, factor)
            for n in float_names:
                layers[n][window] = block_mean(block[n].values, factor)
            if dem_image is not None:
                dem_image[window] = block_mean(block["_dem"].values, factor)
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
    layers = {n: a for n, a in layers.items() if np.isfinite(a).any()}  # e.g. uncertainty not computed
    shade, dem_note = None, None
    if dem_image is None:
        dem_note = dem_where
    elif not np.isfinite(dem_image).any():
        dem_note, dem_where = f"the DEM in {dem_where} holds no value over this zone", None
    else:
        shade = hillshade(dem_image, factor * float(tr.a), factor * float(-tr.e))
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y1 = float(tr.c), float(tr.f)
    x1, y0 = x0 + w * tr.a, y1 + h * tr.e
    corners = [tuple(map(float, to_ll.transform(x, y))) for x, y in ((x0, y1), (x1, y1), (x1, y0), (x0, y0))]
    lattice = lonlat_lattice(crs, x0, y1, w * float(tr.a), h * float(-tr.e))
    return ZoneSummary(
        zone=src.zone, source=src, crs_name=crs.name, crs_wkt=crs.to_wkt(), epsg=crs.to_epsg(), utm=utm,
        shape=(h, w), x0=x0, y1=y1, res_x=float(tr.a), res_y=float(-tr.e), factor=factor, image=image,
        class_px=class_px, cell_px=cell_px, cells=cells.reshape(ncy, ncx, 4),
        cell_prob_sum=cell_sum.reshape(ncy, ncx), cell_prob_n=cell_n.reshape(ncy, ncx),
        value_name=value_name, value_sum_by_class=vsum, value_n_by_class=vn, quality_hist=qhist,
        attrs=dict(ds.attrs), lonlat_corners=corners, lonlat_nodes=lattice.nodes,
        lonlat_error_m=lattice.max_error_m, layers=layers, hillshade=shade,
        dem_source=dem_where if shade is not None else None, dem_note=dem_note,
        class_attrs=dict(ds["risk_class"].attrs),
    )


# --------------------------------------------------------------------------- the report


def write_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    max_pixels: int = 1024,
    cell_px: int = DEFAULT_CHUNK,
    zones: Iterable[str] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Path:
    """Write the run's self-contained HTML report and return its path.

    ``run_dir`` is ``OUT/<region>/<start>_<end>``; ``out`` defaults to
    ``<run_dir>/report.html``. The map's layers are reduced to at most ``max_pixels`` on
    their long side; statistics per cell use ``cell_px``-square cells (doubled until there
    are at most 4096 cells). ``zones`` limits the report to some zone names. Raises
    :class:`StoreError` when the run has neither ``risk.zarr`` nor ``lsi_<zone>.zarr``.
    The figures of :func:`pipeline.products.report.figures.find_figures` are embedded.
    Each fallback (classes from the LSI stores, a zone without a DEM and so without
    hillshade, a figure left out) is said on the page and, in one line, to ``on_note``.
    The file is written atomically (a reader never sees half a page).
    """
    if max_pixels < 16:
        raise InputDataError(f"max_pixels={max_pixels} is too small.", "use at least 16 (default 1024).")
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
    run = read_run_json(run_dir)
    summaries = [summarise_zone(s, max_pixels=max_pixels, cell_px=cell_px) for s in sources]
    figures, left_out = find_figures(run_dir, run)
    if on_note is not None:
        if fallback:
            on_note("no risk.zarr in this run: the report shows the LSI classes of lsi_<zone>.zarr")
        for z in summaries:
            if z.hillshade is None:
                on_note(f"zone {z.zone}: no hillshade under the map ({z.dem_note})")
        for line in left_out:
            on_note(f"figure {line}")
    path = Path(out) if out is not None else RunLayout(run_dir).report
    return atomic_write_text(path, render_page(summaries, run, fallback, run_dir, figures=figures,
                                               figure_notes=left_out))
