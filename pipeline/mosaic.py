"""The risk mosaic: what one zone's ``risk.zarr`` group holds, tile by tile.

Layout (a documented choice: per-zone groups in one store, no reprojection)::

    RUN/risk.zarr/             Zarr v3 group; attrs: region, zones, slidewatch_complete
    RUN/risk.zarr/<zone>/      one group per UTM zone (e.g. ``utm48n``), own CRS and grid
        probability  float32   U-Net landslide probability, 0..1, NaN = no value
        risk_class   uint8     0 low, 1 medium, 2 high, 255 no data (from probability)
        lsi          float32   Landslide Susceptibility Index, 0..1
        quality      uint8     bit field: why a pixel has no value (see pipeline.quality)
        spatial_ref            CF grid mapping (rioxarray)

Each zone keeps its own UTM grid so no pixel is resampled twice; a region inside one zone
(the usual case) has a single group. Open with
``xr.open_zarr(RUN / "risk.zarr", group="utm48n", decode_coords="all")`` or all zones at
once with ``xr.open_datatree(RUN / "risk.zarr", engine="zarr")``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.errors import InputDataError
from pipeline.quality import QualityFlag, quality_attrs

__all__ = [
    "CLASS_THRESHOLDS",
    "RISK_ATTRS",
    "RISK_VARIABLES",
    "classify",
    "risk_attrs",
    "risk_tile",
]

#: Probability thresholds between low/medium and medium/high.
CLASS_THRESHOLDS: tuple[float, float] = (0.3, 0.6)

#: Variables of a zone group and their dtypes.
RISK_VARIABLES: dict[str, str] = {"probability": "float32", "risk_class": "uint8", "lsi": "float32", "quality": "uint8"}


def risk_attrs(thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> dict[str, dict]:
    """CF attributes (``units``, ``long_name``, flags) of every mosaic variable."""
    t1, t2 = thresholds
    return {
        "probability": {"units": "1", "long_name": "landslide probability (U-Net)", "valid_range": [0.0, 1.0]},
        "risk_class": {
            "units": "1",
            "long_name": "landslide risk class",
            "flag_values": [0, 1, 2],
            "flag_meanings": "low medium high",
            "thresholds": [float(t1), float(t2)],
            "comment": f"from probability: low < {t1:g} <= medium < {t2:g} <= high; 255: no data",
        },
        "lsi": {"units": "1", "long_name": "Landslide Susceptibility Index (rainfall-scaled)"},
        "quality": quality_attrs("why a pixel has no value or a degraded one (bit field)"),
    }


RISK_ATTRS = risk_attrs()


def classify(probability: np.ndarray, thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> np.ndarray:
    """uint8 classes 0/1/2 from probabilities (255 where NaN)."""
    t1, t2 = (float(t) for t in thresholds)
    if not 0 <= t1 < t2 <= 1:
        raise InputDataError(f"class thresholds {thresholds} must satisfy 0 <= t1 < t2 <= 1.", "e.g. 0.3,0.6.")
    p = np.asarray(probability)
    out = np.full(p.shape, 255, dtype=np.uint8)
    ok = np.isfinite(p)
    out[ok] = (p[ok] >= t1).astype(np.uint8) + (p[ok] >= t2).astype(np.uint8)
    return out


def risk_tile(
    probability: np.ndarray,
    lsi: np.ndarray,
    quality: np.ndarray,
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
) -> dict[str, np.ndarray]:
    """The four mosaic variables of one tile (numpy, same shape).

    ``quality`` (the factors' flags) gains :attr:`QualityFlag.NO_MODEL` wherever the
    probability is NaN, so every missing probability has a reason.
    """
    prob = np.asarray(probability, dtype=np.float32)
    if prob.shape != np.shape(lsi) or prob.shape != np.shape(quality):
        raise InputDataError(f"tile shapes differ: probability {prob.shape}, lsi {np.shape(lsi)}, quality {np.shape(quality)}.")
    q = np.asarray(quality, dtype=np.uint8).copy()
    q[~np.isfinite(prob)] |= np.uint8(QualityFlag.NO_MODEL)
    return {
        "probability": prob,
        "risk_class": classify(prob, thresholds),
        "lsi": np.asarray(lsi, dtype=np.float32),
        "quality": q,
    }


def tile_dataset(arrays: dict[str, np.ndarray], like: xr.Dataset) -> xr.Dataset:
    """Wrap :func:`risk_tile`'s arrays on ``like``'s ``y``/``x`` coordinates."""
    coords = {"y": like["y"].values, "x": like["x"].values}
    return xr.Dataset({k: (("y", "x"), v) for k, v in arrays.items()}, coords=coords)
