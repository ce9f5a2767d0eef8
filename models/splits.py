"""Spatial train/validation/test splits: whole square blocks of the grid, a buffer between
splits, chosen at random, from a vector file, or from explicit block ids.

* :func:`block_split`: seeded, stratified random assignment of blocks with exact 6:2:2
  quotas (largest remainder) over the *non-empty* blocks only: a block without a valid
  pixel (all inputs NaN, or no labelled pixel) goes to no split and counts toward no quota.
* :func:`split_from_vector`: the user's own regions: polygons with a ``split`` attribute
  (``train``/``val``/``test``) in a GeoJSON or GeoPackage; a block goes to the split whose
  polygons cover most of it (at least ``min_cover`` of its pixels), else to none.
* :func:`split_from_ids`: explicit block ids (``r<row>c<col>``) per split.
* ``buffer``: pixels closer than ``buffer`` px (Chebyshev distance, ``<= buffer``) to a
  block of another split are left out of the farther-from-test split: training pixels
  near validation or test blocks, validation pixels near test blocks. Test blocks stay
  whole. :meth:`BlockSplit.mask` gives the pixels that count (for sampling, normalisation
  and scoring), :meth:`BlockSplit.restrict_labels` sets every other label to ``IGNORE``.

A :class:`BlockSplit` round-trips through JSON (:meth:`~BlockSplit.to_json`,
:meth:`~BlockSplit.from_json`) and is stored in the checkpoint provenance; JSON written
before the buffer and the unused code existed still loads (buffer 0, every block used).
This module imports nothing else of ours but the errors (``models.data`` re-exports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputDataError
from pipeline.core.files import file_sha256

__all__ = [
    "SPLITS",
    "UNUSED",
    "Block",
    "BlockSplit",
    "SplitSpec",
    "block_split",
    "make_split",
    "parse_block_ids",
    "split_from_ids",
    "split_from_vector",
]

SPLITS = ("train", "val", "test")
#: assignment code of a block that belongs to no split (empty, or outside the user's regions)
UNUSED = -1
#: the label value that means "unknown"; equal to :data:`models.data.IGNORE`
_IGNORE = 255
#: the order in which a buffer is cut: a split loses the pixels near every split after it
_PRIORITY = ("train", "val", "test")
_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
    "none": None, "unused": None, "ignore": None, "exclude": None, "": None,
}


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
    """Whole blocks of ``block_size`` px assigned to train (0), val (1), test (2) or to no
    split (:data:`UNUSED`, -1), with a ``buffer`` in px between splits.

    ``method`` says how the blocks were chosen (``random``, ``vector``, ``ids``);
    ``source``/``source_sha256`` name the vector file of a ``vector`` split.
    """

    shape: tuple[int, int]
    block_size: int
    assignment: tuple[tuple[int, ...], ...]
    seed: int = 0
    buffer: int = 0
    method: str = "random"
    source: str = ""
    source_sha256: str = ""

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.assignment), len(self.assignment[0])

    def block(self, row: int, col: int) -> Block:
        h, w = self.shape
        b = self.block_size
        return Block(row, col, row * b, min((row + 1) * b, h), col * b, min((col + 1) * b, w))

    def blocks(self, split: str | None = None) -> list[Block]:
        """Blocks of one split (``train``/``val``/``test``), or every block of the grid
        (used or not) when ``None``."""
        k = None if split is None else _code(split)
        nr, nc = self.grid_shape
        return [
            self.block(r, c)
            for r in range(nr)
            for c in range(nc)
            if k is None or self.assignment[r][c] == k
        ]

    def split_of(self, block: Block) -> str | None:
        """The split a block belongs to, ``None`` for an unused block."""
        k = self.assignment[block.row][block.col]
        return SPLITS[k] if k >= 0 else None

    def block_mask(self, split: str) -> np.ndarray:
        """Boolean ``(H, W)`` mask of the whole blocks of one split (buffer not removed)."""
        m = np.zeros(self.shape, dtype=bool)
        for b in self.blocks(split):
            m[b.r0 : b.r1, b.c0 : b.c1] = True
        return m

    def mask(self, split: str) -> np.ndarray:
        """Boolean ``(H, W)`` mask of the pixels of one split that count: its blocks less
        the pixels within ``buffer`` px of a later split's blocks (train < val < test)."""
        m = self.block_mask(split)
        if self.buffer <= 0 or not m.any():
            return m
        later = np.zeros(self.shape, dtype=bool)
        for other in _PRIORITY[_PRIORITY.index(split) + 1 :]:
            later |= self.block_mask(other)
        if later.any():
            from scipy import ndimage

            near = ndimage.maximum_filter(later.view(np.uint8), size=2 * self.buffer + 1, mode="constant")
            m &= near == 0
        return m

    def restrict_labels(self, y: np.ndarray, ignore: int = _IGNORE) -> np.ndarray:
        """A copy of labels ``y (H, W)`` with ``ignore`` outside every split's
        :meth:`mask` (buffers and unused blocks), so nothing there is trained or scored."""
        keep = np.zeros(self.shape, dtype=bool)
        for s in SPLITS:
            keep |= self.mask(s)
        out = np.array(y, copy=True)
        out[~keep] = ignore
        return out

    def counts(self) -> dict[str, int]:
        """Number of blocks per split and ``unused``."""
        flat = [v for row in self.assignment for v in row]
        return {**{s: flat.count(k) for k, s in enumerate(SPLITS)}, "unused": flat.count(UNUSED)}

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "block_size": self.block_size,
            "seed": self.seed,
            "buffer": self.buffer,
            "method": self.method,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "assignment": [list(r) for r in self.assignment],
            "codes": {str(UNUSED): "unused", **{str(i): s for i, s in enumerate(SPLITS)}},
        }

    @classmethod
    def from_json(cls, d: dict) -> BlockSplit:
        return cls(
            tuple(int(v) for v in d["shape"]),
            int(d["block_size"]),
            tuple(tuple(int(v) for v in r) for r in d["assignment"]),
            int(d.get("seed", 0)),
            int(d.get("buffer", 0) or 0),
            str(d.get("method", "random") or "random"),
            str(d.get("source", "") or ""),
            str(d.get("source_sha256", "") or ""),
        )


def _code(split: str) -> int:
    try:
        return SPLITS.index(split)
    except ValueError:
        raise InputDataError(f"unknown split {split!r}.", f"choose one of {', '.join(SPLITS)}.") from None


def _grid(shape: tuple[int, int], block_size: int) -> tuple[int, int]:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    h, w = shape
    return -(-h // block_size), -(-w // block_size)


def _block_sums(m: np.ndarray, block_size: int) -> np.ndarray:
    """Sum of ``m (H, W)`` per block: ``(nr, nc)`` int64."""
    nr, nc = _grid(m.shape, block_size)
    padded = np.zeros((nr * block_size, nc * block_size), dtype=np.int64)
    padded[: m.shape[0], : m.shape[1]] = m
    return padded.reshape(nr, block_size, nc, block_size).sum(axis=(1, 3))


def _block_areas(shape: tuple[int, int], block_size: int) -> np.ndarray:
    h, w = shape
    nr, nc = _grid(shape, block_size)
    rows = np.minimum(np.arange(1, nr + 1) * block_size, h) - np.arange(nr) * block_size
    cols = np.minimum(np.arange(1, nc + 1) * block_size, w) - np.arange(nc) * block_size
    return rows[:, None] * cols[None, :]


def _used_blocks(
    shape: tuple[int, int], block_size: int, valid: np.ndarray | None, min_valid_fraction: float
) -> np.ndarray:
    """``(nr, nc)`` bool: blocks with at least one valid pixel (and ``min_valid_fraction``
    of their area)."""
    nr, nc = _grid(shape, block_size)
    if valid is None:
        return np.ones((nr, nc), dtype=bool)
    v = np.asarray(valid, dtype=bool)
    if v.shape != tuple(shape):
        raise ValueError(f"valid mask shape {v.shape} != grid shape {tuple(shape)}")
    n = _block_sums(v, block_size)
    return (n >= 1) & (n >= min_valid_fraction * _block_areas(shape, block_size))


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
    *,
    valid: np.ndarray | None = None,
    buffer: int = 0,
    min_valid_fraction: float = 0.0,
) -> BlockSplit:
    """Spatially blocked train/val/test split.

    The ``(H, W)`` grid is cut into ``block_size`` squares (edge blocks may be smaller).
    Blocks without a valid pixel are *unused* (code -1) and count toward no quota;
    ``valid`` defaults to ``positives != 255`` (labelled pixels) when ``positives`` (a label
    array ``(H, W)``: 1 landslide, 0 background, 255 unknown) is given, else every pixel.
    The used blocks are assigned to splits in proportion to ``fractions`` (exact quotas,
    largest remainder); blocks containing landslides are dealt first, so each split gets
    its share of them. ``buffer`` px are cut between splits (see :class:`BlockSplit`).
    Seeded; with every block used, the assignment is the one earlier versions made.
    """
    h, w = shape
    nr, nc = _grid(shape, block_size)
    n = nr * nc
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions}")
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer}")
    if valid is None and positives is not None:
        valid = np.asarray(positives) != _IGNORE
    used = _used_blocks((h, w), block_size, valid, min_valid_fraction).ravel()
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[used[order]]
    m = order.size
    quotas = _quotas(m, fractions) if m else [0, 0, 0]
    if positives is not None:
        has = _block_sums(np.asarray(positives) == 1, block_size).ravel() > 0
        order = np.concatenate([order[has[order]], order[~has[order]]])
    assigned = [0, 0, 0]
    codes = np.full(n, UNUSED, dtype=int)
    for i, b in enumerate(order):
        deficits = [
            (quotas[k] * (i + 1) / m - assigned[k]) if assigned[k] < quotas[k] else -np.inf
            for k in range(3)
        ]
        k = int(np.argmax(deficits))
        codes[b] = k
        assigned[k] += 1
    assignment = tuple(tuple(int(v) for v in codes[r * nc : (r + 1) * nc]) for r in range(nr))
    return BlockSplit((h, w), block_size, assignment, seed, int(buffer), "random")


def parse_block_ids(text: str) -> list[str]:
    """``"r0c1, r2c3"`` → ``["r0c1", "r2c3"]`` (commas or spaces)."""
    return [t for t in text.replace(",", " ").split() if t]


def split_from_ids(
    shape: tuple[int, int],
    block_size: int,
    ids: Mapping[str, Sequence[str]],
    *,
    buffer: int = 0,
    valid: np.ndarray | None = None,
) -> BlockSplit:
    """Blocks named per split: ``{"val": ["r0c1"], "test": ["r2c3", "r2c4"]}``.

    Without a ``train`` list every other non-empty block (see :func:`block_split`) trains.
    Raises :class:`InputDataError` for an unknown split name, an id off the grid, or a
    block listed twice."""
    nr, nc = _grid(shape, block_size)
    codes = np.full((nr, nc), UNUSED, dtype=int)
    seen: dict[str, str] = {}
    for name, blocks in ids.items():
        s = _NAMES.get(str(name).strip().lower(), "?")
        if s not in SPLITS:
            raise InputDataError(f"unknown split {name!r} in the block lists.", "use train, val and test.")
        for bid in blocks:
            r, c = _parse_id(bid, nr, nc)
            if bid in seen:
                raise InputDataError(f"block {bid} is listed for both {seen[bid]} and {s}.", "list each block once.")
            seen[bid] = s
            codes[r, c] = SPLITS.index(s)
    if "train" not in {_NAMES.get(str(k).strip().lower()) for k in ids}:
        used = _used_blocks(tuple(shape), block_size, valid, 0.0)
        codes[(codes == UNUSED) & used] = 0
    assignment = tuple(tuple(int(v) for v in row) for row in codes)
    return BlockSplit(tuple(shape), block_size, assignment, 0, int(buffer), "ids")


def _parse_id(bid: str, nr: int, nc: int) -> tuple[int, int]:
    import re

    m = re.fullmatch(r"r(\d+)c(\d+)", str(bid).strip())
    if not m or int(m[1]) >= nr or int(m[2]) >= nc:
        raise InputDataError(
            f"block id {bid!r} is not on the split grid ({nr} rows × {nc} columns of blocks).",
            f"use ids r<row>c<col> with row 0-{nr - 1} and col 0-{nc - 1}.",
        )
    return int(m[1]), int(m[2])




def read_split_polygons(path: str | Path, crs, attribute: str = "split") -> dict[str, list]:
    """Polygons of a vector file grouped by their ``attribute`` value (``train``/``val``/
    ``test``; ``none``/``unused``/empty skip a feature), reprojected to ``crs``."""
    import pyogrio
    import shapely
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"split file {path} does not exist.")
    try:
        meta, _, wkb, fields = pyogrio.raw.read(path)
    except Exception as exc:
        raise InputDataError(f"cannot read split file {path}: {exc}", "pass a GeoJSON or GeoPackage.") from exc
    names = [str(f) for f in meta["fields"]]
    if attribute not in names:
        raise InputDataError(
            f"split file {path} has no attribute {attribute!r} (it has {names}).",
            f"give each polygon a {attribute!r} property: train, val or test.",
        )
    values = fields[names.index(attribute)]
    src = ProjCRS.from_user_input(meta["crs"]) if meta.get("crs") else ProjCRS.from_epsg(4326)
    dst = ProjCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    tr = None if src == dst else Transformer.from_crs(src, dst, always_xy=True)
    out: dict[str, list] = {s: [] for s in SPLITS}
    for i, (blob, value) in enumerate(zip(wkb, values, strict=True)):
        key = "" if value is None else str(value).strip().lower()
        if key not in _NAMES:
            raise InputDataError(
                f"feature #{i} of {path} has {attribute}={value!r}.", "use train, val, test (or none to skip it)."
            )
        s = _NAMES[key]
        if s is None or blob is None:
            continue
        g = shapely.from_wkb(blob)
        if g.is_empty:
            continue
        if g.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputDataError(f"feature #{i} of {path} is a {g.geom_type}; split regions need polygons.")
        if tr is not None:
            g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        out[s].append(g)
    if not any(out.values()):
        raise InputDataError(f"split file {path} has no train/val/test polygon.")
    return out


def split_from_vector(
    path: str | Path,
    crs,
    transform,
    shape: tuple[int, int],
    block_size: int,
    *,
    attribute: str = "split",
    buffer: int = 0,
    valid: np.ndarray | None = None,
    min_cover: float = 0.5,
) -> BlockSplit:
    """Blocks assigned by the user's regions: the split whose polygons (pixel-centre
    rule) cover most of a block's pixels, if they cover at least ``min_cover`` of them;
    blocks covered less, or without a valid pixel, are unused. Choose a block size small
    enough to follow the regions' outlines (e.g. the chip size)."""
    import rasterio.features

    polys = read_split_polygons(path, crs, attribute)
    nr, nc = _grid(shape, block_size)
    areas = _block_areas(tuple(shape), block_size)
    cover = np.zeros((3, nr, nc), dtype=np.int64)
    for k, s in enumerate(SPLITS):
        if polys[s]:
            m = rasterio.features.rasterize(
                ((g, 1) for g in polys[s]), out_shape=tuple(shape), transform=transform, fill=0, dtype=np.uint8
            )
            cover[k] = _block_sums(m, block_size)
    best = cover.argmax(axis=0)
    ok = (cover.max(axis=0) >= min_cover * areas) & (cover.max(axis=0) > 0)
    ok &= _used_blocks(tuple(shape), block_size, valid, 0.0)
    codes = np.where(ok, best, UNUSED)
    assignment = tuple(tuple(int(v) for v in row) for row in codes)
    return BlockSplit(
        tuple(shape), block_size, assignment, 0, int(buffer), "vector", str(Path(path).resolve()), file_sha256(Path(path))
    )


@dataclass(frozen=True)
class SplitSpec:
    """How to split: random blocks (``fractions``, ``seed``), the user's regions
    (``file`` with polygons whose ``attribute`` is train/val/test) or explicit block ids
    (``blocks``: split name → ids); always ``block_size`` blocks and a ``buffer`` in px."""

    block_size: int = 512
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    buffer: int = 0
    file: str | None = None
    attribute: str = "split"
    blocks: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    min_valid_fraction: float = 0.0

    @classmethod
    def from_config(cls, config) -> SplitSpec:
        """From a training config: ``block_size``, ``split`` (fractions), ``seed`` and,
        when present, ``split_buffer``, ``split_file``, ``split_attribute``,
        ``split_blocks`` (mapping or pairs) and ``split_min_valid``."""
        blocks = getattr(config, "split_blocks", None)
        if isinstance(blocks, Mapping):
            blocks = tuple((k, tuple(v)) for k, v in blocks.items())
        return cls(
            int(config.block_size),
            tuple(getattr(config, "split", (0.6, 0.2, 0.2))),
            int(getattr(config, "split_seed", None) if getattr(config, "split_seed", None) is not None else config.seed),
            int(getattr(config, "split_buffer", 0) or 0),
            getattr(config, "split_file", None) or None,
            getattr(config, "split_attribute", "split") or "split",
            blocks or None,
            float(getattr(config, "split_min_valid", 0.0) or 0.0),
        )


def make_split(spec: SplitSpec, grid, labels: np.ndarray) -> BlockSplit:
    """The :class:`BlockSplit` a :class:`SplitSpec` describes on ``grid`` (an object with
    ``crs``, ``transform`` and ``shape``), with ``labels`` (1/0/255) telling landslide and
    empty blocks apart."""
    valid = np.asarray(labels) != _IGNORE
    if spec.file:
        return split_from_vector(
            spec.file, grid.crs, grid.transform, grid.shape, spec.block_size,
            attribute=spec.attribute, buffer=spec.buffer, valid=valid,
        )
    if spec.blocks:
        return split_from_ids(grid.shape, spec.block_size, dict(spec.blocks), buffer=spec.buffer, valid=valid)
    return block_split(
        grid.shape, spec.block_size, spec.fractions, spec.seed, positives=labels,
        buffer=spec.buffer, min_valid_fraction=spec.min_valid_fraction,
    )
