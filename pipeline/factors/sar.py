"""Sentinel-1 backscatter statistics: orbit tracks aligned, dry/wet references per pixel.

Pure compute over ``(time, y, x)`` dB histories (numpy kernels wrapped with
``dask.array.map_blocks``); the histories themselves are read by :mod:`pipeline.acquire.cube`.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import pystac
import xarray as xr

from pipeline.core.stats import nanquantile_axis0

__all__ = ["MIN_TRACK_SCENES", "SAR_REFERENCE_PERCENTILES", "align_tracks", "align_tracks_kernel", "orbit_track",
           "sar_reference_kernel", "sar_references"]


def orbit_track(item: pystac.Item) -> str:
    """A Sentinel-1 scene's acquisition geometry: orbit direction and relative orbit."""
    p = item.properties
    return f"{p.get('sat:orbit_state', '?')}/{p.get('sat:relative_orbit', '?')}"


#: Scenes a track needs at a pixel before its mean is trusted as its geometry offset.
MIN_TRACK_SCENES = 3
#: Percentiles of the track-aligned VV history that make the dry and wet references.
SAR_REFERENCE_PERCENTILES = (10.0, 90.0)


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


def sar_reference_kernel(block: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-th percentile (0-100) over axis 0 of a ``(time, y, x)`` VV history in dB,
    NaN-aware, NaN where fewer than two scenes have a value (one scene is no history); an
    empty history gives NaN."""
    if block.shape[0] == 0:
        return np.full(block.shape[1:], np.nan, dtype="float32")
    out = nanquantile_axis0(block, q / 100.0)
    out[np.isfinite(block).sum(axis=0) < 2] = np.nan
    return out


def sar_references(history: xr.DataArray, low: float = SAR_REFERENCE_PERCENTILES[0],
                   high: float = SAR_REFERENCE_PERCENTILES[1]) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-pixel low/high percentiles of the VV history (dB), NaN-aware
    (:func:`sar_reference_kernel` per block)."""
    data = history.data
    dry = da.map_blocks(sar_reference_kernel, data, low, drop_axis=0, dtype="float32")
    wet = da.map_blocks(sar_reference_kernel, data, high, drop_axis=0, dtype="float32")
    return (xr.DataArray(dry, dims=("y", "x")), xr.DataArray(wet, dims=("y", "x")))
