"""Lazy cube assembly with stackstac: one dask-chunked ``xr.Dataset`` per UTM zone grid.

- Sentinel-2 L2A: SCL mask (clouds, shadows, cirrus, no data), DN → reflectance with the
  processing-baseline offset, median composite over the window, count of valid scenes.
- Sentinel-1 RTC: VV and VH gamma0 → dB, median over the window; with the GRD fallback the
  values are relative dB of uncalibrated DN (documented in the README), and GRD scenes in radar
  geometry are geocoded through their GCPs and the DEM (:mod:`pipeline.sar_geocode`).
- Copernicus DEM (EPSG:4326 tiles): bilinear onto the grid, tiles mosaicked.

Nothing is computed here; ``pipeline.store`` writes the result tile by tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import pystac
import stackstac
import xarray as xr
from rasterio.enums import Resampling

from pipeline import __version__
from pipeline.catalog import RunInputs, has_map_projection
from pipeline.collections import (
    DEM_ASSET,
    S2_BOA_OFFSET,
    S2_OFFSET_BASELINE,
    S2_QUANTIFICATION,
    S2_SCL,
    SCL_VALID,
    SENTINEL1_GRD,
)
from pipeline.config import ZoneGrid
from pipeline.errors import InputDataError, MissingAssetError
from pipeline.gdal_settings import GDAL_ENV, crs_checked_reader
from pipeline.sar_geocode import grd_stack

S2_BAND_NAMES = {
    "B01": "coastal aerosol", "B02": "blue", "B03": "green", "B04": "red",
    "B05": "red edge 1", "B06": "red edge 2", "B07": "red edge 3", "B08": "near infrared",
    "B8A": "narrow near infrared", "B09": "water vapour", "B11": "shortwave infrared 1",
    "B12": "shortwave infrared 2",
}

#: Attributes of every cube variable (CF ``units`` and ``long_name``).
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    **{
        band: {
            "units": "1",
            "long_name": f"Sentinel-2 L2A {name} surface reflectance, cloud-masked median",
        }
        for band, name in S2_BAND_NAMES.items()
    },
    "s2_valid_count": {
        "units": "1",
        "long_name": "number of cloud-free Sentinel-2 observations in the composite",
    },
    "vv": {"units": "dB", "long_name": "Sentinel-1 VV backscatter (gamma0), median, aligned across orbit tracks"},
    "vh": {"units": "dB", "long_name": "Sentinel-1 VH backscatter (gamma0), median"},
    "vv_dry": {"units": "dB", "long_name": "Sentinel-1 VV dry reference (low percentile of the track-aligned history)"},
    "vv_wet": {"units": "dB", "long_name": "Sentinel-1 VV wet reference (high percentile of the track-aligned history)"},
    "dem": {"units": "m", "long_name": "Copernicus DEM GLO-30 elevation, bilinear onto the grid"},
}


def _check_assets(items: Sequence[pystac.Item], assets: Sequence[str], collection: str) -> None:
    for it in items:
        missing = [a for a in assets if a not in it.assets]
        if missing:
            raise MissingAssetError(
                f"{collection} item {it.id!r} lacks asset(s) {missing}; it has {sorted(it.assets)}.",
                "use a STAC API whose items follow Planetary Computer's asset keys.",
            )


def _with_epsg(fields: dict) -> None:
    code = fields.get("proj:code")
    if "proj:epsg" not in fields and isinstance(code, str) and code.upper().startswith("EPSG:"):
        fields["proj:epsg"] = int(code.split(":", 1)[1])


def stackstac_dict(item: pystac.Item) -> dict:
    """The item as a dict stackstac 0.5 understands: pystac migrates the projection
    extension to v2 (``proj:code``), while stackstac reads ``proj:epsg``."""
    d = item.to_dict(transform_hrefs=False)
    _with_epsg(d["properties"])
    for asset in d.get("assets", {}).values():
        _with_epsg(asset)
    return d


def _stack(
    items: Sequence[pystac.Item],
    assets: Sequence[str],
    grid: ZoneGrid,
    *,
    dtype: str,
    fill_value: float,
    resampling: Resampling,
    time_chunk: int,
    sortby_date: bool = True,
) -> xr.DataArray:
    dicts = [stackstac_dict(it) for it in items]
    arr = stackstac.stack(
        dicts,
        assets=list(assets),
        epsg=grid.epsg,
        resolution=grid.resolution,
        bounds=grid.bounds,
        snap_bounds=False,
        resampling=resampling,
        chunksize=(time_chunk, 1, grid.chunk, grid.chunk),
        dtype=np.dtype(dtype),
        # a numpy scalar of the output dtype: stackstac's can_cast check rejects a Python float
        fill_value=np.dtype(dtype).type(fill_value),
        rescale=False,
        xy_coords="center",
        properties=True,
        band_coords=False,
        sortby_date="asc" if sortby_date else False,
        gdal_env=GDAL_ENV,
        errors_as_nodata=(),  # a failed read must fail the tile, never become silent nodata
        reader=crs_checked_reader(dicts, assets),  # a file in another CRS than its item says fails
    )
    if arr.shape[-2:] != grid.shape:
        raise InputDataError(
            f"stackstac produced a {arr.shape[-2:]} array for a {grid.shape} grid.",
            "report this as a bug with the region you ran.",
        )
    return arr


def _boa_offsets(arr: xr.DataArray) -> np.ndarray:
    """Per-scene DN offset: -1000 from processing baseline 04.00 on, else 0."""
    n = arr.sizes["time"]
    if "s2:processing_baseline" in arr.coords:
        baselines = np.broadcast_to(arr.coords["s2:processing_baseline"].values, (n,))
        return np.array(
            [S2_BOA_OFFSET if str(b) >= S2_OFFSET_BASELINE else 0 for b in baselines],
            dtype="float32",
        )
    times = arr["time"].values.astype("datetime64[D]")
    return np.where(times >= np.datetime64("2022-01-25"), S2_BOA_OFFSET, 0).astype("float32")


def nanquantile_axis0(block: np.ndarray, q: float) -> np.ndarray:
    """NaN-aware quantile ``q`` (0..1) over axis 0 with linear interpolation, like
    ``np.nanquantile`` but vectorised (sort once; NaNs sort last). All-NaN → NaN."""
    srt = np.sort(block, axis=0)
    n = np.isfinite(srt).sum(axis=0)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = (pos - lo).astype(block.dtype)
    vlo = np.take_along_axis(srt, lo[None], axis=0)[0]
    vhi = np.take_along_axis(srt, hi[None], axis=0)[0]
    out = vlo + (vhi - vlo) * frac
    out[n == 0] = np.nan
    return out.astype(block.dtype, copy=False)


def _nanmedian_time(arr: xr.DataArray) -> xr.DataArray:
    """NaN-aware median over ``time`` (one chunk along time) without all-NaN warnings."""
    data = arr.data
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    med = da.map_blocks(nanquantile_axis0, data, 0.5, drop_axis=0, dtype=data.dtype)
    return xr.DataArray(med, dims=arr.dims[1:], coords={k: v for k, v in arr.coords.items() if "time" not in v.dims})


def s2_composite(items: Sequence[pystac.Item], grid: ZoneGrid, bands: Sequence[str]) -> xr.Dataset:
    """Cloud-masked median reflectance of ``bands`` and the valid-observation count."""
    _check_assets(items, [*bands, S2_SCL], "sentinel-2-l2a")
    ntime = len(items)
    dn = _stack(items, bands, grid, dtype="float32", fill_value=np.nan,
                resampling=Resampling.nearest, time_chunk=ntime)
    scl = _stack(items, [S2_SCL], grid, dtype="uint8", fill_value=0,
                 resampling=Resampling.nearest, time_chunk=ntime).isel(band=0, drop=True)
    valid = scl.isin(list(SCL_VALID))
    offsets = xr.DataArray(_boa_offsets(dn), dims=["time"])
    refl = ((dn + offsets) / np.float32(S2_QUANTIFICATION)).clip(min=0.0).astype("float32")
    refl = refl.where(valid & (dn > 0))
    out = xr.Dataset()
    for i, band in enumerate(bands):
        out[band] = _nanmedian_time(refl.isel(band=i, drop=True))
    count = valid.sum("time").clip(max=255).astype("uint8")
    out["s2_valid_count"] = count.drop_vars([c for c in count.coords if c not in ("x", "y")])
    return out


def _to_db(linear: xr.DataArray) -> xr.DataArray:
    return (10.0 * np.log10(linear.where(linear > 0))).astype("float32")


def s1_power(
    items: Sequence[pystac.Item], pol: str, grid: ZoneGrid, collection: str, dem: xr.DataArray | None = None,
) -> xr.DataArray:
    """Linear backscatter of polarisation ``pol`` per scene, ``(time, y, x)`` float32, time in
    one chunk, NaN where a scene has no data; the ``id`` coordinate names each scene's item
    (projected items with nothing over the grid are left out; when nothing is left, one
    all-NaN scene with id ``""`` stands in).

    RTC assets are gamma0 power already. GRD assets are amplitude DN, squared to power
    (relative, uncalibrated). GRD items with a map projection (``proj:*``) are read by stackstac;
    those in radar geometry (Planetary Computer's) are geocoded through their GCPs by
    :mod:`pipeline.sar_geocode`, with ``dem`` (on the grid) correcting the terrain displacement.
    """
    _check_assets(items, [pol], collection)
    grd = collection == SENTINEL1_GRD
    projected = [it for it in items if not grd or has_map_projection(it)]
    radar = [it for it in items if grd and not has_map_projection(it)]
    parts: list[da.Array] = []
    ids: list[str] = []
    if projected:
        arr = _stack(projected, [pol], grid, dtype="float32", fill_value=np.nan, resampling=Resampling.bilinear,
                     time_chunk=len(projected), sortby_date=False)
        # stackstac drops items with no asset over the grid: the id coordinate says which are left
        if arr.sizes["time"] > 0 and arr.sizes["band"] > 0:
            arr = arr.isel(band=0, drop=True)
            ids += [str(v) for v in np.atleast_1d(arr["id"].values)] if "id" in arr.coords else [it.id for it in projected]
            parts.append(da.where(arr.data > -32767, arr.data, np.nan))
    if radar:
        ids += [it.id for it in radar]
        parts.append(grd_stack(radar, pol, grid, dem))
    if not parts:  # nothing over the grid: one empty scene
        ids, parts = [""], [da.full((1, *grid.shape), np.nan, dtype="float32", chunks=(1, grid.chunk, grid.chunk))]
    data = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0).rechunk({0: -1})
    if grd:
        data = data * data
    y, x = grid.pixel_centres()
    return xr.DataArray(data, dims=("time", "y", "x"), coords={"id": ("time", ids), "y": y, "x": x})


def s1_backscatter(
    items: Sequence[pystac.Item], grid: ZoneGrid, collection: str, dem: xr.DataArray | None = None,
) -> xr.Dataset:
    """Median VV and VH in dB over the scenes (see :func:`s1_power`)."""
    _check_assets(items, ["vv", "vh"], collection)
    return xr.Dataset({
        pol: _nanmedian_time(_to_db(s1_power(items, pol, grid, collection, dem))) for pol in ("vv", "vh")
    })


def s1_history_db(
    items: Sequence[pystac.Item], grid: ZoneGrid, collection: str, dem: xr.DataArray | None = None,
) -> xr.DataArray:
    """VV in dB for every scene of the reference history, ``(time, y, x)``, time in one chunk."""
    return _to_db(s1_power(items, "vv", grid, collection, dem))


def dem_on_grid(items: Sequence[pystac.Item], grid: ZoneGrid) -> xr.DataArray:
    """Copernicus DEM tiles, bilinear onto the grid, first valid tile wins where they overlap."""
    _check_assets(items, [DEM_ASSET], "cop-dem-glo-30")
    arr = _stack(items, [DEM_ASSET], grid, dtype="float32", fill_value=np.nan,
                 resampling=Resampling.bilinear, time_chunk=1).isel(band=0, drop=True)
    arr = arr.where(arr > -1000)  # Copernicus DEM nodata is -32767
    dem = stackstac.mosaic(arr, dim="time") if arr.sizes["time"] > 1 else arr.isel(time=0)
    return dem.astype("float32").drop_vars([c for c in dem.coords if c not in ("x", "y")])


def orbit_track(item: pystac.Item) -> str:
    """A Sentinel-1 scene's acquisition geometry: orbit direction and relative orbit."""
    p = item.properties
    return f"{p.get('sat:orbit_state', '?')}/{p.get('sat:relative_orbit', '?')}"


#: Scenes a track needs at a pixel before its mean is trusted as its geometry offset.
MIN_TRACK_SCENES = 3


def align_tracks_kernel(block: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Scenes (axis 0, dB) minus their track's offset, per pixel.

    A track's offset is the per-pixel mean of its scenes minus the mean of all tracks' means,
    so that a slope seen by ascending and descending passes (several dB apart from the
    geometry alone) keeps only the changes over time. A mean is trusted from
    :data:`MIN_TRACK_SCENES` valid scenes: where some track has that many, the scenes of
    tracks with fewer are left out (NaN) rather than flattened onto the mean (one scene
    would be its own mean, and its change would vanish); where none has, the scenes stay
    as they are. NaN-aware; one track leaves the block unchanged.
    """
    labels = np.unique(groups)
    if len(labels) < 2:
        return block
    means, counts = [], []
    for g in labels:
        sel = block[groups == g]
        n = np.isfinite(sel).sum(axis=0)
        total = np.nansum(sel, axis=0)
        means.append(np.where(n > 0, total / np.maximum(n, 1), np.nan))
        counts.append(n)
    stacked = np.stack(means)
    trusted = np.stack(counts) >= MIN_TRACK_SCENES
    any_trusted = trusted.any(axis=0)
    n_tracks = trusted.sum(axis=0)
    overall = np.where(n_tracks > 0, np.where(trusted, stacked, 0.0).sum(axis=0) / np.maximum(n_tracks, 1), np.nan)
    out = block.copy()
    for i, g in enumerate(labels):
        offset = np.where(trusted[i], stacked[i] - overall, 0.0).astype(block.dtype)
        drop = any_trusted & ~trusted[i]
        rows = out[groups == g] - offset
        rows[:, drop] = np.nan
        out[groups == g] = rows
    return out


def align_tracks(history: xr.DataArray, tracks: Sequence[str]) -> xr.DataArray:
    """:func:`align_tracks_kernel` over a ``(time, y, x)`` history (time in one chunk)."""
    if len(set(tracks)) < 2:
        return history
    data = history.data
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    groups = np.array([sorted(set(tracks)).index(t) for t in tracks])
    aligned = da.map_blocks(align_tracks_kernel, data, groups, dtype=data.dtype)
    return history.copy(data=aligned)


def _sar_references(history: xr.DataArray, low: float = 10.0, high: float = 90.0) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-pixel low/high percentiles of the VV history (dB), NaN-aware."""

    def kernel(block: np.ndarray, q: float) -> np.ndarray:
        out = nanquantile_axis0(block, q / 100.0)
        out[np.isfinite(block).sum(axis=0) < 2] = np.nan  # one scene is no history
        return out

    data = history.data
    dry = da.map_blocks(kernel, data, low, drop_axis=0, dtype="float32")
    wet = da.map_blocks(kernel, data, high, drop_axis=0, dtype="float32")
    return (xr.DataArray(dry, dims=("y", "x")), xr.DataArray(wet, dims=("y", "x")))


def build_cube(inputs: RunInputs, grid: ZoneGrid, bands: Sequence[str]) -> xr.Dataset:
    """The lazy cube of one zone grid: S2 composite, S1 dB medians and references, DEM."""
    ds = s2_composite(inputs.s2, grid, bands)
    dem = dem_on_grid(inputs.dem, grid)
    y = ds["y"].values
    x = ds["x"].values
    nan = da.full(grid.shape, np.nan, dtype="float32", chunks=grid.chunk)
    hist_ids = {it.id for it in inputs.s1_history}
    in_history = bool(inputs.s1) and all(it.id in hist_ids for it in inputs.s1)
    history = None
    if len(inputs.s1_history) >= 2:
        # VV over the whole history once, aligned across orbit tracks: the references and the
        # window's median come from the same scenes and the same geometry correction
        history = s1_history_db(inputs.s1_history, grid, inputs.s1_collection, dem)
        track = {it.id: orbit_track(it) for it in inputs.s1_history}
        history = align_tracks(history, [track.get(str(i), "") for i in history["id"].values])
        dry, wet = _sar_references(history)
        ds["vv_dry"], ds["vv_wet"] = dry.assign_coords(y=y, x=x), wet.assign_coords(y=y, x=x)
    else:
        ds["vv_dry"] = (("y", "x"), nan)
        ds["vv_wet"] = (("y", "x"), nan)
    if inputs.s1 and history is not None and in_history:
        in_window = {it.id for it in inputs.s1}
        window = [k for k, i in enumerate(history["id"].values) if str(i) in in_window]
        vv = _nanmedian_time(history.isel(time=window)).data if window else nan
        ds["vv"] = (("y", "x"), vv)
        vh = _nanmedian_time(_to_db(s1_power(inputs.s1, "vh", grid, inputs.s1_collection, dem)))
        ds["vh"] = vh.assign_coords(y=y, x=x)
    elif inputs.s1:
        s1 = s1_backscatter(inputs.s1, grid, inputs.s1_collection, dem)
        ds["vv"], ds["vh"] = (s1[v].assign_coords(y=y, x=x) for v in ("vv", "vh"))
    else:
        ds["vv"] = (("y", "x"), nan)
        ds["vh"] = (("y", "x"), nan)
    ds["dem"] = dem
    keep = {"x", "y"}
    ds = ds.drop_vars([c for c in ds.coords if c not in keep])
    for name, var in ds.data_vars.items():
        var.attrs.update(VARIABLE_ATTRS.get(str(name), {}))
    ds["x"].attrs.update(units="m", long_name="x coordinate of projection", standard_name="projection_x_coordinate", axis="X")
    ds["y"].attrs.update(units="m", long_name="y coordinate of projection", standard_name="projection_y_coordinate", axis="Y")
    ds.attrs["slidewatch_version"] = __version__
    return ds


def cube_variables(bands: Sequence[str]) -> dict[str, str]:
    """Variable name → dtype of a cube built from ``bands`` (for templates)."""
    out = {b: "float32" for b in bands}
    out["s2_valid_count"] = "uint8"
    out.update({v: "float32" for v in ("vv", "vh", "vv_dry", "vv_wet", "dem")})
    return out
