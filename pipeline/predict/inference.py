"""Seam-free chunked inference: any Predictor (numpy in, numpy out) over arrays of any size.

One global tile grid anchored at the array's origin, raised-cosine blending of overlaps
and per-channel fills for nodata make a chunk's probabilities exactly those of one pass
over the whole array, so mosaics have no chunk seams; all-nodata chunks and tiles never
reach the model. A predictor declaring ``output_bands`` returns ``(N, K, H, W)``; every
band is blended and masked like the probability and windows come back ``(K, H, W)``
(e.g. :class:`pipeline.predict.uncertainty.FlipEnsemble`: mean and spread).
:func:`predict_window` runs one window, :func:`iter_chunk_predictions` yields windows for
a writer that stores them as they finish, :func:`predict_dataset` builds the lazy dask
graph (the predictor enters it once). The last two run every tile of the grid once
(shared by the windows it straddles) and blend every window from the same tile outputs
in the same order, so a window's bits do not depend on the chunking. The design, the
defaults, the costs and the edge and nodata rules are in ``docs/inference.md``.

Longer than the project's ~500 lines on purpose: it does one job, and the tile plan, the
blending weights, the batch loop and the two drivers (iterator, dask graph) share private
helpers whose split would expose them.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from pipeline.core.config import DEFAULT_CHUNK, INFERENCE_OVERLAP, INFERENCE_TILE
from pipeline.core.errors import InputDataError

__all__ = [
    "PredictionStats",
    "PredictorLike",
    "TilePlan",
    "axis_weights",
    "chunk_windows",
    "iter_chunk_predictions",
    "make_plan",
    "output_bands",
    "predict_chunk",
    "predict_dataset",
    "predict_window",
]


@runtime_checkable
class PredictorLike(Protocol):
    """What inference needs from a model (``models.predictor.Predictor`` is one).

    ``size_multiple`` (inputs the network takes best are multiples of it),
    ``fill_values`` (per-channel fill for missing inputs) and ``output_bands`` are
    optional attributes. Without ``output_bands`` a predictor returns ``(N, H, W)`` and
    the drivers return ``(H, W)`` windows; with ``output_bands`` (K names, K ≥ 1) it
    returns ``(N, K, H, W)`` and the drivers return ``(K, H, W)`` windows, band by band
    in that order (even for K = 1: the result's rank follows the declaration).
    """

    channels: tuple[str, ...]
    halo: int

    def check_channels(self, names: Sequence[str]) -> None:
        """Raise when ``names`` is not the channel list the model expects."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, H, W)`` (``(N, K, H, W)`` with ``output_bands``) float32 for
        raw factors ``(N, C, H, W)`` float32."""


# --------------------------------------------------------------------------------------
# counters


@dataclass
class PredictionStats:
    """Counters of a prediction run (thread-safe; add with :meth:`add`).

    Attributes:
        chunks_run: windows blended from at least one tile.
        chunks_skipped: windows without a valid pixel (returned as NaN; no model call
            of their own).
        tiles_run / tiles_skipped: tiles sent to the model / skipped as nodata (a tile
            shared by several windows counts once in :func:`predict_dataset` and
            :func:`iter_chunk_predictions`).
        model_calls: calls of the predictor (each with up to ``batch_size`` tiles).
        pixels_output: output pixels produced (windows' areas, skipped ones included).
        pixels_processed: pixels passed to the model, overlap and edge padding included.
        pixels_read: input pixels read (per channel), halos included.
        model_seconds: wall time spent inside the predictor.
    """

    chunks_run: int = 0
    chunks_skipped: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    model_calls: int = 0
    pixels_output: int = 0
    pixels_processed: int = 0
    pixels_read: int = 0
    model_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        """Add to named counters, atomically."""
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def overlap_factor(self) -> float:
        """Pixels processed by the model per output pixel (NaN before any output)."""
        return self.pixels_processed / self.pixels_output if self.pixels_output else math.nan

    def as_dict(self) -> dict[str, float]:
        """The counters as a plain dict (JSON-able)."""
        keys = ("chunks_run", "chunks_skipped", "tiles_run", "tiles_skipped", "model_calls",
                "pixels_output", "pixels_processed", "pixels_read", "model_seconds")
        return {k: getattr(self, k) for k in keys}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# --------------------------------------------------------------------------------------
# the plan: tile size, overlap, margin


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class TilePlan:
    """Tiling of one inference run (see the module docstring); build with :func:`make_plan`.

    Attributes:
        tile: tile side in pixels (a multiple of ``size_multiple``).
        overlap: overlap of neighbouring tiles (``tile - stride``).
        margin: zero-weight band at a tile's interior edges (``2·margin < overlap``).
        size_multiple: tile origins and padded sizes are multiples of it.
        halo: the predictor's halo; each chunk reads at least this much around itself.
    """

    tile: int
    overlap: int
    margin: int
    size_multiple: int = 1
    halo: int = 0

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def origins(self, n: int) -> np.ndarray:
        """Tile origins along an axis of ``n`` pixels (the last tile reaches ``n``)."""
        if n <= self.tile:
            return np.zeros(1, dtype=np.int64)
        count = -(-(n - self.tile) // self.stride) + 1
        return np.arange(count, dtype=np.int64) * self.stride

    def weights(self, origin: int, n: int) -> np.ndarray:
        """1-D weights of the tile at ``origin`` on an axis of ``n`` pixels (clipped to ``n``)."""
        length = min(self.tile, n - origin)
        return axis_weights(length, self.tile, self.overlap, self.margin,
                            origin > 0, origin + self.tile < n)

    def _spans(self, origins: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Global ``[start, stop)`` where the tiles at ``origins`` have a positive weight."""
        start = origins + np.where(origins > 0, self.margin, 0)
        stop = np.where(origins + self.tile < n, origins + self.tile - self.margin, n)
        return start, stop

    def nonzero_span(self, origin: int, n: int) -> tuple[int, int]:
        """Global ``[start, stop)`` where the tile at ``origin`` has a positive weight."""
        start, stop = self._spans(np.asarray(origin), n)
        return int(start), int(stop)

    def tiles_for(self, n: int, lo: int, hi: int) -> list[int]:
        """Origins of the tiles with a positive weight somewhere in ``[lo, hi)``."""
        o = self.origins(n)
        start, stop = self._spans(o, n)
        return [int(v) for v in o[(start < hi) & (stop > lo)]]


def make_plan(
    predictor: Any, tile: int = INFERENCE_TILE, overlap: int | None = None, margin: int | None = None
) -> TilePlan:
    """Resolve the tiling for ``predictor`` (defaults in ``docs/inference.md``).

    Default ``overlap``: ``min(4·halo, tile // 4, INFERENCE_OVERLAP)`` (64 px), so a larger
    tile keeps the same blending band and costs less overlap; default ``margin``:
    ``min(halo, overlap // 4)``. ``tile`` and ``overlap`` are rounded up to multiples of the predictor's
    ``size_multiple``. Raises :class:`~pipeline.core.errors.InputDataError` for a tile that
    is not positive, an overlap not smaller than the tile, or a margin that leaves no
    blending ramp (``2·margin ≥ overlap``).
    """
    sm = int(getattr(predictor, "size_multiple", 1) or 1)
    halo = int(getattr(predictor, "halo", 0) or 0)
    if sm < 1 or halo < 0:
        raise InputDataError(
            f"predictor {predictor!r} has size_multiple={sm}, halo={halo}.",
            "size_multiple must be >= 1 and halo >= 0.",
        )
    if int(tile) < 1:
        raise InputDataError(f"tile={tile} is not a positive size.", "pass tile=256 or another positive size.")
    t = _round_up(int(tile), sm)
    if overlap is None:
        ov = min(4 * halo, t // 4, INFERENCE_OVERLAP)
        ov = _round_up(ov, sm) if ov > 0 else 0
        if ov > t // 2:
            ov = (t // 2) // sm * sm
    else:
        ov = _round_up(int(overlap), sm) if int(overlap) > 0 else 0
        if int(overlap) < 0 or ov >= t:
            raise InputDataError(
                f"overlap={overlap} (rounded to {ov}, size_multiple {sm}) must be >= 0 and "
                f"smaller than the tile ({t}).",
                "use an overlap around 4*halo, at most tile // 2.",
            )
    if margin is None:
        mg = min(halo, ov // 4)
    else:
        mg = int(margin)
        if mg < 0 or (ov > 0 and 2 * mg >= ov) or (ov == 0 and mg != 0):
            raise InputDataError(
                f"margin={margin} leaves no blending ramp in an overlap of {ov} pixels.",
                "use 0 <= margin < overlap / 2 (e.g. margin = halo, overlap = 4*halo).",
            )
    return TilePlan(tile=t, overlap=ov, margin=mg, size_multiple=sm, halo=halo)


def _ramp(d: np.ndarray, overlap: int, margin: int) -> np.ndarray:
    width = overlap - 2 * margin
    if overlap <= 0 or width <= 0:
        return np.ones(d.shape, dtype=np.float64)
    t = np.clip((d - margin + 0.5) / width, 0.0, 1.0)
    w = np.sin(0.5 * np.pi * t) ** 2
    w[d < margin] = 0.0
    w[d >= overlap - margin] = 1.0
    return w


@lru_cache(maxsize=256)
def _axis_weights_cached(length: int, tile: int, overlap: int, margin: int,
                         taper_start: bool, taper_end: bool) -> np.ndarray:
    i = np.arange(length, dtype=np.float64)
    w = np.ones(length, dtype=np.float64)
    if taper_start:
        w *= _ramp(i, overlap, margin)
    if taper_end:
        w *= _ramp(tile - 1 - i, overlap, margin)
    w = w.astype(np.float32)
    w.setflags(write=False)
    return w


def axis_weights(length: int, tile: int, overlap: int, margin: int,
                 taper_start: bool, taper_end: bool) -> np.ndarray:
    """Blending weights along one axis of a tile (``length`` ≤ ``tile`` pixels kept).

    ``taper_start``/``taper_end`` say whether that edge is interior (tapered) or on the
    array's border (full weight). Per tapered edge, at distance ``d`` from it: 0 for
    ``d < margin``, ``sin²(π/2·(d - margin + ½)/(overlap - 2·margin))`` up to
    ``overlap - margin``, then 1. Returns a read-only float32 array.
    """
    return _axis_weights_cached(int(length), int(tile), int(overlap), int(margin),
                                bool(taper_start), bool(taper_end))


# --------------------------------------------------------------------------------------
# the numpy kernel


def _fill_values(predictor: Any, n_channels: int, fill: float | Sequence[float] | None) -> np.ndarray:
    if fill is None:
        fill = getattr(predictor, "fill_values", None)
    if fill is None:
        fill = 0.0
    arr = np.asarray(fill, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.full(n_channels, arr[0], dtype=np.float32)
    if arr.size != n_channels or not np.all(np.isfinite(arr)):
        raise InputDataError(
            f"fill={list(np.asarray(fill).reshape(-1))} does not give one finite value per "
            f"channel ({n_channels}).",
            "pass fill as one number or one finite number per channel.",
        )
    return arr


def output_bands(predictor: Any) -> tuple[str, ...] | None:
    """The band names a predictor declares (``output_bands``), or ``None`` for a plain
    ``(N, H, W)`` predictor. Raises :class:`~pipeline.core.errors.InputDataError` for an
    empty or repeated list."""
    bands = getattr(predictor, "output_bands", None)
    if bands is None:
        return None
    names = (bands,) if isinstance(bands, str) else tuple(str(b) for b in bands)
    if not names or len(set(names)) != len(names):
        raise InputDataError(
            f"predictor {predictor!r} declares output_bands={list(names)}.",
            "declare one or more distinct band names, or none for (N, H, W) probabilities.",
        )
    return names


def _pad_tile(x: np.ndarray, sm: int) -> tuple[np.ndarray, int, int]:
    """Pad a (C, h, w) tile at the bottom/right to multiples of ``sm`` like the U-Net does."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % sm, (-w) % sm
    if not (ph or pw):
        return x, h, w
    mode = "reflect" if (ph < h and pw < w) else "edge"
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode), h, w


#: A tile of the global grid: global origin and size clipped to the array, ``(oy, ox, ly, lx)``.
_Tile = tuple[int, int, int, int]


def _tiles(plan: TilePlan, full_shape: tuple[int, int], window: tuple[int, int, int, int]) -> list[_Tile]:
    """The tiles with a positive weight somewhere in ``window``, sorted by ``(oy, ox)``
    (the order every driver blends them in, so results agree to the bit)."""
    H, W = full_shape
    y0, y1, x0, x1 = window
    return [(oy, ox, min(plan.tile, H - oy), min(plan.tile, W - ox))
            for oy in plan.tiles_for(H, y0, y1) for ox in plan.tiles_for(W, x0, x1)]


@lru_cache(maxsize=64)
def _weights_2d(plan: TilePlan, ly: int, lx: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """2-D blending weights ``(ly, lx)`` of a tile whose edges are interior (tapered) or
    not (read-only float32, cached: a grid has at most nine distinct ones)."""
    w = (axis_weights(ly, plan.tile, plan.overlap, plan.margin, top, bottom)[:, None]
         * axis_weights(lx, plan.tile, plan.overlap, plan.margin, left, right)[None, :])
    w.setflags(write=False)
    return w


def _tile_weights(plan: TilePlan, full_shape: tuple[int, int], tile: _Tile) -> np.ndarray:
    """The 2-D weights of ``tile`` (the outer product of ``plan.weights`` on both axes)."""
    oy, ox, ly, lx = tile
    H, W = full_shape
    return _weights_2d(plan, ly, lx, oy > 0, oy + plan.tile < H, ox > 0, ox + plan.tile < W)


def _span_has_valid(valid: np.ndarray, origin: tuple[int, int], tile: _Tile, plan: TilePlan,
                    full_shape: tuple[int, int], window: tuple[int, int, int, int] | None = None) -> bool:
    """Whether a valid pixel lies where ``tile`` has a positive weight (within ``window``
    when given); ``valid`` covers global pixels from ``origin`` and holds that span."""
    oy, ox, _, _ = tile
    sy0, sy1 = plan.nonzero_span(oy, full_shape[0])
    sx0, sx1 = plan.nonzero_span(ox, full_shape[1])
    if window is not None:
        sy0, sy1 = max(sy0, window[0]), min(sy1, window[1])
        sx0, sx1 = max(sx0, window[2]), min(sx1, window[3])
    vy, vx = origin
    return bool(valid[sy0 - vy : sy1 - vy, sx0 - vx : sx1 - vx].any())


def _fill_block(block: np.ndarray, fill: np.ndarray, owned: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(filled, valid)``: non-finite inputs replaced by the per-channel ``fill`` (in place
    when ``owned``: a float32 scratch copy) and the ``(h, w)`` all-channels-finite mask."""
    finite = np.isfinite(block)
    valid = finite.all(axis=0)
    if valid.all():
        return block.astype(np.float32, copy=False), valid
    if owned and block.dtype == np.float32:
        np.copyto(block, np.broadcast_to(fill[:, None, None], block.shape), where=~finite)
        return block, valid
    return np.where(finite, block, fill[:, None, None]).astype(np.float32, copy=False), valid


def _run_tiles(
    filled: np.ndarray,
    origin: tuple[int, int],
    tiles: Sequence[_Tile],
    predictor: Callable[[np.ndarray], np.ndarray],
    plan: TilePlan,
    batch_size: int,
    bands: tuple[str, ...] | None,
    counts: dict[str, float],
) -> list[np.ndarray]:
    """The predictor's output ``(K, ly, lx)`` for each tile (in the order given), from
    ``filled`` (C, h, w) whose top-left pixel is global ``origin`` and which holds every tile.

    Tiles are batched by padded shape (a grid has at most four: full, right edge, bottom
    edge, corner) in balanced batches of at most ``batch_size`` (9 tiles at 8 → 5 + 4),
    copied into one preallocated batch; edge tiles are padded to ``size_multiple``."""
    k = 1 if bands is None else len(bands)
    lead = () if bands is None else (k,)
    sm = plan.size_multiple
    by0, bx0 = origin
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (_, _, ly, lx) in enumerate(tiles):
        groups.setdefault((_round_up(ly, sm), _round_up(lx, sm)), []).append(i)
    out: list[np.ndarray] = [None] * len(tiles)  # type: ignore[list-item]
    for (ph, pw), idx in groups.items():
        n_batches = -(-len(idx) // batch_size)
        size = -(-len(idx) // n_batches)
        for s in range(0, len(idx), size):
            part = idx[s : s + size]
            batch = np.empty((len(part), filled.shape[0], ph, pw), dtype=np.float32)
            for b, i in enumerate(part):
                oy, ox, ly, lx = tiles[i]
                src = filled[:, oy - by0 : oy - by0 + ly, ox - bx0 : ox - bx0 + lx]
                batch[b] = src if (ly, lx) == (ph, pw) else _pad_tile(src, sm)[0]
            t0 = time.perf_counter()
            pred = np.asarray(predictor(batch))
            counts["model_seconds"] += time.perf_counter() - t0
            counts["model_calls"] += 1
            counts["tiles_run"] += len(part)
            counts["pixels_processed"] += batch.shape[0] * ph * pw
            if pred.shape != (batch.shape[0],) + lead + (ph, pw):
                if bands is None:
                    fix = ("a predictor must return (N, H, W) probabilities for (N, C, H, W) "
                           "inputs; one returning (N, K, H, W) must declare output_bands.")
                else:
                    fix = (f"a predictor declaring output_bands={list(bands)} must return "
                           f"(N, {k}, H, W) for (N, C, H, W) inputs.")
                raise InputDataError(
                    f"predictor {predictor!r} returned shape {pred.shape} for a batch {batch.shape}.", fix)
            del batch
            pred = pred.reshape((pred.shape[0], k, ph, pw))
            for b, i in enumerate(part):
                out[i] = pred[b, :, : tiles[i][2], : tiles[i][3]]
    return out


def _blend(
    window: tuple[int, int, int, int],
    tiles: Sequence[_Tile],
    preds: Sequence[np.ndarray | None],
    plan: TilePlan,
    full_shape: tuple[int, int],
    core_valid: np.ndarray,
    k: int,
) -> np.ndarray:
    """Weighted mean ``(K, h, w)`` float32 over ``window`` of the tiles' outputs (``None``:
    a skipped tile), in the order given; NaN where no tile weighs or ``core_valid`` is
    False. The same tiles in the same order give the same bits whatever the window."""
    y0, y1, x0, x1 = window
    acc = np.zeros((k, y1 - y0, x1 - x0), dtype=np.float32)  # every band blended alike
    wsum = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for (oy, ox, ly, lx), p in zip(tiles, preds):
        if p is None:
            continue
        ty0, ty1 = max(y0, oy), min(y1, oy + ly)
        tx0, tx1 = max(x0, ox), min(x1, ox + lx)
        if ty0 >= ty1 or tx0 >= tx1:
            continue
        w2 = _tile_weights(plan, full_shape, (oy, ox, ly, lx))[ty0 - oy : ty1 - oy, tx0 - ox : tx1 - ox]
        ay, ax = slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0)
        acc[:, ay, ax] += w2 * p[:, ty0 - oy : ty1 - oy, tx0 - ox : tx1 - ox]
        wsum[ay, ax] += w2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.divide(acc, wsum, out=acc)
    out[:, (wsum <= 0) | ~core_valid] = np.nan  # nodata: the same pixels in every band
    return out


def _new_counts() -> dict[str, float]:
    return {"tiles_run": 0, "tiles_skipped": 0, "model_calls": 0, "pixels_processed": 0, "model_seconds": 0.0}


def _nan_window(lead: tuple[int, ...], window: tuple[int, int, int, int], stats: PredictionStats | None) -> np.ndarray:
    """An all-nodata window: NaN, no model call, counted as skipped."""
    y0, y1, x0, x1 = window
    if stats is not None:
        stats.add(chunks_skipped=1, pixels_output=(y1 - y0) * (x1 - x0))
    return np.full(lead + (y1 - y0, x1 - x0), np.nan, dtype=np.float32)


def _predict_core(
    block: np.ndarray,
    block_origin: tuple[int, int],
    full_shape: tuple[int, int],
    window: tuple[int, int, int, int],
    predictor: Callable[[np.ndarray], np.ndarray],
    plan: TilePlan,
    batch_size: int,
    fill: np.ndarray,
    stats: PredictionStats | None,
    owned: bool = False,
) -> np.ndarray:
    """Blended prediction of one ``window`` (global y0, y1, x0, x1) from ``block`` (C, bh, bw)
    whose top-left pixel is at global ``block_origin``; the block must hold every tile
    touching the window (clipped to ``full_shape``). ``owned``: the block is a float32
    scratch copy that may be filled in place. Tiles without a valid pixel where they weigh
    inside the window are skipped. Returns ``(h, w)``, or ``(K, h, w)`` for a predictor
    declaring ``output_bands``."""
    y0, y1, x0, x1 = window
    by0, bx0 = block_origin
    bands = output_bands(predictor)
    k = 1 if bands is None else len(bands)
    lead = () if bands is None else (k,)
    filled, valid = _fill_block(block, fill, owned)
    core_valid = valid[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    if not core_valid.any():
        return _nan_window(lead, window, stats)
    counts = _new_counts()
    tiles = []
    for t in _tiles(plan, full_shape, window):
        if _span_has_valid(valid, block_origin, t, plan, full_shape, window):
            tiles.append(t)
        else:
            counts["tiles_skipped"] += 1
    preds = _run_tiles(filled, block_origin, tiles, predictor, plan, batch_size, bands, counts)
    out = _blend(window, tiles, preds, plan, full_shape, core_valid, k)
    if stats is not None:
        stats.add(chunks_run=1, pixels_output=(y1 - y0) * (x1 - x0), **counts)
    return out[0] if bands is None else out


def _read_window(plan: TilePlan, full_shape: tuple[int, int],
                 window: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Global ``(ry0, ry1, rx0, rx1)`` to read for ``window``: every tile touching it and
    the window grown by the halo, clipped to the array."""
    H, W = full_shape
    y0, y1, x0, x1 = window
    ys = plan.tiles_for(H, y0, y1)
    xs = plan.tiles_for(W, x0, x1)
    ry0 = max(0, min([y0 - plan.halo] + ys))
    ry1 = min(H, max([y1 + plan.halo] + [o + plan.tile for o in ys]))
    rx0 = max(0, min([x0 - plan.halo] + xs))
    rx1 = min(W, max([x1 + plan.halo] + [o + plan.tile for o in xs]))
    return ry0, ry1, rx0, rx1


def predict_window(
    x: np.ndarray,
    predictor: PredictorLike,
    *,
    tile: int = INFERENCE_TILE,
    overlap: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    fill: float | Sequence[float] | None = None,
    stats: PredictionStats | None = None,
) -> np.ndarray:
    """Blended probability ``(H, W)`` float32 of an in-memory block ``x`` ``(C, H, W)``.

    ``x`` is treated as a whole array (its edges are array edges). NaN where any channel
    is non-finite; see the module docstring for tiling, weights and fill values. For a
    predictor declaring ``output_bands`` (K names): ``(K, H, W)``, each band blended
    alike and NaN at the same pixels.

    Example::

        prob = predict_window(factors, predictor, tile=256, batch_size=8)
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise InputDataError(f"predict_window expects (C, H, W), got shape {x.shape}.",
                             "stack the channels first: np.stack([...]).")
    _check_width(predictor, x.shape[0])
    plan = make_plan(predictor, tile, overlap, margin)
    H, W = x.shape[1:]
    if stats is not None:
        stats.add(pixels_read=H * W)
    return _predict_core(x.astype(np.float32, copy=False), (0, 0), (H, W), (0, H, 0, W),
                         predictor, plan, max(1, int(batch_size)),
                         _fill_values(predictor, x.shape[0], fill), stats)


def _check_width(predictor: Any, n: int) -> None:
    want = len(getattr(predictor, "channels", ()) or ())
    if want and want != n:
        raise InputDataError(
            f"{n} input channels but predictor {predictor!r} expects {want} "
            f"({list(predictor.channels)}).",
            "select the predictor's channels, in its order.",
        )


# --------------------------------------------------------------------------------------
# sources: xarray Dataset / DataArray / anything sliceable (C, H, W)


def _spatial_dims(ds: xr.Dataset, channels: Sequence[str]) -> tuple[str, str]:
    missing = [c for c in channels if c not in ds.data_vars]
    if missing:
        raise InputDataError(
            f"the dataset lacks channel(s) {missing}; it has {list(ds.data_vars)}.",
            "compute the missing factors or pass channels= matching the dataset.",
        )
    dims = {ds[c].dims for c in channels}
    if len(dims) != 1 or len(next(iter(dims))) != 2:
        raise InputDataError(
            f"channels {list(channels)} must share the same two dims, got {sorted(dims)}.",
            "select one time step / band first so every channel is (y, x).",
        )
    return next(iter(dims))  # type: ignore[return-value]


class _Source:
    """Lazy (C, H, W) reader over a Dataset, a DataArray or a sliceable array."""

    def __init__(self, source: Any, channels: Sequence[str] | None = None) -> None:
        if isinstance(source, xr.Dataset):
            self.channels = tuple(channels) if channels is not None else tuple(source.data_vars)
            self.dims = _spatial_dims(source, self.channels)
            self.shape = tuple(int(source.sizes[d]) for d in self.dims)
            self._ds = source
            self.kind = "dataset"
        elif isinstance(source, xr.DataArray):
            if source.ndim != 3:
                raise InputDataError(f"a DataArray source must be (channel, y, x), got dims {source.dims}.",
                                     "use ds.to_array('channel') or pass the Dataset.")
            self.dims = source.dims[1:]
            self.shape = tuple(int(s) for s in source.shape[1:])
            self.channels = tuple(channels) if channels is not None else None
            self._da = source
            self.kind = "dataarray"
        else:
            shape = getattr(source, "shape", None)
            if shape is None or len(shape) != 3:
                raise InputDataError(f"a source must be (C, H, W), got shape {shape}.",
                                     "pass an xarray Dataset, a (C, H, W) DataArray or array.")
            self.shape = (int(shape[1]), int(shape[2]))
            self.channels = tuple(channels) if channels is not None else None
            self._arr = source
            self.kind = "array"

    @property
    def n_channels(self) -> int:
        if self.kind == "dataset":
            return len(self.channels)
        return int((self._da if self.kind == "dataarray" else self._arr).shape[0])

    def read(self, ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        ys, xs = slice(ry0, ry1), slice(rx0, rx1)
        if self.kind == "dataset":
            sub = self._ds[list(self.channels)].isel({self.dims[0]: ys, self.dims[1]: xs})
            out = np.empty((len(self.channels), ry1 - ry0, rx1 - rx0), dtype=np.float32)
            for i, c in enumerate(self.channels):  # each channel straight into its plane (no stacked copy)
                out[i] = sub[c].values
            return out
        if self.kind == "dataarray":
            return np.array(self._da.isel({self.dims[0]: ys, self.dims[1]: xs}).values, dtype=np.float32)
        return np.array(self._arr[:, ys, xs], dtype=np.float32)  # a copy: filled in place later


def _predict_from_source(src: _Source, window, predictor, plan, batch_size, fill, stats) -> np.ndarray:
    H, W = src.shape
    y0, y1, x0, x1 = window
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise InputDataError(f"window y[{y0}:{y1}] x[{x0}:{x1}] is empty or outside the "
                             f"{H}×{W} array.", "pass 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W.")
    ry0, ry1, rx0, rx1 = _read_window(plan, (H, W), window)
    block = src.read(ry0, ry1, rx0, rx1)
    if stats is not None:
        stats.add(pixels_read=block.shape[1] * block.shape[2])
    return _predict_core(block, (ry0, rx0), (H, W), window, predictor, plan, batch_size, fill, stats,
                         owned=True)


def predict_chunk(
    source: Any,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    predictor: PredictorLike,
    *,
    channels: Sequence[str] | None = None,
    tile: int = INFERENCE_TILE,
    overlap: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    fill: float | Sequence[float] | None = None,
    stats: PredictionStats | None = None,
) -> np.ndarray:
    """Probability ``(y1-y0, x1-x0)`` of one window of ``source``, seam-free
    (``(K, y1-y0, x1-x0)`` for a predictor declaring K ``output_bands``).

    ``source`` is an ``xr.Dataset`` (``channels`` selects and orders variables; default
    all data variables), a ``(channel, y, x)`` DataArray or any ``(C, H, W)`` array that
    slices lazily (zarr, h5py, numpy). Reads the window grown by the tiles touching it and
    by ``predictor.halo`` (clipped at the array edge); the result equals the same pixels
    of :func:`predict_window` over the whole array. Does not call ``check_channels``
    (:func:`predict_dataset` and :func:`iter_chunk_predictions` do).
    """
    src = _Source(source, channels)
    _check_width(predictor, src.n_channels)
    plan = make_plan(predictor, tile, overlap, margin)
    return _predict_from_source(src, (int(y0), int(y1), int(x0), int(x1)), predictor, plan,
                                max(1, int(batch_size)), _fill_values(predictor, src.n_channels, fill), stats)


# --------------------------------------------------------------------------------------
# chunk windows, iterator, dask


def _chunk_sizes(n: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, n - s) for s in range(0, n, size))


def _bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def chunk_windows(shape: tuple[int, int], chunks: int | tuple[int, int]) -> list[tuple[slice, slice]]:
    """Row-major ``(slice_y, slice_x)`` windows of a regular chunking of ``shape``."""
    cy, cx = (chunks, chunks) if isinstance(chunks, int) else chunks
    if cy < 1 or cx < 1:
        raise InputDataError(f"chunks={chunks} must be positive.", "pass e.g. chunks=512.")
    return [(slice(a, b), slice(c, d))
            for a, b in _bounds(_chunk_sizes(shape[0], cy))
            for c, d in _bounds(_chunk_sizes(shape[1], cx))]


def _resolve_channels(ds: xr.Dataset, predictor: PredictorLike, channels: Sequence[str] | None) -> tuple[str, ...]:
    """The channel list to feed, checked by ``predictor.check_channels`` (errors propagate).

    Given ``channels`` are checked as they are. Otherwise, when the dataset holds every
    predictor channel, those are selected by name in the predictor's order (Zarr does not
    keep variable order; extra variables such as ``quality`` are ignored); else the
    dataset's variable names are checked, so the predictor's error names what is missing.
    """
    if channels is not None:
        names = tuple(str(c) for c in channels)
    else:
        wanted = tuple(getattr(predictor, "channels", ()) or ())
        have = tuple(str(v) for v in ds.data_vars)
        names = wanted if wanted and set(wanted) <= set(have) else have
    predictor.check_channels(list(names))
    _spatial_dims(ds, names)
    return names


def _box(tiles: Iterable[_Tile], window: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """The global ``(y0, y1, x0, x1)`` bounding box of ``tiles`` (and ``window``)."""
    boxes = [(oy, oy + ly, ox, ox + lx) for oy, ox, ly, lx in tiles] + ([window] if window else [])
    return (min(b[0] for b in boxes), max(b[1] for b in boxes),
            min(b[2] for b in boxes), max(b[3] for b in boxes))


def _shared_tiles(
    filled: np.ndarray,
    valid: np.ndarray,
    origin: tuple[int, int],
    tiles: Sequence[_Tile],
    predictor: Callable[[np.ndarray], np.ndarray],
    plan: TilePlan,
    full_shape: tuple[int, int],
    batch_size: int,
    stats: PredictionStats | None,
) -> dict[_Tile, np.ndarray | None]:
    """Outputs of ``tiles`` for any window that needs them (``None``: no valid pixel where
    the tile weighs, never sent to the model), from a filled block holding them all."""
    counts = _new_counts()
    run = [t for t in tiles if _span_has_valid(valid, origin, t, plan, full_shape)]
    counts["tiles_skipped"] = len(tiles) - len(run)
    out: dict[_Tile, np.ndarray | None] = dict.fromkeys(tiles)
    out.update(zip(run, _run_tiles(filled, origin, run, predictor, plan, batch_size,
                                   output_bands(predictor), counts)))
    if stats is not None:
        stats.add(**counts)
    return out


def _iter_shared(src: _Source, wins: Sequence[tuple[int, int, int, int]], predictor: Any, plan: TilePlan,
                 batch_size: int, fill: np.ndarray, stats: PredictionStats | None) -> Iterator[np.ndarray]:
    """Blend ``wins`` one after another, running each tile of the global grid once.

    A tile's output is kept while a later window still needs it (windows in row-major
    order keep about two rows of tiles: ``2 × width × tile × 4`` bytes per band); each
    window reads its own pixels and those of the tiles it is the first to need."""
    full = src.shape
    bands = output_bands(predictor)
    k = 1 if bands is None else len(bands)
    lead = () if bands is None else (k,)
    tiles_of = [_tiles(plan, full, w) for w in wins]
    need: dict[_Tile, int] = {}
    for ts in tiles_of:
        for t in ts:
            need[t] = need.get(t, 0) + 1
    cache: dict[_Tile, np.ndarray | None] = {}
    for window, ts in zip(wins, tiles_of):
        y0, y1, x0, x1 = window
        missing = [t for t in ts if t not in cache]
        ry0, ry1, rx0, rx1 = _box(missing, window)
        block = src.read(ry0, ry1, rx0, rx1)
        if stats is not None:
            stats.add(pixels_read=block.shape[1] * block.shape[2])
        filled, valid = _fill_block(block, fill, owned=True)
        core_valid = valid[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
        if core_valid.any():
            if missing:
                cache.update(_shared_tiles(filled, valid, (ry0, rx0), missing, predictor, plan, full,
                                           batch_size, stats))
            out = _blend(window, ts, [cache[t] for t in ts], plan, full, core_valid, k)
            if stats is not None:
                stats.add(chunks_run=1, pixels_output=(y1 - y0) * (x1 - x0))
            out = out[0] if bands is None else out
        else:
            out = _nan_window(lead, window, stats)
        del block, filled, valid
        for t in ts:
            need[t] -= 1
            if not need[t]:
                del need[t]
                cache.pop(t, None)
        yield out


def iter_chunk_predictions(
    ds: xr.Dataset,
    predictor: PredictorLike,
    chunks: int | tuple[int, int] = DEFAULT_CHUNK,
    *,
    channels: Sequence[str] | None = None,
    windows: Iterable[tuple[slice, slice]] | None = None,
    tile: int = INFERENCE_TILE,
    overlap: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    fill: float | Sequence[float] | None = None,
    stats: PredictionStats | None = None,
) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield ``((slice_y, slice_x), probability)`` window by window, sequentially.

    ``probability`` is float32 ``(h, w)``; for a predictor declaring ``output_bands`` (K
    names) it is ``(K, h, w)`` in that order, e.g. ``mean, spread = bands`` for a
    :class:`~pipeline.predict.uncertainty.FlipEnsemble`.

    Checks the channels once (``predictor.check_channels``; ``channels`` default as in
    :func:`predict_dataset`), then computes each window of ``chunk_windows(shape,
    chunks)``, or only ``windows`` when given (e.g. the chunks a resumed run still lacks),
    in that order. Each tile of the global grid runs once per call: a tile straddling two
    windows is kept until the later one is blended (about two rows of tiles for windows in
    row-major order), so the model sees each pixel about ``(tile / stride)²`` times,
    whatever the window size. Results do not depend on which windows run or in which
    order. For a zarr source, open it without dask (``chunks=None``) so each window reads
    only its own pixels (and those of the tiles it needs first).
    """
    names = _resolve_channels(ds, predictor, channels)
    output_bands(predictor)  # a bad declaration fails before the first window
    src = _Source(ds, names)
    plan = make_plan(predictor, tile, overlap, margin)
    fills = _fill_values(predictor, len(names), fill)
    bs = max(1, int(batch_size))
    wins = []
    for sy, sx in (chunk_windows(src.shape, chunks) if windows is None else windows):
        y0, y1, _ = sy.indices(src.shape[0])
        x0, x1, _ = sx.indices(src.shape[1])
        if not (y0 < y1 and x0 < x1):
            raise InputDataError(f"window y[{y0}:{y1}] x[{x0}:{x1}] is empty.",
                                 "pass windows with 0 <= start < stop <= the array's size.")
        wins.append((y0, y1, x0, x1))
    for w, out in zip(wins, _iter_shared(src, wins, predictor, plan, bs, fills, stats)):
        yield (slice(w[0], w[1]), slice(w[2], w[3])), out


@dataclass(frozen=True)
class _ReadSpec:
    """Where a dask task's pixels come from (an opaque object in the graph): the global
    box it reads and, for a dask-backed source, per channel the global ``(start, stop)``
    of the source blocks' rows and columns it is handed."""

    box: tuple[int, int, int, int]
    bounds: tuple[tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]], ...] = ()


def _assemble(blocks: list, spec: _ReadSpec) -> np.ndarray:
    """Copy ``spec.box`` out of the source blocks (a float32 scratch array)."""
    ry0, ry1, rx0, rx1 = spec.box
    out = np.empty((len(blocks), ry1 - ry0, rx1 - rx0), dtype=np.float32)
    for c, (chan, (rows, cols)) in enumerate(zip(blocks, spec.bounds)):
        for row, (ys, ye) in zip(chan, rows):
            a, b = max(ys, ry0), min(ye, ry1)
            for src, (xs, xe) in zip(row, cols):
                l, r = max(xs, rx0), min(xe, rx1)
                out[c, a - ry0 : b - ry0, l - rx0 : r - rx0] = np.asarray(src)[a - ys : b - ys, l - xs : r - xs]
    return out


def _read(source: Any, spec: _ReadSpec, stats: PredictionStats | None) -> np.ndarray:
    """The task's box: from the shared lazy reader, or assembled from source blocks."""
    block = source.read(*spec.box) if isinstance(source, _Source) else _assemble(source, spec)
    if stats is not None:
        stats.add(pixels_read=block.shape[1] * block.shape[2])
    return block


@dataclass(frozen=True)
class _TileTask:
    """Static parameters of one group of tiles run by one dask task."""

    tiles: tuple[_Tile, ...]
    read: _ReadSpec
    full_shape: tuple[int, int]
    plan: TilePlan
    batch_size: int
    fill: tuple[float, ...]


def _tile_group(predictor: Any, source: Any, spec: _TileTask, stats: PredictionStats | None) -> tuple:
    """Dask task: the outputs of a group of tiles (each tile of the grid is in one group)
    and the validity mask of the box they cover, ``(outputs, valid, box origin)``."""
    block = _read(source, spec.read, stats)
    filled, valid = _fill_block(block, np.asarray(spec.fill, dtype=np.float32), owned=True)
    origin = spec.read.box[::2]
    return (_shared_tiles(filled, valid, origin, spec.tiles, predictor, spec.plan, spec.full_shape,
                          spec.batch_size, stats), valid, origin)


@dataclass(frozen=True)
class _WindowTask:
    """Static parameters of one output chunk."""

    window: tuple[int, int, int, int]
    tiles: tuple[_Tile, ...]
    full_shape: tuple[int, int]
    plan: TilePlan
    bands: int | None  # None: a plain (h, w) probability; else K


def _window(groups: list[tuple], spec: _WindowTask, stats: PredictionStats | None) -> np.ndarray:
    """Dask task: one output chunk blended from the tile groups it overlaps (whose boxes
    cover it: every pixel lies in a tile that weighs there), without reading the source."""
    y0, y1, x0, x1 = spec.window
    k = spec.bands or 1
    lead = () if spec.bands is None else (k,)
    core_valid = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    found: dict[_Tile, np.ndarray | None] = {}
    for outputs, valid, (vy, vx) in groups:
        found.update(outputs)
        a, b = max(y0, vy), min(y1, vy + valid.shape[0])
        c, d = max(x0, vx), min(x1, vx + valid.shape[1])
        if a < b and c < d:
            core_valid[a - y0 : b - y0, c - x0 : d - x0] = valid[a - vy : b - vy, c - vx : d - vx]
    if not core_valid.any():
        return _nan_window(lead, spec.window, stats)
    out = _blend(spec.window, spec.tiles, [found[t] for t in spec.tiles], spec.plan, spec.full_shape,
                 core_valid, k)
    if stats is not None:
        stats.add(chunks_run=1, pixels_output=(y1 - y0) * (x1 - x0))
    return out[0] if spec.bands is None else out


def _group_shape(batch_size: int) -> tuple[int, int]:
    """Tiles per dask task, rows × columns: about one batch (8 → 2 × 4)."""
    gy = max(1, math.isqrt(batch_size))
    return gy, -(-batch_size // gy)


def predict_dataset(
    ds: xr.Dataset,
    predictor: PredictorLike,
    chunks: int | tuple[int, int] | None = None,
    *,
    channels: Sequence[str] | None = None,
    tile: int = INFERENCE_TILE,
    overlap: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    fill: float | Sequence[float] | None = None,
    stats: PredictionStats | None = None,
    name: str = "probability",
) -> xr.DataArray:
    """Lazy probability of a factor dataset: every tile of the global grid runs once.

    The graph has one task per group of about ``batch_size`` tiles (2 × 4 at 8), which
    reads the box of its tiles and runs them, and one task per output chunk, which blends
    the outputs of the groups it overlaps (it reads nothing itself). A tile straddling
    chunk lines is shared, never recomputed, so the model sees about ``(tile /
    stride)²`` pixels per output pixel (1.27 at the defaults) whatever the chunks.

    Args:
        ds: ``(y, x)`` factor variables. Dask-backed: each group task takes the source
            blocks under its box (dask keeps a source block until its neighbours are
            done, so memory grows with the region's *width*). Not dask-backed
            (``xr.open_zarr(path, chunks=None)``, or in memory): each group task reads
            its own box through one shared lazy reader; memory stays flat whatever the
            region size (dask keeps a group's outputs until the chunks it overlaps are
            done).
        predictor: loaded once by the caller; placed in the graph once and shared by
            every task. ``predictor.check_channels`` is called up front with the channel
            list and its error propagates.
        channels: variables to feed, in order. Default: the predictor's channels, by
            name, when the dataset has them all (extra variables ignored); else the
            dataset's variable names (so the check reports what is missing).
        chunks: output chunk size (int or ``(cy, cx)``); default the source's chunks
            (of the first channel), or 512 for a dataset without dask chunks. It does
            not change the model's work nor, to the bit, the result.
        tile, overlap, margin, batch_size, fill: see :func:`make_plan` and the module
            docstring.
        stats: counters updated as tasks run (in-process schedulers); tile counters
            and model time come from the group tasks, chunk counters from the chunk tasks.

    Returns:
        float32 ``(y, x)`` DataArray named ``name``, chunked like the output, with the
        dataset's coordinates on those dims (and ``spatial_ref`` when present). NaN
        where any channel is missing. Write it chunk by chunk (``to_zarr``) or compute.
        For a predictor declaring ``output_bands`` (K names): ``(band, y, x)`` with the
        names as the ``band`` coordinate, one chunk along ``band`` (each task computes
        all bands of its window); ``.sel(band="spread")`` picks one.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    names = _resolve_channels(ds, predictor, channels)
    bands = output_bands(predictor)
    ydim, xdim = _spatial_dims(ds, names)
    H, W = int(ds.sizes[ydim]), int(ds.sizes[xdim])
    plan = make_plan(predictor, tile, overlap, margin)
    fills = tuple(float(v) for v in _fill_values(predictor, len(names), fill))
    bs = max(1, int(batch_size))

    # never touch ``.data`` of a non-dask variable: that loads (and caches) all of it
    first = ds[names[0]].chunks
    if chunks is None:
        if first is not None:
            ychunks, xchunks = tuple(first[0]), tuple(first[1])
        else:
            ychunks, xchunks = _chunk_sizes(H, DEFAULT_CHUNK), _chunk_sizes(W, DEFAULT_CHUNK)
    else:
        cy, cx = (chunks, chunks) if isinstance(chunks, int) else chunks
        ychunks, xchunks = _chunk_sizes(H, int(cy)), _chunk_sizes(W, int(cx))

    lazy = all(ds[c].chunks is None for c in names)
    if lazy:
        # no dask inputs (opened with chunks=None, or in memory): every task reads its own
        # pixels from one shared lazy reader; no task waits for, or keeps, another's input
        token = uuid.uuid4().hex
        arrays: list = []
    else:
        arrays = [ds[c].data if ds[c].chunks is not None
                  else ds[c].chunk({ydim: ychunks, xdim: xchunks}).data for c in names]
        token = tokenize(*[a.name for a in arrays], plan, bs, fills, ychunks, xchunks,
                         type(predictor).__qualname__, id(predictor), id(stats))
    out_name = f"slidewatch-predict-{token}"
    tname = f"slidewatch-predict-tiles-{token}"
    pkey = f"slidewatch-predictor-{token}"
    skey = f"slidewatch-predict-stats-{token}"
    rkey = f"slidewatch-predict-source-{token}"
    # the predictor and the counters (and the lazy reader) enter the graph once, as their
    # own keys, shared by every task (never copied or serialized per chunk)
    layer: dict = {pkey: predictor, skey: stats}
    if lazy:
        layer[rkey] = _Source(ds, names)
    src_bounds = [(_bounds(a.chunks[0]), _bounds(a.chunks[1])) for a in arrays]

    def source(box: tuple[int, int, int, int]) -> tuple[Any, _ReadSpec]:
        """The task argument that reads ``box`` and its spec."""
        if lazy:
            return rkey, _ReadSpec(box)
        blocks, bounds = [], []
        for a, (yb, xb) in zip(arrays, src_bounds):
            bi = [k for k, (s, e) in enumerate(yb) if s < box[1] and e > box[0]]
            bj = [k for k, (s, e) in enumerate(xb) if s < box[3] and e > box[2]]
            bounds.append((tuple(yb[k] for k in bi), tuple(xb[k] for k in bj)))
            blocks.append([[(a.name, r, s) for s in bj] for r in bi])
        return blocks, _ReadSpec(box, tuple(bounds))

    # 1. every tile of the global grid once: one task per group of about a batch of tiles
    ys, xs = plan.origins(H), plan.origins(W)
    gy, gx = _group_shape(bs)
    row_of = {int(o): i // gy for i, o in enumerate(ys)}
    col_of = {int(o): j // gx for j, o in enumerate(xs)}
    for gi in range(0, len(ys), gy):
        for gj in range(0, len(xs), gx):
            tiles = tuple((int(oy), int(ox), min(plan.tile, H - int(oy)), min(plan.tile, W - int(ox)))
                          for oy in ys[gi : gi + gy] for ox in xs[gj : gj + gx])
            src, read = source(_box(tiles))
            layer[(tname, gi // gy, gj // gx)] = (
                _tile_group, pkey, src, _TileTask(tiles, read, (H, W), plan, bs, fills), skey)
    # 2. one task per output chunk, blended from the groups it overlaps
    for i, (y0, y1) in enumerate(_bounds(ychunks)):
        for j, (x0, x1) in enumerate(_bounds(xchunks)):
            window = (y0, y1, x0, x1)
            tiles = tuple(_tiles(plan, (H, W), window))
            groups = sorted({(tname, row_of[t[0]], col_of[t[1]]) for t in tiles})
            spec = _WindowTask(window, tiles, (H, W), plan, None if bands is None else len(bands))
            key = (out_name, i, j) if bands is None else (out_name, 0, i, j)
            layer[key] = (_window, list(groups), spec, skey)
    graph = HighLevelGraph.from_collections(out_name, layer, dependencies=arrays)
    coords = {k: v for k, v in ds.coords.items() if set(v.dims) <= {ydim, xdim}}
    attrs = {"long_name": "landslide probability", "units": "1",
             "valid_range": [0.0, 1.0],
             "comment": "NaN where any input channel is missing; seam-free chunked "
                        "U-Net inference (blended overlapping tiles)"}
    if bands is None:
        data = da.Array(graph, out_name, chunks=(ychunks, xchunks), dtype=np.float32,
                        meta=np.empty((0, 0), dtype=np.float32))
        return xr.DataArray(data, dims=(ydim, xdim), coords=coords, name=name, attrs=attrs)
    data = da.Array(graph, out_name, chunks=((len(bands),), ychunks, xchunks), dtype=np.float32,
                    meta=np.empty((0, 0, 0), dtype=np.float32))
    attrs["long_name"] = "landslide prediction bands: " + ", ".join(bands)
    return xr.DataArray(data, dims=("band", ydim, xdim), coords={**coords, "band": list(bands)},
                        name=name, attrs=attrs)
