"""Zarr store: template + aligned region writes, CRS round trip, resume, completeness, lock."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr

from pipeline.core.config import ZoneGrid
from pipeline.core.errors import StoreError
from pipeline.core.layout import ZARR_FORMAT, store_format, zarr_metadata_file
from pipeline.store.tiles import TileStore, grid_coords, template, write_tiles

GRID = ZoneGrid(epsg=32648, x0=320000.0, y1=3309440.0, width=128, height=128, chunk=32)
VARS = {"a": "float32", "n": "uint8"}
ATTRS = {"a": {"units": "m", "long_name": "test a"}, "n": {"units": "1", "long_name": "count"}}


def _tile_ds(tile):  # type: ignore[no-untyped-def]
    sub = GRID.subgrid(tile)
    yy, xx = np.meshgrid(np.arange(tile.row0, tile.row1), np.arange(tile.col0, tile.col1), indexing="ij")
    return xr.Dataset({"a": (("y", "x"), da.from_array((yy * 1000 + xx).astype("float32"), chunks=32)),
                       "n": (("y", "x"), da.from_array(np.full(sub.shape, 3, "uint8"), chunks=32))},
                      coords=grid_coords(sub))


def test_round_trip_with_crs_and_attrs(tmp_path):  # type: ignore[no-untyped-def]
    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {"region": "t", "input_items": {"s2": ["x"]}})
    write_tiles(store, GRID, GRID.tiles(2), _tile_ds)
    assert not store.path.exists() and not store.is_complete()  # not final until finalized
    store.finalize()
    ds = xr.open_zarr(store.path, decode_coords="all")
    assert ds.rio.crs.to_epsg() == 32648
    assert tuple(ds.rio.transform())[:6] == GRID.transform
    assert ds["a"].attrs["units"] == "m" and ds["a"].attrs["long_name"] == "test a"
    yy, xx = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    np.testing.assert_array_equal(ds["a"].values, yy * 1000 + xx)
    assert ds.attrs["slidewatch_complete"] is True and ds.attrs["input_items"] == {"s2": ["x"]}
    assert store.is_complete()
    assert store_format(store.path) == ZARR_FORMAT and os.path.exists(zarr_metadata_file(store.path))


def test_resume_writes_only_missing_tiles(tmp_path):  # type: ignore[no-untyped-def]
    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {})
    tiles = GRID.tiles(1)
    for t in tiles[:5]:
        store.write_tile(t, _tile_ds(t))
    # a new process resumes: same fingerprint, the ledger says 5 are done
    again = TileStore(tmp_path / "c.zarr", "fp1")
    again.prepare(template(GRID, VARS, ATTRS), {})
    assert len(again.done()) == 5
    written = []
    write_tiles(again, GRID, tiles, lambda t: (written.append(t.key), _tile_ds(t))[1])
    assert len(written) == len(tiles) - 5
    again.finalize()
    yy, xx = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    np.testing.assert_array_equal(xr.open_zarr(again.path)["a"].values, yy * 1000 + xx)


def test_other_fingerprint_restarts_partial_and_protects_finished(tmp_path):  # type: ignore[no-untyped-def]
    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {})
    store.write_tile(GRID.tiles(1)[0], _tile_ds(GRID.tiles(1)[0]))
    other = TileStore(tmp_path / "c.zarr", "fp2")
    other.prepare(template(GRID, VARS, ATTRS), {})
    assert other.done() == set()
    write_tiles(other, GRID, GRID.tiles(2), _tile_ds)
    other.finalize()
    third = TileStore(tmp_path / "c.zarr", "fp3")
    with pytest.raises(StoreError, match="--overwrite"):
        third.prepare(template(GRID, VARS, ATTRS), {})
    assert other.is_complete()  # untouched


def test_lock_refuses_a_second_writer(tmp_path):  # type: ignore[no-untyped-def]
    a = TileStore(tmp_path / "c.zarr", "fp")
    a.acquire()
    with pytest.raises(StoreError, match="another slidewatch run"):
        TileStore(tmp_path / "c.zarr", "fp").acquire()
    a.release()
    (tmp_path / "c.zarr.lock").write_text("999999")  # stale lock of a dead process
    b = TileStore(tmp_path / "c.zarr", "fp")
    b.acquire()
    b.release()


def _expected_a() -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    return yy * 1000 + xx


def test_concurrent_tiles_overlap_and_give_the_same_store(tmp_path):  # type: ignore[no-untyped-def]
    import threading
    import time

    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {})
    active, peak, lock = [0], [0], threading.Lock()

    def slow(tile):  # type: ignore[no-untyped-def]
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return _tile_ds(tile)

    reported = []
    write_tiles(store, GRID, GRID.tiles(1), slow, on_tile=lambda t, s: reported.append(t.key), concurrency=4)
    assert peak[0] >= 2  # tiles really ran side by side
    assert sorted(reported) == sorted(t.key for t in GRID.tiles(1)) and len(store.done()) == 16
    store.finalize()
    np.testing.assert_array_equal(xr.open_zarr(store.path)["a"].values, _expected_a())


def test_concurrent_failure_stops_new_tiles_keeps_finished_ones_and_resumes(tmp_path):  # type: ignore[no-untyped-def]
    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {})
    tiles = GRID.tiles(1)
    bad = tiles[5]
    started = []

    def flaky(tile):  # type: ignore[no-untyped-def]
        started.append(tile.key)
        if tile.key == bad.key:
            raise OSError("disk on fire")
        return _tile_ds(tile)

    with pytest.raises(OSError, match="disk on fire") as info:
        write_tiles(store, GRID, tiles, flaky, concurrency=3, retry_if=lambda e: False)
    assert info.value.slidewatch_tile == bad and info.value.slidewatch_attempts == 1
    assert len(started) <= 6 + 2  # nothing new starts once the failure is seen
    done = store.done()
    assert bad.key not in done and done == set(started) - {bad.key}  # every finished tile is in the ledger
    # the same call again writes only what is missing, and the store is whole
    rerun = []
    write_tiles(store, GRID, tiles, lambda t: (rerun.append(t.key), _tile_ds(t))[1], concurrency=3)
    assert set(rerun) == {t.key for t in tiles} - done
    store.finalize()
    np.testing.assert_array_equal(xr.open_zarr(store.path)["a"].values, _expected_a())


def test_concurrent_tiles_are_retried(tmp_path):  # type: ignore[no-untyped-def]
    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {})
    tiles = GRID.tiles(2)
    failed, retried = set(), []

    def once(tile):  # type: ignore[no-untyped-def]
        if tile.key not in failed:
            failed.add(tile.key)
            raise TimeoutError("slow link")
        return _tile_ds(tile)

    write_tiles(store, GRID, tiles, once, concurrency=2, retry_delay_s=0,
                on_retry=lambda t, a, e: retried.append((t.key, a)))
    assert sorted(retried) == sorted((t.key, 1) for t in tiles)
    store.finalize()
    np.testing.assert_array_equal(xr.open_zarr(store.path)["a"].values, _expected_a())


def test_tile_concurrency_setting(monkeypatch):  # type: ignore[no-untyped-def]
    from flows.dask_context import CONCURRENCY_ENV, tile_concurrency

    monkeypatch.setenv(CONCURRENCY_ENV, "3")
    assert tile_concurrency() == 3
    monkeypatch.setenv(CONCURRENCY_ENV, "zero")
    assert tile_concurrency() == 1  # ignored with a warning; no client here: one at a time
    monkeypatch.delenv(CONCURRENCY_ENV)
    assert tile_concurrency() == 1

    class FakeClient:
        def __init__(self, threads: dict) -> None:
            self.threads = threads

        def nthreads(self) -> dict:
            return self.threads

    import flows.dask_context as ctx

    monkeypatch.setattr(ctx, "active_client", lambda: FakeClient({"w1": 2}))
    assert tile_concurrency() == 1  # a small local cluster: one tile keeps it busy
    monkeypatch.setattr(ctx, "active_client", lambda: FakeClient({f"w{i}": 4 for i in range(16)}))
    assert tile_concurrency() == 16  # 64 threads: a tile per 4 threads


def test_tile_retry_policy(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    import time

    import pipeline.store.tiles as tiles_mod
    from pipeline.core.errors import SlidewatchError

    log: list = []
    monkeypatch.setattr(time, "sleep", lambda s: log.append(("sleep", s)))
    store = TileStore(tmp_path / "c.zarr", "fp1")
    store.prepare(template(GRID, VARS, ATTRS), {})
    tile = GRID.tiles(2)[0]
    calls: list = []

    def always(t):  # type: ignore[no-untyped-def]
        calls.append(t.key)
        raise TimeoutError("slow link")

    def on_retry(t, attempt, exc):  # type: ignore[no-untyped-def]
        log.append(("retry", t.key, attempt, type(exc)))

    with pytest.raises(TimeoutError, match="slow link") as info:
        write_tiles(store, GRID, [tile], always, retries=6, retry_delay_s=5, on_retry=on_retry)
    assert len(calls) == 7 and info.value.slidewatch_tile == tile and info.value.slidewatch_attempts == 7
    # on_retry before each pause; pauses double from retry_delay_s, at most a minute
    expected: list = []
    for attempt, pause in zip(range(1, 7), [5, 10, 20, 40, 60, 60]):
        expected += [("retry", tile.key, attempt, TimeoutError), ("sleep", pause)]
    assert log == expected

    # the module defaults are read at call time (tests and flows set them)
    monkeypatch.setattr(tiles_mod, "TILE_RETRIES", 1)
    monkeypatch.setattr(tiles_mod, "TILE_RETRY_DELAY_S", 0.5)
    log.clear(), calls.clear()
    with pytest.raises(TimeoutError) as info:
        write_tiles(store, GRID, [tile], always)
    assert len(calls) == 2 and info.value.slidewatch_attempts == 2 and log == [("sleep", 0.5)]

    # refused by retry_if: one attempt, labelled; slidewatch errors: never retried, not labelled
    log.clear(), calls.clear()
    with pytest.raises(TimeoutError) as info:
        write_tiles(store, GRID, [tile], always, retry_if=lambda e: False, on_retry=on_retry)
    assert len(calls) == 1 and info.value.slidewatch_attempts == 1 and log == []

    def fatal(t):  # type: ignore[no-untyped-def]
        calls.append(t.key)
        raise StoreError("disk full", "free some")

    calls.clear()
    with pytest.raises(SlidewatchError) as info:
        write_tiles(store, GRID, [tile], fatal, on_retry=on_retry)
    assert len(calls) == 1 and log == [] and not hasattr(info.value, "slidewatch_attempts")
    assert store.done() == set()
