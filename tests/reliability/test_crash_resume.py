"""Crash (SIGKILL) during cube writing, then resume: only the missing tiles are written and
the final store equals an uninterrupted run's; nothing looks complete before it is."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import childproc
from pipeline.store.tiles import TileStore
from runkit import assert_same_store, ledger_tiles, load_item_dir, run_tiny, store_attrs

RUN = ("tiny", "20240701_20240831", "cube_utm48n.zarr")


def _crash(item_dir, out, hang_after: int, where: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """Run a child until it hangs at the chosen point, then SIGKILL it."""
    proc = childproc.start(item_dir, out, hang_after=hang_after, where=where)
    try:
        events = childproc.read_until(proc, "hang")
    finally:
        childproc.kill(proc)
    return events


def _assert_incomplete(store_path) -> None:  # type: ignore[no-untyped-def]
    partial = store_path.with_name(store_path.name + ".partial")
    assert not store_path.exists(), "a killed run must never leave a store at the final path"
    assert partial.exists() and store_attrs(partial)["slidewatch_complete"] is False
    assert not TileStore(store_path, "any").is_complete()


def test_sigkill_between_tiles_then_resume_writes_only_missing_tiles(tiny, tmp_path):  # type: ignore[no-untyped-def]
    item_dir, ref = tiny.item_dir, tiny.ref
    events = _crash(item_dir, tmp_path, hang_after=2, where="tile")
    before = [e["tile"] for e in events if e["kind"] == "tile"]
    store_path = tmp_path.joinpath(*RUN)
    _assert_incomplete(store_path)
    assert sorted(ledger_tiles(store_path)) == sorted(before) and len(before) == 2
    assert store_path.with_name(store_path.name + ".lock").exists()  # left behind by the dead run

    resumed: list = []
    res = run_tiny(load_item_dir(item_dir), tmp_path, events=resumed)  # takes over the stale lock
    (tiles_ev,) = [i for k, i in resumed if k == "tiles"]
    assert tiles_ev["total"] == 4 and tiles_ev["done"] == 2
    skipped = sorted(i["tile"] for k, i in resumed if k == "tile" and i["skipped"])
    written = sorted(i["tile"] for k, i in resumed if k == "tile" and not i["skipped"])
    assert skipped == sorted(before) and len(written) == 2 and not set(written) & set(before)
    assert res.zones[0].cube_path == store_path and not res.zones[0].reused
    assert_same_store(store_path, ref)
    assert store_attrs(store_path)["slidewatch_complete"] is True
    leftovers = [p.name for p in store_path.parent.iterdir() if p.name.startswith("cube_utm48n.zarr.")]
    assert leftovers == []  # no partial, ledger or lock once finished


def test_sigkill_inside_a_tile_rewrites_that_tile(tiny, tmp_path):  # type: ignore[no-untyped-def]
    item_dir, ref = tiny.item_dir, tiny.ref
    events = _crash(item_dir, tmp_path, hang_after=1, where="ledger")
    assert events[-1]["why"].startswith("tile pixels written")
    store_path = tmp_path.joinpath(*RUN)
    _assert_incomplete(store_path)
    (recorded,) = ledger_tiles(store_path)
    # the second tile's pixels are in the partial store although the ledger does not list it
    partial = xr.open_zarr(str(store_path.with_name(store_path.name + ".partial")), consolidated=False)
    filled = {f"r{r}_c{c}" for r in (0, 64) for c in (0, 64)
              if np.isfinite(partial["dem"].values[r:r + 64, c:c + 64]).any()}
    assert recorded in filled and len(filled) == 2
    (half_done,) = filled - {recorded}

    resumed: list = []
    run_tiny(load_item_dir(item_dir), tmp_path, events=resumed)
    written = {i["tile"] for k, i in resumed if k == "tile" and not i["skipped"]}
    skipped = {i["tile"] for k, i in resumed if k == "tile" and i["skipped"]}
    assert skipped == {recorded} and half_done in written and len(written) == 3
    assert_same_store(store_path, ref)


def test_corrupt_ledger_restarts_cleanly(tiny, tmp_path):  # type: ignore[no-untyped-def]
    """A ledger that cannot be read (disk trouble, hand edits) restarts the partial store
    instead of crashing or trusting it."""
    item_dir, ref = tiny.item_dir, tiny.ref

    def interrupt_after_first_tile(kind, info):  # type: ignore[no-untyped-def]
        if kind == "tile":
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run

    with pytest.raises(KeyboardInterrupt):
        run_tiny(load_item_dir(item_dir), tmp_path, on_event=interrupt_after_first_tile)
    store_path = tmp_path.joinpath(*RUN)
    _assert_incomplete(store_path)
    assert len(ledger_tiles(store_path)) == 1
    store_path.with_name(store_path.name + ".progress.json").write_text('{"fingerprint": "x", "til')
    resumed: list = []
    run_tiny(load_item_dir(item_dir), tmp_path, events=resumed)
    assert not any(i["skipped"] for k, i in resumed if k == "tile")
    assert_same_store(store_path, ref)
