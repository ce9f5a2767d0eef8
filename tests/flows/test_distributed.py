"""Distributed runs: the tiny region's cube + LSI computed on a real ``dask scheduler`` with
two ``dask worker`` processes on loopback equal, bit for bit, a run on local threads, and the
tasks demonstrably ran on those workers. Plus ``dask_client``'s own behaviour."""

from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.dask_context import ADDRESS_ENV, active_client, compute_context, dask_client
from pipeline.core.errors import SlidewatchError
from pipeline.plan.regions import Region
from tests.tinyregion import GRID, FakeSource, make_tiny_region

REPO = Path(__file__).resolve().parents[2]
WINDOW = ("2024-07-01", "2024-08-31")
START_TIMEOUT_S = 180  # bounded wait for the scheduler and workers on a busy 2-core machine


def _inner_bbox() -> tuple[float, float, float, float]:
    from pyproj import Transformer

    tr = Transformer.from_crs(GRID.epsg, 4326, always_xy=True)
    minx, miny, maxx, maxy = GRID.bounds
    w = max(tr.transform(minx + 50, miny + 50)[0], tr.transform(minx + 50, maxy - 50)[0])
    e = min(tr.transform(maxx - 50, maxy - 50)[0], tr.transform(maxx - 50, miny + 50)[0])
    s = max(tr.transform(minx + 50, miny + 50)[1], tr.transform(maxx - 50, miny + 50)[1])
    n = min(tr.transform(maxx - 50, maxy - 50)[1], tr.transform(minx + 50, maxy - 50)[1])
    return (w, s, e, n)


def _run_stages(out: Path, fake: FakeSource):  # type: ignore[no-untyped-def]
    from datetime import date

    from flows.stages import cube_stage, lsi_stage
    from pipeline.core.provenance import Rain
    from pipeline.core.config import CubeConfig, TimeWindow

    window = TimeWindow(date.fromisoformat(WINDOW[0]), date.fromisoformat(WINDOW[1]))
    result = cube_stage(Region("tiny", _inner_bbox()), window, fake.url, out, CubeConfig(), chunk=64, source=fake)
    lsi_stage(result, Rain(12.0, 1.5, 2.5, "explicit"))
    (zone,) = result.zones
    return zone.cube_path, zone.lsi_path


def _assert_identical(a: Path, b: Path) -> None:
    da_, db_ = xr.open_zarr(a, decode_coords="all"), xr.open_zarr(b, decode_coords="all")
    assert sorted(da_.data_vars) == sorted(db_.data_vars) and len(da_.data_vars) > 5
    for name in da_.data_vars:
        va, vb = da_[name].values, db_[name].values
        assert va.dtype == vb.dtype, name
        assert np.array_equal(va, vb, equal_nan=va.dtype.kind == "f"), f"{name} differs"
    for c in ("x", "y"):
        assert np.array_equal(da_[c].values, db_[c].values)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def cluster_env() -> dict[str, str]:
    """The environment of the scheduler and worker processes: this checkout importable, no address."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(ADDRESS_ENV, None)
    return env


def start_scheduler(tmp: Path, procs: list, logs: list) -> str:
    """Start ``dask scheduler`` on 127.0.0.1 (appended to ``procs``); its address."""
    sched_file = tmp / "scheduler.json"
    log = open(tmp / "scheduler.log", "w")
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)], stdout=log, stderr=subprocess.STDOUT, env=cluster_env(), cwd=REPO))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not sched_file.exists() or not sched_file.read_text().strip():
        if procs[-1].poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dask scheduler did not start: {(tmp / 'scheduler.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return json.loads(sched_file.read_text())["address"]


def start_worker(address: str, name: str, tmp: Path, logs: list, *extra: str) -> subprocess.Popen:
    """Start a single-threaded ``dask worker`` process on 127.0.0.1 (``extra``: more options,
    e.g. ``--resources GPU=1``); the caller waits for it and stops it."""
    log = open(tmp / f"{name}.log", "w")
    logs.append(log)
    return subprocess.Popen(
        [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
         "--no-nanny", "--no-dashboard", "--memory-limit", "2GB", "--name", name, *extra],
        stdout=log, stderr=subprocess.STDOUT, env=cluster_env(), cwd=REPO)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    """``dask scheduler`` + two single-threaded ``dask worker`` processes on 127.0.0.1; always
    stopped. Yields ``(address, {worker address: name})``."""
    tmp = tmp_path_factory.mktemp("cluster")
    procs: list[subprocess.Popen] = []
    logs: list = []
    try:
        address = start_scheduler(tmp, procs, logs)
        for i in range(2):
            procs.append(start_worker(address, f"w{i}", tmp, logs))
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=START_TIMEOUT_S)
            workers = {w: info["name"] for w, info in c.scheduler_info()["workers"].items()}
        yield address, workers
    finally:
        for p in reversed(procs):
            stop_process(p)
        for f in logs:
            f.close()


@pytest.mark.slow
def test_cube_and_lsi_on_a_scheduler_equal_local_threads(cluster, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from distributed import get_task_stream

    address, workers = cluster
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    fake = FakeSource(make_tiny_region(tmp_path / "cogs"))
    with dask_client("threads") as none:
        assert none is None and active_client() is None
        local = _run_stages(tmp_path / "local", fake)
    with dask_client(address) as client:
        assert active_client() is client and client.scheduler.address == address
        with get_task_stream(client) as ts:
            remote = _run_stages(tmp_path / "remote", fake)
        per_worker = Counter(d["worker"] for d in ts.data)
    assert active_client() is None  # the client was closed on exit; the cluster keeps running
    # Every task the scheduler ran went to one of the two worker processes, none to this one.
    assert sum(per_worker.values()) >= 20, f"the graphs did not go to the scheduler: {per_worker}"
    assert set(per_worker) <= set(workers), f"tasks ran outside the two workers: {per_worker}"
    for a, b in zip(local, remote):
        _assert_identical(a, b)


def test_dask_client_starts_and_closes_a_local_cluster(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert active_client() is None
    with dask_client() as client:
        assert active_client() is client
        info = client.scheduler_info()["workers"]
        assert len(info) == 1 and next(iter(info.values()))["nthreads"] == (os.cpu_count() or 1)
        with dask_client() as inner:  # nested (a subflow): the same client, left open
            assert inner is client
        assert client.submit(sum, [1, 2, 3]).result() == 6
        with compute_context():
            import dask.array as da

            assert int(da.ones((10, 10), chunks=5).sum().compute()) == 100
    assert active_client() is None and client.status == "closed"


def test_dask_client_env_address_that_cannot_be_reached(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(ADDRESS_ENV, "tcp://127.0.0.1:9")
    with pytest.raises(SlidewatchError) as info:
        with dask_client(timeout=2):
            pass
    assert "tcp://127.0.0.1:9" in str(info.value) and "Fix:" in str(info.value)
    assert active_client() is None


def _listening() -> set[tuple[str, int]]:
    """(address, port) of every listening socket of this process and its children."""
    import psutil

    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def _http_status(url: str) -> int:
    from urllib.error import HTTPError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except HTTPError as err:
        return int(err.code)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_local_cluster_listens_on_loopback_only_without_a_dashboard(monkeypatch, processes):  # type: ignore[no-untyped-def]
    from flows.dask_context import dashboard_url

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    before = _listening()
    with dask_client(processes=processes, n_workers=1) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        opened = _listening() - before
        url = dashboard_url(client)
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert _http_status(url.replace("/status", "/health")) == 200
        for page in ("/status", "/info/main/workers.html", "/json/counts.json"):  # no dashboard, no info pages
            assert _http_status(url.replace("/status", page)) == 404, page
    assert opened, "the cluster opened no socket at all?"
    assert {ip for ip, _ in opened} == {"127.0.0.1"}, f"listening beyond loopback: {sorted(opened)}"


def test_dashboard_when_asked_is_served_on_loopback(monkeypatch):  # type: ignore[no-untyped-def]
    from flows.dask_context import dashboard_url

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    before = _listening()
    with dask_client(dashboard=True) as client:
        opened = _listening() - before
        url = dashboard_url(client)
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/status")
        assert _http_status(url) == 200
    assert {ip for ip, _ in opened} == {"127.0.0.1"}, f"listening beyond loopback: {sorted(opened)}"
