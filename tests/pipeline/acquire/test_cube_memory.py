"""The cube write's memory follows a chunk's depth, not the write tile's or the run's (issue 18).

A Sentinel-1 chunk stacks only the scenes with a value in it (the same pixels as the stack
path, bit for bit), a thread keeps a bounded number of files open, and the heap freed by a
tile is handed back before the next one. The figures (peak RSS of the demo region and of a
region 4x larger) are measured by ``tests/benchmarks/bench_cube.py``, section 2.
"""

from __future__ import annotations

import sys

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.enums import Resampling

from pipeline.acquire import readers
from pipeline.acquire.catalog import RunInputs
from pipeline.acquire.cube import build_cube
from pipeline.acquire.readers import SceneAsset, read_chunk
from pipeline.core.config import ZoneGrid
from pipeline.factors import sar
from pipeline.store import tiles as store_tiles
from pipeline.store.tiles import TileStore, grid_coords, template, write_tiles
from tests.tinyregion import BANDS, GRID, RES, copied_item, make_tiny_region

# stackstac's own geometry code uses affine's deprecated `*` (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

S1_VARS = ("vv_dry", "vv_wet", "vv", "vh")
CHUNK = GRID.chunk


def _copy(item, root, suffix: str, *, dx: float = 0.0, scale: float = 1.0, nodata_block: bool = False,  # type: ignore[no-untyped-def]
          track: tuple[str, int] | None = None):
    """A copy of an S1 item: files moved ``dx`` metres east, values times ``scale``, the
    top-left chunk set to the files' nodata when ``nodata_block``, another orbit track."""

    def edit(arr: np.ndarray, profile: dict) -> np.ndarray:
        arr = arr * np.float32(scale)
        if nodata_block:
            arr[:CHUNK, :CHUNK] = profile["nodata"]
        return arr

    out = copied_item(item, root, suffix, dx=dx, edit=edit)
    if track is not None:
        out.properties["sat:orbit_state"], out.properties["sat:relative_orbit"] = track
    return out


@pytest.fixture(scope="module")
def region(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny region (2 x 2 chunks) with a history of 7 Sentinel-1 scenes: the 3 window
    scenes over everything; 3 of another track, 4x the power, moved one chunk east (over the
    right-hand chunks only); 1 more of the first track with nothing in the top-left chunk."""
    root = tmp_path_factory.mktemp("memory")
    items = make_tiny_region(root)
    s1 = items["sentinel-1-rtc"]
    east = [_copy(it, root, "east", dx=CHUNK * RES, scale=4.0, track=("descending", 2)) for it in s1]
    holed = _copy(s1[0], root, "holed", nodata_block=True)
    history = [*s1, *east, holed]
    return RunInputs(s2=items["sentinel-2-l2a"], s1=s1, s1_history=history, dem=items["cop-dem-glo-30"])


def test_a_chunks_sar_stack_holds_only_the_scenes_with_a_value_in_it(region, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Top-left chunk: the 3 window scenes (the east copies miss it, the holed scene has only
    nodata there); bottom-left: those and the holed scene (4); right-hand chunks: all 7. The
    whole-grid stack gave every chunk all 7 scenes (7 layers of NaN-padded memory each)."""
    depths: list[int] = []
    kernel = sar.align_tracks_kernel

    def spy(block: np.ndarray, groups: np.ndarray) -> np.ndarray:
        depths.append(block.shape[0])
        return kernel(block, groups)

    monkeypatch.setattr(sar, "align_tracks_kernel", spy)
    ds = build_cube(region, GRID, BANDS, "direct")
    ds["vv_dry"].compute(scheduler="synchronous")
    assert sorted(depths) == [3, 4, 7, 7]


def test_direct_sar_layers_equal_the_stackstac_stacks_bit_for_bit(region) -> None:  # type: ignore[no-untyped-def]
    """Tolerance: none. The stackstac reader builds the (time, y, x) history of all 7 scenes
    and reduces it with dask; the direct reader reduces each chunk's own scenes in one task."""
    direct = build_cube(region, GRID, BANDS, "direct")[list(S1_VARS)].compute(scheduler="synchronous")
    stacked = build_cube(region, GRID, BANDS, "stackstac")[list(S1_VARS)].compute(scheduler="synchronous")
    for name in S1_VARS:
        a, b = direct[name].values, stacked[name].values
        assert a.dtype == b.dtype == np.float32, name
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (name, np.nanmax(np.abs(a - b)))
    assert all(np.isfinite(direct[name].values).all() for name in S1_VARS)  # every chunk has scenes


def test_sar_references_by_hand_where_one_track_covers_the_chunk(region) -> None:  # type: ignore[no-untyped-def]
    """Top-left chunk: only the 3 window scenes (one track), so the references are plain
    percentiles of their dB values (numpy's, float32 tolerance)."""
    ds = build_cube(region, GRID, BANDS, "direct")[list(S1_VARS)].compute(scheduler="synchronous")
    db = []
    for it in region.s1:
        with rasterio.open(it.assets["vv"].href) as src:
            db.append(10 * np.log10(src.read(1)[:CHUNK, :CHUNK].astype("float64")))
    db = np.stack(db)
    np.testing.assert_allclose(ds["vv_dry"].values[:CHUNK, :CHUNK], np.percentile(db, 10, axis=0), atol=1e-4)
    np.testing.assert_allclose(ds["vv_wet"].values[:CHUNK, :CHUNK], np.percentile(db, 90, axis=0), atol=1e-4)
    np.testing.assert_allclose(ds["vv"].values[:CHUNK, :CHUNK], np.median(db, axis=0), atol=1e-4)


def test_a_thread_keeps_a_bounded_number_of_files_open(region) -> None:  # type: ignore[no-untyped-def]
    """Every open file holds memory (its VSI cache, GDAL's dataset): after reading the
    region's 35 files the thread holds at most 16, whatever the number of files read."""
    hrefs = [a.href for it in [*region.s2, *region.s1_history] for a in it.assets.values()]
    assert len(hrefs) > 16
    readers.close_files()
    try:
        for href in hrefs:
            read_chunk(SceneAsset(href=href, georef=None, bounds=None), GRID, (0, CHUNK), (0, CHUNK),
                       dtype="float32", fill_value=np.nan, resampling=Resampling.nearest)
        assert 0 < len(readers._LOCAL.files) <= 16
    finally:
        readers.close_files()


STORE_GRID = ZoneGrid(epsg=32648, x0=320000.0, y1=3309440.0, width=64, height=64, chunk=16)


def _tile_ds(tile):  # type: ignore[no-untyped-def]
    sub = STORE_GRID.subgrid(tile)
    return xr.Dataset({"a": (("y", "x"), da.zeros(sub.shape, dtype="float32", chunks=16))}, coords=grid_coords(sub))


@pytest.mark.parametrize("concurrency", [1, 2])
def test_each_tile_hands_the_freed_heap_back(tmp_path, monkeypatch, concurrency) -> None:  # type: ignore[no-untyped-def]
    """Without it the resident size climbs to the busiest tile's and the next tile's peak
    comes on top (measured: bench_cube section 2)."""
    calls: list[int] = []
    monkeypatch.setattr(store_tiles, "release_freed_memory", lambda: calls.append(1) or True)
    store = TileStore(tmp_path / "c.zarr", "fp")
    store.prepare(template(STORE_GRID, {"a": "float32"}, {"a": {"units": "1", "long_name": "a"}}), {})
    tiles = STORE_GRID.tiles(2)
    write_tiles(store, STORE_GRID, tiles, _tile_ds, concurrency=concurrency)
    assert len(calls) == len(tiles) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_reaches_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert store_tiles.release_freed_memory() is True
