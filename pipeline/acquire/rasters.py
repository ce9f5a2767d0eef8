"""Bring your own rasters: local GeoTIFFs (or folders of chips) → a training store.

``slidewatch prepare`` reads each GeoTIFF as one chip on its own grid and CRS (chips of
one store may be on different grids and in different UTM zones), names its bands,
computes the channels asked for and writes a *chip store*:

::

    store.zarr/                 Zarr v2 (ZARR_FORMAT, see docs/zarr.md); root attrs:
                                slidewatch_store="chips", channels, chips
        <chip name>/            one group per chip: float32 variables = channels, dims (y, x),
                                pixel-centre y/x coordinates, CRS in spatial_ref (rioxarray)
                                and in each variable's ``_CRS`` (GDAL), NaN = no data

* Bands are named by the raster's band descriptions (``B04``, ``red``, ``B4`` and ``nir``
  are understood; see :func:`canonical_band`) or by ``bands=("B02", "B03", ...)`` in band
  order. A one-band raster without a description takes its name from ``bands``.
* Derived channels reuse the pipeline's kernels: ``ndvi``/``ndwi``/``ndbi``/``ndmi``
  (:mod:`pipeline.factors.indices`, from B03/B04/B08/B11) and ``slope``
  (:mod:`pipeline.factors.terrain`, Horn, from a ``dem`` band or a separate DEM raster
  warped bilinearly onto each chip). Values are used as stored: the indices are
  scale-free but not offset-free (apply Sentinel-2's L2A offset first).
* ``tile`` cuts big rasters into square chips (derived channels are computed on the whole
  raster first, so slope has no seams at tile edges).
* The store appears at its path only when complete (written beside it, then moved).

Models read it with :func:`models.data.open_store`; :func:`chip_store_info` tells a chip
store from a factor cube without reading arrays.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
import rasterio.warp
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling

from pipeline import __version__
from pipeline.core.errors import InputDataError, StoreError
from pipeline.core.files import replace_dir
from pipeline.core.layout import ZARR_FORMAT, crs_attrs, zarr_encoding
from pipeline.factors.indices import INDEX_BANDS, INDEX_LONG_NAMES, spectral_indices
from pipeline.factors.terrain import slope as terrain_slope

__all__ = [
    "CHIP_STORE",
    "STORE_KIND_ATTR",
    "PreparedStore",
    "canonical_band",
    "chip_store_info",
    "derive_channels",
    "find_rasters",
    "prepare_chip_store",
    "read_raster",
    "resolve_channels",
]

#: Root attribute that marks a store's kind, and its value for chip stores.
STORE_KIND_ATTR = "slidewatch_store"
CHIP_STORE = "chips"
STORE_VERSION = 1

RASTER_SUFFIXES = (".tif", ".tiff")

#: Common band names → Sentinel-2 band ids (and elevation → ``dem``).
BAND_ALIASES: Mapping[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
    "nir": "B08", "nir08": "B8A", "narrownir": "B8A",
    "swir1": "B11", "swir16": "B11", "swir2": "B12", "swir22": "B12",
    "dem": "dem", "elevation": "dem", "height": "dem", "altitude": "dem",
}

_BAND_LONG_NAMES = {
    "B01": "coastal aerosol", "B02": "blue", "B03": "green", "B04": "red",
    "B05": "red edge 1", "B06": "red edge 2", "B07": "red edge 3", "B08": "near infrared",
    "B8A": "narrow near infrared", "B09": "water vapour", "B11": "shortwave infrared 1",
    "B12": "shortwave infrared 2",
}

#: Derived channel → the variables it needs.
DERIVED: Mapping[str, tuple[str, ...]] = {**{k: tuple(v) for k, v in INDEX_BANDS.items()}, "slope": ("dem",)}
#: Derived channels written when no channel list is given (where their inputs exist).
DEFAULT_DERIVED = ("ndvi", "ndwi", "ndbi", "slope")

_BANDS_HINT = "name the bands in order with --bands, e.g. --bands B02,B03,B04,B08."


def canonical_band(name: str) -> str:
    """``B4``/``b04``/``red`` → ``B04``, ``B8a`` → ``B8A``, ``Elevation`` → ``dem``; other
    names come back stripped, unchanged."""
    text = str(name).strip()
    m = re.fullmatch(r"[bB]0?(\d{1,2})", text)
    if m:
        return f"B{int(m.group(1)):02d}"
    if re.fullmatch(r"[bB]0?8[aA]", text):
        return "B8A"
    key = re.sub(r"[\s_\-]", "", text).casefold()
    return BAND_ALIASES.get(key, text)


def _band_names(descriptions: Sequence[str | None], count: int, bands: Sequence[str] | None, path: Path) -> list[str]:
    if bands:
        if len(bands) != count:
            raise InputDataError(
                f"{path.name} has {count} band(s) but --bands names {len(bands)} ({','.join(bands)}).",
                "give one name per band, in band order.",
            )
        names = [canonical_band(b) for b in bands]
    else:
        missing = [i + 1 for i, d in enumerate(descriptions) if not d]
        if missing:
            raise InputDataError(
                f"{path.name}: band(s) {missing} of {count} have no description, so their names are unknown.",
                _BANDS_HINT,
            )
        names = [canonical_band(d) for d in descriptions]  # type: ignore[arg-type]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputDataError(f"{path.name}: band name(s) {dup} appear more than once.", _BANDS_HINT)
    return names


def _coords(transform: Affine, h: int, w: int) -> dict[str, np.ndarray]:
    return {
        "y": transform.f + (np.arange(h) + 0.5) * transform.e,
        "x": transform.c + (np.arange(w) + 0.5) * transform.a,
    }


def _georeference(ds: xr.Dataset, crs, transform: Affine) -> xr.Dataset:
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = ds.rio.write_crs(crs).rio.write_transform(transform).rio.write_coordinate_system()
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        ds[name].encoding.pop("grid_mapping", None)
    return ds


def read_raster(path: str | Path, bands: Sequence[str] | None = None) -> xr.Dataset:
    """One GeoTIFF as a Dataset of float32 ``(y, x)`` variables named by band (nodata → NaN),
    with pixel-centre coordinates and its CRS (rioxarray ``spatial_ref``).

    Raises :class:`InputDataError` for an unreadable file, a raster without CRS, a rotated
    grid, or bands whose names are unknown (no description and no ``bands``).
    """
    path = Path(path)
    with open_raster(path) as src:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise InputDataError(f"raster {path} has a rotated grid.", "warp it north-up first (gdalwarp).")
        names = _band_names(src.descriptions, src.count, bands, path)
        data = src.read(masked=True).astype(np.float32).filled(np.nan)
        crs = src.crs
    coords = _coords(t, data.shape[1], data.shape[2])
    ds = xr.Dataset(
        {n: (("y", "x"), data[i], _attrs(n)) for i, n in enumerate(names)}, coords=coords
    )
    ds.attrs["source"] = str(path)
    return _georeference(ds, crs, t)



def open_raster(path: Path, what: str = "raster"):  # type: ignore[no-untyped-def]
    """``rasterio.open(path)`` for a raster that must carry a CRS: one-line
    :class:`InputDataError` naming ``what`` when it cannot be opened or has none."""
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputDataError(f"cannot open {what} {path}: {exc}") from exc
    if src.crs is None:
        src.close()
        raise InputDataError(f"{what} {path} has no CRS.", "assign one (gdal_edit.py -a_srs EPSG:...).")
    return src


def _attrs(name: str) -> dict:
    if name == "dem":
        return {"units": "m", "long_name": "elevation"}
    if name in _BAND_LONG_NAMES:
        return {"units": "1", "long_name": f"Sentinel-2 {name} ({_BAND_LONG_NAMES[name]}), as stored"}
    if name in INDEX_LONG_NAMES:
        return {"units": "1", "long_name": INDEX_LONG_NAMES[name]}
    return {"units": "1", "long_name": name}


def _warp_dem(path: Path, ds: xr.Dataset) -> np.ndarray:
    """A DEM raster warped (bilinear) onto the grid of ``ds``; NaN outside it."""
    h, w = ds.sizes["y"], ds.sizes["x"]
    out = np.full((h, w), np.nan, dtype=np.float32)
    with open_raster(path, "DEM") as src:
        rasterio.warp.reproject(
            rasterio.band(src, 1), out,
            src_nodata=src.nodata, dst_transform=ds.rio.transform(), dst_crs=ds.rio.crs,
            dst_nodata=np.nan, resampling=Resampling.bilinear,
        )
    return out


def resolve_channels(wanted: Iterable[str], available: Iterable[str]) -> tuple[str, ...]:
    """Names as the store spells them: exact, then band aliases (``B4`` → ``B04``), then
    case-insensitive (``NDVI`` → ``ndvi``). Unknown names come back unchanged."""
    avail = list(available)
    folded = {a.casefold(): a for a in avail}
    out = []
    for w in wanted:
        w = str(w).strip()
        if w in avail:
            out.append(w)
            continue
        c = canonical_band(w)
        out.append(c if c in avail else folded.get(c.casefold(), folded.get(w.casefold(), w)))
    return tuple(out)


def _derivable(names: Iterable[str]) -> list[str]:
    have = set(names)
    return [d for d in DEFAULT_DERIVED if set(DERIVED[d]) <= have]


def derive_channels(ds: xr.Dataset, channels: Sequence[str], label: str = "raster") -> xr.Dataset:
    """``ds`` reduced to ``channels`` (in order), computing derived ones (indices, slope)
    with the pipeline's kernels. Raises :class:`InputDataError` naming a channel that is
    neither a band nor derivable from the bands present."""
    out: dict[str, xr.DataArray] = {}
    for c in channels:
        if c in ds.data_vars:
            out[c] = ds[c]
            continue
        need = DERIVED.get(c)
        if need is None:
            raise InputDataError(
                f"{label} has no band {c!r} (it has {sorted(map(str, ds.data_vars))}) and {c!r} is not "
                f"a derived channel ({sorted(DERIVED)}).",
                "ask for bands the rasters have, or name their bands with --bands.",
            )
        lacking = [n for n in need if n not in ds.data_vars]
        if lacking:
            raise InputDataError(
                f"{label} lacks {lacking}, needed for {c}.",
                "add those bands (name them with --bands), pass --dem for slope, or drop the channel.",
            )
        if c == "slope":
            da = terrain_slope(ds["dem"], edges="nearest").compute()
            da.attrs["units"] = "degree"
        else:
            da = spectral_indices(ds, [c])[c]
        out[c] = da.astype(np.float32)
    res = xr.Dataset(out, coords={k: v for k, v in ds.coords.items()}, attrs=dict(ds.attrs))
    for name in res.data_vars:
        res[name].attrs.setdefault("units", "1")
        res[name].attrs["grid_mapping"] = "spatial_ref"
    return res


def find_rasters(inputs: Iterable[str | Path]) -> list[Path]:
    """GeoTIFF files named, and those directly inside folders named (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise InputDataError(f"folder {p} holds no GeoTIFF (.tif/.tiff).", "point at the folder of chips.")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputDataError(f"input {p} does not exist.", "pass GeoTIFF files or folders of them.")
    if not out:
        raise InputDataError("no input rasters given.", "pass GeoTIFF files or a folder of chips.")
    return out


def _group_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "chip"


def chip_store_info(path: str | Path) -> dict | None:
    """The root attributes of a chip store, or None for any other store (reads no arrays)."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a Zarr group at all
        return None
    attrs = dict(root.attrs)
    return attrs if attrs.get(STORE_KIND_ATTR) == CHIP_STORE else None


@dataclass(frozen=True)
class PreparedStore:
    """What :func:`prepare_chip_store` wrote."""

    path: Path
    channels: tuple[str, ...]
    chips: tuple[dict, ...]


def _tiles(ds: xr.Dataset, tile: int | None) -> Iterable[tuple[str, xr.Dataset, tuple[int, int] | None]]:
    h, w = ds.sizes["y"], ds.sizes["x"]
    if not tile or (h <= tile and w <= tile):
        yield "", ds, None
        return
    t = ds.rio.transform()
    for r0 in range(0, h, tile):
        for c0 in range(0, w, tile):
            part = ds.isel(y=slice(r0, r0 + tile), x=slice(c0, c0 + tile))
            yield f"_r{r0 // tile}c{c0 // tile}", part.rio.write_transform(t @ Affine.translation(c0, r0)), (r0, c0)


def prepare_chip_store(
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    bands: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    dem: str | Path | None = None,
    tile: int | None = None,
    overwrite: bool = False,
    on_chip: Callable[[str], None] | None = None,
) -> PreparedStore:
    """Write a chip store at ``out`` from GeoTIFFs and folders of them (see the module doc).

    ``channels`` default to every band plus the indices and slope their bands allow; a
    channel one raster cannot provide fails before anything is written (one line naming
    raster, channel and the missing bands). ``tile`` (px) cuts larger rasters into chips.
    Refuses an existing ``out`` unless ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists.", "pass --overwrite to replace it, or choose another --out.")
    if tile is not None and tile < 16:
        raise InputDataError(f"tile {tile} px is too small.", "use tiles of at least 16 px (e.g. 256).")
    paths = find_rasters(inputs)
    names: dict[str, Path] = {}
    for p in paths:
        g = _group_name(p.stem)
        if g in names:
            raise InputDataError(
                f"rasters {names[g]} and {p} would both be chip {g!r}.", "give every chip its own file name."
            )
        names[g] = p
    # first pass: read headers only, so a channel no raster can give fails before any work
    resolved: tuple[str, ...] | None = None
    for g, p in names.items():
        with rasterio.open(p) as src:
            band_names = _band_names(src.descriptions, src.count, bands, p)
        have = band_names + (["dem"] if dem is not None and "dem" not in band_names else [])
        if channels:
            want = resolve_channels(channels, have + list(DERIVED))
            for c in want:
                need = DERIVED.get(c, ()) if c not in have else ()
                if c not in have and c not in DERIVED:
                    raise InputDataError(
                        f"{p.name} has no band {c!r} (it has {have}) and {c!r} is not a derived channel "
                        f"({sorted(DERIVED)}).",
                        "ask for bands the rasters have, or name their bands with --bands.",
                    )
                lacking = [n for n in need if n not in have]
                if lacking:
                    raise InputDataError(
                        f"{p.name} lacks {lacking}, needed for {c}.",
                        "add those bands (name them with --bands), pass --dem for slope, or drop the channel.",
                    )
        else:
            want = tuple(have + [d for d in _derivable(have) if d not in have])
            if resolved is not None and want != resolved:
                raise InputDataError(
                    f"{p.name} gives channels {list(want)} but earlier rasters give {list(resolved)}.",
                    "choose the channels every chip has with --channels.",
                )
        resolved = want
    assert resolved is not None
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    chips: list[dict] = []
    try:
        import zarr

        zarr.open_group(str(tmp), mode="w", zarr_format=ZARR_FORMAT)
        for g, p in names.items():
            ds = read_raster(p, bands)
            if dem is not None and "dem" not in ds.data_vars:
                ds["dem"] = (("y", "x"), _warp_dem(Path(dem), ds), _attrs("dem"))
            ds = derive_channels(ds, resolved, p.name)
            for suffix, part, window in _tiles(ds, tile):
                name = g + suffix
                t = part.rio.transform()
                part = part.assign_attrs(source=str(p.resolve()), chip=name)
                crs = crs_attrs(part.rio.crs)
                for var in part.data_vars.values():
                    var.attrs.update(crs)
                if max(part.sizes.values()) > 2048:
                    part = part.chunk({"y": 2048, "x": 2048})
                part.to_zarr(str(tmp), group=name, mode="w", zarr_format=ZARR_FORMAT, consolidated=False,
                             encoding=zarr_encoding(part.variables))
                chips.append({
                    "name": name,
                    "group": name,
                    "source": str(p.resolve()),
                    "window": list(window) if window else None,
                    "crs": part.rio.crs.to_string(),
                    "transform": list(t)[:6],
                    "shape": [int(part.sizes["y"]), int(part.sizes["x"])],
                })
                if on_chip is not None:
                    on_chip(name)
        root = zarr.open_group(str(tmp), mode="a")
        root.attrs.update({
            STORE_KIND_ATTR: CHIP_STORE,
            "store_version": STORE_VERSION,
            "channels": list(resolved),
            "chips": chips,
            "bands": list(bands) if bands else None,
            "dem": str(Path(dem).resolve()) if dem is not None else None,
            "tile": tile,
            "software": {"slidewatch": __version__},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        })
        replace_dir(tmp, out, out.with_name(f".{out.name}.{secrets.token_hex(4)}.old"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedStore(out, resolved, tuple(chips))
