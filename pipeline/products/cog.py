"""Cloud-Optimized GeoTIFFs of the risk mosaic, written memory-bounded and atomically.

An I/O module: it imports only slidewatch's foundation and third-party libraries. The run's
STAC item that describes these files is :mod:`pipeline.products.stac_item`.

:func:`write_cogs` works in three steps:

1. the zone's dask chunks (or ``blocksize`` windows of an in-memory array) are computed
   a few at a time and written by window into a hidden, tiled temporary GeoTIFF beside
   the target (statistics are accumulated on the way, so they cost no extra pass);
2. ``rio_cogeo.cogeo.cog_translate`` turns it into a COG (DEFLATE, internal overviews,
   ``blocksize`` tiles) under a second hidden temporary name;
3. ``rio_cogeo.cogeo.cog_validate`` checks it; only when both COGs of the zone are valid
   are they renamed (``os.replace``) to their final names, one right after the other. On
   any failure the temporaries are removed, a :class:`~pipeline.core.errors.StoreError` is
   raised and nothing new has a final name (the files of an earlier export are untouched).

Files: ``risk_<zone>_hazard.tif``, ``risk_<zone>_susceptibility.tif`` and
``risk_<zone>_uncertainty.tif`` (float32, nodata NaN, band statistics in the GDAL
``STATISTICS_*`` band tags; a mosaic written before the hazard step gives
``risk_<zone>_probability.tif`` instead) and ``risk_<zone>_class.tif`` (the event's hazard
class; uint8, nodata 255, a colour table low = green, medium = orange, high = red, 255
transparent; class counts in the ``SLIDEWATCH_CLASS_COUNTS`` band tag).
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

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.crs
import rasterio.warp
import rasterio.windows
import xarray as xr
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from pipeline import __version__
from pipeline.core.classes import NODATA_CLASS as CLASS_NODATA, CLASS_RGBA as CLASS_COLOURS
from pipeline.core.errors import InputDataError, SlidewatchError, StoreError

__all__ = ["CLASS_COUNTS_TAG", "cog_names", "zone_georef", "write_cogs"]

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
#: before susceptibility and hazard were kept apart).
FLOAT_LAYERS: tuple[str, ...] = ("hazard", "susceptibility", "uncertainty", "probability")


def cog_names(zone: str, layers: tuple[str, ...] = FLOAT_LAYERS) -> dict[str, str]:
    """File names of a zone's COGs: ``{"hazard": ..., "susceptibility": ..., "uncertainty": ...,
    "probability": ..., "class": ...}`` (those of ``layers``, and the class)."""
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
                dst.set_band_description(1, f"{arr.attrs.get('long_name') or 'landslide ' + kind} (NaN = no value)")
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
    variables ``hazard``, ``susceptibility``, ``uncertainty`` (or an older mosaic's
    ``probability``) and ``risk_class``). Writes ``risk_<zone>_<layer>.tif`` for each 0..1
    layer present (float32, nodata NaN) and ``risk_<zone>_class.tif`` (uint8, nodata 255, colour table)
    into ``out_dir`` with DEFLATE, ``blocksize`` tiles and internal overviews (as many
    halvings as keep the smallest level at least one tile; none for a raster smaller than
    one tile). Memory stays bounded by a few chunks. Returns ``{layer: path, "class": path}``.

    Raises InputDataError for a malformed dataset and StoreError when a file cannot be
    written or does not validate; a failed write leaves no file under the final name.
    """
    if not _ZONE_RE.match(zone):
        raise InputDataError(f"Zone name {zone!r} is not a plain lower-case name.", "use a zone name like 'utm48n'.")
    if blocksize < 16 or blocksize % 16:
        raise InputDataError(f"COG blocksize {blocksize} is not a multiple of 16.", "use 256 or 512.")
    crs, transform = zone_georef(zone_ds, zone)
    layers = tuple(n for n in FLOAT_LAYERS if n in zone_ds.data_vars)
    if not layers:
        raise InputDataError(f"Risk zone {zone!r} has none of the layers {list(FLOAT_LAYERS)}.",
                             "export a group of risk.zarr written by the risk stage.")
    floats = {n: _band(zone_ds, n, zone) for n in layers}
    cls = _band(zone_ds, "risk_class", zone)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"Cannot create the export folder {out}: {exc}.", "choose a writable output folder.") from exc
    finals = {kind: out / name for kind, name in cog_names(zone, layers).items()}
    for final in finals.values():  # temporaries an earlier, killed export left behind
        for stale in out.glob(f".{final.name}.*.tif"):
            _unlink_quietly(stale)
    done: dict[str, Path] = {}
    try:
        for kind, arr in (*floats.items(), ("class", cls)):
            done[kind] = _write_one(
                arr, kind=kind, final=finals[kind], crs=crs, transform=transform,
                blocksize=blocksize, zone=zone, tags=_cog_tags(zone_ds, arr),
            )
        for kind, tmp in done.items():  # all valid: rename them together
            os.replace(tmp, finals[kind])
    except OSError as exc:
        raise StoreError(f"Could not move the COGs into place in {out}: {exc}.",
                         f"check that {out} is writable, then export again.") from exc
    finally:
        for tmp in done.values():
            _unlink_quietly(tmp)
    return finals
