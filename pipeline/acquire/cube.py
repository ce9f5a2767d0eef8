"""Lazy cube assembly: one dask-chunked ``xr.Dataset`` per UTM zone grid.

Sentinel pixels are read by the reader ``SLIDEWATCH_READER`` names
(:mod:`pipeline.acquire.readers`): ``direct`` (default; one task per chunk reads, masks and
composites) or ``stackstac``. Both give the same pixels.

- Sentinel-2 L2A: SCL mask (clouds, shadows, cirrus, no data), DN → reflectance with the
  processing-baseline offset, median composite over the window, count of valid scenes.
- Sentinel-1 RTC: VV and VH gamma0 → dB, median over the window; with the GRD fallback the
  values are relative dB of uncalibrated DN (documented in the README), and GRD scenes in radar
  geometry are geocoded through their GCPs and the DEM (:mod:`pipeline.acquire.sar_geocode`).
- Copernicus DEM (EPSG:4326 tiles): tiles mosaicked, then bilinear onto the grid
  (:mod:`pipeline.acquire.dem`).

Nothing is computed here; ``pipeline.store.tiles`` writes the result tile by tile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import dask.array as da
import numpy as np
import pystac
import stackstac
import xarray as xr
from rasterio.enums import Resampling

from pipeline import __version__
from pipeline.acquire.catalog import RunInputs, has_map_projection
from pipeline.acquire.items import items_over, refresh_signatures, sign_for_read
from pipeline.acquire.readers import (
    S1_LAYERS, boa_offset, reader_choice, s1_blocks, s2_composite_blocks, scenes_over, stack_blocks,
)
from pipeline.core.collections import (
    DEM_ASSET,
    S1_VALID_ABOVE,
    S2_BOA_OFFSET,
    S2_OFFSET_BASELINE,
    S2_QUANTIFICATION,
    S2_SCL,
    SCL_VALID,
    SENTINEL1_GRD,
    COP_DEM,
    NO_SAR,
)
from pipeline.core.config import CHUNKS_PER_TILE, CubeConfig, TimeWindow, ZoneGrid
from pipeline.core.provenance import RunProvenance
from pipeline.plan.estimate import ZonePlan, busiest_tile, estimate_bytes, graph_tasks
from pipeline.core.stats import nanquantile_axis0
from pipeline.factors.sar import align_tracks, orbit_track, sar_references
from pipeline.core.errors import InputDataError, MissingAssetError, NoValidDataError
from pipeline.acquire.gdal import clear_http_cache, crs_checked_reader, gdal_env
from pipeline.acquire.failures import read_failure
from pipeline.core.secrets import redact, unsigned_href
from pipeline.acquire.sar_geocode import grd_stack
from pipeline.acquire.dem import dem_mosaic, dem_tiles

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
        gdal_env=gdal_env(),
        errors_as_nodata=(),  # a failed read must fail the tile, never become silent nodata
        reader=crs_checked_reader(dicts, assets),  # a file in another CRS than its item says fails
    )
    if arr.shape[-2:] != grid.shape:
        raise InputDataError(
            f"stackstac produced a {arr.shape[-2:]} array for a {grid.shape} grid.",
            "report this as a bug with the region you ran.",
        )
    return arr


def _boa_offsets(arr: xr.DataArray, items: Sequence[pystac.Item]) -> np.ndarray:
    """Per-scene DN offset of a stackstac stack (:func:`pipeline.acquire.readers.boa_offset`
    of each scene's item, matched by id: stackstac sorts by date and drops items)."""
    by_id = {it.id: boa_offset(it) for it in items}
    ids = np.atleast_1d(arr["id"].values) if "id" in arr.coords else [it.id for it in items]
    return np.array([by_id[str(i)] for i in ids], dtype="float32")


def _nanmedian_time(arr: xr.DataArray) -> xr.DataArray:
    """NaN-aware median over ``time`` (one chunk along time) without all-NaN warnings."""
    data = arr.data
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    med = da.map_blocks(nanquantile_axis0, data, 0.5, drop_axis=0, dtype=data.dtype)
    return xr.DataArray(med, dims=arr.dims[1:], coords={k: v for k, v in arr.coords.items() if "time" not in v.dims})


def s2_composite(
    items: Sequence[pystac.Item], grid: ZoneGrid, bands: Sequence[str], reader: str | None = None,
) -> xr.Dataset:
    """Cloud-masked median reflectance of ``bands`` and the valid-observation count, read by
    ``reader`` (default: :func:`pipeline.acquire.readers.reader_choice`)."""
    _check_assets(items, [*bands, S2_SCL], "sentinel-2-l2a")
    if (reader or reader_choice()) == "direct":
        return _s2_composite_direct(items, grid, bands)
    ntime = len(items)
    dn = _stack(items, bands, grid, dtype="float32", fill_value=np.nan,
                resampling=Resampling.nearest, time_chunk=ntime)
    scl = _stack(items, [S2_SCL], grid, dtype="uint8", fill_value=0,
                 resampling=Resampling.nearest, time_chunk=ntime).isel(band=0, drop=True)
    valid = scl.isin(list(SCL_VALID))
    offsets = xr.DataArray(_boa_offsets(dn, items), dims=["time"])
    refl = ((dn + offsets) / np.float32(S2_QUANTIFICATION)).clip(min=0.0).astype("float32")
    refl = refl.where(valid & (dn > 0))
    out = xr.Dataset()
    for i, band in enumerate(bands):
        out[band] = _nanmedian_time(refl.isel(band=i, drop=True))
    count = valid.sum("time").clip(max=254).astype("uint8")  # 255 is the fill (no data)
    out["s2_valid_count"] = count.drop_vars([c for c in count.coords if c not in ("x", "y")])
    return out


def _s2_composite_direct(items: Sequence[pystac.Item], grid: ZoneGrid, bands: Sequence[str]) -> xr.Dataset:
    """:func:`s2_composite` by the direct reader: one task per chunk reads, masks and composites."""
    scenes = scenes_over(items, [*bands, S2_SCL], grid)
    by_id = {it.id: it for it in items}
    offsets = [boa_offset(by_id[s.item_id]) for s in scenes]
    blocks = s2_composite_blocks(scenes, offsets, grid, len(bands), env=gdal_env())
    coords = _grid_coords(grid)
    out = xr.Dataset(coords=coords)
    for i, band in enumerate(bands):
        out[band] = (("y", "x"), blocks[i])
    out["s2_valid_count"] = (("y", "x"), blocks[len(bands)].astype("uint8"))
    return out


def _to_db(linear: xr.DataArray) -> xr.DataArray:
    return (10.0 * np.log10(linear.where(linear > 0))).astype("float32")


def s1_power(
    items: Sequence[pystac.Item], pol: str, grid: ZoneGrid, collection: str, dem: xr.DataArray | None = None,
    reader: str | None = None,
) -> xr.DataArray:
    """Linear backscatter of polarisation ``pol`` per scene, ``(time, y, x)`` float32, time in
    one chunk, NaN where a scene has no data; the ``id`` coordinate names each scene's item
    (projected items with nothing over the grid are left out; when nothing is left, one
    all-NaN scene with id ``""`` stands in).

    RTC assets are gamma0 power already. GRD assets are amplitude DN, squared to power
    (relative, uncalibrated). GRD items with a map projection (``proj:*``) are read by ``reader``
    (default :func:`pipeline.acquire.readers.reader_choice`);
    those in radar geometry (Planetary Computer's) are geocoded through their GCPs by
    :mod:`pipeline.acquire.sar_geocode`, with ``dem`` (on the grid) correcting the terrain displacement.
    """
    _check_assets(items, [pol], collection)
    grd = collection == SENTINEL1_GRD
    projected = [it for it in items if not grd or has_map_projection(it)]
    radar = [it for it in items if grd and not has_map_projection(it)]
    parts: list[da.Array] = []
    ids: list[str] = []
    if projected and (reader or reader_choice()) == "direct":
        scenes = scenes_over(projected, [pol], grid)  # items with nothing over the grid are left out
        if scenes:
            ids += [s.item_id for s in scenes]
            stack = stack_blocks(scenes, 0, grid, dtype="float32", fill_value=np.nan,
                                 resampling=Resampling.bilinear, env=gdal_env())
            parts.append(da.where(stack > S1_VALID_ABOVE, stack, np.nan))
    elif projected:
        arr = _stack(projected, [pol], grid, dtype="float32", fill_value=np.nan, resampling=Resampling.bilinear,
                     time_chunk=len(projected), sortby_date=False)
        # stackstac drops items with no asset over the grid: the id coordinate says which are left
        if arr.sizes["time"] > 0 and arr.sizes["band"] > 0:
            arr = arr.isel(band=0, drop=True)
            ids += [str(v) for v in np.atleast_1d(arr["id"].values)] if "id" in arr.coords else [it.id for it in projected]
            parts.append(da.where(arr.data > S1_VALID_ABOVE, arr.data, np.nan))
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
    reader: str | None = None,
) -> xr.Dataset:
    """Median VV and VH in dB over the scenes (see :func:`s1_power`)."""
    _check_assets(items, ["vv", "vh"], collection)
    return xr.Dataset({
        pol: _nanmedian_time(_to_db(s1_power(items, pol, grid, collection, dem, reader))) for pol in ("vv", "vh")
    })


def s1_history_db(
    items: Sequence[pystac.Item], grid: ZoneGrid, collection: str, dem: xr.DataArray | None = None,
    reader: str | None = None,
) -> xr.DataArray:
    """VV in dB for every scene of the reference history, ``(time, y, x)``, time in one chunk."""
    return _to_db(s1_power(items, "vv", grid, collection, dem, reader))


def _grid_coords(grid: ZoneGrid) -> dict[str, np.ndarray]:
    """Pixel-centre coordinates exactly as ``stackstac.stack(..., xy_coords="center")`` makes
    them, so variables built without stackstac align with those built with it."""
    minx, miny, maxx, maxy = grid.bounds
    half = grid.resolution / 2
    return {"y": np.linspace(maxy - half, miny - half, grid.height, endpoint=False),
            "x": np.linspace(minx + half, maxx + half, grid.width, endpoint=False)}


def dem_on_grid(items: Sequence[pystac.Item], grid: ZoneGrid) -> xr.DataArray:
    """Copernicus DEM tiles mosaicked in their own grid, then bilinear onto the grid, lazily, one
    task per chunk (:mod:`pipeline.acquire.dem`): no seams at tile borders. Where tiles overlap,
    the later item wins; elevations at or below ``DEM_VALID_ABOVE`` are NaN."""
    _check_assets(items, [DEM_ASSET], "cop-dem-glo-30")
    data = dem_mosaic(dem_tiles(items, DEM_ASSET), grid, env=gdal_env())
    return xr.DataArray(data, dims=("y", "x"), coords=_grid_coords(grid))


def build_cube(inputs: RunInputs, grid: ZoneGrid, bands: Sequence[str], reader: str | None = None) -> xr.Dataset:
    """The lazy cube of one zone grid: S2 composite, S1 dB medians and references, DEM; the
    Sentinel pixels read by ``reader`` (default :func:`pipeline.acquire.readers.reader_choice`)."""
    reader = reader or reader_choice()
    ds = s2_composite(inputs.s2, grid, bands, reader)
    dem = dem_on_grid(inputs.dem, grid)
    y = ds["y"].values
    x = ds["x"].values
    hist_ids = {it.id for it in inputs.s1_history}
    in_history = bool(inputs.s1) and all(it.id in hist_ids for it in inputs.s1)
    if reader == "direct" and len(inputs.s1_history) >= 2 and in_history and _projected(inputs):
        # one task per chunk reads the history, aligns the tracks and reduces it, holding only
        # the scenes with a value in that chunk: the same pixels as the stack path
        blocks = _s1_direct(inputs, grid)
        for i, name in enumerate(S1_LAYERS):
            ds[name] = (("y", "x"), blocks[i])
    else:
        for name, var in _s1_stacked(inputs, grid, dem, reader, in_history).items():
            ds[name] = var.assign_coords(y=y, x=x) if isinstance(var, xr.DataArray) else (("y", "x"), var)
    ds["dem"] = dem
    keep = {"x", "y"}
    ds = ds.drop_vars([c for c in ds.coords if c not in keep])
    for name, var in ds.data_vars.items():
        var.attrs.update(VARIABLE_ATTRS.get(str(name), {}))
    ds["x"].attrs.update(units="m", long_name="x coordinate of projection", standard_name="projection_x_coordinate", axis="X")
    ds["y"].attrs.update(units="m", long_name="y coordinate of projection", standard_name="projection_y_coordinate", axis="Y")
    ds.attrs["slidewatch_version"] = __version__
    return ds


def _s1_stacked(
    inputs: RunInputs, grid: ZoneGrid, dem: xr.DataArray, reader: str, in_history: bool,
) -> dict[str, xr.DataArray | da.Array]:
    """The Sentinel-1 variables (``vv_dry``, ``vv_wet``, ``vv``, ``vh``) from ``(time, y, x)``
    stacks: the stackstac reader, GRD in radar geometry, a window outside the history."""
    nan = da.full(grid.shape, np.nan, dtype="float32", chunks=grid.chunk)
    out: dict[str, xr.DataArray | da.Array] = {}
    history = None
    if len(inputs.s1_history) >= 2:
        # VV over the whole history once, aligned across orbit tracks: the references and the
        # window's median come from the same scenes and the same geometry correction
        history = s1_history_db(inputs.s1_history, grid, inputs.s1_collection, dem, reader)
        track = {it.id: orbit_track(it) for it in inputs.s1_history}
        history = align_tracks(history, [track.get(str(i), "") for i in history["id"].values])
        out["vv_dry"], out["vv_wet"] = sar_references(history)
    else:
        out["vv_dry"] = out["vv_wet"] = nan
    if inputs.s1 and history is not None and in_history:
        in_window = {it.id for it in inputs.s1}
        window = [k for k, i in enumerate(history["id"].values) if str(i) in in_window]
        out["vv"] = _nanmedian_time(history.isel(time=window)).data if window else nan
        out["vh"] = _nanmedian_time(_to_db(s1_power(inputs.s1, "vh", grid, inputs.s1_collection, dem, reader)))
    elif inputs.s1:
        s1 = s1_backscatter(inputs.s1, grid, inputs.s1_collection, dem, reader)
        out["vv"], out["vh"] = s1["vv"], s1["vh"]
    else:
        out["vv"] = out["vh"] = nan
    return out


def _projected(inputs: RunInputs) -> bool:
    """Whether every Sentinel-1 scene is on a map projection (RTC, or GRD with ``proj:*``):
    the direct reader reads them; GRD in radar geometry is geocoded by its own path."""
    return inputs.s1_collection != SENTINEL1_GRD or all(
        has_map_projection(it) for it in [*inputs.s1_history, *inputs.s1])


def _s1_direct(inputs: RunInputs, grid: ZoneGrid) -> da.Array:
    """:func:`pipeline.acquire.readers.s1_blocks` of the run's history and window scenes."""
    _check_assets(inputs.s1_history, ["vv"], inputs.s1_collection)
    _check_assets(inputs.s1, ["vh"], inputs.s1_collection)
    history = scenes_over(inputs.s1_history, ["vv"], grid)  # items with nothing over the grid are left out
    track = {it.id: orbit_track(it) for it in inputs.s1_history}
    names = [track.get(s.item_id, "") for s in history]
    labels = sorted(set(names))
    in_window = {it.id for it in inputs.s1}
    return s1_blocks(history, [labels.index(n) for n in names], [s.item_id in in_window for s in history],
                     scenes_over(inputs.s1, ["vh"], grid), grid,
                     squared=inputs.s1_collection == SENTINEL1_GRD, env=gdal_env())


def cube_variables(bands: Sequence[str]) -> dict[str, str]:
    """Variable name → dtype of a cube built from ``bands`` (for templates)."""
    out = {b: "float32" for b in bands}
    out["s2_valid_count"] = "uint8"
    out.update({v: "float32" for v in ("vv", "vh", "vv_dry", "vv_wet", "dem")})
    return out


def zone_plan(inputs: RunInputs, grid: ZoneGrid, config: CubeConfig) -> ZonePlan:
    """Items, bytes and dask tasks of one zone, without reading pixels: the whole zone's cube
    graph (``tasks``) and the largest graph the run submits, its busiest write tile's
    (``largest_graph``)."""
    cube = build_cube(inputs, grid, config.s2_bands)
    tile = busiest_tile(grid, grid.tiles(CHUNKS_PER_TILE), inputs.all_items())
    largest = None
    if tile is not None:
        sub = grid.subgrid(tile)

        def pick(items: Sequence[pystac.Item]) -> list[pystac.Item]:
            return items_over(items, sub.epsg, sub.bounds)

        sel = RunInputs(s2=pick(inputs.s2), s1=pick(inputs.s1), s1_history=pick(inputs.s1_history),
                        dem=pick(inputs.dem), s1_collection=inputs.s1_collection)
        largest = graph_tasks(build_cube(sel, sub, config.s2_bands)) if sel.s2 and sel.dem else 0
    nbytes = estimate_bytes(inputs.s2, [*config.s2_bands, "SCL"], grid, [2] * (len(config.s2_bands) + 1))
    s1_px = 2 if inputs.s1_collection == SENTINEL1_GRD else 4  # GRD DN are uint16, RTC gamma0 float32
    nbytes += estimate_bytes(inputs.s1_history, ["vv", "vh"], grid, [s1_px, s1_px])
    nbytes += estimate_bytes(inputs.dem, ["data"], grid, [4])  # float32 elevations
    return ZonePlan(grid=grid, items=inputs.counts(), bytes_read=nbytes, tasks=graph_tasks(cube), notes=list(inputs.notes),
                    largest_graph=largest)


def tile_inputs(inputs: RunInputs, stac_url: str, grid: ZoneGrid) -> RunInputs:
    """The items of one write tile's grid, freshly signed for reading (signatures expire,
    so this runs for every tile and every retry)."""

    def pick(items: Sequence[pystac.Item]) -> list[pystac.Item]:
        return items_over(sign_for_read(items, stac_url), grid.epsg, grid.bounds)

    return RunInputs(s2=pick(inputs.s2), s1=pick(inputs.s1), s1_history=pick(inputs.s1_history),
                     dem=pick(inputs.dem), s1_collection=inputs.s1_collection)


def cube_attrs(
    prov: RunProvenance, window: TimeWindow, stac_url: str, grid: ZoneGrid, inputs: RunInputs, config: CubeConfig,
) -> dict:
    """The cube store's CF and provenance attributes."""
    s1 = {SENTINEL1_GRD: "Sentinel-1 GRD (uncalibrated, geocoded)", NO_SAR: "no Sentinel-1 (--sar none)"}.get(
        inputs.s1_collection, "Sentinel-1 RTC")
    return {
        "title": f"slidewatch cube: {prov.region} {window.start}..{window.end} ({grid.zone_name})",
        "Conventions": "CF-1.8",
        "institution": "slidewatch",
        "source": f"Sentinel-2 L2A, {s1}, Copernicus DEM GLO-30 via STAC",
        "history": f"{datetime.now(timezone.utc).isoformat()} slidewatch {__version__} run",
        "slidewatch_version": __version__,
        **prov.to_attrs("cube"),
        "stac_url": unsigned_href(stac_url),
        "query": {"datetime": window.stac_datetime(), "bbox": list(grid.lonlat_bounds), "max_cloud_cover": config.max_cloud_cover},
        "cube_config": config.as_dict(),
        "epsg": grid.epsg,
        "s1_collection": inputs.s1_collection,
        "reader": reader_choice(),  # SLIDEWATCH_READER (pipeline.acquire.readers): same pixels either way
        "notes": inputs.notes,
    }


def check_cube_has_data(
    has_data: Callable[..., bool], grid: ZoneGrid, window: TimeWindow, config: CubeConfig, inputs: RunInputs,
) -> None:
    """Refuse (NoValidDataError) to mark complete a cube whose S2 composite or DEM is empty
    everywhere; ``has_data(variable[, where])`` says whether a written variable holds a value
    other than its fill (for which the numpy predicate ``where`` holds, when given):
    :meth:`pipeline.store.tiles.TileStore.has_data`. A count of 0 is no cloud-free pixel."""
    kept = "the partial store was kept but not marked complete."
    if not has_data("s2_valid_count", lambda count: count > 0):
        raise NoValidDataError(
            f"No cloud-free Sentinel-2 pixel in zone {grid.zone_name} between {window.start} and {window.end}.",
            f"widen the time window or raise --max-cloud; {kept}",
        )
    empty = [b for b in config.s2_bands if not has_data(b)]
    if empty:
        raise NoValidDataError(
            f"Sentinel-2 band(s) {empty} have no valid pixel in zone {grid.zone_name}, although "
            f"{len(inputs.s2)} scene(s) have cloud-free pixels there: their assets hold only nodata.",
            f"check those assets (e.g. `rio info --stats`) or use another time window; {kept}",
        )
    if not has_data("dem"):
        raise NoValidDataError(
            f"The Copernicus DEM ({COP_DEM}, {len(inputs.dem)} tile(s)) gives no elevation in zone {grid.zone_name}: "
            "every pixel is nodata.",
            f"check that the DEM items cover the region and their assets hold elevations; {kept}",
        )


def is_transient_read(exc: BaseException) -> bool:
    """A pixel read worth retrying: a remote read that did not fail with a permanent status
    (404/410 and other 4xx but 403 are permanent; the status of a failed open is found by
    :func:`~pipeline.acquire.failures.read_failure`, which asks the server once when GDAL's
    message lacks it)."""
    failure = read_failure(exc)
    return failure is not None and failure.transient


def prepare_read_retry(exc: BaseException, stac_url: str) -> str:
    """Before retrying a failed tile read: re-sign after a 403 (usually an expired SAS token)
    and make this process's GDAL forget the failed URLs. Returns the reason with its HTTP
    status, redacted."""
    failure = read_failure(exc)
    if failure is not None and failure.expired:
        refresh_signatures(stac_url)
    clear_http_cache()
    return redact(failure.described if failure is not None else str(exc))

