"""The risk stage as Dask work on a real ``dask scheduler`` with ``dask worker`` processes on
loopback: one graph per zone whose every inference tile runs once, in a group task on the
workers; each worker loads the checkpoint once (counted in the worker), the counters add up
over the workers, and the mosaic equals, bit for bit, the same stage on local threads. On a
cluster with a worker advertising ``GPU=1``, inference tasks run only there, and a
predictor built in memory enters the graph once, never once per task."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.dask_context import ADDRESS_ENV, dask_client
from pipeline.core.errors import CheckpointError
from tests.flows.test_distributed import (  # noqa: F401
    START_TIMEOUT_S,
    cluster,
    start_worker,
    stop_process,
)
from tests.tinyregion import FakeSource, make_tiny_region, tiny_region

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow
CHANNELS = ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi")  # models.networks.DEFAULT_CHANNELS
RISK_TASK = "slidewatch-risk-"  # the write tasks
GROUP_TASK = "slidewatch-predict-tiles-"  # the inference tasks: a group of tiles through the model
BLEND_TASK = "slidewatch-predict-"  # the inference tasks and the blend tasks


def tiny_lsi(root: Path):  # type: ignore[no-untyped-def]
    """The tiny region's cube and LSI store under ``root`` (4 risk tiles): ``(grid, lsi_path)``."""
    from flows import stages
    from pipeline.core.config import CubeConfig, TimeWindow
    from pipeline.rain.events import resolve_rain

    items = make_tiny_region(root / "cogs")
    region = tiny_region("tiny")
    window = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
    with dask_client("threads"):
        result = stages.cube_stage(region, window, FakeSource.url, root / "out",
                                   CubeConfig(), chunk=32, source=FakeSource(items))
        stages.lsi_stage(result, resolve_rain(None, None, None, region.bbox, window))
    (zone,) = result.zones
    return zone.grid, zone.lsi_path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import DEFAULT_CHANNELS, EnhancedUNet

    root = tmp_path_factory.mktemp("distributed-risk")
    grid, lsi_path = tiny_lsi(root)
    torch.manual_seed(3)
    ckpt = save_checkpoint(root / "model.safetensors", EnhancedUNet(DEFAULT_CHANNELS, base_width=4, depth=2),
                           NormStats((0.0,) * 7, (1.0,) * 7))
    return grid, lsi_path, ckpt


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """One torch thread here, as on the workers (set there with ``client.run``): CPU
    convolutions sum in a thread-count dependent order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _arrays(run_dir: Path, zone: str) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(run_dir / "risk.zarr", group=zone, consolidated=False)
    return {k: v.values for k, v in ds.data_vars.items()}


def _assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys() and {"susceptibility", "uncertainty", "hazard", "risk_class"} <= a.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), f"{name} differs"
    assert np.isfinite(a["susceptibility"]).mean() > 0.5


def _tasks(stream: list[dict], prefix: str) -> list[dict]:
    """The task stream's entries whose key (the name of a tuple key) starts with ``prefix``."""
    return [d for d in stream if str(d["key"][0] if isinstance(d["key"], tuple) else d["key"]).startswith(prefix)]


def _counts(stats) -> dict:  # type: ignore[no-untyped-def]
    return {k: v for k, v in stats.as_dict().items() if k != "model_seconds"}


def test_risk_on_a_scheduler_equals_threads_and_loads_the_model_once_per_worker(  # type: ignore[no-untyped-def]
        cluster, tiny, tmp_path, monkeypatch, one_torch_thread):  # noqa: F811 (the imported fixture)
    from distributed import get_task_stream

    from flows.stages.inference_workers import model_loads
    from flows.stages.risk import write_risk
    from models.predictor import Predictor

    address, workers = cluster
    grid, lsi_path, ckpt = tiny
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    with dask_client("threads"):
        local = write_risk(tmp_path / "threads", [(grid, lsi_path)], pred, region="tiny", tile=32)
    with dask_client(address) as client:
        client.run(torch.set_num_threads, 1)  # as here
        before = model_loads(client)
        with get_task_stream(client) as ts:
            remote = write_risk(tmp_path / "cluster", [(grid, lsi_path)], pred, region="tiny", tile=32)
        loads = {w: n - before[w] for w, n in model_loads(client).items()}
    writes, groups = _tasks(ts.data, RISK_TASK), _tasks(ts.data, GROUP_TASK)
    per_worker = Counter(d["worker"] for d in groups)
    # one write task per tile; each group of inference tiles ran once, on the two worker
    # processes (none in this process): 32 px tiles, stride 24 → 5 × 5 tiles in 2 × 4 groups
    assert len(writes) == len(grid.tiles(2)) == 4 and {d["worker"] for d in writes} <= set(workers)
    assert len(groups) == len({d["key"] for d in groups}) == 3 * 2 and set(per_worker) <= set(workers), per_worker
    # each worker that ran inference loaded the checkpoint exactly once, whatever its number of groups
    assert max(per_worker.values()) >= 2
    assert loads == {w: int(w in per_worker) for w in workers}, (loads, per_worker)
    # the counters of every worker added up: the same as on threads, each tile once
    assert _counts(remote.stats) == _counts(local.stats)
    assert remote.stats.tiles_run + remote.stats.tiles_skipped == 25 and remote.stats.chunks_run == 4
    assert remote.devices == local.devices == {"cpu (float32)"}
    _assert_identical(_arrays(tmp_path / "cluster", grid.zone_name), _arrays(tmp_path / "threads", grid.zone_name))
    zone = xr.open_zarr(tmp_path / "cluster" / "risk.zarr", group=grid.zone_name, consolidated=False)
    assert zone.attrs["slidewatch_complete"] is True and zone.attrs["inference_device"] == "cpu (float32)"


class LoggedPredictor:
    """A numpy predictor (a fixed weighted sum of the channels through a sigmoid) that
    appends the pid of every process that unpickles it to a log file."""

    channels = CHANNELS
    halo = 4

    def __init__(self, log: Path) -> None:
        self.log = str(log)
        self.weights = np.linspace(-1.0, 1.0, len(CHANNELS), dtype=np.float32)

    def check_channels(self, names) -> None:  # type: ignore[no-untyped-def]
        if tuple(names) != self.channels:
            raise CheckpointError(f"channels {list(names)} are not {list(self.channels)}.", "pass them in order.")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.nan_to_num(np.asarray(batch, dtype=np.float32))
        z = np.tensordot(self.weights, x, axes=(0, 1)) / 100.0
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(state["log"], "a") as f:
            f.write(f"{os.getpid()}\n")


def test_gpu_workers_get_the_inference_and_an_in_memory_model_once(  # type: ignore[no-untyped-def]
        cluster, tiny, tmp_path, monkeypatch):  # noqa: F811 (the imported fixture)
    import cloudpickle
    from distributed import Client, get_task_stream

    from flows.dask_context import task_pool
    from flows.stages.inference_workers import inference_resources
    from flows.stages.risk import write_risk

    address, workers = cluster
    grid, lsi_path, _ = tiny
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    log = tmp_path / "unpickled.txt"
    pred = LoggedPredictor(log)
    with dask_client("threads"):
        write_risk(tmp_path / "threads", [(grid, lsi_path)], pred, region="tiny", tile=32)
    assert not log.exists()  # threads share the object

    logs: list = []
    gpu = start_worker(address, "gpu0", tmp_path, logs, "--resources", "GPU=1")
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the workers cannot import this test module
    try:
        with dask_client(address) as client:
            client.wait_for_workers(3, timeout=START_TIMEOUT_S)
            (gpu_addr,) = [w for w, i in client.scheduler_info()["workers"].items() if i["name"] == "gpu0"]
            with task_pool() as pool:
                assert inference_resources(pool, "auto") == ({"GPU": 1}, 1)
                assert inference_resources(pool, "cpu") == (None, 3)
            pids = client.run(os.getpid)
            scheduler_pid = client.run_on_scheduler(os.getpid)
            with get_task_stream(client) as ts:
                res = write_risk(tmp_path / "cluster", [(grid, lsi_path)], pred, region="tiny", tile=32)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        stop_process(gpu)
        for f in logs:
            f.close()
        with Client(address, timeout=60) as c:  # leave the module's cluster as it was
            deadline = time.monotonic() + START_TIMEOUT_S
            while len(c.scheduler_info()["workers"]) > len(workers) and time.monotonic() < deadline:
                time.sleep(0.2)
    inference, groups = _tasks(ts.data, BLEND_TASK), _tasks(ts.data, GROUP_TASK)
    assert len(groups) == 6 and len(_tasks(ts.data, RISK_TASK)) == 4
    assert {d["worker"] for d in inference} == {gpu_addr}, Counter(d["worker"] for d in inference)
    # in the graph once and unpickled once, by the GPU worker that runs the inference: not
    # with each of the 6 group tasks, not by the scheduler (it only reads the graph), not by
    # the CPU workers (they only write)
    unpickled = Counter(int(line) for line in log.read_text().split())
    assert unpickled == {pids[gpu_addr]: 1}, (unpickled, pids, scheduler_pid)
    assert res.devices == {"LoggedPredictor (in memory)"}
    _assert_identical(_arrays(tmp_path / "cluster", grid.zone_name), _arrays(tmp_path / "threads", grid.zone_name))
