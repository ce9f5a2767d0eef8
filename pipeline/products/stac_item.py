"""The run's STAC item, and :func:`export_run`, which exports a finished run folder.

One item describes the whole run: geometry = the union of the zone grids' footprints in
EPSG:4326, the time window as ``start_datetime``/``end_datetime``, the processing,
projection, raster, classification, datacube and xarray-assets extensions,
``derived_from`` links to the input items, and the model checkpoint's SHA-256, the model
description and the rain parameters as ``slidewatch:*`` properties.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

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

from pipeline import __version__
from pipeline.core.classes import CLASS_NAMES, NODATA_CLASS as CLASS_NODATA, CLASS_RGBA as CLASS_COLOURS
from pipeline.core.config import TimeWindow
from pipeline.core.files import atomic_write_text
from pipeline.core.generation import GenerationGuard
from pipeline.core.layout import RunLayout, read_run_json
from pipeline.core.errors import InputDataError, StoreError, TimeWindowError

from pipeline.products.cog import CLASS_COUNTS_TAG, cog_names, write_cogs, zone_georef

__all__ = ["COG_MEDIA_TYPE", "InputRef", "PROCESSING_SCHEMA", "ZARR_MEDIA_TYPE", "export_run", "input_refs",
           "run_item", "write_item"]

#: The processing extension (pystac 1.15.2 has no class for it: fields + schema URI).
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
COG_MEDIA_TYPE = str(pystac.MediaType.COG)  # image/tiff; application=geotiff; profile=cloud-optimized
ZARR_MEDIA_TYPE = str(pystac.MediaType.ZARR)  # application/vnd+zarr


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
    crs, transform = zone_georef(zone_ds, zone)
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
    layout = RunLayout(run)
    item_file = Path(item_path) if item_path is not None else layout.exports / f"{item_id}.json"
    base = item_file.parent
    store = Path(risk_store) if risk_store is not None else layout.risk

    from shapely import union_all
    from shapely.geometry import mapping

    grids = {z: _grid_proj(zones[z], z) for z in zone_names}
    footprint = union_all([_footprint(zone_georef(zones[z], z)[0], grids[z]["bbox"]) for z in zone_names])
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
            k: layout.exports / n for k, n in cog_names(z).items() if (layout.exports / n).exists()
        }
        for kind, path in sorted(zone_cogs.items()):
            path = Path(path)
            if not path.exists():
                raise InputDataError(f"COG {path} of zone {z} does not exist.", "run write_cogs first.")
            band, proj, tags = _raster_band(path)
            title = _COG_TITLES.get(kind, kind)
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

    refs = list(inputs) if inputs is not None else input_refs(layout.items_root, zone_names)
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
    try:
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        raise StoreError(f"Cannot write the STAC item {path}: {exc}.",
                         f"check that {path.parent} is writable and has free space.") from exc
    return path


_COG_TITLES = {
    "hazard": "landslide hazard for the event (0..1)",
    "susceptibility": "landslide susceptibility under the reference event (0..1)",
    "uncertainty": "spread of the susceptibility over the flip ensemble (0..0.5)",
    "probability": "landslide probability (0..1)",
    "class": "landslide hazard class for the event",
}


def export_run(
    run_dir: str | os.PathLike,
    *,
    quicklooks: Mapping[str, str | os.PathLike] | None = None,
    blocksize: int = 512,
    require_complete: bool = True,
    run_info: Mapping[str, Any] | None = None,
) -> Path:
    """Export a finished run: COGs of every zone of ``<run>/risk.zarr`` into ``<run>/exports``,
    then the run's STAC item (``<run>/exports/<id>.json``, provenance from the groups and
    ``run.json``). Returns the item's path. Make the quick-looks first (for instance with
    ``pipeline.products.quicklook.write_quicklook``) and pass them as ``{zone: png}``.
    ``run_info`` is the run's record when it is not (yet) in ``run.json``: a run writes
    ``run.json`` only once its outputs are all written.
    """
    import zarr

    run = Path(run_dir)
    layout = RunLayout(run)
    store = layout.risk
    if not store.is_dir():
        raise StoreError(f"No risk mosaic at {store}.", "run the inference stage for this run first.")
    group_names = sorted(zarr.open_group(str(store), mode="r").group_keys())
    if not group_names:
        raise StoreError(f"The risk mosaic {store} has no zone groups.", "re-run the inference stage.")
    guards = [GenerationGuard(store / z) for z in group_names]  # checked before the item is written
    zones = {z: xr.open_zarr(store, group=z, decode_coords="all", consolidated=False) for z in group_names}
    if require_complete:  # check before writing any file
        incomplete = [z for z in group_names if zones[z].attrs.get("slidewatch_complete") is not True]
        if incomplete:
            raise StoreError(f"Risk mosaic group(s) {incomplete} in {store} are not complete.",
                             "finish (or resume) the run before exporting it.")
    cogs = {z: write_cogs(zones[z], layout.exports, z, blocksize=blocksize) for z in group_names}
    for guard in guards:  # the COGs came from one generation of each group, or no item says so
        guard.check()
    if run_info is None and layout.run_json.exists():
        run_info = read_run_json(run)
    item = run_item(run, zones, cogs=cogs, quicklooks=quicklooks, run_info=run_info,
                    require_complete=require_complete)
    return write_item(item, layout.exports / f"{item.id}.json")
