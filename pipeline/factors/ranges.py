"""Per-region normalisation ranges of the factors: robust percentiles from exact
fixed-bin histograms, computed once over the whole region (never per chunk or tile, so
mosaics have no seams)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from pipeline.core.errors import InputDataError, MissingAssetError, NoValidDataError
from pipeline.factors.layers import FACTORS

__all__ = ["HISTOGRAM_SPECS", "normalisation_ranges"]

#: Fixed histogram bins (low, high, number of bins) for exact, chunking-independent
#: percentiles. Values outside [low, high] count in the end bins. Bin widths:
#: slope 0.01°, dem 1 m, indices 1e-4, smi 1e-4.
HISTOGRAM_SPECS: Mapping[str, tuple[float, float, int]] = {
    "slope": (0.0, 90.0, 9000),
    "dem": (-500.0, 9000.0, 9500),
    "ndvi": (-1.0, 1.0, 20000),
    "ndwi": (-1.0, 1.0, 20000),
    "ndbi": (-1.0, 1.0, 20000),
    "ndmi": (-1.0, 1.0, 20000),
    "smi": (0.0, 1.0, 10000),
}


def _hist_kernel(x: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    x = np.asarray(x).ravel()
    x = x[~np.isnan(x)]
    idx = ((x.astype(np.float64) - lo) * (n / (hi - lo))).astype(np.int64)
    np.clip(idx, 0, n - 1, out=idx)
    return np.bincount(idx, minlength=n).astype(np.int64)


def _histogram(data, lo: float, hi: float, n: int):
    """Exact fixed-bin counts; lazy (one task per chunk + a tree sum) for dask input."""
    if not isinstance(data, da.Array):
        return _hist_kernel(data, lo, hi, n)
    nd = data.ndim

    def k(block):
        return _hist_kernel(block, lo, hi, n).reshape((1,) * nd + (n,))

    counts = da.map_blocks(
        k,
        data,
        new_axis=nd,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((n,),),
        dtype=np.int64,
    )
    return counts.sum(axis=tuple(range(nd)))


def _percentile_from_counts(counts: np.ndarray, lo: float, hi: float, q: float) -> float:
    n = counts.size
    total = int(counts.sum())
    cum = np.cumsum(counts)
    target = q / 100.0 * total
    if target <= 0:
        i = int(np.argmax(counts > 0))
        return float(lo + i * (hi - lo) / n)
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, n - 1)
    prev = float(cum[i - 1]) if i > 0 else 0.0
    frac = (target - prev) / float(counts[i]) if counts[i] else 0.0
    return float(lo + (i + frac) * (hi - lo) / n)


def normalisation_ranges(
    factors: xr.Dataset | Sequence[xr.Dataset],
    low: float = 2,
    high: float = 98,
    *,
    names: Sequence[str] | None = None,
    specs: Mapping[str, tuple[float, float, int]] | None = None,
) -> dict[str, list[float]]:
    """Robust per-region ranges ``{factor: [p_low, p_high]}`` (plain floats, JSON-ready).

    ``factors`` is one dataset or one per UTM zone of a region: the ranges are then those
    of all zones' pixels together, so every zone is normalised alike (no step in the LSI at
    a zone meridian). Percentiles come from exact fixed-bin histograms (:data:`HISTOGRAM_SPECS`)
    summed over all chunks (and zones) in one pass (``dask.compute`` once), interpolated
    linearly within the bin; integer counts make the result identical for any
    chunking, and accurate to one bin width. NaN pixels are ignored.

    Raises
    ------
    NoValidDataError
        Naming a factor whose every pixel is NaN.
    MissingAssetError
        When a requested factor is not in ``factors``.
    """
    if not (0 <= low < high <= 100):
        raise InputDataError(f"Percentiles low={low}, high={high} are invalid.", hint="Use 0 <= low < high <= 100.")
    specs = {**HISTOGRAM_SPECS, **(specs or {})}
    zones = [factors] if isinstance(factors, xr.Dataset) else list(factors)
    if not zones:
        raise InputDataError("No factors to compute normalisation ranges from.", hint="Pass at least one zone's factors.")
    names = list(names) if names is not None else [f for f in FACTORS if f in zones[0].data_vars]
    for name in names:
        if any(name not in z.data_vars for z in zones):
            raise MissingAssetError(f"Factor {name!r} is missing from the factors dataset.", hint="Compute it first (compute_factors).")
        if name not in specs:
            raise InputDataError(f"No histogram bins known for factor {name!r}.", hint="Pass specs={name: (low, high, nbins)}.")
    per_zone = dask.compute(*[_histogram(z[n].data, *specs[n]) for z in zones for n in names])
    hists = [sum(np.asarray(per_zone[k * len(names) + i]) for k in range(len(zones))) for i in range(len(names))]
    out: dict[str, list[float]] = {}
    for name, counts in zip(names, hists):
        counts = np.asarray(counts)
        if counts.sum() == 0:
            raise NoValidDataError(
                f"Factor {name!r} has no valid pixel in the region (all NaN), so it cannot be normalised.",
                hint="Check its inputs (clouds, missing scenes, nodata) or widen the time window.",
            )
        lo, hi, _ = specs[name]
        out[name] = [
            _percentile_from_counts(counts, lo, hi, low),
            _percentile_from_counts(counts, lo, hi, high),
        ]
    return out
