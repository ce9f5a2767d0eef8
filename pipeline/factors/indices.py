"""Normalised-difference spectral indices from Sentinel-2 L2A reflectance.

Definitions (Sentinel-2 bands: B03 green, B04 red, B08 NIR, B11 SWIR-1)::

    NDVI = (B08 - B04) / (B08 + B04)   vegetation (Rouse et al. 1974)
    NDWI = (B03 - B08) / (B03 + B08)   open water (McFeeters 1996)
    NDBI = (B11 - B08) / (B11 + B08)   built-up / bare soil (Zha et al. 2003)
    NDMI = (B08 - B11) / (B08 + B11)   vegetation/soil moisture (Gao 1996)

Conventions: inputs are surface reflectance (any common scale works, since the
ratio is scale-free, but the cube delivers float32 0..1); a NaN input gives NaN;
a zero denominator gives NaN (no warning is raised); results are clipped to
[-1, 1] (offset-corrected L2A reflectance can be slightly negative, which would
otherwise push an index outside its range); outputs are float32.

Layers: :func:`normalized_difference_kernel` (numpy) → :func:`normalized_difference`
(dask/numpy, one blockwise task per chunk) → :func:`spectral_indices` (xarray).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import xarray as xr

from pipeline.factors.kernels import lift
from pipeline.core.errors import InputDataError, MissingAssetError

__all__ = [
    "INDEX_BANDS",
    "INDEX_LONG_NAMES",
    "normalized_difference",
    "normalized_difference_kernel",
    "spectral_indices",
]

#: index name → (band a, band b) for (a - b) / (a + b).
INDEX_BANDS: Mapping[str, tuple[str, str]] = {
    "ndvi": ("B08", "B04"),
    "ndwi": ("B03", "B08"),
    "ndbi": ("B11", "B08"),
    "ndmi": ("B08", "B11"),
}

INDEX_LONG_NAMES: Mapping[str, str] = {
    "ndvi": "normalised difference vegetation index (B08-B04)/(B08+B04)",
    "ndwi": "normalised difference water index (B03-B08)/(B03+B08)",
    "ndbi": "normalised difference built-up index (B11-B08)/(B11+B08)",
    "ndmi": "normalised difference moisture index (B08-B11)/(B08+B11)",
}


def normalized_difference_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` as float32, NaN where either is NaN or ``a + b == 0``, clipped to [-1, 1]."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    den = a + b
    num = a - b
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=num)
    num[den == 0] = np.nan
    np.clip(num, -1.0, 1.0, out=num)
    return num


def normalized_difference(a, b):
    """Normalised difference of two same-shaped arrays; dask arrays stay lazy (one task per chunk)."""
    return lift(normalized_difference_kernel, a, b)


def _band(ds: xr.Dataset, name: str, index: str) -> xr.DataArray:
    if name not in ds.data_vars:
        raise MissingAssetError(
            f"Band {name!r} is missing from the cube, so {index.upper()} cannot be computed "
            f"(have: {sorted(map(str, ds.data_vars))}).",
            hint=f"Load Sentinel-2 asset {name!r} into the cube (or drop {index!r} from the requested indices).",
        )
    return ds[name]


def _index(ds: xr.Dataset, index: str) -> xr.DataArray:
    try:
        band_a, band_b = INDEX_BANDS[index]
    except KeyError:
        raise InputDataError(
            f"Unknown spectral index {index!r}.", hint=f"Choose from {sorted(INDEX_BANDS)}."
        ) from None
    a = _band(ds, band_a, index)
    b = _band(ds, band_b, index)
    if a.dims != b.dims or a.shape != b.shape:
        raise InputDataError(
            f"Bands {band_a} {a.dims}{a.shape} and {band_b} {b.dims}{b.shape} are not on the same grid.",
            hint="Resample all Sentinel-2 bands onto the cube's 10 m grid first.",
        )
    data = normalized_difference(a.data, b.data)
    out = xr.DataArray(data, dims=a.dims, coords=a.coords, name=index)
    out.attrs = {"units": "1", "long_name": INDEX_LONG_NAMES[index], "valid_range": [-1.0, 1.0]}
    if "grid_mapping" in a.attrs:
        out.attrs["grid_mapping"] = a.attrs["grid_mapping"]
    return out


def spectral_indices(
    ds: xr.Dataset, indices: Iterable[str] = ("ndvi", "ndwi", "ndbi", "ndmi")
) -> xr.Dataset:
    """Dataset of the requested indices (float32, lazy), each with ``units`` and ``long_name``.

    Raises :class:`MissingAssetError` naming the first band an index needs that
    ``ds`` lacks.
    """
    out = xr.Dataset({name: _index(ds, name) for name in indices})
    return out
