"""Two writers of one output: the second is refused (or waits, bounded) with a StoreError
naming the holder's pid; nobody's files are touched; a dead run's lock is taken over."""

from __future__ import annotations

import subprocess
import threading

import pytest

import childproc
from pipeline.core.errors import StoreError
from pipeline.store.tiles import TileStore
from runkit import assert_same_store, load_item_dir, run_tiny, snapshot

RUN = ("tiny", "20240701_20240831", "cube_utm48n.zarr")


def test_second_run_is_refused_naming_the_holder_then_takes_over_after_it_dies(tiny, tmp_path):  # type: ignore[no-untyped-def]
    item_dir, ref = tiny.item_dir, tiny.ref
    holder = childproc.start(item_dir, tmp_path, hang_after=1, where="tile")
    try:
        childproc.read_until(holder, "hang")  # holds the lock, one tile written
        run_dir = tmp_path / RUN[0] / RUN[1]
        before = snapshot(run_dir)
        with pytest.raises(StoreError) as err:
            run_tiny(load_item_dir(item_dir), tmp_path)
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "another slidewatch run" in msg and "Fix:" in msg
        assert snapshot(run_dir) == before  # the refused run wrote nothing, items JSON included
        assert holder.poll() is None  # (the holder was alive and holding the lock all along)
    finally:
        childproc.kill(holder)
    events: list = []
    run_tiny(load_item_dir(item_dir), tmp_path, events=events)  # the dead run's lock is stale now
    assert sum(1 for k, i in events if k == "tile" and i["skipped"]) == 1
    assert_same_store(tmp_path.joinpath(*RUN), ref)


def test_waiting_for_the_lock_is_bounded(tmp_path):  # type: ignore[no-untyped-def]
    a = TileStore(tmp_path / "c.zarr", "fp")
    a.acquire()
    b = TileStore(tmp_path / "c.zarr", "fp")
    with pytest.raises(StoreError, match="another slidewatch run"):
        b.acquire(wait_s=0.3)  # gives up after its timeout
    timer = threading.Timer(0.3, a.release)
    timer.start()
    try:
        b.acquire(wait_s=30)  # ... or gets the lock as soon as the holder lets go
    finally:
        timer.cancel()
    b.release()
    assert not (tmp_path / "c.zarr.lock").exists()


def test_stale_lock_is_taken_over_by_exactly_one_of_many(tmp_path):  # type: ignore[no-untyped-def]
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "c.zarr.lock").write_text(str(dead.pid))  # lock file of a run that died
    n = 8
    barrier = threading.Barrier(n)
    won: list[TileStore] = []
    refused: list[str] = []
    lock = threading.Lock()

    def contender() -> None:
        store = TileStore(tmp_path / "c.zarr", "fp")
        barrier.wait(timeout=30)
        try:
            store.acquire()
        except StoreError as exc:
            with lock:
                refused.append(str(exc))
            return
        with lock:
            won.append(store)

    threads = [threading.Thread(target=contender) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(refused) == n - 1
    assert all("another slidewatch run" in m for m in refused)
    won[0].release()


def test_two_simultaneous_processes_do_not_corrupt_each_other(tiny, tmp_path):  # type: ignore[no-untyped-def]
    item_dir, ref = tiny.item_dir, tiny.ref
    procs = [childproc.start(item_dir, tmp_path) for _ in range(2)]
    results = [childproc.finish(p) for p in procs]
    outcomes = []
    for code, events, err in results:
        if code == 0:
            kinds = {e["kind"] for e in events}
            outcomes.append("reused" if "reused" in kinds else "wrote")
        else:  # refused while the other held the lock: a clear StoreError, nothing else
            assert "StoreError" in err and "another slidewatch run" in err and "Fix:" in err, err[-2000:]
            outcomes.append("refused")
    assert outcomes.count("wrote") >= 1, outcomes
    assert_same_store(tmp_path.joinpath(*RUN), ref)
    assert not [p for p in tmp_path.joinpath(*RUN[:2]).iterdir() if p.name.startswith("cube_utm48n.zarr.")]
