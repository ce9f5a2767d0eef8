"""Run exports: Cloud-Optimized GeoTIFFs of the risk mosaic and a STAC item for the run.

An I/O module: it imports only slidewatch's foundation (errors, config) and third-party
libraries. The flow composes it with the risk mosaic (``<run>/risk.zarr``, one group per
UTM zone) and, for the quick-look PNG, with :func:`pipeline.products.quicklook.write_quicklook`.

COGs (:func:`write_cogs`) are written memory-bounded and atomically:

1. the zone's dask chunks (or ``blocksize`` windows of an in-memory array) are computed
   a few at a time and written by window into a hidden, tiled temporary GeoTIFF beside
   the target (statistics are accumulated on the way, so they cost no extra pass);
2. ``rio_cogeo.cogeo.cog_translate`` turns it into a COG (DEFLATE, internal overviews,
   ``blocksize`` tiles) under a second hidden temporary name;
3. ``rio_cogeo.cogeo.cog_validate`` checks it; only when both COGs of the zone are valid
   are they renamed (``os.replace``) to their final names, one right after the other. On
   any failure the temporaries are removed, a :class:`~pipeline.core.errors.StoreError` is
   raised and nothing new has a final name (the files of an earlier export are untouched).

Files: ``risk_<zone>_probability.tif`` (float32, nodata NaN, band statistics in the GDAL
``STATISTICS_*`` band tags) and ``risk_<zone>_class.tif`` (uint8, nodata 255, a colour table
low = green, medium = orange, high = red, 255 transparent; class counts in the
``SLIDEWATCH_CLASS_COUNTS`` band tag).

The STAC item (:func:`run_item`, :func:`write_item`) describes the whole run: one item,
geometry = the union of the zone grids' footprints in EPSG:4326, the time window as
``start_datetime``/``end_datetime``, the processing, projection, raster, classification,
datacube and xarray-assets extensions, ``derived_from`` links to the input items, and the
model checkpoint's SHA-256, the model description and the rain parameters as
``slidewatch:*`` properties. :func:`export_run` does all of it for a finished run dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pystac
import rasterio
import rasterio.crs
import rasterio.warp
import rasterio.windows
import xarray as xr
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Statistics
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from pipeline import __version__
from pipeline.core.classes import CLASS_NAMES, NODATA_CLASS as CLASS_NODATA, CLASS_RGBA as CLASS_COLOURS
from pipeline.core.config import TimeWindow
from pipeline.core.errors import InputDataError, SlidewatchError, StoreError, TimeWindowError

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NODATA",
    "COG_MEDIA_TYPE",
    "InputRef",
    "PROCESSING_SCHEMA",
    "ZARR_MEDIA_TYPE",
    "cog_names",
    "export_run",
    "input_refs",
    "run_item",
    "write_cogs",
    "write_item",
]

#: The processing extension (pystac 1.15.2 has no class for it: fields + schema URI).
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
COG_MEDIA_TYPE = str(pystac.MediaType.COG)  # image/tiff; application=geotiff; profile=cloud-optimized
ZARR_MEDIA_TYPE = str(pystac.MediaType.ZARR)  # application/vnd+zarr
#: Rasters up to this many pixels are assembled in memory by cog_translate; larger ones
#: go through a temporary file beside the target (rio-cogeo's own default is 10980² px).
IN_MEMORY_MAX_PIXELS = 4096 * 4096
#: Chunks computed together when streaming a dask array (memory ~ batch x chunk bytes).
BLOCK_BATCH = 4
CLASS_COUNTS_TAG = "SLIDEWATCH_CLASS_COUNTS"
_ZONE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


# --------------------------------------------------------------------------- COGs



class _DropPaletteWarning(logging.Filter):
    """GDAL warns that overviews of a palette band are computed "without a palette": rio-cogeo
    builds them before it writes the colour table. Mode resampling of class values is what we
    want, and the COG ends with the table (checked by cog_validate and the tests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "palette index raster bands without a palette" not in record.getMessage()


@contextlib.contextmanager
def _quiet_palette_warning() -> Iterator[None]:
    logger = logging.getLogger("rasterio._env")
    flt = _DropPaletteWarning()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)

def cog_names(zone: str) -> dict[str, str]:
    """File names of a zone's COGs: ``{"probability": ..., "class": ...}``."""
    return {"probability": f"risk_{zone}_probability.tif", "class": f"risk_{zone}_class.tif"}


@dataclass
class _Stats:
    """Running statistics over the valid pixels of one band (float64 accumulators)."""

    total: int = 0
    valid: int = 0
    s1: float = 0.0
    s2: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        self.total += int(valid.size)
        v = values[valid].astype(np.float64)
        if v.size == 0:
            return
        self.valid += int(v.size)
        self.s1 += float(v.sum())
        self.s2 += float(np.square(v).sum())
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))

    def tags(self) -> dict[str, str]:
        """GDAL's ``STATISTICS_*`` band tags (empty when no pixel is valid)."""
        if self.valid == 0:
            return {"STATISTICS_VALID_PERCENT": "0"}
        mean = self.s1 / self.valid
        std = float(np.sqrt(max(self.s2 / self.valid - mean * mean, 0.0)))
        return {
            "STATISTICS_MINIMUM": repr(self.lo),
            "STATISTICS_MAXIMUM": repr(self.hi),
            "STATISTICS_MEAN": repr(mean),
            "STATISTICS_STDDEV": repr(std),
            "STATISTICS_VALID_PERCENT": repr(100.0 * self.valid / self.total),
        }


def _band(zone_ds: xr.Dataset, name: str, zone: str) -> xr.DataArray:
    if name not in zone_ds.data_vars:
        raise InputDataError(
            f"Risk zone {zone!r} has no variable {name!r} (variables: {sorted(map(str, zone_ds.data_vars))}).",
            "pass one group of the risk mosaic, e.g. xr.open_zarr(run/'risk.zarr', group=zone, decode_coords='all').",
        )
    arr = zone_ds[name]
    extra = [d for d in arr.dims if d not in ("y", "x")]
    if extra and all(arr.sizes[d] == 1 for d in extra):
        arr = arr.isel({d: 0 for d in extra}, drop=True)
    if set(arr.dims) != {"y", "x"}:
        raise InputDataError(
            f"Variable {name!r} of risk zone {zone!r} has dims {arr.dims}, not (y, x).",
            "export a 2-D (y, x) risk mosaic group.",
        )
    return arr.transpose("y", "x")


def _georef(zone_ds: xr.Dataset, zone: str) -> tuple[rasterio.crs.CRS, Any]:
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    crs = zone_ds.rio.crs
    if crs is None:
        raise InputDataError(
            f"Risk zone {zone!r} has no CRS (no spatial_ref grid mapping).",
            "open the store with decode_coords='all' or write the CRS with ds.rio.write_crs(...).",
        )
    return rasterio.crs.CRS.from_user_input(crs), zone_ds.rio.transform()


def _windows(data: Any, blocksize: int) -> list[tuple[slice, slice]]:
    """Row-major windows: the dask chunks, or ``blocksize`` squares for an in-memory array."""
    if isinstance(data, da.Array):
        rows, cols = data.chunks
    else:
        h, w = data.shape
        rows = tuple(min(blocksize, h - r) for r in range(0, h, blocksize))
        cols = tuple(min(blocksize, w - c) for c in range(0, w, blocksize))
    r_edges = np.cumsum((0,) + tuple(rows))
    c_edges = np.cumsum((0,) + tuple(cols))
    return [
        (slice(int(r_edges[i]), int(r_edges[i + 1])), slice(int(c_edges[j]), int(c_edges[j + 1])))
        for i in range(len(rows))
        for j in range(len(cols))
    ]


def _blocks(data: Any, blocksize: int) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield ``(window, numpy block)``, computing at most ``BLOCK_BATCH`` dask chunks at once."""
    wins = _windows(data, blocksize)
    if not isinstance(data, da.Array):
        for w in wins:
            yield w, np.asarray(data[w])
        return
    for k in range(0, len(wins), BLOCK_BATCH):
        batch = wins[k : k + BLOCK_BATCH]
        arrays = dask.compute(*[data[w] for w in batch])
        yield from zip(batch, (np.asarray(a) for a in arrays))


def _probability_block(block: np.ndarray, name: str, zone: str) -> np.ndarray:
    out = block.astype(np.float32, copy=False)
    finite = np.isfinite(out)
    if finite.any() and (out[finite].min() < -1e-6 or out[finite].max() > 1 + 1e-6):
        raise InputDataError(
            f"Variable {name!r} of risk zone {zone!r} has values outside 0..1 "
            f"({float(out[finite].min())}..{float(out[finite].max())}).",
            "export the model probability (0..1, NaN = no value), not a logit or the LSI.",
        )
    out = np.where(np.isinf(out), np.nan, out).astype(np.float32, copy=False)
    return out


def _class_block(block: np.ndarray, name: str, zone: str) -> np.ndarray:
    if np.issubdtype(block.dtype, np.floating):  # _FillValue 255 decoded to NaN by xarray
        block = np.where(np.isnan(block), CLASS_NODATA, block)
    bad = ~np.isin(block, (0, 1, 2, CLASS_NODATA))
    if bad.any():
        raise InputDataError(
            f"Variable {name!r} of risk zone {zone!r} has values other than 0, 1, 2, {CLASS_NODATA} "
            f"(e.g. {np.unique(block[bad])[:5].tolist()}).",
            "export the risk classes (0 low, 1 medium, 2 high, 255 no data).",
        )
    return block.astype(np.uint8)


def _tmp_name(out_dir: Path, final: str, tag: str) -> Path:
    return out_dir / f".{final}.{uuid.uuid4().hex[:12]}.{tag}.tif"


def _write_one(
    arr: xr.DataArray,
    *,
    kind: str,
    final: Path,
    crs: rasterio.crs.CRS,
    transform: Any,
    blocksize: int,
    zone: str,
    tags: Mapping[str, str],
) -> Path:
    """Write and validate one COG under a hidden temporary name beside ``final``; return that
    name (the caller renames it). Removes every temporary when anything fails."""
    out_dir = final.parent
    src_tmp = _tmp_name(out_dir, final.name, "src")
    cog_tmp = _tmp_name(out_dir, final.name, "cog")
    keep = False
    is_class = kind == "class"
    dtype = "uint8" if is_class else "float32"
    nodata: float = CLASS_NODATA if is_class else float("nan")
    height, width = arr.shape
    try:
        stats = _Stats()
        counts = np.zeros(256, dtype=np.int64)
        with rasterio.open(
            src_tmp, "w", driver="GTiff", width=width, height=height, count=1, dtype=dtype,
            crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=blocksize,
            blockysize=blocksize, compress="DEFLATE", BIGTIFF="IF_SAFER",
        ) as dst:
            for (ys, xs), block in _blocks(arr.data, blocksize):
                if is_class:
                    out = _class_block(block, str(arr.name), zone)
                    counts += np.bincount(out.ravel(), minlength=256)
                    stats.add(out, out != CLASS_NODATA)
                else:
                    out = _probability_block(block, str(arr.name), zone)
                    stats.add(out, np.isfinite(out))
                window = rasterio.windows.Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
                dst.write(out, 1, window=window)
            band_tags = stats.tags()
            if is_class:
                band_tags[CLASS_COUNTS_TAG] = json.dumps(
                    {str(v): int(counts[v]) for v in (0, 1, 2, CLASS_NODATA)}
                )
                dst.colorinterp = [ColorInterp.palette]
                dst.write_colormap(1, CLASS_COLOURS)
                dst.set_band_description(1, "landslide risk class (0 low, 1 medium, 2 high, 255 no data)")
            else:
                dst.set_band_description(1, "landslide probability (0..1, NaN = no value)")
            dst.update_tags(1, **band_tags)
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        profile = dict(cog_profiles.get("deflate"))
        profile.update(blockxsize=blocksize, blockysize=blocksize, BIGTIFF="IF_SAFER",
                       predictor=2 if is_class else 3)
        with _quiet_palette_warning():
            cog_translate(
                src_tmp, cog_tmp, profile, nodata=nodata,
                overview_resampling="mode" if is_class else "average",
                in_memory=width * height <= IN_MEMORY_MAX_PIXELS,
                colormap=CLASS_COLOURS if is_class else None,
                forward_band_tags=True, quiet=True,
            )
        valid, errors, _warnings = cog_validate(cog_tmp, quiet=True)
        if not valid:
            raise StoreError(
                f"The COG written for {final} does not validate: {'; '.join(errors)}.",
                "report this as a bug with the rio-cogeo and GDAL versions; the file was not kept.",
            )
        keep = True
    except SlidewatchError:
        raise
    except Exception as exc:
        raise StoreError(
            f"Could not write the COG {final}: {type(exc).__name__}: {exc}.",
            f"check that {out_dir} is writable and has free space, then export again "
            "(no partial file was left under that name).",
        ) from exc
    finally:
        for tmp in (src_tmp,) if keep else (src_tmp, cog_tmp):
            _unlink_quietly(tmp)
    return cog_tmp


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _cog_tags(zone_ds: xr.Dataset, arr: xr.DataArray) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key in ("long_name", "units", "flag_values", "flag_meanings"):
        if key in arr.attrs:
            v = arr.attrs[key]
            tags[key] = " ".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else str(v)
    for key in ("region", "time_window", "checkpoint_sha256", "slidewatch_version"):
        if zone_ds.attrs.get(key) is not None:
            v = zone_ds.attrs[key]
            tags[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    tags.setdefault("slidewatch_version", __version__)
    return tags


def write_cogs(zone_ds: xr.Dataset, out_dir: str | os.PathLike, zone: str, *, blocksize: int = 512) -> dict[str, Path]:
    """Write one risk-mosaic zone group as two validated Cloud-Optimized GeoTIFFs.

    ``zone_ds`` is a group of ``risk.zarr`` (dims ``(y, x)``, rioxarray georeferencing,
    variables ``probability`` and ``risk_class``). Writes ``risk_<zone>_probability.tif``
    (float32, nodata NaN) and ``risk_<zone>_class.tif`` (uint8, nodata 255, colour table)
    into ``out_dir`` with DEFLATE, ``blocksize`` tiles and internal overviews (as many
    halvings as keep the smallest level at least one tile; none for a raster smaller than
    one tile). Memory stays bounded by a few chunks. Returns
    ``{"probability": path, "class": path}``.

    Raises InputDataError for a malformed dataset and StoreError when a file cannot be
    written or does not validate; a failed write leaves no file under the final name.
    """
    if not _ZONE_RE.match(zone):
        raise InputDataError(f"Zone name {zone!r} is not a plain lower-case name.", "use a zone name like 'utm48n'.")
    if blocksize < 16 or blocksize % 16:
        raise InputDataError(f"COG blocksize {blocksize} is not a multiple of 16.", "use 256 or 512.")
    crs, transform = _georef(zone_ds, zone)
    prob = _band(zone_ds, "probability", zone)
    cls = _band(zone_ds, "risk_class", zone)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"Cannot create the export folder {out}: {exc}.", "choose a writable output folder.") from exc
    finals = {kind: out / name for kind, name in cog_names(zone).items()}
    done: dict[str, Path] = {}
    try:
        for kind, arr in (("probability", prob), ("class", cls)):
            done[kind] = _write_one(
                arr, kind=kind, final=finals[kind], crs=crs, transform=transform,
                blocksize=blocksize, zone=zone, tags=_cog_tags(zone_ds, arr),
            )
        for kind, tmp in done.items():  # both valid: rename the pair together
            os.replace(tmp, finals[kind])
    except OSError as exc:
        raise StoreError(f"Could not move the COGs into place in {out}: {exc}.",
                         f"check that {out} is writable, then export again.") from exc
    finally:
        for tmp in done.values():
            _unlink_quietly(tmp)
    return finals


# --------------------------------------------------------------------------- STAC item


@dataclass(frozen=True)
class InputRef:
    """One input STAC item of a run: collection, id and (when known) its self href."""

    collection: str | None
    id: str
    href: str | None = None


def _refs_from_doc(doc: Any) -> list[InputRef]:
    feats = doc.get("features", []) if doc.get("type") == "FeatureCollection" else [doc]
    out = []
    for f in feats:
        if not isinstance(f, dict) or "id" not in f:
            continue
        href = next((ln.get("href") for ln in f.get("links", []) if ln.get("rel") == "self"), None)
        out.append(InputRef(f.get("collection"), str(f["id"]), href))
    return out


def input_refs(items_dir: str | os.PathLike, zones: Iterable[str] | None = None) -> list[InputRef]:
    """The input items saved in a run's ``items/<zone>/*.json`` (FeatureCollections or Items).

    ``zones`` limits the zone folders read (default: all). Duplicates (an item used by two
    zones) are listed once, in file order. A missing folder gives ``[]``.
    """
    root = Path(items_dir)
    folders = [root / z for z in zones] if zones is not None else sorted(p for p in root.glob("*") if p.is_dir())
    seen: dict[tuple[str | None, str], InputRef] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputDataError(
                    f"Cannot read the saved input items {path}: {exc}.",
                    "re-run the cube stage to save the items again, or pass inputs= explicitly.",
                ) from exc
            for ref in _refs_from_doc(doc):
                key = (ref.collection, ref.id)
                if key not in seen or (seen[key].href is None and ref.href):
                    seen[key] = ref
    return list(seen.values())


def _parse_window(attrs: Mapping[str, Any]) -> TimeWindow | None:
    tw = attrs.get("time_window")
    start = end = None
    if isinstance(tw, str) and ("/" in tw or ".." in tw):
        start, end = tw.split("/", 1) if "/" in tw else tw.split("..", 1)
    elif isinstance(tw, list | tuple) and len(tw) == 2:
        start, end = tw
    elif isinstance(tw, Mapping):
        start, end = tw.get("start"), tw.get("end")
    elif attrs.get("time_start") and attrs.get("time_end"):
        start, end = attrs["time_start"], attrs["time_end"]
    if start is None or end is None:
        return None
    try:
        return TimeWindow(date.fromisoformat(str(start)[:10]), date.fromisoformat(str(end)[:10]))
    except ValueError as exc:
        raise TimeWindowError(f"Unreadable time_window attribute {tw!r}: {exc}.", "pass window=TimeWindow(...).") from exc


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "region"


def _footprint(crs: rasterio.crs.CRS, bounds: Sequence[float], densify: int = 11) -> Any:
    """The outline of ``bounds`` (grid CRS) in EPSG:4326, each edge densified, counter-clockwise."""
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    minx, miny, maxx, maxy = bounds
    t = np.linspace(0.0, 1.0, densify)[:-1]
    xs = np.concatenate([minx + (maxx - minx) * t, np.full(t.size, maxx), maxx - (maxx - minx) * t, np.full(t.size, minx)])
    ys = np.concatenate([np.full(t.size, miny), miny + (maxy - miny) * t, np.full(t.size, maxy), maxy - (maxy - miny) * t])
    lon, lat = rasterio.warp.transform(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return orient(Polygon(zip(lon, lat)), sign=1.0)


def _rel(path: str | os.PathLike, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _merged(values: Mapping[str, Any]) -> Any:
    """One value when every zone agrees, else ``{zone: value}``."""
    vals = list(values.values())
    if all(v == vals[0] for v in vals):
        return vals[0]
    return dict(values)


def _json_safe(v: Any) -> Any:
    """Attributes as plain JSON (numpy scalars and arrays to Python, NaN to None)."""
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_json_safe(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _raster_band(path: Path) -> tuple[RasterBand, dict[str, Any], dict[str, str]]:
    """Raster band description and projection fields read from a COG's header and tags."""
    with rasterio.open(path) as src:
        tags = src.tags(1)
        nodata = src.nodata
        dtype = src.dtypes[0]
        proj = {
            "code": f"EPSG:{src.crs.to_epsg()}" if src.crs.to_epsg() else None,
            "wkt2": None if src.crs.to_epsg() else src.crs.to_wkt(),
            "shape": [src.height, src.width],
            "transform": list(src.transform)[:6],
            "bbox": list(src.bounds),
        }
        res = float(abs(src.transform.a))
    categorical = np.issubdtype(np.dtype(dtype), np.integer)
    stats = None
    if "STATISTICS_MINIMUM" in tags:
        stats = Statistics.create(  # no mean/stddev of class codes: they mean nothing
            minimum=float(tags["STATISTICS_MINIMUM"]), maximum=float(tags["STATISTICS_MAXIMUM"]),
            mean=None if categorical else float(tags["STATISTICS_MEAN"]),
            stddev=None if categorical else float(tags["STATISTICS_STDDEV"]),
            valid_percent=float(tags["STATISTICS_VALID_PERCENT"]),
        )
    nd: Any = nodata
    if nodata is not None and np.isnan(nodata):
        nd = "nan"
    elif nodata is not None:
        nd = int(nodata) if float(nodata).is_integer() else float(nodata)
    band = RasterBand.create(
        nodata=nd, data_type=DataType(dtype), spatial_resolution=res, statistics=stats,
        unit=None if categorical else "1", scale=1.0, offset=0.0,
    )
    return band, proj, tags


def _apply_proj(asset: pystac.Asset, proj: Mapping[str, Any]) -> None:
    ProjectionExtension.ext(asset, add_if_missing=True).apply(
        code=proj["code"], wkt2=proj["wkt2"], shape=proj["shape"], transform=proj["transform"], bbox=proj["bbox"],
    )


def _grid_proj(zone_ds: xr.Dataset, zone: str) -> dict[str, Any]:
    crs, transform = _georef(zone_ds, zone)
    epsg = crs.to_epsg()
    return {
        "code": f"EPSG:{epsg}" if epsg else None,
        "wkt2": None if epsg else crs.to_wkt(),
        "shape": [int(zone_ds.sizes["y"]), int(zone_ds.sizes["x"])],
        "transform": list(transform)[:6],
        "bbox": list(zone_ds.rio.bounds()),
        "epsg": epsg,
    }


def _datacube(asset: pystac.Asset, zone_ds: xr.Dataset, proj: Mapping[str, Any]) -> None:
    a, _, c, _, e, f = proj["transform"]
    h, w = proj["shape"]
    ref: Any = proj["epsg"] if proj["epsg"] else proj["wkt2"]
    dims = {
        "x": Dimension.from_dict({"type": "spatial", "axis": "x", "extent": [c + a / 2, c + a * (w - 0.5)],
                                  "step": a, "reference_system": ref}),
        "y": Dimension.from_dict({"type": "spatial", "axis": "y", "extent": [f + e * (h - 0.5), f + e / 2],
                                  "step": e, "reference_system": ref}),
    }
    variables = {}
    for name, v in zone_ds.data_vars.items():
        if name == "spatial_ref" or set(v.dims) != {"y", "x"}:
            continue
        d: dict[str, Any] = {"dimensions": ["y", "x"], "type": "data"}
        if v.attrs.get("long_name"):
            d["description"] = str(v.attrs["long_name"])
        if v.attrs.get("units"):
            d["unit"] = str(v.attrs["units"])
        variables[str(name)] = Variable(d)
    DatacubeExtension.ext(asset, add_if_missing=True).apply(dimensions=dims, variables=variables)


def _classification(asset: pystac.Asset, counts: Mapping[str, int] | None) -> None:
    total = sum(counts.values()) if counts else 0
    classes = []
    for value, name in enumerate(CLASS_NAMES):
        r, g, b, _ = CLASS_COLOURS[value]
        n = int(counts.get(str(value), 0)) if counts else None
        classes.append(Classification.create(
            value=value, name=name, description=f"{name} landslide risk", color_hint=f"{r:02X}{g:02X}{b:02X}",
            count=n, percentage=(100.0 * n / total) if counts and total else None,
        ))
    n = int(counts.get(str(CLASS_NODATA), 0)) if counts else None
    classes.append(Classification.create(
        value=CLASS_NODATA, name="no-data", description="no data", nodata=True,
        count=n, percentage=(100.0 * n / total) if counts and total else None,
    ))
    ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=classes)


def run_item(
    run_dir: str | os.PathLike,
    zones: Mapping[str, xr.Dataset],
    *,
    cogs: Mapping[str, Mapping[str, str | os.PathLike]] | None = None,
    quicklooks: Mapping[str, str | os.PathLike] | None = None,
    inputs: Sequence[InputRef] | None = None,
    item_path: str | os.PathLike | None = None,
    risk_store: str | os.PathLike | None = None,
    region: str | None = None,
    window: TimeWindow | None = None,
    item_id: str | None = None,
    run_info: Mapping[str, Any] | None = None,
    require_complete: bool = True,
) -> pystac.Item:
    """Build the STAC item describing one run's risk mosaic and exports.

    ``zones`` maps zone names (``utm48n``) to the ``risk.zarr`` groups. ``cogs`` maps a
    zone to :func:`write_cogs`'s result (default: the files of :func:`cog_names` found in
    ``<run>/exports``); ``quicklooks`` maps a zone to a PNG (role overview + thumbnail).
    ``inputs`` are the input items (default: ``<run>/items/<zone>/*.json`` via
    :func:`input_refs`); each with an href becomes a ``derived_from`` link. ``region`` and
    ``window`` default to the groups' ``region`` / ``time_window`` attributes; ``run_info``
    (the run's ``run.json``) contributes its ``alert``. Asset hrefs are relative to
    ``item_path`` (default ``<run>/exports/<id>.json``), so the item can be moved with the
    run folder. Raises StoreError for a group not marked ``slidewatch_complete`` (unless
    ``require_complete=False``) and InputDataError/TimeWindowError for missing provenance.
    """
    run = Path(run_dir)
    if not zones:
        raise InputDataError("No risk zones to describe.", "pass at least one group of risk.zarr.")
    zone_names = sorted(zones)
    attrs = {z: dict(zones[z].attrs) for z in zone_names}
    if require_complete:
        incomplete = [z for z in zone_names if attrs[z].get("slidewatch_complete") is not True]
        if incomplete:
            raise StoreError(
                f"Risk mosaic group(s) {incomplete} are not marked slidewatch_complete.",
                "finish (or resume) the run before exporting it.",
            )
    region = region or next((str(attrs[z]["region"]) for z in zone_names if attrs[z].get("region")), None)
    if not region:
        raise InputDataError("The risk mosaic has no 'region' attribute.", "pass region='<name>' to run_item.")
    window = window or next((w for w in (_parse_window(attrs[z]) for z in zone_names) if w), None)
    if window is None:
        raise TimeWindowError("The risk mosaic has no time_window attribute.", "pass window=TimeWindow(start, end).")
    item_id = item_id or f"slidewatch-risk-{_slug(region)}-{window.start:%Y%m%d}_{window.end:%Y%m%d}"
    item_file = Path(item_path) if item_path is not None else run / "exports" / f"{item_id}.json"
    base = item_file.parent
    store = Path(risk_store) if risk_store is not None else run / "risk.zarr"

    from shapely import union_all
    from shapely.geometry import mapping

    grids = {z: _grid_proj(zones[z], z) for z in zone_names}
    footprint = union_all([_footprint(_georef(zones[z], z)[0], grids[z]["bbox"]) for z in zone_names])
    input_items: dict[str, list[str]] = {}
    for z in zone_names:
        for coll, ids in (attrs[z].get("input_items") or {}).items():
            bucket = input_items.setdefault(str(coll), [])
            bucket.extend(str(i) for i in ids if str(i) not in bucket)

    def per_zone(key: str) -> Any:
        return _merged({z: _json_safe(attrs[z].get(key)) for z in zone_names})

    model = per_zone("model")
    versions = {str(v) for v in (attrs[z].get("slidewatch_version") for z in zone_names) if v}
    software = {"slidewatch": sorted(versions)[0] if len(versions) == 1 else __version__}
    arch = model.get("architecture") if isinstance(model, Mapping) else None
    lineage = (
        "Sentinel-2 L2A (cloud-masked median composite), Sentinel-1 RTC (soil-moisture index) and "
        "Copernicus DEM GLO-30 read via STAC and resampled onto a 10 m UTM grid; six factors (slope, "
        "elevation, NDVI, NDWI, SMI, NDBI) combined into the Landslide Susceptibility Index "
        "LSI = sigmoid(R_m * sum(w_i * x_i)) with the rainfall multiplier R_m = (P/P0)^1.2 * (D/D0)^0.8; "
        f"a U-Net{f' ({arch})' if arch else ''} over the factors and the LSI gives the landslide "
        "probability, classed low / medium / high."
    )
    props: dict[str, Any] = {
        "title": f"slidewatch landslide risk: {region} {window.start}..{window.end}",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "processing:software": software,
        "processing:level": "L4",
        "processing:lineage": lineage,
        "slidewatch:region": region,
        "slidewatch:zones": zone_names,
        "slidewatch:input_items": input_items,
        "slidewatch:checkpoint_sha256": per_zone("checkpoint_sha256"),
        "slidewatch:model": model,
        "slidewatch:rain_intensity_mm_h": per_zone("rain_intensity_mm_h"),
        "slidewatch:rain_duration_days": per_zone("rain_duration_days"),
        "slidewatch:rain_multiplier": per_zone("rain_multiplier"),
        "slidewatch:complete": all(attrs[z].get("slidewatch_complete") is True for z in zone_names),
    }
    if run_info is not None and "alert" in run_info:
        props["slidewatch:alert"] = _json_safe(run_info["alert"])
    item = pystac.Item(
        id=item_id,
        geometry=mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=None,
        start_datetime=datetime.combine(window.start, time(0, 0, 0), tzinfo=timezone.utc),
        end_datetime=datetime.combine(window.end, time(23, 59, 59), tzinfo=timezone.utc),
        properties=props,
    )
    item.stac_extensions.append(PROCESSING_SCHEMA)
    if len(zone_names) == 1:
        g = grids[zone_names[0]]
        ProjectionExtension.ext(item, add_if_missing=True).apply(
            code=g["code"], wkt2=g["wkt2"], shape=g["shape"], transform=g["transform"], bbox=g["bbox"],
        )

    for z in zone_names:
        g = grids[z]
        key = f"zarr_{z}"
        asset = pystac.Asset(
            href=_rel(store, base), media_type=ZARR_MEDIA_TYPE, roles=["data"],
            title=f"risk mosaic, zone {z} (Zarr v3 group {z!r})",
        )
        item.add_asset(key, asset)
        _apply_proj(asset, g)
        _datacube(asset, zones[z], g)
        XarrayAssetsExtension.ext(asset, add_if_missing=True).open_kwargs = {
            "engine": "zarr", "group": z, "decode_coords": "all",
        }

        zone_cogs = dict(cogs[z]) if cogs is not None and z in cogs else {
            k: run / "exports" / n for k, n in cog_names(z).items() if (run / "exports" / n).exists()
        }
        for kind, path in sorted(zone_cogs.items()):
            path = Path(path)
            if not path.exists():
                raise InputDataError(f"COG {path} of zone {z} does not exist.", "run write_cogs first.")
            band, proj, tags = _raster_band(path)
            title = "landslide probability (0..1)" if kind == "probability" else "landslide risk class"
            asset = pystac.Asset(href=_rel(path, base), media_type=COG_MEDIA_TYPE, roles=["data"],
                                 title=f"{title}, zone {z}")
            item.add_asset(f"{kind}_{z}", asset)
            _apply_proj(asset, proj)
            RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band])
            if kind == "class":
                counts = json.loads(tags[CLASS_COUNTS_TAG]) if CLASS_COUNTS_TAG in tags else None
                _classification(asset, counts)

        if quicklooks is not None and z in quicklooks:
            png = Path(quicklooks[z])
            item.add_asset(f"quicklook_{z}", pystac.Asset(
                href=_rel(png, base), media_type=str(pystac.MediaType.PNG), roles=["overview", "thumbnail"],
                title=f"quick-look, zone {z}",
            ))

    refs = list(inputs) if inputs is not None else input_refs(run / "items", zone_names)
    for ref in refs:
        if ref.href:
            item.add_link(pystac.Link(
                rel="derived_from", target=ref.href, media_type=str(pystac.MediaType.GEOJSON),
                title=f"{ref.collection}/{ref.id}" if ref.collection else ref.id,
            ))
    return item


def write_item(item: pystac.Item, path: str | os.PathLike) -> Path:
    """Write ``item`` as JSON to ``path`` atomically (temporary file beside it, then ``os.replace``).

    Hrefs are written as they are (relative asset hrefs stay relative) and no self link is
    added, so the item stays valid when the run folder is moved. Raises StoreError when the
    file cannot be written or the item holds a value JSON cannot carry (NaN).
    """
    path = Path(path)
    try:
        text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2, allow_nan=False)
    except ValueError as exc:
        raise StoreError(f"STAC item {item.id} cannot be written as JSON: {exc}.",
                         "replace NaN/inf values in its properties with null.") from exc
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise StoreError(f"Cannot write the STAC item {path}: {exc}.",
                         f"check that {path.parent} is writable and has free space.") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def export_run(
    run_dir: str | os.PathLike,
    *,
    quicklooks: Mapping[str, str | os.PathLike] | None = None,
    blocksize: int = 512,
    require_complete: bool = True,
) -> Path:
    """Export a finished run: COGs of every zone of ``<run>/risk.zarr`` into ``<run>/exports``,
    then the run's STAC item (``<run>/exports/<id>.json``, provenance from the groups and
    ``run.json``). Returns the item's path. Make the quick-looks first (for instance with
    ``pipeline.products.quicklook.write_quicklook``) and pass them as ``{zone: png}``.
    """
    import zarr

    run = Path(run_dir)
    store = run / "risk.zarr"
    if not store.is_dir():
        raise StoreError(f"No risk mosaic at {store}.", "run the inference stage for this run first.")
    group_names = sorted(zarr.open_group(str(store), mode="r").group_keys())
    if not group_names:
        raise StoreError(f"The risk mosaic {store} has no zone groups.", "re-run the inference stage.")
    zones = {z: xr.open_zarr(store, group=z, decode_coords="all", consolidated=False) for z in group_names}
    if require_complete:  # check before writing any file
        incomplete = [z for z in group_names if zones[z].attrs.get("slidewatch_complete") is not True]
        if incomplete:
            raise StoreError(f"Risk mosaic group(s) {incomplete} in {store} are not complete.",
                             "finish (or resume) the run before exporting it.")
    cogs = {z: write_cogs(zones[z], run / "exports", z, blocksize=blocksize) for z in group_names}
    run_info = None
    if (run / "run.json").exists():
        try:
            run_info = json.loads((run / "run.json").read_text())
        except ValueError as exc:
            raise InputDataError(f"Unreadable {run / 'run.json'}: {exc}.", "fix or delete run.json.") from exc
    item = run_item(run, zones, cogs=cogs, quicklooks=quicklooks, run_info=run_info,
                    require_complete=require_complete)
    return write_item(item, run / "exports" / f"{item.id}.json")
