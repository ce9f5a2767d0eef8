"""A finished store is a function of its inputs (issue 15, item 1): a store replaced while a
stage reads it tile by tile stops that stage instead of mixing two generations into one
output marked complete, and replacing a finished store never leaves its path missing."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from flows import stages
from flows.stages.risk import open_zone
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.files import exchange_paths, replace_dir
from pipeline.core.layout import ZARR_FORMAT
from pipeline.factors.lsi import LsiParams
from pipeline.rain.events import resolve_rain
from pipeline.store.tiles import (
    COMPLETE_ATTR,
    GENERATION_ATTR,
    GenerationGuard,
    StoreChangedError,
    TileStore,
    store_generation,
)
from tests.tinyregion import FakeSource, make_tiny_region, tiny_checkpoint, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def _tiny_store(path: Path, value: float, fp: str = "fp") -> TileStore:
    """A one-variable finished store at ``path`` holding ``value`` everywhere."""
    store = TileStore(path, fp)
    ds = xr.Dataset({"v": (("y", "x"), np.full((4, 4), value, np.float32))})
    ds.attrs.update({"slidewatch_fingerprint": fp, COMPLETE_ATTR: False})
    ds.to_zarr(str(store.partial), mode="w", zarr_format=ZARR_FORMAT, consolidated=False)
    store.finalize()
    return store


def test_every_finished_store_gets_a_fresh_generation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = _tiny_store(tmp_path / "a.zarr", 1.0)
    first = store_generation(store.path)
    _tiny_store(tmp_path / "a.zarr", 1.0)  # the same content written again
    second = store_generation(store.path)
    assert first and second and first != second
    assert zarr.open_group(str(store.path), mode="r").attrs[GENERATION_ATTR] == second


def test_replacing_a_store_never_leaves_its_path_missing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each rename the replacement makes is followed by a look at the final path: before the
    fix the old store was renamed away first, leaving a moment with no store there."""
    path = tmp_path / "a.zarr"
    _tiny_store(path, 1.0)
    seen: list[bool] = []
    real_rename = Path.rename

    def spying_rename(self: Path, target):  # type: ignore[no-untyped-def]
        out = real_rename(self, target)
        seen.append(path.exists())
        return out

    monkeypatch.setattr(Path, "rename", spying_rename)
    _tiny_store(path, 2.0)
    assert all(seen), f"the final path was missing after a rename: {seen}"
    assert float(xr.open_zarr(path)["v"].values[0, 0]) == 2.0
    assert not path.with_name("a.zarr.partial").exists() and not path.with_name("a.zarr.old").exists()


def test_replace_dir_falls_back_to_two_renames_where_exchange_is_unsupported(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pipeline.core.files as files

    monkeypatch.setattr(files, "exchange_paths", lambda a, b: False)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("new")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("old")
    replace_dir(tmp_path / "new", tmp_path / "t", tmp_path / "trash")
    assert (tmp_path / "t" / "f").read_text() == "new"
    assert not (tmp_path / "new").exists() and not (tmp_path / "trash").exists()


def test_exchange_swaps_two_folders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    if not exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system cannot exchange paths atomically (the fallback is tested above)")
    assert (tmp_path / "b" / "x").read_text() == "a" and not (tmp_path / "a" / "x").exists()


def test_guard_notices_a_replaced_or_removed_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.zarr"
    _tiny_store(path, 1.0)
    guard = GenerationGuard(path)
    guard.check()  # unchanged
    _tiny_store(path, 2.0)
    with pytest.raises(StoreChangedError, match="was replaced while this run was reading it"):
        guard.check()
    import shutil

    shutil.rmtree(path)
    with pytest.raises(StoreChangedError, match="could not be read"):
        GenerationGuard(tmp_path / "a.zarr").check()


@pytest.fixture()
def tiny_run(tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path
    items = make_tiny_region(root / "cogs")
    source = FakeSource(items)
    region = tiny_region("tiny")
    result = stages.cube_stage(region, WINDOW, FakeSource.url, root / "out", CubeConfig(), chunk=32, source=source)
    rain = resolve_rain(20.0, 2.0, None, region.bbox, WINDOW)
    stages.lsi_stage(result, rain)
    ckpt = tiny_checkpoint(result.zones[0].lsi_path, root / "model.safetensors")
    return region, source, result, rain, ckpt


def test_risk_stage_stops_when_its_lsi_store_is_replaced_mid_read(tiny_run) -> None:  # type: ignore[no-untyped-def]
    """The issue's scenario: run B rebuilds the LSI store with other rain while run A's risk
    stage reads it tile by tile. Before: A finished, marked complete, with tiles of both
    rains. Now: A stops at the first tile read from B's store; nothing is marked complete,
    the ledger keeps only A's tiles; the rerun (on B's LSI) equals a clean run."""
    region, _, result, rain, ckpt = tiny_run
    other_rain = resolve_rain(60.0, 3.0, None, region.bbox, WINDOW)
    written: list[str] = []

    def rebuild_after_first_tile(kind: str, info: dict) -> None:
        if kind == "tile" and not info["skipped"]:
            written.append(info["tile"])
            if len(written) == 1:  # "run B": another LSI calibration (the rain-free LSI ignores rain)
                stages.lsi_stage(result, other_rain, params=LsiParams(centre=0.35))

    with pytest.raises(StoreChangedError, match="lsi_utm48n.zarr was replaced while this run was reading it"):
        stages.risk_stage(result, rain, ckpt, tile=32, on_event=rebuild_after_first_tile)
    group = result.run_dir / "risk.zarr" / "utm48n"
    assert not group.exists(), "a risk group was finished from a replaced LSI store"
    ledger = json.loads(group.with_name("utm48n.progress.json").read_text())
    assert ledger["tiles"] == written[:1]

    stages.risk_stage(result, other_rain, ckpt, tile=32)  # the rerun, on the LSI now there (B's)
    got = open_zone(result.run_dir, "utm48n")
    assert got.attrs[COMPLETE_ATTR] is True
    ref_dir = result.run_dir.parent / "ref"
    import shutil

    shutil.copytree(result.run_dir, ref_dir, ignore=shutil.ignore_patterns("risk.zarr*"))
    from dataclasses import replace as dc_replace

    ref_result = dc_replace(result, run_dir=ref_dir)
    for z in ref_result.zones:
        z.lsi_path = ref_dir / z.lsi_path.name
    stages.risk_stage(ref_result, other_rain, ckpt, tile=32)
    ref = open_zone(ref_dir, "utm48n")
    np.testing.assert_array_equal(got["susceptibility"].values, ref["susceptibility"].values)
    np.testing.assert_array_equal(got["lsi"].values, ref["lsi"].values)


def test_lsi_stage_stops_when_its_cube_is_replaced_mid_read(tiny_run) -> None:  # type: ignore[no-untyped-def]
    region, source, result, _, _ = tiny_run
    other_rain = resolve_rain(60.0, 3.0, None, region.bbox, WINDOW)
    cube_path = result.zones[0].cube_path
    done: list[str] = []

    def rebuild_cube_after_first_tile(kind: str, info: dict) -> None:
        if kind == "tile" and not info["skipped"] and "LSI" in str(info.get("zone")):
            done.append(info["tile"])
            if len(done) == 1:  # "another process" rewrites the cube
                stages.cube_stage(region, WINDOW, FakeSource.url, result.run_dir.parent.parent, CubeConfig(),
                                  chunk=32, source=source, overwrite=True)

    before = store_generation(cube_path)
    with pytest.raises(StoreChangedError, match="cube_utm48n.zarr was replaced"):
        stages.lsi_stage(result, other_rain, params=LsiParams(centre=0.35), on_event=rebuild_cube_after_first_tile)
    assert store_generation(cube_path) != before
    lsi = result.zones[0].lsi_path
    assert xr.open_zarr(lsi).attrs["lsi_params"]["centre"] == pytest.approx(0.30), \
        "the finished LSI store was replaced by a mixed one"
