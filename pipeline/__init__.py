"""slidewatch's library, in stage packages that follow the data flow.

::

    core/      foundation: config records, errors, collection facts, quality bits, risk
               classes, run-folder layout, provenance, secrets, small statistics
    plan/      pure planning: regions, UTM zone grids, dry-run estimates (no pixels, no network)
    acquire/   STAC search, signing, GDAL reads → the lazy cube (the only code that talks to catalogs)
    factors/   pure compute: slope, indices, soil moisture, SAR references, the LSI, calibration
    rain/      precipitation sources, rainfall events and R_m, the watch
    predict/   pure: seam-free chunked inference over any Predictor, the risk mosaic's tiles
    store/     Zarr stores written tile by tile, resumable, complete only when they are
    products/  what people open: COGs, the STAC item, quick-looks, the HTML report
    demo/      the embedded synthetic demo region and its local STAC API

Imports point down that list (``demo → acquire, rain → plan, factors, predict, store,
products → core``); ``tests/test_layering.py`` holds the rule. Never imports torch or
prefect. The names a notebook needs are re-exported here and load on first use, so
``import pipeline`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    # core
    "CubeConfig": "pipeline.core.config",
    "TimeWindow": "pipeline.core.config",
    "ZoneGrid": "pipeline.core.config",
    "RunLayout": "pipeline.core.layout",
    "read_run_json": "pipeline.core.layout",
    "Rain": "pipeline.core.provenance",
    "RunProvenance": "pipeline.core.provenance",
    "QualityFlag": "pipeline.core.quality",
    "CLASS_NAMES": "pipeline.core.classes",
    "SlidewatchError": "pipeline.core.errors",
    "CatalogError": "pipeline.core.errors",
    "CheckpointError": "pipeline.core.errors",
    "EmptySearchError": "pipeline.core.errors",
    "InputDataError": "pipeline.core.errors",
    "MissingAssetError": "pipeline.core.errors",
    "NoValidDataError": "pipeline.core.errors",
    "RainfallError": "pipeline.core.errors",
    "RegionError": "pipeline.core.errors",
    "StoreError": "pipeline.core.errors",
    "TimeWindowError": "pipeline.core.errors",
    # plan
    "Region": "pipeline.plan.regions",
    "parse_region": "pipeline.plan.regions",
    "plan_grids": "pipeline.plan.grid",
    # acquire
    "StacApiSource": "pipeline.acquire.catalog",
    "search_inputs": "pipeline.acquire.catalog",
    "save_items": "pipeline.acquire.items",
    "load_items": "pipeline.acquire.items",
    "build_cube": "pipeline.acquire.cube",
    # factors
    "compute_factors": "pipeline.factors.layers",
    "normalisation_ranges": "pipeline.factors.ranges",
    "LsiParams": "pipeline.factors.lsi",
    "landslide_susceptibility": "pipeline.factors.lsi",
    "lsi_score": "pipeline.factors.lsi",
    "calibrate": "pipeline.factors.calibration",
    "slope": "pipeline.factors.terrain",
    "aspect": "pipeline.factors.terrain",
    "spectral_indices": "pipeline.factors.indices",
    "soil_moisture": "pipeline.factors.soil_moisture",
    "soil_moisture_index": "pipeline.factors.soil_moisture",
    "smi_references": "pipeline.factors.soil_moisture",
    # rain
    "rain_event": "pipeline.rain.events",
    "rainfall_multiplier": "pipeline.rain.events",
    "explicit_event": "pipeline.rain.events",
    "resolve_rain": "pipeline.rain.events",
    "LocalZarrSource": "pipeline.rain.sources",
    # predict
    "PredictorLike": "pipeline.predict.inference",
    "iter_chunk_predictions": "pipeline.predict.inference",
    "predict_dataset": "pipeline.predict.inference",
    "predict_chunk": "pipeline.predict.inference",
    # store
    "TileStore": "pipeline.store.tiles",
    # products
    "write_cogs": "pipeline.products.cog",
    "export_run": "pipeline.products.stac_item",
    "write_quicklook": "pipeline.products.quicklook",
    "write_report": "pipeline.products.report",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
