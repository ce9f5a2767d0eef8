"""Training data: factor cube, inventory rasterisation, blocked splits, chips, normalisation.

* :func:`open_cube` reads a factor Zarr (``xr.open_zarr(..., decode_coords="all")``, dims
  ``(y, x)``, float32 variables named like the channels, CRS from ``spatial_ref``) into a
  ``(C, H, W)`` float32 array plus its :class:`Grid`.
* :func:`rasterize_inventory` burns a landslide inventory onto that grid: GeoJSON or
  GeoPackage (read with pyogrio) polygons in any CRS (reprojected to the grid CRS;
  invalid geometries raise :class:`~pipeline.core.errors.InputDataError` naming the
  feature), or a mask GeoTIFF
  (aligned with nearest-neighbour resampling when its grid differs). Labels are uint8:
  1 landslide, 0 background, :data:`IGNORE` (255) unknown (mask nodata, outside the mask
  raster, or cube pixels where every channel is NaN); a
  :class:`~models.labels.LabelValues` convention maps mask values and polygon classes.
* :func:`open_store` / :func:`label_store` do the same for a factor cube or a chip store
  (``slidewatch prepare``: chips on their own grids and CRSs, laid side by side with NaN
  gutters, see :class:`ChipLayout`); :func:`check_channels` refuses missing channels
  cheaply.
* :func:`block_split` cuts the grid into square blocks and assigns whole blocks to
  train/val/test (seeded, stratified so blocks with landslides are spread over the splits),
  so no chip of one split ever shares a pixel with another split.
* :class:`ChipSampler` draws training chips inside training blocks only, oversampling
  chips centred near landslide pixels; :func:`tile_windows` tiles evaluation blocks.
* :func:`compute_norm_stats` / :func:`normalise`: per-channel NaN-aware mean/std over the
  training blocks; NaNs become 0 after normalisation.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling

from models.labels import IGNORE, MASK_DEFAULT, NEGATIVE, POSITIVE, LabelValues
from models.networks import DEFAULT_CHANNELS
from pipeline.core.errors import InputDataError

__all__ = [
    "CHIP_GUTTER",
    "IGNORE",
    "SPLITS",
    "Block",
    "BlockSplit",
    "ChipLayout",
    "ChipSampler",
    "Grid",
    "LabelValues",
    "NormStats",
    "Store",
    "augment_batch",
    "block_split",
    "check_channels",
    "compute_norm_stats",
    "extract_chip",
    "label_store",
    "normalise",
    "open_cube",
    "open_store",
    "rasterize_inventory",
    "read_features",
    "read_polygons",
    "store_variables",
    "tile_windows",
]

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- grid & cube
@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform of the pixel corners, (height, width)."""

    crs: CRS
    transform: Affine
    shape: tuple[int, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid CRS."""
        return _bounds(self.transform, *self.shape)


def _bounds(t: Affine, h: int, w: int) -> tuple[float, float, float, float]:
    xs = [t.c, t.c + t.a * w]
    ys = [t.f, t.f + t.e * h]
    return (min(xs), min(ys), max(xs), max(ys))


def open_cube(
    path: str | Path, channels: Sequence[str] | None = None
) -> tuple[np.ndarray, Grid, tuple[str, ...]]:
    """Read a factor Zarr into ``(C, H, W)`` float32, its :class:`Grid` and channel names.

    ``channels`` defaults to :data:`~models.networks.DEFAULT_CHANNELS`; they are read in
    that order. Raises :class:`InputDataError` for a missing store, missing variables,
    non-``(y, x)`` dims or a missing CRS.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    channels = tuple(channels or DEFAULT_CHANNELS)
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"factor cube {path} does not exist.", "pass the path of a Zarr store.")
    from pipeline.acquire.rasters import chip_store_info

    if chip_store_info(path) is not None:
        raise InputDataError(
            f"{path} is a chip store (slidewatch prepare), not one grid.",
            "read it with models.data.open_store, which lays its chips side by side.",
        )
    try:
        with warnings.catch_warnings():
            # stores without consolidated metadata are fine; don't nag about them
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
            ds = xr.open_zarr(path, decode_coords="all")
    except Exception as exc:  # noqa: BLE001 - zarr raises many types
        raise InputDataError(f"cannot open {path} as a Zarr store: {exc}") from exc
    missing = [c for c in channels if c not in ds.data_vars]
    if missing:
        raise InputDataError(
            f"factor cube {path} lacks variable(s) {missing}; it has {sorted(ds.data_vars)}.",
            "compute the factors first or train with --channels matching the cube.",
        )
    for c in channels:
        if ds[c].dims != ("y", "x"):
            raise InputDataError(
                f"variable {c!r} in {path} has dims {ds[c].dims}; expected ('y', 'x')."
            )
    crs = ds[channels[0]].rio.crs or ds.rio.crs
    if crs is None:
        raise InputDataError(
            f"factor cube {path} has no CRS.",
            "write one with rioxarray (ds.rio.write_crs) so spatial_ref is stored.",
        )
    transform = ds[channels[0]].rio.transform()
    h, w = ds.sizes["y"], ds.sizes["x"]
    x = np.empty((len(channels), h, w), dtype=np.float32)
    for i, c in enumerate(channels):
        x[i] = np.asarray(ds[c].values, dtype=np.float32)
    return x, Grid(CRS.from_user_input(crs), transform, (h, w)), channels


# ----------------------------------------------------------------------------- stores
#: NaN columns left between chips laid side by side (at least evaluate's default context).
CHIP_GUTTER = 32


@dataclass(frozen=True)
class ChipLayout:
    """Chips of a chip store laid side by side in one ``(cell, n * cell)`` array.

    Chip ``i`` starts at row 0, column ``i * cell``; ``cell`` is the largest chip side
    plus :data:`CHIP_GUTTER`, so NaN gutters at least that wide separate chips, and each
    chip is exactly one ``cell``-sized block of the split.
    """

    names: tuple[str, ...]
    grids: tuple[Grid, ...]
    sources: tuple[str, ...]
    cell: int
    gutter: int = CHIP_GUTTER

    @property
    def shape(self) -> tuple[int, int]:
        return self.cell, self.cell * len(self.names)

    def window(self, i: int) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of chip ``i``'s pixels in the laid-out array."""
        h, w = self.grids[i].shape
        return 0, h, i * self.cell, i * self.cell + w

    def to_json(self) -> dict:
        return {
            "cell": self.cell,
            "gutter": self.gutter,
            "chips": [
                {
                    "name": n,
                    "source": s,
                    "block": f"r0c{i}",
                    "crs": g.crs.to_string(),
                    "transform": list(g.transform)[:6],
                    "shape": list(g.shape),
                }
                for i, (n, g, s) in enumerate(zip(self.names, self.grids, self.sources, strict=True))
            ],
        }


@dataclass
class Store:
    """A training store in memory: a factor cube (``grid``) or a chip store (``chips``)."""

    path: Path
    x: np.ndarray  # (C, H, W) float32, NaN where there is no data (and in chip gutters)
    channels: tuple[str, ...]
    grid: Grid | None = None
    chips: ChipLayout | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


def _open_zarr(path: Path, group: str | None = None):
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
        return xr.open_zarr(path, group=group, decode_coords="all")


def store_variables(path: str | Path) -> tuple[tuple[str, ...], dict | None]:
    """The ``(y, x)`` variables a store offers as channels, and its chip-store attributes
    (None for a factor cube). Reads metadata only."""
    from pipeline.acquire.rasters import chip_store_info

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"store {path} does not exist.", "pass the path of a Zarr store (slidewatch run or prepare).")
    info = chip_store_info(path)
    if info is not None:
        return tuple(info.get("channels") or ()), info
    try:
        ds = _open_zarr(path)
    except Exception as exc:  # noqa: BLE001 - zarr raises many types
        raise InputDataError(f"cannot open {path} as a Zarr store: {exc}") from exc
    return tuple(str(v) for v in ds.data_vars if ds[v].dims == ("y", "x")), None


def check_channels(path: str | Path, channels: Sequence[str] | None = None) -> tuple[str, ...]:
    """``channels`` as the store spells them (``NDVI`` → ``ndvi``, ``B4`` → ``B04``), or one
    :class:`InputDataError` line naming those it lacks. ``None`` gives the default: the
    factors + LSI (:data:`~models.networks.DEFAULT_CHANNELS`) for a factor cube, every
    channel of a chip store."""
    from pipeline.acquire.rasters import resolve_channels

    have, info = store_variables(path)
    if channels is None:
        channels = have if info is not None else DEFAULT_CHANNELS
    resolved = resolve_channels(channels, have)
    missing = [c for c, r in zip(channels, resolved, strict=True) if r not in have]
    if missing:
        raise InputDataError(
            f"store {path} lacks channel(s) {', '.join(missing)}; it has {', '.join(have) or 'none'}.",
            "train with --channels naming variables of the store (slidewatch prepare --channels computes "
            "ndvi, ndwi, ndbi and slope).",
        )
    return tuple(resolved)


def open_store(path: str | Path, channels: Sequence[str] | None = None) -> Store:
    """Read a factor cube (as :func:`open_cube`) or a chip store (``slidewatch prepare``;
    chips laid out by :class:`ChipLayout`) into a :class:`Store`. ``channels`` as in
    :func:`check_channels`."""
    path = Path(path)
    chans = check_channels(path, channels)
    _, info = store_variables(path)
    if info is None:
        x, grid, chans = open_cube(path, chans)
        return Store(path, x, chans, grid=grid)
    chips = info.get("chips") or []
    if not chips:
        raise InputDataError(f"chip store {path} holds no chips.", "prepare it again from a folder of GeoTIFFs.")
    arrays, grids = [], []
    for c in chips:
        ds = _open_zarr(path, c["group"])
        crs = ds.rio.crs
        if crs is None:
            raise InputDataError(f"chip {c['name']!r} of {path} has no CRS.", "prepare the store again.")
        h, w = ds.sizes["y"], ds.sizes["x"]
        grids.append(Grid(CRS.from_user_input(crs), ds.rio.transform(), (h, w)))
        arrays.append(np.stack([np.asarray(ds[ch].values, dtype=np.float32) for ch in chans]))
    cell = max(max(g.shape) for g in grids) + CHIP_GUTTER
    layout = ChipLayout(
        tuple(c["name"] for c in chips), tuple(grids), tuple(str(c.get("source", "")) for c in chips), cell
    )
    x = np.full((len(chans), *layout.shape), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        r0, r1, c0, c1 = layout.window(i)
        x[:, r0:r1, c0:c1] = a
    return Store(path, x, chans, chips=layout)


_MASK_SUFFIXES = ("", "_mask", "_label", "_labels")


def _chip_mask(folder: Path, name: str, source: str) -> Path | None:
    stems = [name] + ([Path(source).stem] if source and Path(source).stem != name else [])
    for stem in stems:
        for suffix in _MASK_SUFFIXES:
            for ext in (".tif", ".tiff"):
                p = folder / f"{stem}{suffix}{ext}"
                if p.is_file():
                    return p
    return None


def label_store(
    store: Store,
    inventory: str | Path,
    *,
    labels: LabelValues | None = None,
    label_field: str | None = None,
    layer: str | None = None,
) -> np.ndarray:
    """uint8 labels ``(H, W)`` for a :class:`Store` (1 / 0 / :data:`IGNORE`; see
    :func:`rasterize_inventory`); pixels where every channel is NaN are :data:`IGNORE`.

    For a chip store the inventory is burnt per chip on the chip's own grid and CRS:
    polygons, one mask raster (warped onto each chip) or a folder of per-chip masks named
    like the chips (``a.tif`` ↔ ``masks/a.tif`` or ``masks/a_mask.tif``; a tiled chip
    ``a_r0c1`` also finds its source's mask ``masks/a.tif``). Gutters are :data:`IGNORE`.
    """
    inventory = Path(inventory)
    if store.chips is None:
        if inventory.is_dir():
            raise InputDataError(
                f"inventory {inventory} is a folder; per-chip masks go with a chip store (slidewatch prepare).",
                "pass one mask GeoTIFF or a polygon file for a factor cube.",
            )
        assert store.grid is not None
        y = rasterize_inventory(inventory, store.grid, layer=layer, labels=labels, label_field=label_field)
    else:
        lay = store.chips
        y = np.full(store.shape, IGNORE, dtype=np.uint8)
        feats_by_crs: dict[str, list] = {}
        missing = []
        if inventory.is_dir():
            _no_field_for_masks(label_field, inventory)
        for i, (name, grid, source) in enumerate(zip(lay.names, lay.grids, lay.sources, strict=True)):
            if inventory.is_dir():
                mask = _chip_mask(inventory, name, source)
                if mask is None:
                    missing.append(name)
                    continue
                lab = _read_mask_tif(mask, grid, labels)
            elif inventory.suffix.lower() in (".tif", ".tiff"):
                lab = rasterize_inventory(inventory, grid, labels=labels, label_field=label_field)
            else:
                key = grid.crs.to_wkt()
                if key not in feats_by_crs:
                    feats_by_crs[key] = read_features(inventory, grid.crs, layer=layer, field=label_field)
                lab = _burn(feats_by_crs[key], grid, labels, label_field, inventory.name)
            r0, r1, c0, c1 = lay.window(i)
            y[r0:r1, c0:c1] = lab
        if missing:
            shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
            raise InputDataError(
                f"no mask in {inventory} for chip(s) {shown}.",
                "name each mask like its chip (chips/a.tif -> masks/a.tif or masks/a_mask.tif).",
            )
    y[np.all(~np.isfinite(store.x), axis=0)] = IGNORE
    return y


# ----------------------------------------------------------------------------- inventory
def _label(props: dict | None, index: int) -> str:
    props = props or {}
    for key in ("id", "fid", "name", "ID", "Id"):
        if key in props and props[key] is not None:
            return f"feature #{index} ({key}={props[key]!r})"
    return f"feature #{index}"


def _read_geojson(path: Path) -> tuple[list[tuple[str, object, dict]], CRS]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read GeoJSON {path}: {exc}") from exc
    crs = CRS.from_epsg(4326)
    crs_member = doc.get("crs") if isinstance(doc, dict) else None
    if crs_member:
        try:
            crs = CRS.from_user_input(ProjCRS.from_user_input(crs_member["properties"]["name"]).to_wkt())
        except Exception as exc:  # noqa: BLE001
            raise InputDataError(f"unreadable 'crs' member in {path}: {crs_member!r}") from exc
    if doc.get("type") == "FeatureCollection":
        feats = doc.get("features") or []
    elif doc.get("type") == "Feature":
        feats = [doc]
    else:
        feats = [{"type": "Feature", "geometry": doc, "properties": {}}]
    out = []
    for i, f in enumerate(feats):
        label = _label(f.get("id") and {"id": f.get("id")} or f.get("properties"), i)
        g = f.get("geometry")
        if g is None:
            raise InputDataError(f"{label} in {path} has no geometry.", "drop it or draw its outline.")
        try:
            geom = shapely.geometry.shape(g)
        except Exception as exc:  # noqa: BLE001
            raise InputDataError(f"{label} in {path} has an unreadable geometry: {exc}") from exc
        out.append((label, geom, f.get("properties") or {}))
    return out, crs


_GPKG_HINT = "export the inventory again as a GeoPackage (QGIS, ogr2ogr -f GPKG) or as GeoJSON."


def _read_gpkg(
    path: Path, layer: str | None, field: str | None = None
) -> tuple[list[tuple[str, object, dict]], CRS]:
    """Read the polygons of one feature layer of a GeoPackage with pyogrio (GDAL).

    ``layer`` defaults to the first layer with a geometry column; attribute-only tables
    never count. GDAL returns NULL and unreadable geometry blobs alike as ``None``.
    ``field`` (an attribute column) is read along, as each feature's properties.
    """
    import pyogrio
    from pyogrio.errors import (
        DataLayerError,
        DataSourceError,
        FeatureError,
        GeometryError,
    )

    try:
        layers = pyogrio.list_layers(path)
    except DataSourceError as exc:
        raise InputDataError(f"{path} is not a GeoPackage ({exc}).", _GPKG_HINT) from exc
    spatial = [str(name) for name, geometry_type in layers if geometry_type is not None]
    if not spatial:
        raise InputDataError(f"GeoPackage {path} has no feature table.", _GPKG_HINT)
    if layer is not None and layer not in spatial:
        raise InputDataError(
            f"GeoPackage {path} has no layer {layer!r}.", f"pick one of its feature layers {spatial}."
        )
    table = layer if layer is not None else spatial[0]
    errors = (DataSourceError, DataLayerError, FeatureError, GeometryError)
    try:
        info = pyogrio.read_info(path, layer=table)
    except errors as exc:
        raise InputDataError(f"cannot read layer {table!r} of GeoPackage {path}: {exc}", _GPKG_HINT) from exc
    if info.get("driver") != "GPKG":
        raise InputDataError(
            f"{path} is not a GeoPackage (GDAL reads it as {info.get('driver')}).", _GPKG_HINT
        )
    # GDAL names the GeoPackage spec's undefined srs_id 0 and -1 "Undefined geographic SRS"
    # and "Undefined Cartesian SRS"; like a missing definition, they give no usable CRS.
    crs_text = info.get("crs")
    crs = None
    if crs_text:
        try:
            crs = CRS.from_user_input(crs_text)
        except Exception as exc:  # noqa: BLE001 - rasterio raises several types
            raise InputDataError(f"GeoPackage {path}: layer {table!r} has an unreadable CRS ({exc}).") from exc
    if crs is None or ProjCRS.from_wkt(crs.to_wkt()).name.startswith("Undefined "):
        raise InputDataError(
            f"GeoPackage {path}: layer {table!r} has no defined CRS.",
            "assign the CRS the coordinates are in (QGIS 'Assign projection', ogr2ogr -a_srs) and save again.",
        )
    columns: list[str] = []
    if field is not None:
        names = [str(n) for n in info.get("fields", [])]
        if field not in names:
            raise InputDataError(
                f"GeoPackage {path}: layer {table!r} has no attribute {field!r}; it has {names}.",
                "pass --label-field naming the column that holds each polygon's class.",
            )
        columns = [field]
    try:
        _, fids, blobs, values = pyogrio.raw.read(path, layer=table, columns=columns, return_fids=True)
    except errors as exc:
        raise InputDataError(f"cannot read layer {table!r} of GeoPackage {path}: {exc}", _GPKG_HINT) from exc
    column = values[0] if columns else [None] * len(fids)
    out = []
    for fid, blob, value in zip(fids, blobs, column, strict=True):
        label = f"feature fid={fid} of layer {table!r}"
        if blob is None:
            raise InputDataError(
                f"{label} in {path} has no geometry (NULL or unreadable).",
                "drop it or draw its outline again.",
            )
        try:
            geom = shapely.from_wkb(blob)
        except Exception as exc:  # noqa: BLE001
            raise InputDataError(f"{label} in {path} has an unreadable geometry: {exc}") from exc
        out.append((label, geom, {field: value.item() if hasattr(value, "item") else value} if field else {}))
    return out, crs


def read_polygons(
    path: str | Path, crs: CRS | str | None = None, layer: str | None = None
) -> list[tuple[str, object]]:
    """Read and validate inventory polygons, reprojected to ``crs`` when given.

    Returns ``(label, geometry)`` pairs; empty geometries are dropped. Raises
    :class:`InputDataError` naming the feature for missing, non-polygonal or invalid
    geometries.
    """
    return [(label, geom) for label, geom, _ in read_features(path, crs, layer)]


def read_features(
    path: str | Path, crs: CRS | str | None = None, layer: str | None = None, field: str | None = None
) -> list[tuple[str, object, object]]:
    """Like :func:`read_polygons`, with each feature's value of attribute ``field``:
    ``(label, geometry, value)`` triples (value None without a field or where it is
    missing). Raises :class:`InputDataError` when no feature has the attribute."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"inventory {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        feats, src_crs = _read_geojson(path)
        if field is not None and feats and not any(field in props for _, _, props in feats):
            names = sorted({k for _, _, props in feats for k in props})
            raise InputDataError(
                f"no feature in {path} has the attribute {field!r}; they have {names}.",
                "pass --label-field naming the property that holds each polygon's class.",
            )
    elif suffix == ".gpkg":
        feats, src_crs = _read_gpkg(path, layer, field)
    else:
        raise InputDataError(
            f"unsupported inventory format {path.name!r}.",
            "use GeoJSON (.geojson), GeoPackage (.gpkg) or a mask GeoTIFF (.tif).",
        )
    transformer = None
    if crs is not None:
        dst = CRS.from_user_input(crs)
        if dst != src_crs:
            transformer = Transformer.from_crs(
                ProjCRS.from_wkt(src_crs.to_wkt()), ProjCRS.from_wkt(dst.to_wkt()), always_xy=True
            )
    out = []
    for label, geom, props in feats:
        if geom is None or geom.is_empty:
            continue
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputDataError(
                f"{label} in {path} is a {geom.geom_type}; landslide inventories need polygons.",
                "buffer points/lines into polygons or pass a mask GeoTIFF.",
            )
        if not geom.is_valid:
            raise InputDataError(
                f"{label} in {path} is an invalid polygon: {shapely.is_valid_reason(geom)}.",
                "repair it (shapely.make_valid, QGIS 'Fix geometries' or ST_MakeValid).",
            )
        if transformer is not None:
            geom = shapely.transform(
                geom, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
            )
        out.append((label, geom, props.get(field) if field is not None else None))
    return out


def _read_mask_tif(path: Path, grid: Grid, labels: LabelValues | None = None) -> np.ndarray:
    """A mask raster's values mapped by ``labels`` (default :data:`MASK_DEFAULT`), aligned
    onto ``grid`` with nearest-neighbour resampling (:data:`IGNORE` outside the mask)."""
    from pipeline.acquire.rasters import open_raster

    labels = labels or MASK_DEFAULT
    with open_raster(path, "mask raster") as src:
        data = src.read(1)
        nodata = src.nodata
        valid = np.ones(data.shape, bool)
        if nodata is not None and not np.isnan(nodata):
            valid &= data != nodata  # NaN pixels are unknown anyway (LabelValues.map_array)
        lab = labels.map_array(data, valid, source=f"mask raster {path.name}")
        if src.crs == grid.crs and src.transform == grid.transform and src.shape == grid.shape:
            return lab
        out = np.full(grid.shape, IGNORE, dtype=np.uint8)
        rasterio.warp.reproject(
            lab,
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            src_nodata=IGNORE,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            dst_nodata=IGNORE,
            resampling=Resampling.nearest,
        )
        return out


def rasterize_inventory(
    path: str | Path,
    grid: Grid,
    *,
    layer: str | None = None,
    all_touched: bool = False,
    labels: LabelValues | None = None,
    label_field: str | None = None,
) -> np.ndarray:
    """Burn an inventory onto ``grid``: uint8 ``(H, W)`` with 1 / 0 / :data:`IGNORE`.

    A mask GeoTIFF's values are mapped by ``labels`` (default :data:`MASK_DEFAULT`: 0
    negative, 1 positive, nodata unknown, other values refused). Polygons are all
    landslides unless ``label_field`` names the attribute holding each polygon's class,
    mapped by ``labels``; the area outside every polygon is ``labels.outside`` (negative
    by default). Where polygons overlap, positive beats ignore beats negative. Polygons
    use the pixel-centre rule (``all_touched=False``) like ``rasterio.features.rasterize``.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        if not path.exists():
            raise InputDataError(f"inventory {path} does not exist.")
        _no_field_for_masks(label_field, path)
        return _read_mask_tif(path, grid, labels)
    feats = read_features(path, grid.crs, layer=layer, field=label_field)
    return _burn(feats, grid, labels, label_field, path.name, all_touched)


def _no_field_for_masks(label_field: str | None, path: Path) -> None:
    if label_field is not None:
        raise InputDataError(
            f"--label-field {label_field} names a polygon attribute, but {path} holds mask rasters.",
            "drop --label-field; map mask values with --label-values (e.g. positive=2,negative=1,ignore=0).",
        )


def _burn(
    feats: list, grid: Grid, labels: LabelValues | None, label_field: str | None, source: str,
    all_touched: bool = False,
) -> np.ndarray:
    """Rasterise ``(label, geometry, value)`` features already in the grid CRS."""
    labels = labels or LabelValues()
    fill = NEGATIVE if labels.outside == "negative" else IGNORE
    if label_field is None:
        shapes = [(g, POSITIVE) for _, g, _ in feats]
    else:
        labels.refuse([v for _, _, v in feats], f"attribute {label_field!r} of {source}")
        order = {NEGATIVE: 0, IGNORE: 1, POSITIVE: 2}  # later burns win
        coded = sorted(((labels.code_of(v), g) for _, g, v in feats), key=lambda cg: order[cg[0]])
        shapes = [(g, c) for c, g in coded]
    if not shapes:
        return np.full(grid.shape, fill, dtype=np.uint8)
    return rasterio.features.rasterize(
        shapes,
        out_shape=grid.shape,
        transform=grid.transform,
        fill=fill,
        all_touched=all_touched,
        dtype=np.uint8,
    )


# ----------------------------------------------------------------------------- splits
# The split logic lives in models.splits; re-exported here so existing imports keep working.
from models.splits import Block, BlockSplit, _quotas, block_split  # noqa: E402,F401


# ----------------------------------------------------------------------------- chips
def tile_windows(block: Block, chip_size: int) -> list[tuple[int, int]]:
    """Non-overlapping chip origins ``(r0, c0)`` covering a block (last chips padded)."""
    return [
        (r, c)
        for r in range(block.r0, block.r1, chip_size)
        for c in range(block.c0, block.c1, chip_size)
    ]


def extract_chip(
    x: np.ndarray, y: np.ndarray | None, r0: int, c0: int, size: int, limit: Block
) -> tuple[np.ndarray, np.ndarray | None]:
    """Chip of ``size`` px at ``(r0, c0)`` that never reads outside ``limit``.

    Missing rows/columns are padded: inputs with 0, labels with :data:`IGNORE`.
    """
    r1, c1 = min(r0 + size, limit.r1), min(c0 + size, limit.c1)
    xc = np.zeros((x.shape[0], size, size), dtype=np.float32)
    xc[:, : r1 - r0, : c1 - c0] = x[:, r0:r1, c0:c1]
    if y is None:
        return xc, None
    yc = np.full((size, size), IGNORE, dtype=np.uint8)
    yc[: r1 - r0, : c1 - c0] = y[r0:r1, c0:c1]
    return xc, yc


def augment_batch(
    xb: np.ndarray, yb: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flips and 90° rotations, per chip (the 8 dihedral transforms)."""
    xo, yo = np.empty_like(xb), np.empty_like(yb)
    for i in range(len(xb)):
        k = int(rng.integers(4))
        xi, yi = np.rot90(xb[i], k, axes=(-2, -1)), np.rot90(yb[i], k, axes=(-2, -1))
        if rng.random() < 0.5:
            xi, yi = xi[..., ::-1], yi[..., ::-1]
        xo[i], yo[i] = xi, yi
    return xo, yo


class ChipSampler:
    """Random training chips confined to one split's blocks.

    With probability ``positive_fraction`` a chip is placed so that a random landslide
    pixel of the split lies inside it (oversampling rare landslides); otherwise a block is
    chosen with probability proportional to its area and a chip placed uniformly in it.
    Chips never leave their block (a block smaller than a chip gives a padded chip).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        split: BlockSplit,
        which: str = "train",
        chip_size: int = 128,
        positive_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.x, self.y = x, y
        self.split = split
        self.chip_size = chip_size
        self.positive_fraction = positive_fraction
        self.rng = np.random.default_rng(seed)
        self.blocks = split.blocks(which)
        if not self.blocks:
            raise InputDataError(f"the split has no {which} blocks; use a smaller block size.")
        areas = np.array([(b.r1 - b.r0) * (b.c1 - b.c0) for b in self.blocks], dtype=float)
        self.block_p = areas / areas.sum()
        m = split.mask(which) & (y == 1)
        self.pos_r, self.pos_c = np.nonzero(m)

    @property
    def n_positive_pixels(self) -> int:
        return int(self.pos_r.size)

    def _origin(self, b: Block, lo_r: int, lo_c: int) -> tuple[int, int]:
        return (
            int(np.clip(lo_r, b.r0, max(b.r0, b.r1 - self.chip_size))),
            int(np.clip(lo_c, b.c0, max(b.c0, b.c1 - self.chip_size))),
        )

    def sample(self, n: int, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``n`` chips: inputs ``(n, C, s, s)`` float32 and labels ``(n, s, s)`` uint8."""
        s, bs = self.chip_size, self.split.block_size
        xb = np.empty((n, self.x.shape[0], s, s), dtype=np.float32)
        yb = np.empty((n, s, s), dtype=np.uint8)
        for i in range(n):
            if self.pos_r.size and self.rng.random() < self.positive_fraction:
                j = int(self.rng.integers(self.pos_r.size))
                pr, pc = int(self.pos_r[j]), int(self.pos_c[j])
                b = self.split.block(pr // bs, pc // bs)
                r0, c0 = self._origin(
                    b, pr - int(self.rng.integers(s)), pc - int(self.rng.integers(s))
                )
            else:
                b = self.blocks[int(self.rng.choice(len(self.blocks), p=self.block_p))]
                r0 = b.r0 + int(self.rng.integers(max(1, b.r1 - b.r0 - s + 1)))
                c0 = b.c0 + int(self.rng.integers(max(1, b.c1 - b.c0 - s + 1)))
            xb[i], yb[i] = extract_chip(self.x, self.y, r0, c0, s, b)
        if augment:
            xb, yb = augment_batch(xb, yb, self.rng)
        return xb, yb

    def tiles(self, which: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Deterministic non-overlapping chips covering one split's blocks."""
        for b in self.split.blocks(which):
            for r0, c0 in tile_windows(b, self.chip_size):
                yield extract_chip(self.x, self.y, r0, c0, self.chip_size, b)


# ----------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class NormStats:
    """Per-channel mean and standard deviation (channel order of the cube)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict) -> NormStats:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def compute_norm_stats(x: np.ndarray, mask: np.ndarray | None = None) -> NormStats:
    """NaN-aware per-channel mean/std of ``x (C, H, W)`` over ``mask`` pixels.

    A channel that is constant or all-NaN gets std 1 (and mean 0 when all-NaN).
    """
    means, stds = [], []
    for c in range(x.shape[0]):
        v = x[c][mask] if mask is not None else x[c].ravel()
        v = v[np.isfinite(v)].astype(np.float64)
        m = float(v.mean()) if v.size else 0.0
        s = float(v.std()) if v.size else 1.0
        means.append(m)
        stds.append(s if s > 1e-12 else 1.0)
    return NormStats(tuple(means), tuple(stds))


def normalise(x: np.ndarray, stats: NormStats) -> np.ndarray:
    """``(x - mean) / std`` per channel along axis -3; NaN/inf become 0. Returns float32."""
    mean = np.asarray(stats.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(stats.std, dtype=np.float32)[:, None, None]
    if x.shape[-3] != mean.shape[0]:
        raise ValueError(f"{x.shape[-3]} channels but stats for {mean.shape[0]}")
    out = (x.astype(np.float32, copy=False) - mean) / std
    return np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
