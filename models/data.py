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
  raster, or cube pixels where every channel is NaN).
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

from models.networks import DEFAULT_CHANNELS
from pipeline.core.errors import InputDataError

__all__ = [
    "IGNORE",
    "SPLITS",
    "Block",
    "BlockSplit",
    "ChipSampler",
    "Grid",
    "NormStats",
    "augment_batch",
    "block_split",
    "compute_norm_stats",
    "extract_chip",
    "normalise",
    "open_cube",
    "rasterize_inventory",
    "read_polygons",
    "tile_windows",
]

IGNORE = 255
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


# ----------------------------------------------------------------------------- inventory
def _label(props: dict | None, index: int) -> str:
    props = props or {}
    for key in ("id", "fid", "name", "ID", "Id"):
        if key in props and props[key] is not None:
            return f"feature #{index} ({key}={props[key]!r})"
    return f"feature #{index}"


def _read_geojson(path: Path) -> tuple[list[tuple[str, object]], CRS]:
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
        out.append((label, geom))
    return out, crs


_GPKG_HINT = "export the inventory again as a GeoPackage (QGIS, ogr2ogr -f GPKG) or as GeoJSON."


def _read_gpkg(path: Path, layer: str | None) -> tuple[list[tuple[str, object]], CRS]:
    """Read the polygons of one feature layer of a GeoPackage with pyogrio (GDAL).

    ``layer`` defaults to the first layer with a geometry column; attribute-only tables
    never count. GDAL returns NULL and unreadable geometry blobs alike as ``None``.
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
    try:
        _, fids, blobs, _ = pyogrio.raw.read(path, layer=table, columns=[], return_fids=True)
    except errors as exc:
        raise InputDataError(f"cannot read layer {table!r} of GeoPackage {path}: {exc}", _GPKG_HINT) from exc
    out = []
    for fid, blob in zip(fids, blobs, strict=True):
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
        out.append((label, geom))
    return out, crs


def read_polygons(
    path: str | Path, crs: CRS | str | None = None, layer: str | None = None
) -> list[tuple[str, object]]:
    """Read and validate inventory polygons, reprojected to ``crs`` when given.

    Returns ``(label, geometry)`` pairs; empty geometries are dropped. Raises
    :class:`InputDataError` naming the feature for missing, non-polygonal or invalid
    geometries.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"inventory {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        feats, src_crs = _read_geojson(path)
    elif suffix == ".gpkg":
        feats, src_crs = _read_gpkg(path, layer)
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
    for label, geom in feats:
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
        out.append((label, geom))
    return out


def _read_mask_tif(path: Path, grid: Grid) -> np.ndarray:
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputDataError(f"cannot open mask raster {path}: {exc}") from exc
    with src:
        if src.crs is None:
            raise InputDataError(f"mask raster {path} has no CRS.", "assign one (gdal_edit.py -a_srs).")
        data = src.read(1)
        nodata = src.nodata
        lab = np.where(data > 0, 1, 0).astype(np.uint8)
        if nodata is not None:
            lab[data == nodata] = IGNORE
        if np.issubdtype(data.dtype, np.floating):
            lab[np.isnan(data)] = IGNORE
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
    path: str | Path, grid: Grid, *, layer: str | None = None, all_touched: bool = False
) -> np.ndarray:
    """Burn an inventory onto ``grid``: uint8 ``(H, W)`` with 1 / 0 / :data:`IGNORE`.

    Polygons use pixel-centre rule (``all_touched=False``) like ``rasterio.features.rasterize``.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        if not path.exists():
            raise InputDataError(f"inventory {path} does not exist.")
        return _read_mask_tif(path, grid)
    polys = read_polygons(path, grid.crs, layer=layer)
    if not polys:
        return np.zeros(grid.shape, dtype=np.uint8)
    return rasterio.features.rasterize(
        ((g, 1) for _, g in polys),
        out_shape=grid.shape,
        transform=grid.transform,
        fill=0,
        all_touched=all_touched,
        dtype=np.uint8,
    )


# ----------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Block:
    """One block of the split grid: its index and pixel window ``[r0:r1, c0:c1]``."""

    row: int
    col: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def id(self) -> str:
        return f"r{self.row}c{self.col}"


@dataclass(frozen=True)
class BlockSplit:
    """Whole blocks of ``block_size`` px assigned to train (0), val (1) or test (2)."""

    shape: tuple[int, int]
    block_size: int
    assignment: tuple[tuple[int, ...], ...]
    seed: int = 0

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.assignment), len(self.assignment[0])

    def block(self, row: int, col: int) -> Block:
        h, w = self.shape
        b = self.block_size
        return Block(row, col, row * b, min((row + 1) * b, h), col * b, min((col + 1) * b, w))

    def blocks(self, split: str | None = None) -> list[Block]:
        """Blocks of one split (``train``/``val``/``test``), or all blocks when ``None``."""
        k = None if split is None else SPLITS.index(split)
        nr, nc = self.grid_shape
        return [
            self.block(r, c)
            for r in range(nr)
            for c in range(nc)
            if k is None or self.assignment[r][c] == k
        ]

    def mask(self, split: str) -> np.ndarray:
        """Boolean ``(H, W)`` mask of the pixels of one split."""
        m = np.zeros(self.shape, dtype=bool)
        for b in self.blocks(split):
            m[b.r0 : b.r1, b.c0 : b.c1] = True
        return m

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "block_size": self.block_size,
            "seed": self.seed,
            "assignment": [list(r) for r in self.assignment],
            "codes": {str(i): s for i, s in enumerate(SPLITS)},
        }

    @classmethod
    def from_json(cls, d: dict) -> BlockSplit:
        return cls(
            tuple(d["shape"]),
            int(d["block_size"]),
            tuple(tuple(int(v) for v in r) for r in d["assignment"]),
            int(d.get("seed", 0)),
        )


def _quotas(n: int, fractions: Sequence[float]) -> list[int]:
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    raw = f * n
    q = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - q), kind="stable")[: n - q.sum()]:
        q[i] += 1
    # every split with a positive fraction gets at least one block when possible
    for i in range(len(q)):
        if f[i] > 0 and q[i] == 0 and n >= np.count_nonzero(f):
            j = int(np.argmax(q))
            q[j] -= 1
            q[i] += 1
    return [int(v) for v in q]


def block_split(
    shape: tuple[int, int],
    block_size: int = 512,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    positives: np.ndarray | None = None,
) -> BlockSplit:
    """Spatially blocked train/val/test split.

    The ``(H, W)`` grid is cut into ``block_size`` squares (edge blocks may be smaller);
    whole blocks are assigned to splits in proportion to ``fractions`` (exact quotas,
    largest remainder). With ``positives`` (a label array ``(H, W)``) blocks containing
    landslides are dealt first, so each split gets its share of them. Seeded.
    """
    h, w = shape
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    nr, nc = -(-h // block_size), -(-w // block_size)
    n = nr * nc
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions}")
    quotas = _quotas(n, fractions)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if positives is not None:
        pos = np.asarray(positives) == 1
        counts = np.array(
            [
                pos[r * block_size : (r + 1) * block_size, c * block_size : (c + 1) * block_size].any()
                for r in range(nr)
                for c in range(nc)
            ]
        )
        order = np.concatenate([order[counts[order]], order[~counts[order]]])
    assigned = [0, 0, 0]
    codes = np.empty(n, dtype=int)
    for i, b in enumerate(order):
        deficits = [
            (quotas[k] * (i + 1) / n - assigned[k]) if assigned[k] < quotas[k] else -np.inf
            for k in range(3)
        ]
        k = int(np.argmax(deficits))
        codes[b] = k
        assigned[k] += 1
    assignment = tuple(tuple(int(v) for v in codes[r * nc : (r + 1) * nc]) for r in range(nr))
    return BlockSplit((h, w), block_size, assignment, seed)


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
