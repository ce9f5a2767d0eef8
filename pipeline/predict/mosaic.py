"""The risk mosaic: what one zone's ``risk.zarr`` group holds, tile by tile.

Layout (a documented choice: per-zone groups in one store, no reprojection)::

    RUN/risk.zarr/             Zarr group (v2, see docs/zarr.md); attrs: region, zones, slidewatch_complete
    RUN/risk.zarr/<zone>/      one group per UTM zone (e.g. ``utm48n``), own CRS and grid
        susceptibility        float32  U-Net probability of a landslide under the reference
                                       event (R_m = 1), from rain-free inputs, 0..1, NaN = no value
        susceptibility_class  uint8    0 low, 1 medium, 2 high, 255 no data (from susceptibility)
        hazard                float32  the event's probability: 1 - (1 - susceptibility)^R_m
                                       (see :mod:`pipeline.predict.hazard`), 0..1
        risk_class            uint8    the event's class: 0 low, 1 medium, 2 high, 255 no data
                                       (from hazard, same thresholds)
        uncertainty           float32  spread of the susceptibility over the flip ensemble (0..0.5)
        lsi                   float32  Landslide Susceptibility Index, 0..1 (rain-free unless ``paper``)
        quality               uint8    bit field: why a pixel has no value (see pipeline.core.quality),
                                       255 no data
        spatial_ref                    CF grid mapping (rioxarray)

Fill values (Zarr ``fill_value``, CF ``_FillValue``, GDAL's nodata) are NaN for the float
layers and 255 for the uint8 ones, never a class or a flag: xarray reads the uint8 layers
as float32 with NaN there (pass ``mask_and_scale=False`` for the stored codes, 255 = no
data); GDAL and QGIS show them as nodata (``docs/zarr.md``).

The class thresholds come from the checkpoint's calibration on validation data when it
has one (see :func:`models.calibration.class_thresholds`), else the defaults; the group's
``class_thresholds_source`` says which. Each zone keeps its own UTM grid so no pixel is
resampled twice; a region inside one zone (the usual case) has a single group. Open with
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
from pipeline.core.quality import QUALITY_NODATA, QualityFlag, quality_attrs
from pipeline.predict.hazard import HAZARD_FORMULA, check_hazard_mode, hazard
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
    "quality_codes",
    "risk_attrs",
    "risk_tile",
]

#: Probability thresholds between low/medium and medium/high (see :mod:`pipeline.core.classes`).
CLASS_THRESHOLDS: tuple[float, float] = PROBABILITY_THRESHOLDS

#: Variables of a zone group and their dtypes.
RISK_VARIABLES: dict[str, str] = {
    "susceptibility": "float32", "susceptibility_class": "uint8", "hazard": "float32", "risk_class": "uint8",
    "uncertainty": "float32", "lsi": "float32", "quality": "uint8",
}


def risk_attrs(thresholds: tuple[float, float] = CLASS_THRESHOLDS, mode: str = "decoupled") -> dict[str, dict]:
    """CF attributes (``units``, ``long_name``, flags) of every mosaic variable."""
    t1, t2 = thresholds
    paper = mode == "paper"
    return {
        "susceptibility": {
            "units": "1", "valid_range": [0.0, 1.0],
            "long_name": "landslide susceptibility: U-Net probability under the reference event (R_m = 1)"
            if not paper else "U-Net probability with the rain-scaled LSI as input (paper mode: equals hazard)",
        },
        "susceptibility_class": class_attrs((t1, t2), "susceptibility"),
        "hazard": {
            "units": "1", "valid_range": [0.0, 1.0],
            "long_name": "landslide hazard: probability for this rainfall event",
            "formula": HAZARD_FORMULA if not paper else "hazard = U-Net output (rain inside the LSI input, paper mode)",
        },
        "risk_class": class_attrs((t1, t2), "hazard"),
        "uncertainty": {
            "units": "1", "valid_range": [0.0, 0.5],
            "long_name": "spread of the susceptibility over 4 flips of the input (population std; 0 = the passes agree)",
        },
        "lsi": {"units": "1", "long_name": "Landslide Susceptibility Index"
                + (" (rain-free, R_m = 1)" if not paper else " (rain-scaled, paper mode)")},
        "quality": quality_attrs("why a pixel has no value or a degraded one (bit field)"),
    }


def classify(probability: np.ndarray, thresholds: tuple[float, float] = CLASS_THRESHOLDS) -> np.ndarray:
    """uint8 classes 0/1/2 from probabilities (255 where NaN)."""
    t1, t2 = check_thresholds(thresholds, "probability")
    return classify_kernel(probability, t1, t2)


def risk_tile(
    susceptibility: np.ndarray,
    lsi: np.ndarray,
    quality: np.ndarray,
    thresholds: tuple[float, float] = CLASS_THRESHOLDS,
    *,
    rain_multiplier: float = 1.0,
    mode: str = "decoupled",
    uncertainty: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The mosaic variables of one tile (numpy, same shape).

    ``hazard`` is :func:`pipeline.predict.hazard.hazard` of the susceptibility with
    ``rain_multiplier`` (``decoupled``), or the model's output itself (``paper``: the rain
    is already inside the LSI it saw). ``quality`` (the factors' flags) gains
    :attr:`QualityFlag.NO_MODEL` wherever the susceptibility is NaN, so every missing value
    has a reason. ``uncertainty`` is NaN when not computed.
    """
    sus = np.asarray(susceptibility, dtype=np.float32)
    if sus.shape != np.shape(lsi) or sus.shape != np.shape(quality):
        raise InputDataError(f"tile shapes differ: susceptibility {sus.shape}, lsi {np.shape(lsi)}, quality {np.shape(quality)}.")
    q = quality_codes(quality)
    q[~np.isfinite(sus) & (q != QUALITY_NODATA)] |= np.uint8(QualityFlag.NO_MODEL)
    haz = sus.copy() if check_hazard_mode(mode) == "paper" else hazard(sus, rain_multiplier)
    spread = (np.full(sus.shape, np.nan, np.float32) if uncertainty is None
              else np.where(np.isfinite(sus), np.asarray(uncertainty, dtype=np.float32), np.float32(np.nan)))
    return {
        "susceptibility": sus,
        "susceptibility_class": classify(sus, thresholds),
        "hazard": haz,
        "risk_class": classify(haz, thresholds),
        "uncertainty": spread.astype(np.float32),
        "lsi": np.asarray(lsi, dtype=np.float32),
        "quality": q,
    }


def quality_codes(quality: np.ndarray) -> np.ndarray:
    """uint8 quality codes from a quality layer as read: the stored codes, or xarray's
    decoded float32 (NaN where the store holds its fill) with NaN back to :data:`QUALITY_NODATA`."""
    q = np.asarray(quality)
    if q.dtype.kind == "f":
        return np.where(np.isfinite(q), q, QUALITY_NODATA).astype(np.uint8)
    return q.astype(np.uint8, copy=True)


def tile_dataset(arrays: dict[str, np.ndarray], like: xr.Dataset) -> xr.Dataset:
    """Wrap :func:`risk_tile`'s arrays on ``like``'s ``y``/``x`` coordinates."""
    coords = {"y": like["y"].values, "x": like["x"].values}
    return xr.Dataset({k: (("y", "x"), v) for k, v in arrays.items()}, coords=coords)


# --------------------------------------------------------------------------- provenance

#: How the mosaic store is laid out (its root's ``layout`` attribute).
LAYOUT_NOTE = "one group per UTM zone; see pipeline.predict.mosaic"


def risk_fingerprint(lsi_fingerprint: str | None, predictor: PredictorLike, thresholds: Sequence[float], tile: int,
                     version: str, *, rain: Any = None, mode: str = "decoupled") -> str:
    """The key of a zone's mosaic group: its LSI store, checkpoint, channels, augmentation,
    classes, tile, hazard mode and (the hazard depends on it) the rain."""
    return fingerprint({
        "lsi": lsi_fingerprint,
        "checkpoint": getattr(predictor, "checkpoint_sha256", None),
        "channels": list(predictor.channels),
        "augmentation": getattr(predictor, "augmentation", None),
        "thresholds": list(thresholds),
        "tile": tile,
        "version": version,
        "mode": mode,
        "rain": getattr(rain, "__dict__", rain),
        "layout": sorted(RISK_VARIABLES),
    })


def model_info(predictor: PredictorLike) -> dict[str, Any]:
    """What the mosaic records of its model: channels, halo, architecture, settings, training cube."""
    meta = getattr(predictor, "metadata", None)
    info: dict[str, Any] = {"channels": list(predictor.channels), "halo": int(predictor.halo),
                            "augmentation": getattr(predictor, "augmentation", None)}
    if meta is not None:
        info["architecture"] = getattr(meta, "architecture", None)
        info["config"] = getattr(meta, "hyperparameters", None)
        prov = getattr(meta, "provenance", None) or {}
        info["trained_on"] = prov.get("cube") if isinstance(prov, dict) else None
    return info


def risk_zone_attrs(prov: RunProvenance, zone: str, epsg: int, lsi_store: str, predictor: PredictorLike,
                    thresholds: Sequence[float], version: str, *, mode: str = "decoupled",
                    thresholds_source: str = "default") -> dict[str, Any]:
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
        "class_thresholds_source": thresholds_source,
        "hazard_mode": mode,
        "hazard_formula": HAZARD_FORMULA if mode == "decoupled" else "model output (rain inside the LSI input)",
    }


def risk_root_attrs(region: str, zones: Sequence[str], version: str) -> dict[str, Any]:
    """The attributes of the mosaic store's root."""
    return {"title": f"slidewatch risk mosaic: {region}", "region": region, "zones": list(zones),
            "slidewatch_version": version, "layout": LAYOUT_NOTE}

