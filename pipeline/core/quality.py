"""Per-pixel quality flags: why a factor or the LSI is missing or degraded.

The quality layer is a ``uint8`` bit field (CF ``flag_masks``/``flag_meanings``);
0 means every input was present and used as intended. Bits:

===  ===================  ============================================================
bit  name                 meaning
===  ===================  ============================================================
1    no_s2                no cloud-free Sentinel-2 observation (a band needed by an
                          index is NaN): NDVI/NDWI/NDBI are NaN there
2    smi_from_ndmi_proxy  no usable Sentinel-1 VV (or no dry/wet reference): SMI was
                          estimated from the NDMI proxy instead of change detection
4    no_dem               the DEM is NaN: elevation and slope are NaN
8    nan_factor           at least one LSI factor is NaN, so the LSI is NaN
16   read_failure         the source chunk could not be read (filled with NaN)
32   paper_denominator    ``paper`` mode only: the denominator w4*NDWI + w5*SMI +
                          w6*NDBI was <= eps, so the LSI is NaN
64   no_model             risk mosaic only: the U-Net was not run there (every input
                          channel missing, or one missing), so the probability is NaN
===  ===================  ============================================================
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import dask.array as da
import numpy as np
import xarray as xr

__all__ = ["QualityFlag", "combine_flags", "describe", "flag_layer", "quality_attrs"]


class QualityFlag(enum.IntFlag):
    """Quality bits; combine with ``|``. ``OK`` (0) means no issue."""

    OK = 0
    NO_S2 = 1
    SMI_FROM_NDMI_PROXY = 2
    NO_DEM = 4
    NAN_FACTOR = 8
    READ_FAILURE = 16
    PAPER_DENOMINATOR = 32
    NO_MODEL = 64


def _members() -> list[QualityFlag]:
    return [f for f in QualityFlag if f.value != 0]


def quality_attrs(long_name: str = "pixel quality flags (bit field)") -> dict:
    """CF attributes for a quality layer: ``flag_masks``, ``flag_meanings``, units, long_name."""
    members = _members()
    return {
        "long_name": long_name,
        "units": "1",
        "flag_masks": [int(f.value) for f in members],
        "flag_meanings": " ".join(str(f.name).lower() for f in members),
        "comment": "0 = ok; bits combine, e.g. 3 = no_s2 + smi_from_ndmi_proxy",
    }


def describe(code: int) -> list[str]:
    """Names of the bits set in ``code`` (``[]`` for 0)."""
    return [str(f.name).lower() for f in _members() if int(code) & f.value]


def _or_kernel(*masks_and_bits):
    n = len(masks_and_bits) // 2
    masks, bits = masks_and_bits[:n], masks_and_bits[n:]
    out = np.zeros(np.shape(masks[0]), dtype=np.uint8)
    for m, b in zip(masks, bits):
        out[np.asarray(m, dtype=bool)] |= np.uint8(b)
    return out


def flag_layer(flags: Iterable[tuple[xr.DataArray, QualityFlag]]) -> xr.DataArray:
    """One uint8 layer from ``(boolean mask, flag)`` pairs (flag set where the mask is True).

    Works lazily (one blockwise task per chunk) when the masks are dask-backed;
    all masks must share dims and shape.
    """
    pairs = list(flags)
    if not pairs:
        raise ValueError("flag_layer needs at least one (mask, flag) pair")
    masks = [m for m, _ in pairs]
    bits = [int(f) for _, f in pairs]
    template = masks[0]
    masks = list(xr.broadcast(*masks))
    datas = [m.data for m in masks]
    if any(isinstance(d, da.Array) for d in datas):
        datas = [da.asarray(d) for d in datas]

        def k(*blocks):
            return _or_kernel(*blocks, *bits)

        data = da.map_blocks(k, *datas, dtype=np.uint8)
    else:
        data = _or_kernel(*datas, *bits)
    out = xr.DataArray(data, dims=masks[0].dims, coords=masks[0].coords, name="quality")
    out.attrs = quality_attrs()
    if "grid_mapping" in template.attrs:
        out.attrs["grid_mapping"] = template.attrs["grid_mapping"]
    return out


def combine_flags(*layers: xr.DataArray) -> xr.DataArray:
    """Bitwise OR of several uint8 quality layers, with CF flag attributes."""
    if not layers:
        raise ValueError("combine_flags needs at least one layer")
    out = layers[0].astype(np.uint8)
    for layer in layers[1:]:
        out = out | layer.astype(np.uint8)
    out = out.astype(np.uint8)
    out.name = "quality"
    out.attrs = quality_attrs()
    return out
