"""The reader seam: the direct reader gives stackstac's pixels, in a small graph."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.acquire.catalog import RunInputs
from pipeline.acquire.cube import build_cube, s1_power, s2_composite
from pipeline.acquire.failures import read_failure
from pipeline.acquire.readers import READER_ENV, median_of_finite, reader_choice
from pipeline.core.errors import InputDataError
from pipeline.core.stats import nanquantile_axis0
from pipeline.plan.estimate import graph_tasks
from tests.tinyregion import BANDS, GRID, copied_item, make_tiny_region

# stackstac's own geometry code uses affine's deprecated `*` (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

#: Grids over the tiny region's files: the files' own grid, one shifted by a whole number of 10 m
#: pixels (an odd one: the 20 m bands' pixels straddle the grid's) that reaches past the files
#: (filled), and one a chunk to the south-east (partly outside).
GRIDS = {
    "own": GRID,
    "odd shift": replace(GRID, x0=GRID.x0 + 30.0, y1=GRID.y1 - 70.0),
    "partly outside": replace(GRID, x0=GRID.x0 + 640.0, y1=GRID.y1 - 640.0),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    return make_tiny_region(tmp_path_factory.mktemp("tiny"))


def _equal(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=True), (name, np.nanmax(np.abs(x.astype(float) - y)))
    np.testing.assert_array_equal(a["x"].values, b["x"].values)
    np.testing.assert_array_equal(a["y"].values, b["y"].values)


@pytest.mark.parametrize("where", sorted(GRIDS))
def test_s2_composite_direct_equals_stackstac_pixel_for_pixel(tiny, where) -> None:  # type: ignore[no-untyped-def]
    """Tolerance: none (every pixel identical, NaN where NaN): both read the same DN with
    nearest resampling and composite them with the same float32 arithmetic."""
    grid = GRIDS[where]
    direct = s2_composite(tiny["sentinel-2-l2a"], grid, BANDS, "direct").compute(scheduler="synchronous")
    stack = s2_composite(tiny["sentinel-2-l2a"], grid, BANDS, "stackstac").compute(scheduler="synchronous")
    _equal(direct, stack)
    assert np.isfinite(direct["B04"].values).any()
    if where == "partly outside":
        assert np.isnan(direct["B04"].values[-64:, -64:]).all() and (direct["s2_valid_count"].values[-64:, -64:] == 0).all()


def test_off_lattice_scene_goes_through_the_warper_as_in_stackstac(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A scene whose files sit 3.7 m / 6.2 m off the grid's lattice cannot be pasted: the direct
    reader warps it exactly as stackstac does (same GDAL warper set-up): identical pixels."""
    s2 = [*tiny["sentinel-2-l2a"], copied_item(tiny["sentinel-2-l2a"][1], tmp_path, "moved", dx=3.7, dy=-6.2)]
    direct = s2_composite(s2, GRID, BANDS, "direct").compute(scheduler="synchronous")
    stack = s2_composite(s2, GRID, BANDS, "stackstac").compute(scheduler="synchronous")
    _equal(direct, stack)
    assert direct["s2_valid_count"].values.max() == 4  # the moved scene counts


@pytest.mark.parametrize("where", ["own", "odd shift"])
def test_s1_stack_direct_equals_stackstac(tiny, where) -> None:  # type: ignore[no-untyped-def]
    """Bilinear onto a grid with the files' pixel size and a whole-pixel offset is the identity:
    the direct reader pastes, stackstac warps; the same values (tolerance: none)."""
    grid = GRIDS[where]
    s1 = tiny["sentinel-1-rtc"]
    a = s1_power(s1, "vv", grid, "sentinel-1-rtc", reader="direct").compute(scheduler="synchronous")
    b = s1_power(s1, "vv", grid, "sentinel-1-rtc", reader="stackstac").compute(scheduler="synchronous")
    assert list(a["id"].values) == list(b["id"].values)
    assert np.array_equal(a.values, b.values, equal_nan=True)


def test_direct_cube_graph_has_few_tasks_per_chunk(tiny) -> None:  # type: ignore[no-untyped-def]
    """Structure, not time: the S2 composite is one read task per chunk plus one slice per
    variable and the count's cast; the whole cube stays under 30 tasks per chunk (stackstac's
    graph had about 99)."""
    nchunks = GRID.chunk_shape[0] * GRID.chunk_shape[1]
    s2 = s2_composite(tiny["sentinel-2-l2a"], GRID, BANDS, "direct")
    assert graph_tasks(s2) == nchunks * (1 + len(BANDS) + 1 + 1)
    inputs = RunInputs(s2=tiny["sentinel-2-l2a"], s1=tiny["sentinel-1-rtc"], s1_history=tiny["sentinel-1-rtc"],
                       dem=tiny["cop-dem-glo-30"])
    assert graph_tasks(build_cube(inputs, GRID, BANDS, "direct")) <= 30 * nchunks


def test_reader_choice_defaults_to_direct_and_names_a_bad_value() -> None:
    assert reader_choice({}) == "direct"
    assert reader_choice({READER_ENV: " StackStac "}) == "stackstac"
    with pytest.raises(InputDataError, match=f"{READER_ENV}='gdal'.*direct, stackstac"):
        reader_choice({READER_ENV: "gdal"})


def test_median_of_finite_equals_nanquantile() -> None:
    rng = np.random.default_rng(11)
    for n in [1, 2, 3, 4, 5, 8, 13, 16, 17, 30]:
        a = rng.normal(size=(n, 33, 17)).astype("float32")
        a[rng.random(a.shape) < 0.35] = np.nan
        expected = nanquantile_axis0(a, 0.5)
        got = median_of_finite(np.where(np.isnan(a), np.float32(np.inf), a))
        assert np.array_equal(got, expected, equal_nan=True), n


def test_a_missing_file_fails_the_read_with_its_url(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Worded as stackstac words it (the retry logic parses the URL); never silent nodata."""
    item = tiny["sentinel-2-l2a"][0].clone()
    missing = tmp_path / "gone" / "B04.tif"
    item.assets["B04"].href = str(missing)
    with pytest.raises(RuntimeError, match="Error opening") as info:
        s2_composite([item], GRID, BANDS, "direct").compute(scheduler="synchronous")
    assert str(missing) in str(info.value)
    failure = read_failure(info.value, probe=False)
    assert failure is None or str(missing) in failure.described
