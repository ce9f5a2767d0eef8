"""A small but complete run directory, built with the real pipeline for the notebook tests.

:func:`build_small_run` generates the demo region with the real generator on a 256 px
grid (``GRID_SIZE=256``, ``MARGIN=16``, as ``tests/pipeline/acquire/test_catalog.py`` does), serves
it with the local STAC API (``rustac serve``) and runs every stage of a regional run on
it: cube → rain (the generated precipitation Zarr) → LSI → a tiny trained U-Net →
``risk.zarr`` + exports → ``run.json``. The result is the run folder layout the notebooks
read (``OUT/<region>/<start>_<end>/``), 256 × 256 px at 10 m in EPSG:32648.

The STAC server is left running (``SmallRun.server``) so that a notebook can search it
again; call :meth:`SmallRun.close` (the fixture does) to stop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.demo.generate import DemoLayout
from pipeline.demo.server import LocalStacServer
from pipeline.plan.regions import Region

#: The small grid: the demo grid's origin, 256 px of 10 m, in chunks of 128 px (one write
#: tile; measured on the shared 2-core machine, chunks of 64 made the cube stage ~3x slower).
GRID_SIZE, MARGIN, CHUNK = 256, 16, 128
EPSG, X0, Y1, RES = 32648, 317440.0, 3322880.0, 10.0
REGION_NAME = "smalldemo"
SEED = 7

#: Tiny training settings: a few seconds on one CPU core.
TINY_TRAIN = {
    "arch": "enhanced", "base_width": 4, "depth": 2, "epochs": 2, "chips_per_epoch": 32,
    "chip_size": 64, "block_size": 64, "batch_size": 8, "patience": 2, "seed": 0,
    "device": "cpu", "num_threads": 1,
}


def small_region(inset_m: float = 50.0) -> Region:
    """A lon/lat bbox ``inset_m`` inside the 256 px grid, so planning snaps back onto it."""
    from pyproj import Transformer

    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    minx, maxy = X0, Y1
    maxx, miny = X0 + GRID_SIZE * RES, Y1 - GRID_SIZE * RES
    w, s = tr.transform(minx + inset_m, miny + inset_m)
    e, n = tr.transform(maxx - inset_m, maxy - inset_m)
    return Region(REGION_NAME, (w, s, e, n), "256 px piece of the synthetic demo region (tests)")


def generate_small_demo(root: Path, seed: int = SEED) -> DemoLayout:
    """The real demo generator on a 256 px grid (same code, smaller extent)."""
    import pipeline.demo.generate as gen

    mp = pytest.MonkeyPatch()
    mp.setattr(gen, "GRID_SIZE", GRID_SIZE)
    mp.setattr(gen, "MARGIN", MARGIN)
    try:
        return gen.generate(root, seed=seed)
    finally:
        mp.undo()


@dataclass
class SmallRun:
    """What :func:`build_small_run` made."""

    layout: DemoLayout
    region: Region
    out: Path
    run_dir: Path
    lsi_path: Path
    checkpoint: Path
    stac_url: str
    server: LocalStacServer

    def close(self) -> None:
        """Stop the local STAC server."""
        self.server.stop()


def build_small_run(root: Path) -> SmallRun:
    """Generate, serve and run the small region under ``root``; returns the run's paths."""
    import torch

    from flows import stages
    from pipeline.rain.events import resolve_rain
    from pipeline.core.layout import write_run_json
    from models.training import TrainConfig, train
    from pipeline.core.config import CubeConfig
    from pipeline.demo.generate import DEMO_WINDOW

    layout = generate_small_demo(root / "demo")
    region = small_region()
    out = root / "out"
    server = LocalStacServer([*layout.collection_files(), *layout.item_files()])
    url = server.start()
    try:
        result = stages.cube_stage(region, DEMO_WINDOW, url, out, CubeConfig(), chunk=CHUNK)
        precip = layout.precipitation if layout.precipitation.exists() else None
        rain = resolve_rain(None, None, precip, region.bbox, DEMO_WINDOW)
        (lsi_path,) = stages.lsi_stage(result, rain)
        threads = torch.get_num_threads()
        try:
            ckpt = train(lsi_path, layout.truth_mask, root / "model", TrainConfig(**TINY_TRAIN), progress=False)
        finally:
            torch.set_num_threads(threads)  # TrainConfig.num_threads is process-wide
        write_run_json(result.run_dir, stages.run_record(
            region, DEMO_WINDOW, url, result, rain,
            extra={"checkpoint": str(ckpt), "model_note": "tiny model trained on synthetic demo scars (tests)"}))
        stages.risk_stage(result, rain, ckpt, tile=CHUNK, device="cpu")
    except BaseException:
        server.stop()
        raise
    return SmallRun(layout, region, out, result.run_dir, lsi_path, ckpt, url, server)
