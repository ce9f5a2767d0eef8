"""Soil-moisture index (SMI) from Sentinel-1 VV change detection, with an NDMI fallback.

Change detection (Wagner et al. 1999; the Sentinel-1 surface-moisture approach of
Bauer-Marschallinger et al. 2019): for each pixel, the driest and wettest
conditions are estimated from a history of VV backscatter (dB) as a low and a
high percentile (default 10th and 90th); the current backscatter σ is placed
between them::

    SMI = clip((σ - dry) / (wet - dry), 0, 1)

Where ``wet - dry < eps`` (no dynamic range in the history) the SMI is NaN.

Where Sentinel-1 gives nothing (no VV in the window, or no reference), the SMI
falls back to an optical proxy, a linear rescale of NDMI (Gao 1996)::

    SMI_proxy = clip((NDMI - NDMI_DRY) / (NDMI_WET - NDMI_DRY), 0, 1)
    NDMI_DRY = -0.2, NDMI_WET = 0.4

(-0.2 is typical of bare or water-stressed surfaces, +0.4 of a well-watered
closed canopy; a coarse proxy, so pixels using it are flagged
``smi_from_ndmi_proxy`` in the quality layer.)
"""

from __future__ import annotations


import dask.array as da
import numpy as np
import xarray as xr

from pipeline.factors.kernels import lift
from pipeline.core.stats import nan_percentiles
from pipeline.core.errors import InputDataError, MissingAssetError
from pipeline.factors.indices import normalized_difference_kernel
from pipeline.core.quality import QualityFlag, quality_attrs

__all__ = [
    "NDMI_DRY",
    "NDMI_WET",
    "ndmi_proxy_kernel",
    "smi_kernel",
    "smi_references",
    "soil_moisture",
    "soil_moisture_index",
]

NDMI_DRY = -0.2
NDMI_WET = 0.4


# --------------------------------------------------------------------------- kernels


def smi_kernel(vv: np.ndarray, dry: np.ndarray, wet: np.ndarray, eps: float) -> np.ndarray:
    """(σ - dry) / (wet - dry) clipped to [0, 1], NaN where wet - dry < eps or an input is NaN."""
    vv = np.asarray(vv, dtype=np.float32)
    rng = np.asarray(wet, dtype=np.float32) - np.asarray(dry, dtype=np.float32)
    out = vv - dry
    with np.errstate(divide="ignore", invalid="ignore"):
        out /= rng
    out[~(rng >= eps)] = np.nan
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def ndmi_proxy_kernel(ndmi: np.ndarray, ndmi_dry: float = NDMI_DRY, ndmi_wet: float = NDMI_WET) -> np.ndarray:
    """Linear rescale of NDMI from [ndmi_dry, ndmi_wet] to [0, 1], clipped; NaN stays NaN."""
    out = (np.asarray(ndmi, dtype=np.float32) - np.float32(ndmi_dry)) * np.float32(
        1.0 / (ndmi_wet - ndmi_dry)
    )
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _soil_moisture_kernel(vv, dry, wet, b08, b11, eps, ndmi_dry, ndmi_wet):
    """Fused per-block SMI with fallback; returns a (2, y, x) float32 stack: smi, quality."""
    if vv is not None:
        smi = smi_kernel(vv, dry, wet, eps)
    else:
        smi = np.full(np.shape(b08), np.nan, dtype=np.float32)
    q = np.zeros(smi.shape, dtype=np.uint8)
    missing = np.isnan(smi)
    if b08 is not None and missing.any():
        proxy = ndmi_proxy_kernel(normalized_difference_kernel(b08, b11), ndmi_dry, ndmi_wet)
        use = missing & ~np.isnan(proxy)
        smi[use] = proxy[use]
        q[use] |= np.uint8(QualityFlag.SMI_FROM_NDMI_PROXY)
        q[missing & ~use] |= np.uint8(QualityFlag.NAN_FACTOR)
    else:
        q[missing] |= np.uint8(QualityFlag.NAN_FACTOR)
    return smi, q


# --------------------------------------------------------------------------- references


def smi_references(
    vv_history_db: xr.DataArray, low: float = 10, high: float = 90
) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-pixel dry and wet VV references (dB) from a ``(time, y, x)`` history.

    ``dry`` is the ``low`` percentile and ``wet`` the ``high`` percentile of the
    non-NaN values at each pixel; a pixel with no valid value gets NaN. Lazy for
    dask-backed input, one task per spatial chunk, but the ``time`` dimension
    must be a single chunk.

    Raises
    ------
    InputDataError
        For a missing ``time`` dim, percentiles outside 0..100 or ``low >= high``,
        or a ``time`` axis split over several chunks.
    """
    if "time" not in vv_history_db.dims:
        raise InputDataError(
            f"VV history {vv_history_db.name!r} has dims {vv_history_db.dims}; it needs a 'time' dim.",
            hint="Pass the stacked (time, y, x) VV backscatter in dB.",
        )
    if not (0 <= low < high <= 100):
        raise InputDataError(
            f"SMI reference percentiles low={low}, high={high} are invalid.",
            hint="Use 0 <= low < high <= 100, e.g. low=10, high=90.",
        )
    arr = vv_history_db.transpose("time", ...)
    data = arr.data
    qs = (float(low), float(high))
    if isinstance(data, da.Array):
        if len(data.chunks[0]) > 1:
            raise InputDataError(
                f"VV history is split into {len(data.chunks[0])} chunks along 'time'; "
                "per-pixel percentiles need the whole history in one chunk.",
                hint="Rechunk first: vv_history_db.chunk(time=-1).",
            )
        stacked = da.map_blocks(
            nan_percentiles,
            data,
            qs,
            chunks=((2,),) + data.chunks[1:],
            dtype=np.float32,
        )
    else:
        stacked = nan_percentiles(np.asarray(data), qs)
    dims = arr.dims[1:]
    coords = {k: v for k, v in arr.coords.items() if "time" not in v.dims}
    dry = xr.DataArray(stacked[0], dims=dims, coords=coords, name="vv_dry")
    wet = xr.DataArray(stacked[1], dims=dims, coords=coords, name="vv_wet")
    dry.attrs = {"units": "dB", "long_name": f"VV gamma0 dry reference ({low:g}th percentile of history)"}
    wet.attrs = {"units": "dB", "long_name": f"VV gamma0 wet reference ({high:g}th percentile of history)"}
    return dry, wet


# --------------------------------------------------------------------------- index


def soil_moisture_index(
    vv: xr.DataArray, dry: xr.DataArray, wet: xr.DataArray, *, eps: float = 1e-3
) -> xr.DataArray:
    """SMI = clip((vv - dry) / (wet - dry), 0, 1), NaN where ``wet - dry < eps`` dB.

    ``eps`` is a numerical guard; raise it (e.g. to 0.5 dB, about Sentinel-1's
    radiometric stability) to reject pixels whose reference range is noise.
    """
    vv, dry, wet = xr.broadcast(vv, dry, wet)
    data = lift(smi_kernel, vv.data, dry.data, wet.data, eps=eps)
    out = xr.DataArray(data, dims=vv.dims, coords=vv.coords, name="smi")
    out.attrs = {"units": "1", "long_name": "soil moisture index (Sentinel-1 VV change detection)"}
    return out


def soil_moisture(
    ds: xr.Dataset,
    *,
    eps: float = 1e-3,
    ndmi_dry: float = NDMI_DRY,
    ndmi_wet: float = NDMI_WET,
) -> xr.Dataset:
    """SMI for a cube, with the NDMI fallback, plus a uint8 quality layer ``smi_quality``.

    Uses ``vv``, ``vv_dry`` and ``vv_wet`` where they are present and give a
    finite SMI; elsewhere (and everywhere when the cube has no Sentinel-1
    variables) uses the NDMI proxy from ``B08`` and ``B11``, flagging those
    pixels ``smi_from_ndmi_proxy``. Pixels with neither are NaN and flagged
    ``nan_factor``. Lazy: one fused task per chunk (plus two slices).

    Raises
    ------
    MissingAssetError
        When the cube has neither the three Sentinel-1 variables nor B08 and B11.
    """
    s1_names = ("vv", "vv_dry", "vv_wet")
    have_s1 = all(n in ds.data_vars for n in s1_names)
    have_s2 = all(n in ds.data_vars for n in ("B08", "B11"))
    if not have_s1 and not have_s2:
        missing = [n for n in (*s1_names, "B08", "B11") if n not in ds.data_vars]
        raise MissingAssetError(
            f"The cube has no input for the soil-moisture index: missing {missing}.",
            hint="Load Sentinel-1 RTC VV with its dry/wet references, or Sentinel-2 B08 and B11 for the NDMI proxy.",
        )
    names = [n for n in s1_names if have_s1] + [n for n in ("B08", "B11") if have_s2]
    template = ds[names[0]]
    arrays = [ds[n].transpose(*template.dims) for n in names]
    datas = [a.data for a in arrays]
    lazy = any(isinstance(d, da.Array) for d in datas)

    def kernel(*blocks):
        it = iter(blocks)
        vv, dry, wet = (next(it), next(it), next(it)) if have_s1 else (None, None, None)
        b08, b11 = (next(it), next(it)) if have_s2 else (None, None)
        smi, q = _soil_moisture_kernel(vv, dry, wet, b08, b11, eps, ndmi_dry, ndmi_wet)
        return np.stack([smi, q.astype(np.float32)])

    if lazy:
        datas = [da.asarray(d) for d in datas]
        stacked = da.map_blocks(
            kernel,
            *datas,
            new_axis=0,
            chunks=((2,),) + datas[0].chunks,
            dtype=np.float32,
        )
    else:
        stacked = kernel(*[np.asarray(d) for d in datas])
    smi = xr.DataArray(stacked[0], dims=template.dims, coords=template.coords, name="smi")
    smi.attrs = {
        "units": "1",
        "long_name": "soil moisture index (Sentinel-1 VV change detection; NDMI proxy where flagged)",
        "ndmi_proxy_range": [ndmi_dry, ndmi_wet],
    }
    q = xr.DataArray(stacked[1].astype(np.uint8), dims=template.dims, coords=template.coords, name="smi_quality")
    q.attrs = quality_attrs("soil moisture index quality flags")
    return xr.Dataset({"smi": smi, "smi_quality": q})
