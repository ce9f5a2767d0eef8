"""The demo run's calibration report: the LSI fitted against the planted scars."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import rasterio
import xarray as xr

from pipeline.factors.calibration import calibrate, format_report
from pipeline.factors.lsi import lsi_score

__all__ = ["demo_calibration"]


def demo_calibration(lsi_paths: Iterable[Path], truth_mask: Path) -> list[str]:
    """One calibration report per LSI store: its score (R_m · Σ wᵢxᵢ) fitted against the
    demo region's synthetic scars, with the AUC beside the source paper's."""
    with rasterio.open(truth_mask) as src:
        truth = src.read(1)
    return [format_report(calibrate(lsi_score(xr.open_zarr(p)).compute(), truth),
                          "the slidewatch demo region (synthetic scars)") for p in lsi_paths]
