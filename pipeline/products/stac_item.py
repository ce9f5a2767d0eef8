"""The run's STAC items, and :func:`export_run`, which exports a finished run folder.

:func:`export_run` writes a static, self-contained STAC catalog beside the COGs::

    RUN/exports/collection.json              the run's collection (the catalog's root)
    RUN/exports/items/<collection id>-<zone>.json   one item per UTM zone (:func:`zone_item`)
    RUN/exports/items/slidewatch-model-<sha>.json   the model, MLM extension (:mod:`.catalog`)

Every link between them is relative (pystac's ``SELF_CONTAINED`` catalog type: no self
links) and every asset href is relative to the file that holds it, so the run folder can
be moved or served as it is. The only absolute hrefs are the ``derived_from`` links to the
input items (their canonical URL, the item's id in the link title) and, when the
checkpoint lives outside the run folder, the model asset (a ``file://`` URI).

A zone item describes one group of ``risk.zarr``: geometry = the zone grid's footprint in
EPSG:4326, the time window as ``start_datetime``/``end_datetime``, the processing,
projection, raster, classification, datacube and xarray-assets extensions, the Zarr group
as an asset that ``xr.open_dataset(asset)`` (xpystac) opens, the COGs and quick-look of
the zone, and the model checkpoint's SHA-256, the model description and the rain
parameters as ``slidewatch:*`` properties.
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

from pipeline.products.cog import CLASS_COUNTS_TAG, cog_names, write_cogs, write_region_mosaic, zone_georef

__all__ = ["CATALOG_FILE", "COG_MEDIA_TYPE", "ITEMS_DIR", "InputRef", "PROCESSING_SCHEMA", "ZARR_MEDIA_TYPE",
           "QML_MEDIA_TYPE", "VRT_MEDIA_TYPE", "catalog_path", "collection_id", "export_run", "input_refs",
           "layer_title", "zarr_open_kwargs", "zone_item", "write_item"]

#: The catalog's root, in ``RUN/exports``; the items are in ``RUN/exports/items``.
CATALOG_FILE = "collection.json"
ITEMS_DIR = "items"

#: The processing extension (pystac 1.15.2 has no class for it: fields + schema URI).
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
COG_MEDIA_TYPE = str(pystac.MediaType.COG)  # image/tiff; application=geotiff; profile=cloud-optimized
ZARR_MEDIA_TYPE = str(pystac.MediaType.ZARR)  # application/vnd+zarr
#: GDAL VRT (the region mosaic) and QGIS style files: XML without a registered media type.
VRT_MEDIA_TYPE = "application/xml"
QML_MEDIA_TYPE = "text/xml"


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
    """``cube:dimensions`` (x, y and any other dimension of the group) and ``cube:variables``
    (every data variable; the CF grid mapping as an auxiliary variable)."""
    a, _, c, _, e, f = proj["transform"]
    h, w = proj["shape"]
    ref: Any = proj["epsg"] if proj["epsg"] else proj["wkt2"]
    dims = {
        "x": Dimension.from_dict({"type": "spatial", "axis": "x", "extent": [c + a / 2, c + a * (w - 0.5)],
                                  "step": a, "reference_system": ref, "description": "easting of pixel centres",
                                  "unit": "m"}),
        "y": Dimension.from_dict({"type": "spatial", "axis": "y", "extent": [f + e * (h - 0.5), f + e / 2],
                                  "step": e, "reference_system": ref, "description": "northing of pixel centres",
                                  "unit": "m"}),
    }
    for name in zone_ds.dims:
        if name not in dims:
            values = zone_ds[name].values.tolist() if name in zone_ds.coords else list(range(zone_ds.sizes[name]))
            dims[str(name)] = Dimension.from_dict({"type": "other", "values": _json_safe(values)})
    variables = {}
    for name, v in zone_ds.data_vars.items():
        d: dict[str, Any] = {"dimensions": [str(x) for x in v.dims], "type": "data"}
        if v.attrs.get("long_name"):
            d["description"] = str(v.attrs["long_name"])
        if v.attrs.get("units"):
            d["unit"] = str(v.attrs["units"])
        variables[str(name)] = Variable(d)
    for name, v in zone_ds.coords.items():
        if name in dims or name in variables:
            continue
        d = {"dimensions": [str(x) for x in v.dims], "type": "auxiliary"}
        if name == "spatial_ref" or "grid_mapping_name" in v.attrs or "crs_wkt" in v.attrs:
            d["description"] = "coordinate reference system (CF grid mapping)"
        elif v.attrs.get("long_name"):
            d["description"] = str(v.attrs["long_name"])
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


def zarr_open_kwargs(store: str | os.PathLike, group: str) -> dict[str, Any]:
    """``xarray:open_kwargs`` of a group of a Zarr store, read from the store on disk.

    ``zarr_format`` (2 or 3) and ``consolidated`` (whether the root holds consolidated
    metadata) are what the store says, so ``xr.open_dataset(href, **kwargs)`` neither
    guesses nor warns; ``chunks={}`` keeps the variables lazy on the store's chunks.
    """
    import zarr

    try:
        root = zarr.open_group(str(store), mode="r")
    except (OSError, ValueError, LookupError) as exc:  # zarr raises FileNotFoundError / GroupNotFoundError
        raise StoreError(f"Cannot open the Zarr store {store}: {exc}.", "run the inference stage first.") from exc
    return {
        "engine": "zarr",
        "group": group,
        "zarr_format": int(root.metadata.zarr_format),
        "consolidated": root.metadata.consolidated_metadata is not None,
        "decode_coords": "all",
        "chunks": {},
    }


def _add_file_asset(owner: pystac.Item | pystac.Collection, key: str, path: Path, base: Path, title: str) -> None:
    """Add ``path`` to ``owner`` as asset ``key`` (href relative to ``base``): a COG
    (``.tif``) or GDAL VRT (``.vrt``, the region mosaic) with its raster band (statistics
    from its tags), projection and, for a class layer (a key holding ``class``), its
    classes; a QGIS style (``.qml``) as a style asset; anything else as a metadata file.
    Raises InputDataError when the file does not exist."""
    if not path.exists():
        raise InputDataError(f"Export {path} does not exist.", "run write_cogs (export_run) first.")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".vrt"):
        band, proj, tags = _raster_band(path)
        media = COG_MEDIA_TYPE if suffix != ".vrt" else VRT_MEDIA_TYPE
        asset = pystac.Asset(href=_rel(path, base), media_type=media, roles=["data"], title=title)
        owner.add_asset(key, asset)
        _apply_proj(asset, proj)
        RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band])
        if "class" in key:
            counts = json.loads(tags[CLASS_COUNTS_TAG]) if CLASS_COUNTS_TAG in tags else None
            _classification(asset, counts)
    elif suffix == ".qml":
        owner.add_asset(key, pystac.Asset(href=_rel(path, base), media_type=QML_MEDIA_TYPE,
                                          roles=["style", "metadata"], title=title))
    else:
        owner.add_asset(key, pystac.Asset(href=_rel(path, base), roles=["metadata"], title=title))


def collection_id(region: str, window: TimeWindow) -> str:
    """The id of a run's collection: ``slidewatch-risk-<region slug>-<start>_<end>``."""
    return f"slidewatch-risk-{_slug(region)}-{window.start:%Y%m%d}_{window.end:%Y%m%d}"


def catalog_path(run_dir: str | os.PathLike) -> Path:
    """Where :func:`export_run` writes the run's catalog root: ``RUN/exports/collection.json``."""
    return RunLayout(Path(run_dir)).exports / CATALOG_FILE


def _zone_provenance(zone_ds: xr.Dataset, zone: str, region: str | None, window: TimeWindow | None,
                     require_complete: bool) -> tuple[dict[str, Any], str, TimeWindow]:
    attrs = dict(zone_ds.attrs)
    if require_complete and attrs.get("slidewatch_complete") is not True:
        raise StoreError(
            f"Risk mosaic group(s) {[zone]} are not marked slidewatch_complete.",
            "finish (or resume) the run before exporting it.",
        )
    region = region or (str(attrs["region"]) if attrs.get("region") else None)
    if not region:
        raise InputDataError("The risk mosaic has no 'region' attribute.", "pass region='<name>' to zone_item.")
    window = window or _parse_window(attrs)
    if window is None:
        raise TimeWindowError("The risk mosaic has no time_window attribute.", "pass window=TimeWindow(start, end).")
    return attrs, region, window


def zone_item(
    run_dir: str | os.PathLike,
    zone: str,
    zone_ds: xr.Dataset,
    *,
    cogs: Mapping[str, str | os.PathLike] | None = None,
    quicklook: str | os.PathLike | None = None,
    inputs: Sequence[InputRef] | None = None,
    item_path: str | os.PathLike | None = None,
    risk_store: str | os.PathLike | None = None,
    region: str | None = None,
    window: TimeWindow | None = None,
    run_info: Mapping[str, Any] | None = None,
    require_complete: bool = True,
) -> pystac.Item:
    """Build the STAC item of one zone of a run: its risk mosaic group, COGs and quick-look.

    ``zone_ds`` is the zone's group of ``risk.zarr``. ``cogs`` is :func:`write_cogs`'s
    result for the zone (default: the files of :func:`cog_names` found in ``<run>/exports``);
    every layer becomes an asset named by its key. ``quicklook`` is a PNG (role overview +
    thumbnail). ``inputs`` are the zone's input items (default: ``<run>/items/<zone>/*.json``
    via :func:`input_refs`); each with an href becomes a ``derived_from`` link titled
    ``<collection>/<id>``. ``region`` and ``window`` default to the group's ``region`` /
    ``time_window`` attributes; ``run_info`` (the run's ``run.json``) contributes its
    ``alert``. Asset hrefs are relative to ``item_path`` (default
    ``<run>/exports/items/<id>.json``). The item id is ``<collection id>-<zone>``.

    Raises StoreError for a group not marked ``slidewatch_complete`` (unless
    ``require_complete=False``) and InputDataError/TimeWindowError for missing provenance.
    """
    from shapely.geometry import mapping

    run = Path(run_dir)
    attrs, region, window = _zone_provenance(zone_ds, zone, region, window, require_complete)
    item_id = f"{collection_id(region, window)}-{zone}"
    layout = RunLayout(run)
    item_file = Path(item_path) if item_path is not None else layout.exports / ITEMS_DIR / f"{item_id}.json"
    base = item_file.parent
    store = Path(risk_store) if risk_store is not None else layout.risk

    grid = _grid_proj(zone_ds, zone)
    footprint = _footprint(zone_georef(zone_ds, zone)[0], grid["bbox"])
    input_items = {str(coll): [str(i) for i in ids] for coll, ids in (attrs.get("input_items") or {}).items()}
    model = _json_safe(attrs.get("model"))
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
        "title": f"slidewatch landslide risk: {region} {window.start}..{window.end}, zone {zone}",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gsd": float(abs(grid["transform"][0])),
        "processing:software": {"slidewatch": str(attrs.get("slidewatch_version") or __version__)},
        "processing:level": "L4",
        "processing:lineage": lineage,
        "slidewatch:region": region,
        "slidewatch:zone": zone,
        "slidewatch:input_items": input_items,
        "slidewatch:checkpoint_sha256": _json_safe(attrs.get("checkpoint_sha256")),
        "slidewatch:model": model,
        "slidewatch:rain_intensity_mm_h": _json_safe(attrs.get("rain_intensity_mm_h")),
        "slidewatch:rain_duration_days": _json_safe(attrs.get("rain_duration_days")),
        "slidewatch:rain_multiplier": _json_safe(attrs.get("rain_multiplier")),
        "slidewatch:complete": attrs.get("slidewatch_complete") is True,
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
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=grid["code"], wkt2=grid["wkt2"], shape=grid["shape"], transform=grid["transform"], bbox=grid["bbox"],
    )

    asset = pystac.Asset(
        href=_rel(store, base), media_type=ZARR_MEDIA_TYPE, roles=["data"],
        title=f"risk mosaic (Zarr group of risk.zarr), zone {zone}",
    )
    item.add_asset("zarr", asset)
    _apply_proj(asset, grid)
    _datacube(asset, zone_ds, grid)
    XarrayAssetsExtension.ext(asset, add_if_missing=True).open_kwargs = (
        zarr_open_kwargs(store, zone) if store.exists() else {"engine": "zarr", "group": zone, "decode_coords": "all"}
    )

    zone_cogs = dict(cogs) if cogs is not None else {
        k: layout.exports / n for k, n in cog_names(zone).items() if (layout.exports / n).exists()
    }
    for kind, path in sorted(zone_cogs.items()):
        _add_file_asset(item, kind, Path(path), base, f"{layer_title(kind)}, zone {zone}")

    if quicklook is not None:
        item.add_asset("quicklook", pystac.Asset(
            href=_rel(quicklook, base), media_type=str(pystac.MediaType.PNG), roles=["overview", "thumbnail"],
            title=f"quick-look, zone {zone}",
        ))

    refs = list(inputs) if inputs is not None else input_refs(layout.items_root, [zone])
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
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    return _write_text(_json_text(doc, f"STAC item {item.id}"), Path(path))


def _json_text(doc: Mapping[str, Any], what: str) -> str:
    """``doc`` as indented JSON; StoreError for a value JSON cannot carry (NaN, inf)."""
    try:
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise StoreError(f"{what} cannot be written as JSON: {exc}.",
                         "replace NaN/inf values in its properties with null.") from exc


def _write_text(text: str, path: Path) -> Path:
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise StoreError(f"Cannot write the STAC file {path}: {exc}.",
                         f"check that {path.parent} is writable and has free space.") from exc


_COG_TITLES = {
    "hazard": "landslide hazard for the event (0..1)",
    "susceptibility": "landslide susceptibility under the reference event (0..1)",
    "uncertainty": "spread of the susceptibility over the flip ensemble (0..0.5)",
    "probability": "landslide probability (0..1)",
    "class": "landslide hazard class for the event",
    "susceptibility_class": "landslide susceptibility class",
    "lsi": "landslide susceptibility index (0..1)",
    "quality": "pixel quality flags (bit field)",
}


def layer_title(key: str) -> str:
    """The title of an export layer (``hazard``, ``class``...) or of its QGIS style (``<layer>_style``)."""
    if key.endswith("_style"):
        return f"QGIS style of the {layer_title(key.removesuffix('_style'))}"
    return _COG_TITLES.get(key, key.replace("_", " "))


def export_run(
    run_dir: str | os.PathLike,
    *,
    quicklooks: Mapping[str, str | os.PathLike] | None = None,
    blocksize: int = 512,
    require_complete: bool = True,
    run_info: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Export a finished run: COGs of every zone of ``<run>/risk.zarr`` and the region mosaic
    into ``<run>/exports``, then the run's static STAC catalog; returns the path of its root,
    ``<run>/exports/collection.json`` (:func:`catalog_path`).

    The catalog (see the module docstring) is a collection with one item per zone
    (:func:`zone_item`) and, when the checkpoint file is found and is the one the mosaic
    recorded (same SHA-256), a model item with the MLM extension that the zone items link
    to (:func:`pipeline.products.catalog.model_item`). ``checkpoint`` defaults to
    ``run_info["checkpoint"]`` (the run's record); without it the catalog has no model item
    (announced in one log line and recorded in the collection's ``slidewatch:notes``).
    Make the quick-looks first (``pipeline.products.quicklook.write_quicklook``) and pass
    them as ``{zone: png}``. ``run_info`` is the run's record when it is not (yet) in
    ``run.json``: a run writes ``run.json`` only once its outputs are all written.

    Read the catalog with pystac: ``pystac.Collection.from_file(path)``; assets have hrefs
    relative to their item, so call ``item.make_asset_hrefs_absolute()`` before handing an
    asset to a reader that resolves paths against the working directory, such as xpystac's
    ``xr.open_dataset(item.assets["zarr"])``.
    """
    import zarr

    from pipeline.products.catalog import catalog_checkpoint, write_catalog

    run = Path(run_dir)
    layout = RunLayout(run)
    store = layout.risk
    if not store.is_dir():
        raise StoreError(f"No risk mosaic at {store}.", "run the inference stage for this run first.")
    group_names = sorted(zarr.open_group(str(store), mode="r").group_keys())
    if not group_names:
        raise StoreError(f"The risk mosaic {store} has no zone groups.", "re-run the inference stage.")
    guards = [GenerationGuard(store / z) for z in group_names]  # checked before the catalog is written
    zones = {z: xr.open_zarr(store, group=z, decode_coords="all", consolidated=False) for z in group_names}
    if require_complete:  # check before writing any file
        incomplete = [z for z in group_names if zones[z].attrs.get("slidewatch_complete") is not True]
        if incomplete:
            raise StoreError(f"Risk mosaic group(s) {incomplete} in {store} are not complete.",
                             "finish (or resume) the run before exporting it.")
    if run_info is None and layout.run_json.exists():
        run_info = read_run_json(run)
    if checkpoint is None and run_info is not None and run_info.get("checkpoint"):
        checkpoint = str(run_info["checkpoint"])
    model, notes = catalog_checkpoint(checkpoint, zones)  # a file that is no checkpoint refuses before any write
    cogs = {z: write_cogs(zones[z], layout.exports, z, blocksize=blocksize) for z in group_names}
    region_files = write_region_mosaic(cogs, layout.exports)
    for guard in guards:  # the COGs came from one generation of each group, or no catalog says so
        guard.check()
    return write_catalog(run, zones, cogs=cogs, region_files=region_files, quicklooks=quicklooks,
                         run_info=run_info, checkpoint=model, notes=notes, require_complete=require_complete)
