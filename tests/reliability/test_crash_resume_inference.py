"""SIGKILL during inference: the risk mosaic is not marked complete, and the same call
again predicts only the missing tiles and equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from flows import stages
from pipeline.rain.events import resolve_rain
from flows.stages.risk import write_risk
from models.checkpoint import save_checkpoint
from models.data import NormStats
from models.networks import DEFAULT_CHANNELS, EnhancedUNet
from models.predictor import Predictor
from pipeline.core.config import CubeConfig, TimeWindow
from tests.tinyregion import FakeSource, make_tiny_region, tiny_region

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def lsi_store(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("crashrisk")
    items = make_tiny_region(root / "cogs")
    region = tiny_region("tiny")
    window = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
    result = stages.cube_stage(region, window, FakeSource.url, root / "out", CubeConfig(),
                               chunk=32, source=FakeSource(items))
    stages.lsi_stage(result, resolve_rain(None, None, None, region.bbox, window))
    torch.manual_seed(1)
    ckpt = save_checkpoint(root / "m.safetensors", EnhancedUNet(DEFAULT_CHANNELS, base_width=4, depth=2),
                           NormStats((0.0,) * 7, (1.0,) * 7))
    return root, result.zones[0].grid, result.zones[0].lsi_path, ckpt


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(run_dir / "risk.zarr", group="utm48n", consolidated=False)
    return {k: v.values for k, v in ds.data_vars.items()}


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """One torch thread here, as in the killed process (crashrisk.py): CPU convolutions sum in
    a thread-count dependent order, and earlier tests may have changed this process's count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigkill_during_inference_then_resume(lsi_store, tmp_path, one_torch_thread) -> None:  # type: ignore[no-untyped-def]
    root, grid, lsi_path, ckpt = lsi_store
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    write_risk(tmp_path / "ref", [(grid, lsi_path)], pred, region="tiny", tile=32)

    crash = tmp_path / "crash"
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((crash, grid, lsi_path, ckpt)))
    proc = subprocess.Popen([sys.executable, str(HERE / "crashrisk.py"), str(args), "2"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    try:
        written = []
        for line in proc.stdout:  # type: ignore[union-attr]
            ev = json.loads(line)
            if ev["kind"] == "tile" and not ev["skipped"]:
                written.append(ev["tile"])
            if ev["kind"] == "hang":
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and len(written) == 2
    group = crash / "risk.zarr" / "utm48n"
    assert not group.exists() and group.with_name("utm48n.partial").is_dir()  # not marked complete

    events: list[tuple[str, bool]] = []
    write_risk(crash, [(grid, lsi_path)], pred, region="tiny", tile=32,
               on_event=lambda k, i: events.append((i["tile"], i["skipped"])) if k == "tile" else None)
    assert sorted(t for t, skipped in events if skipped) == sorted(written)
    assert len(events) == len(grid.tiles(2)) and sum(not s for _, s in events) == len(events) - 2
    got, want = _arrays(crash), _arrays(tmp_path / "ref")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert xr.open_zarr(crash / "risk.zarr", group="utm48n", consolidated=False).attrs["slidewatch_complete"] is True
