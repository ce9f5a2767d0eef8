"""The risk mosaic: what one zone's ``risk.zarr`` group holds, tile by tile.

Layout (a documented choice: per-zone groups in one store, no reprojection)::

    RUN/risk.zarr/             Zarr v3 group; attrs: region, zones, slidewatch_complete
    RUN/risk.zarr/<zone>/      one group per UTM zone (e.g. ``utm48n``), own CRS and grid
        probability  float32   U-Net landslide probability, 0..1, NaN = no value
        risk_class   uint8     0 low, 1 medium, 2 high, 255 no data (from probability)
        lsi          float32   Landslide Susceptibility Index, 0..1
        quality      uint8     bit field: why a pixel has no value (see pipeline.core.quality)
        spatial_ref            CF grid mapping (rioxarray)

Each zone keeps its own UTM grid so no pixel is resampled twice; a region inside one zone
(the usual case) has a single group. Open with
``xr.open_zarr(RUN / "risk.zarr", group="utm48n", decode_coords="all")`` or all zones at
once with ``xr.open_datatree(RUN / "risk.zarr", engine="zarr")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from pipeline.core.classes import PROBABILITY_THRESHOLDS, check_thresholds, class_attrs, classify as classify_kernel
from pipeline.core.errors import InputDataError
from pipeline.core.files import fingerprint
from pipeline.core.provenance import RunProvenance
from pipeline.core.quality import QualityFlag, quality_attrs
from pipeline.predict.inference import PredictorLike

__all__ = [
    "CLASS_THRESHOLDS",
    "LAYOUT_NOTE",
    "model_info",
    "risk_fingerprint",
    "risk_root_attrs",
    "risk_zone_attrs",
    "RISK_VARIABLES",
    "classify",
    "risk_attrs",
    "risk_tile",
]

#: Probability thresholds between low/medium and medium/high (see :mod:`pipeline.core.classes`).
CLASS_THRESHOLDS: tuple[float, float] = PROBABILITY_THRESHOLDS

#: Variables of a zone group and their dtypes.
RISK_VARIABLES: dict[str, str] = {"probability": "float32", "risk_class": "uint8", "lsi": "float32", "quality": "uint8"}


def risk_attrs(thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> dict[str, dict]:
    """CF attributes (``units``, ``long_name``, flags) of every mosaic variable."""
    t1, t2 = thresholds
    return {
        "probability": {"units": "1", "long_name": "landslide probability (U-Net)", "valid_range": [0.0, 1.0]},
        "risk_class": class_attrs((t1, t2), "probability"),
        "lsi": {"units": "1", "long_name": "Landslide Susceptibility Index (rainfall-scaled)"},
        "quality": quality_attrs("why a pixel has no value or a degraded one (bit field)"),
    }



def classify(probability: np.ndarray, thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> np.ndarray:
    """uint8 classes 0/1/2 from probabilities (255 where NaN)."""
    t1, t2 = check_thresholds(thresholds, "probability")
    return classify_kernel(probability, t1, t2)


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


# --------------------------------------------------------------------------- provenance

#: How the mosaic store is laid out (its root's ``layout`` attribute).
LAYOUT_NOTE = "one group per UTM zone; see pipeline.predict.mosaic"


def risk_fingerprint(lsi_fingerprint: str | None, predictor: PredictorLike, thresholds: Sequence[float], tile: int,
                     version: str) -> str:
    """The key of a zone's mosaic group: its LSI store, checkpoint, channels, classes and tile."""
    return fingerprint({
        "lsi": lsi_fingerprint,
        "checkpoint": getattr(predictor, "checkpoint_sha256", None),
        "channels": list(predictor.channels),
        "thresholds": list(thresholds),
        "tile": tile,
        "version": version,
    })


def model_info(predictor: PredictorLike) -> dict[str, Any]:
    """What the mosaic records of its model: channels, halo, architecture, settings, training cube."""
    meta = getattr(predictor, "metadata", None)
    info: dict[str, Any] = {"channels": list(predictor.channels), "halo": int(predictor.halo)}
    if meta is not None:
        info["architecture"] = getattr(meta, "architecture", None)
        info["config"] = getattr(meta, "hyperparameters", None)
        prov = getattr(meta, "provenance", None) or {}
        info["trained_on"] = prov.get("cube") if isinstance(prov, dict) else None
    return info


def risk_zone_attrs(prov: RunProvenance, zone: str, epsg: int, lsi_store: str, predictor: PredictorLike,
                    thresholds: Sequence[float], version: str) -> dict[str, Any]:
    """The CF and provenance attributes of one zone's group of the mosaic."""
    return {
        "title": f"slidewatch risk mosaic: {prov.region} ({zone})",
        "Conventions": "CF-1.8",
        "slidewatch_version": version,
        "zone": zone,
        "epsg": epsg,
        "lsi_store": lsi_store,
        **prov.to_attrs("risk"),
        "checkpoint_sha256": getattr(predictor, "checkpoint_sha256", None),
        "model": model_info(predictor),
        "class_thresholds": list(thresholds),
    }


def risk_root_attrs(region: str, zones: Sequence[str], version: str) -> dict[str, Any]:
    """The attributes of the mosaic store's root."""
    return {"title": f"slidewatch risk mosaic: {region}", "region": region, "zones": list(zones),
            "slidewatch_version": version, "layout": LAYOUT_NOTE}

