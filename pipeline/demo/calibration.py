"""The demo run's calibration: the LSI sigmoid fitted against the planted scars."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import rasterio
import xarray as xr

from pipeline.factors.calibration import CalibrationResult, calibrate
from pipeline.factors.lsi import lsi_score

__all__ = ["DEMO_DATA_SET", "demo_calibration"]

#: How the demo's calibration names its data set (reports, calibration.json, LSI attributes).
DEMO_DATA_SET = "the slidewatch demo region (synthetic scars)"


def demo_calibration(lsi_paths: Iterable[Path], truth_mask: Path) -> list[CalibrationResult]:
    """The LSI sigmoid (centre, steepness) fitted per LSI store: its score R_m · Σ wᵢxᵢ
    against the demo region's synthetic scars (the contributions do not depend on the
    sigmoid, so a store made with any centre and steepness gives the same fit)."""
    with rasterio.open(truth_mask) as src:
        truth = src.read(1)
    return [calibrate(lsi_score(xr.open_zarr(p)).compute(), truth) for p in lsi_paths]
