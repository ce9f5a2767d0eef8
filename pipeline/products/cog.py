"""Cloud-Optimized GeoTIFFs of every layer of the risk mosaic, one region mosaic, QGIS styles.

An I/O module: it imports only slidewatch's foundation and third-party libraries. The run's
STAC item that describes these files is :mod:`pipeline.products.stac_item`.

:func:`write_cogs` works in three steps, layer by layer:

1. the zone's dask chunks (or ``blocksize`` windows of an in-memory array) are computed
   a few at a time and written by window into a hidden, tiled temporary GeoTIFF beside
   the target (statistics are accumulated on the way, so they cost no extra pass);
2. ``rio_cogeo.cogeo.cog_translate`` turns it into a COG (DEFLATE, internal overviews,
   ``blocksize`` tiles) under a second hidden temporary name;
3. ``rio_cogeo.cogeo.cog_validate`` checks it; only when every COG of the zone is valid
   are they renamed (``os.replace``) to their final names, one right after the other. On
   any failure the temporaries are removed, a :class:`~pipeline.core.errors.StoreError` is
   raised and nothing new has a final name (the files of an earlier export are untouched).

Files (``<layer>`` is also the key of the returned dict; the store variable in brackets):

* ``risk_<zone>_hazard.tif``, ``risk_<zone>_susceptibility.tif``, ``risk_<zone>_uncertainty.tif``
  and ``risk_<zone>_lsi.tif`` (float32, nodata NaN, band statistics in the GDAL
  ``STATISTICS_*`` band tags; a mosaic written before the hazard step gives
  ``risk_<zone>_probability.tif`` instead of hazard/susceptibility);
* ``risk_<zone>_class.tif`` (``risk_class``: the event's hazard class) and
  ``risk_<zone>_susceptibility_class.tif`` (uint8, nodata 255 =
  :data:`~pipeline.core.classes.NODATA_CLASS`, the colour table of
  :data:`~pipeline.core.classes.CLASS_RGBA`, class counts in the ``SLIDEWATCH_CLASS_COUNTS`` band tag);
* ``risk_<zone>_quality.tif`` (uint8 bit field; nodata = the store's declared ``_FillValue``
  of ``quality``, none when it declares none, since 0 means "ok");
* beside the class and float COGs, a QGIS style sidecar ``risk_<zone>_<layer>.qml``
  (:mod:`pipeline.products.style`; key ``<layer>_style``), which QGIS applies on open.

Nodata of the store is read from each variable (its CF ``_FillValue`` in the encoding or
attributes; xarray's NaN where it decoded one), never assumed.

:func:`write_region_mosaic` then joins the zones of a region (one or several UTM zones)
into one layer per COG layer in EPSG:3857, as GDAL VRTs over the zone COGs (see its docstring).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
import rasterio.shutil
import rasterio.warp
import rasterio.windows
import xarray as xr
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from pipeline import __version__
from pipeline.core.classes import CLASS_CODES
from pipeline.core.classes import CLASS_RGBA as CLASS_COLOURS
from pipeline.core.classes import NODATA_CLASS as CLASS_NODATA
from pipeline.core.errors import InputDataError, SlidewatchError, StoreError
from pipeline.core.files import atomic_write_text
from pipeline.products.style import layer_qml, style_path

__all__ = [
    "CLASS_COUNTS_TAG",
    "CLASS_LAYERS",
    "FLOAT_LAYERS",
    "LAYERS",
    "LAYER_VARIABLES",
    "REGION_CRS",
    "STYLE_SUFFIX",
    "cog_names",
    "region_names",
    "write_cogs",
    "write_region_mosaic",
    "zone_georef",
]

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

#: The 0..1 layers of a zone exported as COGs, in order (``probability``: mosaics written
#: before susceptibility and hazard were kept apart). Values outside 0..1 are refused.
FLOAT_LAYERS: tuple[str, ...] = ("hazard", "susceptibility", "uncertainty", "probability")
#: Float layers without a range check (the LSI: 0..1 by construction, but not a probability).
_OTHER_FLOAT_LAYERS: tuple[str, ...] = ("lsi",)
#: Class layers (uint8 0/1/2, nodata 255, colour table).
CLASS_LAYERS: tuple[str, ...] = ("class", "susceptibility_class")
#: Every layer :func:`write_cogs` exports, in order, and the store variable it comes from.
LAYER_VARIABLES: dict[str, str] = {
    **{n: n for n in FLOAT_LAYERS + _OTHER_FLOAT_LAYERS},
    "class": "risk_class", "susceptibility_class": "susceptibility_class", "quality": "quality",
}
LAYERS: tuple[str, ...] = tuple(LAYER_VARIABLES)
#: Key suffix of a layer's QGIS style in the dicts returned here (``"class_style"``).
STYLE_SUFFIX = "_style"


def _kind(layer: str) -> str:
    if layer in CLASS_LAYERS:
        return "class"
    if layer == "quality":
        return "flags"
    return "score" if layer in FLOAT_LAYERS else "float"


def cog_names(zone: str, layers: tuple[str, ...] = LAYERS) -> dict[str, str]:
    """File names of a zone's COGs: ``{"hazard": "risk_<zone>_hazard.tif", ...}`` for the
    ``layers`` (default: every layer of :data:`LAYERS`), and always ``"class"``."""
    return {**{layer: f"risk_{zone}_{layer}.tif" for layer in layers}, "class": f"risk_{zone}_class.tif"}


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


def zone_georef(zone_ds: xr.Dataset, zone: str) -> tuple[rasterio.crs.CRS, Any]:
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


def _float_block(block: np.ndarray, name: str, zone: str, *, check_range: bool) -> np.ndarray:
    out = block.astype(np.float32, copy=False)
    finite = np.isfinite(out)
    if check_range and finite.any() and (out[finite].min() < -1e-6 or out[finite].max() > 1 + 1e-6):
        raise InputDataError(
            f"Variable {name!r} of risk zone {zone!r} has values outside 0..1 "
            f"({float(out[finite].min())}..{float(out[finite].max())}).",
            "export the model probability (0..1, NaN = no value), not a logit or the LSI.",
        )
    out = np.where(np.isinf(out), np.nan, out).astype(np.float32, copy=False)
    return out


def _class_block(block: np.ndarray, name: str, zone: str, fill: float | None = None) -> np.ndarray:
    if np.issubdtype(block.dtype, np.floating):  # _FillValue decoded to NaN by xarray
        block = np.where(np.isnan(block), CLASS_NODATA, block)
    if fill is not None and not np.isnan(fill) and fill != CLASS_NODATA:  # another declared fill
        block = np.where(block == fill, CLASS_NODATA, block)
    bad = ~np.isin(block, (*CLASS_CODES, CLASS_NODATA))
    if bad.any():
        raise InputDataError(
            f"Variable {name!r} of risk zone {zone!r} has values other than 0, 1, 2, {CLASS_NODATA} "
            f"(e.g. {np.unique(block[bad])[:5].tolist()}).",
            "export the risk classes (0 low, 1 medium, 2 high, 255 no data).",
        )
    return block.astype(np.uint8)


def _flags_block(block: np.ndarray, name: str, zone: str, fill: float | None) -> np.ndarray:
    if np.issubdtype(block.dtype, np.floating):  # _FillValue decoded to NaN by xarray
        missing = np.isnan(block)
        if missing.any():
            if fill is None or np.isnan(fill):
                raise InputDataError(
                    f"Variable {name!r} of risk zone {zone!r} has NaN values but no integer _FillValue.",
                    "open the store with xr.open_zarr (the fill is declared there) or pass the uint8 flags.",
                )
            block = np.where(missing, fill, block)
    bad = (block < 0) | (block > 255) | (block != np.round(block))
    if bad.any():
        raise InputDataError(
            f"Variable {name!r} of risk zone {zone!r} is not a uint8 bit field (e.g. {np.unique(block[bad])[:5].tolist()}).",
            "export the quality flags written by the risk stage (0..255).",
        )
    return block.astype(np.uint8)


def _declared_fill(arr: xr.DataArray) -> float | None:
    """The variable's CF ``_FillValue`` (from its encoding, as :func:`xarray.open_zarr` leaves
    it, or its attributes), or None when it declares none."""
    for source in (arr.encoding, arr.attrs):
        value = source.get("_FillValue")
        if value is not None:
            value = np.asarray(value).ravel()[0] if np.ndim(value) else value
            return float(value)
    return None


def _layer_nodata(kind: str, arr: xr.DataArray, layer: str, zone: str) -> float | None:
    """The nodata of a layer's COG: NaN for floats, 255 for classes, the declared fill for flags."""
    if kind in ("score", "float"):
        return float("nan")
    if kind == "class":
        return float(CLASS_NODATA)
    fill = _declared_fill(arr)
    if fill is not None and (np.isnan(fill) or not 0 <= fill <= 255 or fill != int(fill)):
        raise InputDataError(
            f"Variable {arr.name!r} of risk zone {zone!r} declares _FillValue {fill}, not a uint8 value.",
            "write the quality layer with an integer _FillValue in 0..255.",
        )
    return fill


def _tmp_name(out_dir: Path, final: str, tag: str, suffix: str = ".tif") -> Path:
    return out_dir / f".{final}.{uuid.uuid4().hex[:12]}.{tag}{suffix}"


_DESCRIPTIONS = {
    "class": "landslide risk class (0 low, 1 medium, 2 high, 255 no data)",
    "susceptibility_class": "landslide susceptibility class (0 low, 1 medium, 2 high, 255 no data)",
    "quality": "pixel quality flags (bit field; flag_masks and flag_meanings in the tags)",
}


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
    layer: str | None = None,
    nodata: float | None = None,
) -> Path:
    """Write and validate one COG under a hidden temporary name beside ``final``; return that
    name (the caller renames it). Removes every temporary when anything fails. ``kind`` is
    ``score`` (float 0..1), ``float``, ``class`` or ``flags``; ``nodata`` that of the flags."""
    layer = layer or kind
    out_dir = final.parent
    src_tmp = _tmp_name(out_dir, final.name, "src")
    cog_tmp = _tmp_name(out_dir, final.name, "cog")
    keep = False
    is_class = kind == "class"
    is_int = kind in ("class", "flags")
    dtype = "uint8" if is_int else "float32"
    if is_class:
        nodata = float(CLASS_NODATA)
    elif not is_int:
        nodata = float("nan")
    fill = _declared_fill(arr)
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
                    out = _class_block(block, str(arr.name), zone, fill)
                    counts += np.bincount(out.ravel(), minlength=256)
                    stats.add(out, out != CLASS_NODATA)
                elif kind == "flags":
                    out = _flags_block(block, str(arr.name), zone, nodata)
                    stats.add(out, np.ones(out.shape, bool) if nodata is None else out != nodata)
                else:
                    out = _float_block(block, str(arr.name), zone, check_range=kind == "score")
                    stats.add(out, np.isfinite(out))
                window = rasterio.windows.Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
                dst.write(out, 1, window=window)
            band_tags = stats.tags()
            if is_class:
                band_tags[CLASS_COUNTS_TAG] = json.dumps(
                    {str(v): int(counts[v]) for v in (*CLASS_CODES, CLASS_NODATA)}
                )
                dst.colorinterp = [ColorInterp.palette]
                dst.write_colormap(1, CLASS_COLOURS)
            description = _DESCRIPTIONS.get(layer)
            if description is None:
                description = f"{arr.attrs.get('long_name') or 'landslide ' + layer} (NaN = no value)"
            dst.set_band_description(1, description)
            dst.update_tags(1, **band_tags)
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        profile = dict(cog_profiles.get("deflate"))
        profile.update(blockxsize=blocksize, blockysize=blocksize, BIGTIFF="IF_SAFER",
                       predictor=2 if is_int else 3)
        with _quiet_palette_warning():
            cog_translate(
                src_tmp, cog_tmp, profile, nodata=nodata,
                overview_resampling="mode" if is_int else "average",
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
    for key in ("long_name", "units", "flag_values", "flag_masks", "flag_meanings"):
        if key in arr.attrs:
            v = arr.attrs[key]
            tags[key] = " ".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else str(v)
    for key in ("region", "time_window", "checkpoint_sha256", "class_thresholds", "slidewatch_version"):
        if zone_ds.attrs.get(key) is not None:
            v = zone_ds.attrs[key]
            tags[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    tags.setdefault("slidewatch_version", __version__)
    return tags


def _styles(layers: tuple[str, ...], thresholds: Any) -> dict[str, str]:
    """QML text of each layer that has a style (computed before anything is written)."""
    t = None
    if isinstance(thresholds, list | tuple | np.ndarray) and len(thresholds) == 2:
        t = tuple(float(v) for v in thresholds)
    out = {}
    for layer in layers:
        text = layer_qml(layer, t)
        if text is not None:
            out[layer] = text
    return out


def write_cogs(zone_ds: xr.Dataset, out_dir: str | os.PathLike, zone: str, *, blocksize: int = 512) -> dict[str, Path]:
    """Write every layer of one risk-mosaic zone group as a validated Cloud-Optimized GeoTIFF.

    ``zone_ds`` is a group of ``risk.zarr`` (dims ``(y, x)``, rioxarray georeferencing,
    variables ``hazard``, ``susceptibility``, ``uncertainty`` (or an older mosaic's
    ``probability``), ``risk_class`` and, when present, ``lsi``, ``susceptibility_class``
    and ``quality``). Writes ``risk_<zone>_<layer>.tif`` for each layer present (see the
    module docstring for dtypes and nodata) into ``out_dir`` with DEFLATE, ``blocksize``
    tiles and internal overviews (as many halvings as keep the smallest level at least one
    tile; none for a raster smaller than one tile), then a QGIS style sidecar
    ``risk_<zone>_<layer>.qml`` beside each class and float COG (ramps use the group's
    ``class_thresholds`` when it has them). Memory stays bounded by a few chunks.

    Returns ``{layer: COG path}`` for the layers written (``"class"`` is the hazard class,
    as before) and ``{layer + "_style": QML path}`` for their styles. Raises InputDataError
    for a malformed dataset and StoreError when a file cannot be written or does not
    validate; a failed write leaves no file under the final names.
    """
    if not _ZONE_RE.match(zone):
        raise InputDataError(f"Zone name {zone!r} is not a plain lower-case name.", "use a zone name like 'utm48n'.")
    if blocksize < 16 or blocksize % 16:
        raise InputDataError(f"COG blocksize {blocksize} is not a multiple of 16.", "use 256 or 512.")
    crs, transform = zone_georef(zone_ds, zone)
    if not any(n in zone_ds.data_vars for n in FLOAT_LAYERS):
        raise InputDataError(f"Risk zone {zone!r} has none of the layers {list(FLOAT_LAYERS)}.",
                             "export a group of risk.zarr written by the risk stage.")
    layers = tuple(n for n in LAYERS if n == "class" or LAYER_VARIABLES[n] in zone_ds.data_vars)
    arrays = {n: _band(zone_ds, LAYER_VARIABLES[n], zone) for n in layers}
    nodata = {n: _layer_nodata(_kind(n), arrays[n], n, zone) for n in layers}
    styles = _styles(layers, zone_ds.attrs.get("class_thresholds"))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"Cannot create the export folder {out}: {exc}.", "choose a writable output folder.") from exc
    finals = {kind: out / name for kind, name in cog_names(zone, layers).items()}
    for final in finals.values():  # temporaries an earlier, killed export left behind
        for stale in (*out.glob(f".{final.name}.*.tif"), *out.glob(f".{style_path(final).name}.*")):
            _unlink_quietly(stale)
    done: dict[str, Path] = {}
    try:
        for layer, arr in arrays.items():
            done[layer] = _write_one(
                arr, kind=_kind(layer), final=finals[layer], crs=crs, transform=transform,
                blocksize=blocksize, zone=zone, tags=_cog_tags(zone_ds, arr), layer=layer, nodata=nodata[layer],
            )
        for layer, tmp in done.items():  # all valid: rename them together
            os.replace(tmp, finals[layer])
        result: dict[str, Path] = dict(finals)
        for layer, text in styles.items():
            result[layer + STYLE_SUFFIX] = atomic_write_text(style_path(finals[layer]), text)
    except OSError as exc:
        raise StoreError(f"Could not move the COGs into place in {out}: {exc}.",
                         f"check that {out} is writable, then export again.") from exc
    finally:
        for tmp in done.values():
            _unlink_quietly(tmp)
    return result


#: The CRS of the region mosaic (Web Mercator: what QGIS base maps and web viewers use).
REGION_CRS = rasterio.crs.CRS.from_epsg(3857)
_REGION_STEM = "risk_region"
_VRT_DTYPES = {"uint8": "Byte", "float32": "Float32", "float64": "Float64", "int16": "Int16", "uint16": "UInt16"}


def region_names(layers: tuple[str, ...] = LAYERS) -> dict[str, str]:
    """File names of the region mosaic: ``{layer: "risk_region_<layer>.vrt"}``. Each mosaic
    reads one warped part per zone, ``risk_region_<layer>.<zone>.vrt``, kept beside it."""
    return {layer: f"{_REGION_STEM}_{layer}.vrt" for layer in layers}


@dataclass(frozen=True)
class _ZoneCog:
    zone: str
    path: Path
    dtype: str
    nodata: float | None
    colormap: dict[int, tuple[int, int, int, int]] | None
    bounds: tuple[float, float, float, float]  # in REGION_CRS
    resolution: float  # of the default warp into REGION_CRS
    tags: dict[str, str]
    description: str | None


def _read_zone_cog(zone: str, layer: str, path: Path) -> _ZoneCog:
    if not path.is_file():
        raise InputDataError(f"COG {path} of zone {zone!r} (layer {layer!r}) does not exist.",
                             "run write_cogs for that zone first and pass its result.")
    try:
        with rasterio.open(path) as src:
            if src.crs is None or src.count != 1:
                raise InputDataError(f"{path} is not a one-band georeferenced raster.",
                                     "pass the COGs written by write_cogs.")
            bounds = rasterio.warp.transform_bounds(src.crs, REGION_CRS, *src.bounds, densify_pts=21)
            tf, _, _ = rasterio.warp.calculate_default_transform(
                src.crs, REGION_CRS, src.width, src.height, *src.bounds)
            try:
                cmap = src.colormap(1) if src.colorinterp[0] == ColorInterp.palette else None
            except ValueError:
                cmap = None
            return _ZoneCog(zone, path, src.dtypes[0], src.nodata, cmap, tuple(bounds), abs(float(tf.a)),
                            dict(src.tags()), src.descriptions[0])
    except rasterio.errors.RasterioIOError as exc:
        raise InputDataError(f"Cannot open the COG {path} of zone {zone!r}: {exc}.",
                             "run write_cogs for that zone again.") from exc


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (np.isnan(a) and np.isnan(b)) or a == b


def _nodata_text(value: float) -> str:
    return "nan" if np.isnan(value) else repr(int(value)) if float(value).is_integer() else repr(float(value))


def _mosaic_xml(layer: str, parts: list[tuple[_ZoneCog, str, tuple[int, int, int, int]]],
                grid: tuple[Affine, int, int], resampling: str) -> str:
    """The VRT of one region layer: each zone's warped part placed by its offset on the grid,
    later zones drawn over earlier ones where they have values."""
    transform, width, height = grid
    first = parts[0][0]
    root = ET.Element("VRTDataset", {"rasterXSize": str(width), "rasterYSize": str(height)})
    ET.SubElement(root, "SRS", {"dataAxisToSRSAxisMapping": "1,2"}).text = REGION_CRS.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in transform.to_gdal())
    meta = ET.SubElement(root, "Metadata")
    info = {k: v for k, v in first.tags.items() if k in ("region", "time_window", "checkpoint_sha256",
                                                         "slidewatch_version", "long_name", "units",
                                                         "flag_values", "flag_masks", "flag_meanings")}
    info.update(slidewatch_layer=layer, slidewatch_zones=" ".join(p[0].zone for p in parts),
                slidewatch_resampling=resampling,
                slidewatch_note="display mosaic in EPSG:3857 (warped on read from the zone COGs); "
                                "measure areas on the zone COGs")
    for k, v in sorted(info.items()):
        ET.SubElement(meta, "MDI", {"key": k}).text = v
    band = ET.SubElement(root, "VRTRasterBand", {"dataType": _VRT_DTYPES[first.dtype], "band": "1"})
    if first.description:
        ET.SubElement(band, "Description").text = first.description
    if first.nodata is not None:
        ET.SubElement(band, "NoDataValue").text = _nodata_text(first.nodata)
    if first.colormap is not None:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for code in range(256):
            r, g, b, a = first.colormap.get(code, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", {"c1": str(r), "c2": str(g), "c3": str(b), "c4": str(a)})
    else:
        ET.SubElement(band, "ColorInterp").text = "Gray"
    for cog, part_name, (col, row, w, h) in parts:
        src = ET.SubElement(band, "ComplexSource" if cog.nodata is not None else "SimpleSource")
        ET.SubElement(src, "SourceFilename", {"relativeToVRT": "1"}).text = part_name
        ET.SubElement(src, "SourceBand").text = "1"
        ET.SubElement(src, "SrcRect", {"xOff": "0", "yOff": "0", "xSize": str(w), "ySize": str(h)})
        ET.SubElement(src, "DstRect", {"xOff": str(col), "yOff": str(row), "xSize": str(w), "ySize": str(h)})
        if cog.nodata is not None:
            ET.SubElement(src, "NODATA").text = _nodata_text(cog.nodata)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _tag_thresholds(tags: Mapping[str, str]) -> tuple[float, float] | None:
    """The class thresholds a zone COG records (``class_thresholds`` tag), if readable."""
    try:
        t = json.loads(tags["class_thresholds"])
        return (float(t[0]), float(t[1])) if len(t) == 2 else None
    except (KeyError, ValueError, TypeError, IndexError):
        return None


def _region_grid(cogs: list[_ZoneCog]) -> tuple[Affine, int, int, list[tuple[int, int, int, int]]]:
    """A north-up grid in REGION_CRS with the finest zone's pixel size, its origin on a
    multiple of that size, covering every zone; and each zone's window on it."""
    res = min(c.resolution for c in cogs)
    eps = 1e-6
    x0 = np.floor(min(c.bounds[0] for c in cogs) / res + eps) * res
    y1 = np.ceil(max(c.bounds[3] for c in cogs) / res - eps) * res
    windows = []
    for c in cogs:
        col0 = int(np.floor((c.bounds[0] - x0) / res + eps))
        col1 = int(np.ceil((c.bounds[2] - x0) / res - eps))
        row0 = int(np.floor((y1 - c.bounds[3]) / res + eps))
        row1 = int(np.ceil((y1 - c.bounds[1]) / res - eps))
        windows.append((col0, row0, max(col1 - col0, 1), max(row1 - row0, 1)))
    width = max(w[0] + w[2] for w in windows)
    height = max(w[1] + w[3] for w in windows)
    return Affine(res, 0.0, float(x0), 0.0, -res, float(y1)), width, height, windows


def write_region_mosaic(zone_cogs: Mapping[str, Mapping[str, Path]], out_dir: Path) -> dict[str, Path]:
    """Join the zone COGs of a region into one layer per COG layer, in EPSG:3857.

    ``zone_cogs`` maps each zone (``utm47n``) to :func:`write_cogs`'s result for it (style
    entries and non-COG paths are ignored; a layer some zone lacks is mosaicked from the
    zones that have it). For each layer this writes into ``out_dir``:

    * ``risk_region_<layer>.<zone>.vrt`` per zone: a GDAL warped VRT of the zone's COG into
      EPSG:3857 on the region grid (nearest neighbour for classes and quality flags, which
      must keep their codes; bilinear for the float layers, which are continuous);
    * ``risk_region_<layer>.vrt``: a VRT placing those parts on one grid (later zones,
      sorted by name, drawn over earlier ones only where they have values), with the COG's
      nodata and, for the class layers, its colour table;
    * ``risk_region_<layer>.qml`` for the layers with a style (:mod:`pipeline.products.style`).

    Why VRTs and EPSG:3857: a VRT copies no pixel, so the export costs the same for a
    100,000 km² region as for a valley, and each zone's pixels are resampled once, on read,
    from the zone COGs (their overviews serve zoomed-out views); GDAL, QGIS and rasterio
    open it as one raster. EPSG:3857 is the CRS of web maps and QGIS base layers; it is
    conformal (no shearing of classes), unlike a lon/lat grid whose pixels are not square
    on the ground. The grid's pixel is the finest zone's 10 m pixel as warped (about
    10 m / cos(latitude)), its origin a multiple of it. A mosaic is for viewing: Mercator
    areas are not equal areas, so measure on the zone COGs. The VRTs refer to the COGs and
    to each other by relative paths: keep the folder together.

    Returns ``{layer: mosaic path}`` and ``{layer + "_style": QML path}``. Raises
    InputDataError (before writing anything) for missing or unreadable COGs, or zones
    whose layer differs in data type or nodata; StoreError when a file cannot be written.
    """
    if not zone_cogs:
        raise InputDataError("No zone COGs to mosaic.", "pass {zone: write_cogs(...)} for at least one zone.")
    zones = sorted(zone_cogs)
    for zone in zones:
        if not _ZONE_RE.match(zone) or zone == "region":
            raise InputDataError(f"Zone name {zone!r} is not a plain lower-case zone name.",
                                 "use the zone names of the risk mosaic, e.g. 'utm48n'.")
    wanted = {layer for z in zones for layer, p in zone_cogs[z].items()
              if not layer.endswith(STYLE_SUFFIX) and Path(p).suffix.lower() in (".tif", ".tiff")}
    layers = [layer for layer in LAYERS if layer in wanted] + sorted(wanted - set(LAYERS))
    plans: dict[str, list[_ZoneCog]] = {}
    for layer in layers:
        cogs = [_read_zone_cog(z, layer, Path(zone_cogs[z][layer])) for z in zones if layer in zone_cogs[z]]
        first = cogs[0]
        for c in cogs[1:]:
            if c.dtype != first.dtype or not _same_nodata(c.nodata, first.nodata):
                raise InputDataError(
                    f"Layer {layer!r} differs between zones {first.zone!r} ({first.dtype}, nodata {first.nodata}) "
                    f"and {c.zone!r} ({c.dtype}, nodata {c.nodata}).",
                    "export every zone with the same slidewatch version (write_cogs), then mosaic again.",
                )
        if first.dtype not in _VRT_DTYPES:
            raise InputDataError(f"Layer {layer!r} has data type {first.dtype}, which the mosaic does not handle.",
                                 "pass the COGs written by write_cogs.")
        plans[layer] = cogs
    given = Path(out_dir)
    out = given.resolve()  # absolute, so GDAL writes the sources relative to each VRT
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"Cannot create the export folder {out}: {exc}.", "choose a writable output folder.") from exc
    names = region_names(tuple(layers))
    result: dict[str, Path] = {}
    tmps: list[Path] = []
    try:
        for layer, cogs in plans.items():
            integer = cogs[0].dtype.startswith(("uint", "int"))
            resampling = Resampling.nearest if integer else Resampling.bilinear
            transform, width, height, windows = _region_grid(cogs)
            final = out / names[layer]
            parts = []
            for cog, (col, row, w, h) in zip(cogs, windows):
                part = out / f"{final.stem}.{cog.zone}.vrt"
                tmp = _tmp_name(out, part.name, "part", ".vrt")
                tmps.append(tmp)
                part_tf = transform @ Affine.translation(col, row)
                with rasterio.open(cog.path.resolve()) as src:  # absolute: GDAL makes it relative to the VRT
                    kwargs: dict[str, Any] = {"crs": REGION_CRS, "transform": part_tf, "width": w, "height": h,
                                              "resampling": resampling}
                    if cog.nodata is not None:
                        kwargs.update(src_nodata=cog.nodata, nodata=cog.nodata)
                    with WarpedVRT(src, **kwargs) as vrt:
                        rasterio.shutil.copy(vrt, tmp, driver="VRT")
                os.replace(tmp, part)
                parts.append((cog, part.name, (col, row, w, h)))
            text = _mosaic_xml(layer, parts, (transform, width, height), resampling.name)
            tmp = _tmp_name(out, final.name, "mosaic", ".vrt")
            tmps.append(tmp)
            tmp.write_text(text, encoding="utf-8")
            with rasterio.open(tmp) as check:  # GDAL reads it (and its parts)
                check.read(1, window=rasterio.windows.Window(0, 0, 1, 1))
            os.replace(tmp, final)
            result[layer] = given / final.name
            qml = layer_qml(layer, _tag_thresholds(cogs[0].tags))
            if qml is not None:
                result[layer + STYLE_SUFFIX] = given / atomic_write_text(style_path(final), qml).name
    except SlidewatchError:
        raise
    except Exception as exc:
        raise StoreError(f"Could not write the region mosaic in {out}: {type(exc).__name__}: {exc}.",
                         f"check that {out} is writable and has free space, then export again.") from exc
    finally:
        for tmp in tmps:
            _unlink_quietly(tmp)
    return result
