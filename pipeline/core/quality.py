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
128  outside_region       outside the region's polygon (a GeoJSON region): masked
===  ===================  ============================================================

A stored quality layer has the fill value :data:`QUALITY_NODATA` (255, every bit): "no
quality known" (a chunk never written), which no pixel can carry, since
``paper_denominator`` is set only where no factor is NaN, i.e. never with ``nan_factor``.
It is the layer's Zarr ``fill_value``/CF ``_FillValue`` (GDAL's nodata); 0 ("ok") never is.
"""

from __future__ import annotations

import enum


__all__ = ["QUALITY_NODATA", "QualityFlag", "describe", "quality_attrs"]


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
    OUTSIDE_REGION = 128


#: The fill value of a stored quality layer: all bits, a combination no pixel can have
#: (``paper_denominator`` excludes ``nan_factor``); see the module docstring.
QUALITY_NODATA = 255


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
        "comment": f"0 = ok; bits combine, e.g. 3 = no_s2 + smi_from_ndmi_proxy; {QUALITY_NODATA} = no data "
                   "(the fill value: a combination no pixel can have)",
    }


def describe(code: int) -> list[str]:
    """Names of the bits set in ``code`` (``[]`` for 0; ``["no_data"]`` for :data:`QUALITY_NODATA`)."""
    if int(code) == QUALITY_NODATA:
        return ["no_data"]
    return [str(f.name).lower() for f in _members() if int(code) & f.value]
