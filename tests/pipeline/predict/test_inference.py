"""Chunked, blended inference (pipeline.predict.inference) with numpy-only fake predictors.

The independent reference is one call of the fake on the whole array (the way the real
U-Net pads a whole array: reflect to a multiple of ``size_multiple``, replicate when too
small), checked against the tiled, chunked, dask and iterator paths.
"""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from pipeline.core.errors import CheckpointError, InputDataError
from pipeline.predict.inference import (
    PredictionStats,
    PredictorLike,
    axis_weights,
    chunk_windows,
    iter_chunk_predictions,
    make_plan,
    predict_chunk,
    predict_dataset,
    predict_window,
)

CH = ("a", "b", "c")


def _pad_like_unet(x: np.ndarray, sm: int) -> np.ndarray:
    """Pad (..., H, W) at the bottom/right to multiples of sm: reflect, or replicate when
    the input is too small to reflect (the rule of models.networks)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % sm, (-w) % sm
    if not (ph or pw):
        return x
    mode = "reflect" if (ph < h and pw < w) else "edge"
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)], mode=mode)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


class LocalFake:
    """sigmoid(box filter (radius r, zeros outside) of a weighted channel sum): output
    depends on inputs within r pixels only, so halo = r. ``strict`` refuses inputs that
    are not multiples of ``size_multiple`` (proves the caller pads)."""

    def __init__(self, r: int, size_multiple: int = 1, strict: bool = False, channels=CH) -> None:
        self.r = r
        self.halo = r
        self.size_multiple = size_multiple
        self.strict = strict
        self.channels = tuple(channels)
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.tiles: list[np.ndarray] = []
        self.checked: list[list[str]] = []

    def check_channels(self, names) -> None:
        self.checked.append(list(names))
        if list(names) != list(self.channels):
            raise CheckpointError(f"channels {list(names)} != {list(self.channels)}", "reorder")

    def _one(self, x: np.ndarray) -> np.ndarray:  # (C, H, W) -> (H, W), any size
        h, w = x.shape[-2:]
        x = _pad_like_unet(x.astype(np.float64), self.size_multiple)
        s = np.tensordot(np.arange(1.0, x.shape[0] + 1), x, axes=1)
        f = ndimage.uniform_filter(s, size=2 * self.r + 1, mode="constant", cval=0.0)
        return _sigmoid(self._post(f))[:h, :w]

    def _post(self, f: np.ndarray) -> np.ndarray:
        return f

    def reference(self, x: np.ndarray) -> np.ndarray:
        return self._one(np.asarray(x)).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.ndim == 4 and batch.shape[1] == len(self.channels) and batch.dtype == np.float32
        assert np.isfinite(batch).all(), "NaN reached the model"
        if self.strict:
            assert batch.shape[2] % self.size_multiple == 0 and batch.shape[3] % self.size_multiple == 0
        self.calls += 1
        self.batch_sizes.append(batch.shape[0])
        self.tiles.extend(batch)
        return np.stack([self._one(t) for t in batch]).astype(np.float32)


class PoolFake(LocalFake):
    """LocalFake followed by an s×s block average aligned to the input's origin (a
    stand-in for max-pooling): wrong wherever tiles are not aligned to multiples of s."""

    def __init__(self, r: int, s: int) -> None:
        super().__init__(r, size_multiple=s, strict=True)
        self.halo = r + s - 1

    def _post(self, f: np.ndarray) -> np.ndarray:
        s = self.size_multiple
        h, w = f.shape
        blocks = f.reshape(h // s, s, w // s, s).mean(axis=(1, 3))
        return np.repeat(np.repeat(blocks, s, 0), s, 1)


class TileMeanFake(LocalFake):
    """Each tile's output is the tile's mean of channel ``a`` (a global, non-local
    dependence within the window, like channel attention's global pooling)."""

    def __init__(self) -> None:
        super().__init__(2)

    def _one(self, x: np.ndarray) -> np.ndarray:
        return np.full(x.shape[-2:], x[0].mean(), dtype=np.float64)


def _data(h: int = 200, w: int = 173, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (len(CH), h, w)).astype(np.float32)


def _dataset(x: np.ndarray, chunk: int | None = None) -> xr.Dataset:
    h, w = x.shape[1:]
    ds = xr.Dataset(
        {c: (("y", "x"), x[i]) for i, c in enumerate(CH)},
        coords={"y": 1000.0 - 10 * np.arange(h), "x": 10.0 * np.arange(w)},
    )
    return ds.chunk({"y": chunk, "x": chunk}) if chunk else ds


def _compute(arr: xr.DataArray) -> np.ndarray:
    with dask.config.set(scheduler="threads", num_workers=2):
        return arr.values


# -- weights and plan ------------------------------------------------------------------


def test_axis_weights_hand_values():
    w = axis_weights(16, 16, 8, 2, True, True)
    # sin²(π/16), sin²(3π/16), sin²(5π/16), sin²(7π/16), worked by hand
    ramp = [0.0, 0.0, 0.0380602337, 0.3086582838, 0.6913417162, 0.9619397663]
    np.testing.assert_allclose(w[:6], ramp, atol=1e-7)
    np.testing.assert_allclose(w[6:10], 1.0)
    np.testing.assert_allclose(w[10:], ramp[::-1], atol=1e-7)
    # an edge on the array's border is not tapered
    border = axis_weights(16, 16, 8, 2, False, True)
    np.testing.assert_allclose(border[:10], 1.0)
    assert border[-1] == 0.0
    # clipped last tile of an array: only its start is interior
    last = axis_weights(5, 16, 8, 2, True, False)
    np.testing.assert_allclose(last, ramp[:5], atol=1e-7)


@pytest.mark.parametrize("n,tile,overlap,margin", [(173, 48, 12, 3), (200, 32, 8, 2), (64, 64, 16, 4), (97, 40, 16, 0)])
def test_weights_partition_of_unity(n, tile, overlap, margin):
    plan = make_plan(LocalFake(1), tile, overlap, margin)
    total = np.zeros(n)
    for o in plan.origins(n):
        w = plan.weights(int(o), n)
        total[o : o + w.size] += w
        s, e = plan.nonzero_span(int(o), n)
        assert np.all(w[s - o : e - o] > 0) and np.all(w[: s - o] == 0) and np.all(w[e - o :] == 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert plan.origins(n)[-1] + tile >= n


def test_make_plan_defaults_and_errors():
    p = make_plan(LocalFake(3), 48)
    assert (p.tile, p.overlap, p.margin, p.stride) == (48, 12, 3, 36)
    # the default enhanced U-Net: halo 224, size_multiple 16
    unet = LocalFake(224, size_multiple=16)
    p = make_plan(unet, 256)
    assert (p.tile, p.overlap, p.margin, p.size_multiple, p.halo) == (256, 64, 16, 16, 224)
    p = make_plan(LocalFake(1, size_multiple=16), 50, overlap=5)
    assert (p.tile, p.overlap, p.stride % 16) == (64, 16, 0)
    assert make_plan(LocalFake(0), 32).overlap == 0
    with pytest.raises(InputDataError, match="smaller than the tile"):
        make_plan(LocalFake(3), 32, overlap=32)
    with pytest.raises(InputDataError, match="no blending ramp"):
        make_plan(LocalFake(3), 32, overlap=12, margin=6)
    with pytest.raises(InputDataError):
        make_plan(LocalFake(3), 0)


def test_protocol_matches_fakes():
    assert isinstance(LocalFake(1), PredictorLike)


# -- seam-free: chunked == one pass over the whole array --------------------------------


@pytest.mark.parametrize("chunk", [64, 96, 128])
@pytest.mark.parametrize("tile", [32, 48, 64])
def test_chunked_equals_full_pass(chunk, tile):
    x = _data()
    fake = LocalFake(3)
    ref = fake.reference(x)
    window = predict_window(x, fake, tile=tile, overlap=12, margin=3, batch_size=5)
    np.testing.assert_allclose(window, ref, atol=1e-5, rtol=0)
    stats = PredictionStats()
    lazy = predict_dataset(_dataset(x, chunk), fake, tile=tile, overlap=12, margin=3, stats=stats)
    assert lazy.chunks == tuple(tuple(c) for c in _dataset(x, chunk)["a"].chunks)
    out = _compute(lazy)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    n_chunks = math.ceil(200 / chunk) * math.ceil(173 / chunk)
    assert stats.chunks_run == n_chunks and stats.pixels_output == 200 * 173
    assert stats.pixels_processed >= 200 * 173 and stats.model_calls > 0


@pytest.mark.parametrize("tile", [32, 48])
def test_defaults_are_exact_for_small_halo(tile):
    x = _data(150, 131, seed=1)
    fake = LocalFake(2)  # tile >= 16*halo: default margin == halo
    assert make_plan(fake, tile).margin == 2
    ref = fake.reference(x)
    got = np.empty_like(ref)
    for (sy, sx), arr in iter_chunk_predictions(_dataset(x), fake, 64, tile=tile):
        got[sy, sx] = arr
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_no_seam_at_chunk_lines():
    x = _data()
    fake = LocalFake(3)
    ref = fake.reference(x)
    out = _compute(predict_dataset(_dataset(x, 64), fake, tile=48))
    lines = np.arange(64, 200, 64)
    cols = np.arange(64, 173, 64)
    jump = lambda a: np.concatenate([np.abs(a[lines] - a[lines - 1]).ravel(),
                                     np.abs(a[:, cols] - a[:, cols - 1]).ravel()])
    assert np.max(np.abs(jump(out) - jump(ref))) < 1e-5
    # negative control: chunks predicted without their halo do show seams there
    naive = np.empty_like(ref)
    for sy, sx in chunk_windows(ref.shape, 64):
        naive[sy, sx] = fake.reference(x[:, sy, sx])
    assert np.max(np.abs(jump(naive) - jump(ref))) > 1e-3


def test_chunking_invariance_for_a_nonlocal_predictor():
    """A predictor depending on the whole tile (like global pooling) gives identical
    results for any chunking: the tile grid is global."""
    x = _data(190, 170, seed=2)
    fake = TileMeanFake()
    whole = predict_window(x, fake, tile=48, overlap=16, margin=2)
    for chunk in (50, 64, 96):
        out = _compute(predict_dataset(_dataset(x, chunk), fake, tile=48, overlap=16, margin=2))
        np.testing.assert_allclose(out, whole, atol=1e-6, rtol=0)
    part = predict_chunk(x, 37, 111, 20, 90, fake, tile=48, overlap=16, margin=2)
    np.testing.assert_allclose(part, whole[37:111, 20:90], atol=1e-6, rtol=0)


def test_overlaps_are_blended_not_cut():
    """Tile-constant predictions: across an overlap the result ramps from one tile's value
    to the next (no jump), and the array's border keeps its tile's value (no taper)."""
    h, w = 32, 80
    x = np.zeros((3, h, w), np.float32)
    x[0] = np.arange(w, dtype=np.float32)[None, :]  # tile mean of channel a = tile's mean x
    fake = TileMeanFake()
    out = predict_window(x, fake, tile=32, overlap=16, margin=2)  # stride 16
    row = out[5].astype(np.float64)
    means = [o + 15.5 for o in (0, 16, 32, 48)]
    assert row[0] == pytest.approx(means[0]) and row[-1] == pytest.approx(means[-1])
    # between tile 0 (x 0..31) and tile 1 (x 16..47): weights hand-computed from the plan
    plan = make_plan(fake, 32, 16, 2)
    w0, w1 = plan.weights(0, w), plan.weights(16, w)
    for xx in range(16, 32):
        expect = (w0[xx] * means[0] + w1[xx - 16] * means[1]) / (w0[xx] + w1[xx - 16])
        assert row[xx] == pytest.approx(expect, abs=1e-4)
    steps = np.diff(row)
    assert np.all(steps >= -1e-6) and steps.max() < 0.4 * 16  # monotone, no cut
    assert 0 < np.count_nonzero((row > means[0] + 0.01) & (row < means[1] - 0.01))


def test_batches_are_balanced():
    x = _data(80, 80)
    fake = LocalFake(2)
    stats = PredictionStats()
    out = predict_window(x, fake, tile=32, overlap=8, batch_size=8, stats=stats)  # 3 x 3 tiles
    assert fake.batch_sizes == [5, 4]  # not 8 + 1
    assert stats.tiles_run == 9 and stats.model_calls == 2 and stats.pixels_processed == 9 * 32 * 32
    np.testing.assert_allclose(out, fake.reference(x), atol=1e-5, rtol=0)


# -- alignment and padding --------------------------------------------------------------


@pytest.mark.parametrize("chunk", [64, 96])
def test_tiles_aligned_to_size_multiple(chunk):
    x = _data()
    fake = PoolFake(r=1, s=4)
    ref = fake.reference(x)
    # negative control: the predictor really depends on block alignment
    shifted = fake.reference(x[:, 1:, 1:])
    assert np.max(np.abs(shifted - ref[1:, 1:])) > 1e-3
    out = _compute(predict_dataset(_dataset(x, chunk), fake, tile=30, overlap=14))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    plan = make_plan(fake, 30, 14)  # rounded up to multiples of 4; margin = halo = 4
    assert (plan.tile, plan.overlap, plan.margin, plan.stride % 4) == (32, 16, 4, 0)


@pytest.mark.parametrize("shape", [(37, 23), (200, 173), (5, 3), (16, 70)])
def test_padding_odd_and_smaller_than_tile(shape):
    x = _data(*shape, seed=3)
    fake = LocalFake(2, size_multiple=8, strict=True)
    out = predict_window(x, fake, tile=64)
    np.testing.assert_allclose(out, fake.reference(x), atol=1e-5, rtol=0)
    assert all(t.shape[1] % 8 == 0 and t.shape[2] % 8 == 0 for t in fake.tiles)
    if max(shape) < 64:  # smaller than the tile: one padded tile, not a full 64×64 one
        assert fake.calls == 1 and fake.tiles[0].shape[1:] == tuple(-(-s // 8) * 8 for s in shape)


# -- nodata -----------------------------------------------------------------------------


def test_all_nan_chunk_is_never_sent_to_the_model():
    x = _data(128, 128, seed=4)
    x[:, 0:64, 64:128] = np.nan  # one whole chunk: all channels NaN
    fill = -999.0
    fake = LocalFake(2)
    stats = PredictionStats()
    out = _compute(predict_dataset(_dataset(x, 64), fake, tile=32, fill=fill, stats=stats))
    assert np.isnan(out[0:64, 64:128]).all()
    assert np.isfinite(np.delete(out.reshape(2, 64, 2, 64), 0, axis=0)).all()
    assert stats.chunks_skipped == 1 and stats.chunks_run == 3
    assert not any(np.all(t == fill) for t in fake.tiles), "an all-nodata tile reached the model"
    # neighbours see the fill, not NaN: reference = whole pass over the filled array
    ref = fake.reference(np.where(np.isnan(x), np.float32(fill), x))
    ref[0:64, 64:128] = np.nan
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    # the dead chunk alone costs no model call
    calls = fake.calls
    st = PredictionStats()
    alone = predict_chunk(_dataset(x), 0, 64, 64, 128, fake, tile=32, stats=st)
    assert np.isnan(alone).all() and fake.calls == calls and st.model_calls == 0 and st.chunks_skipped == 1
    # inside one window, all-nodata tiles are skipped too (and the result is unchanged)
    one = LocalFake(2)
    st = PredictionStats()
    whole = predict_window(x, one, tile=32, fill=fill, stats=st)
    np.testing.assert_allclose(whole, ref, atol=1e-5, rtol=0)
    assert st.tiles_skipped >= 4 and st.tiles_run == len(one.tiles)
    assert not any(np.all(t == fill) for t in one.tiles)


def test_nan_pixels_get_nan_and_do_not_poison_neighbours():
    x = _data(96, 80, seed=5)
    rng = np.random.default_rng(6)
    idx = rng.integers(0, [96, 80], size=(40, 2))
    chan = rng.integers(0, 3, size=40)
    x[chan, idx[:, 0], idx[:, 1]] = np.nan  # one channel missing at 40 pixels
    x[1, 10, 10] = np.inf
    fake = LocalFake(3)
    out = predict_window(x, fake, tile=32, overlap=12)
    invalid = ~np.isfinite(x).all(axis=0)
    assert np.array_equal(np.isnan(out), invalid)
    ref = fake.reference(np.where(np.isfinite(x), x, np.float32(0.0)))  # default fill 0
    np.testing.assert_allclose(out[~invalid], ref[~invalid], atol=1e-5, rtol=0)
    # a predictor's own fill_values are used when fill is not given
    fake.fill_values = (0.5, -1.0, 2.0)
    out2 = predict_window(x, fake, tile=32, overlap=12)
    filled = np.where(np.isfinite(x), x, np.asarray(fake.fill_values, np.float32)[:, None, None])
    np.testing.assert_allclose(out2[~invalid], fake.reference(filled)[~invalid], atol=1e-5, rtol=0)


# -- channels, graph, iterator ----------------------------------------------------------


def test_channel_mismatch_propagates():
    x = _data(64, 64)
    ds = _dataset(x, 32)
    fake = LocalFake(1)
    # a dataset missing a channel: its variable names are checked, the error propagates
    with pytest.raises(CheckpointError, match="reorder"):
        predict_dataset(ds.drop_vars("b"), fake)
    assert fake.checked == [["a", "c"]]
    with pytest.raises(CheckpointError):
        next(iter_chunk_predictions(ds.drop_vars("b"), fake, 32))
    # an explicit channel list is checked as given
    with pytest.raises(CheckpointError):
        predict_dataset(ds, fake, channels=["b", "a", "c"])
    assert fake.checked[-1] == ["b", "a", "c"]
    assert fake.calls == 0
    # variables in another order (Zarr keeps none) plus extras: selected by name, in the
    # predictor's order, and checked
    extra = ds.assign(quality=ds["a"] * 0)[["quality", "c", "b", "a"]]
    out = _compute(predict_dataset(extra, fake, tile=32))
    np.testing.assert_allclose(out, fake.reference(x), atol=1e-5, rtol=0)
    assert fake.checked[-1] == list(CH)
    with pytest.raises(InputDataError, match="lacks channel"):
        predict_dataset(ds, LocalFake(1, channels=("a", "b", "z")), channels=["a", "b", "z"])


def test_graph_has_one_task_per_chunk_and_one_shared_predictor():
    import rioxarray  # noqa: F401

    x = _data(130, 100)
    ds = _dataset(x, 32).rio.write_crs("EPSG:32648")
    fake = LocalFake(2)
    out = predict_dataset(ds, fake, tile=32)
    layer = dict(out.data.__dask_graph__().layers[out.data.name])
    n_chunks = math.ceil(130 / 32) * math.ceil(100 / 32)
    chunk_keys = [k for k in layer if isinstance(k, tuple) and k[0] == out.data.name]
    tile_keys = [k for k in layer if isinstance(k, tuple) and k[0] != out.data.name]
    assert len(chunk_keys) == n_chunks
    # tile 32, overlap 8: origins 0, 24, ..., 120 (6) down, 0, 24, 48, 72 (4) across, in
    # groups of 2 x 4 tiles (about one batch of 8): 3 tile tasks
    assert len(tile_keys) == 3
    assert len(layer) == n_chunks + 3 + 2  # + the predictor and the counters, once each
    assert sum(v is fake for v in layer.values()) == 1
    assert "spatial_ref" in out.coords and out.dims == ("y", "x")
    np.testing.assert_array_equal(out["x"].values, ds["x"].values)
    _compute(out)
    assert fake.calls > 0  # the caller's object ran, not a copy


def test_lazy_zarr_source_reads_windows_directly(tmp_path):
    """A dataset opened without dask: one task per chunk, one per group of tiles, plus
    three shared keys (the predictor, the counters, the reader), no source tasks, same
    result."""
    x = _data(150, 140, seed=8)
    x[:, :40, :50] = np.nan
    _dataset(x, 64).to_zarr(tmp_path / "f.zarr", mode="w", consolidated=False)
    ds = xr.open_zarr(tmp_path / "f.zarr", chunks=None, consolidated=False)
    assert ds["a"].chunks is None and not ds["a"].variable._in_memory
    fake = LocalFake(2)
    out = predict_dataset(ds, fake, 64, tile=32)
    graph = dict(out.data.__dask_graph__())
    assert len(graph) == 3 * 3 + 3 * 2 + 3  # 6 x 6 tiles (stride 24) in groups of 2 x 4
    ref = fake.reference(np.where(np.isnan(x), np.float32(0), x))
    ref[:40, :50] = np.nan
    np.testing.assert_allclose(_compute(out), ref, atol=1e-5, rtol=0)
    assert not ds["a"].variable._in_memory  # windows were read, the variable never loaded whole
    # an in-memory numpy source is not modified by the in-place NaN fill
    before = x.copy()
    predict_chunk(x, 0, 64, 0, 64, fake, tile=32)
    np.testing.assert_array_equal(np.isnan(x), np.isnan(before))


def test_iterator_windows_resume_and_sources():
    x = _data(100, 90, seed=7)
    fake = LocalFake(2)
    ds = _dataset(x)
    ref = fake.reference(x)
    wins = chunk_windows((100, 90), (40, 50))
    assert len(wins) == 3 * 2
    todo = [wins[1], wins[4]]
    got = list(iter_chunk_predictions(ds, fake, (40, 50), windows=todo, tile=32))
    assert [w for w, _ in got] == todo
    for (sy, sx), arr in got:
        np.testing.assert_allclose(arr, ref[sy, sx], atol=1e-5, rtol=0)
    # numpy and (channel, y, x) DataArray sources give the same window
    a = predict_chunk(x, 40, 80, 50, 90, fake, tile=32)
    b = predict_chunk(ds.to_array("channel"), 40, 80, 50, 90, fake, tile=32)
    np.testing.assert_allclose(a, ref[40:80, 50:90], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputDataError, match="outside"):
        predict_chunk(x, 0, 120, 0, 10, fake)


# -- each tile once: the overlap factor does not depend on the chunking -----------------

# tile 48, overlap 12 (stride 36) on 200 x 173, worked by hand: origins 0, 36, ..., 180
# down (the last one 20 rows), 0, 36, ..., 144 across (the last one 29 columns)
_GRID_TILES = 6 * 5
_GRID_PIXELS = (5 * 48 + 20) * (4 * 48 + 29)  # 260 x 221 = 57,460 for 34,600 output pixels


@pytest.mark.parametrize("chunks", [32, 64, (50, 70), 256])
def test_each_tile_runs_once_whatever_the_chunking(chunks):
    x = _data()
    fake = LocalFake(3)
    stats = PredictionStats()
    out = _compute(predict_dataset(_dataset(x), fake, chunks, tile=48, overlap=12, margin=3, stats=stats))
    np.testing.assert_allclose(out, fake.reference(x), atol=1e-5, rtol=0)
    assert stats.tiles_run == _GRID_TILES and stats.pixels_processed == _GRID_PIXELS
    assert stats.overlap_factor == pytest.approx(57460 / 34600)
    # groups of 2 x 4 tiles (batch 8): rows 0-1 and 2-3 give 8 full tiles and 2 of the
    # right edge (29 columns); rows 4-5 give 4 full + 4 bottom-edge (20 rows) tiles, and a
    # right-edge and a corner tile: one call per shape in a group
    assert stats.model_calls == 8 and sorted(fake.batch_sizes) == [1, 1, 2, 2, 4, 4, 8, 8]
    assert {t.shape[1:] for t in fake.tiles} == {(48, 48), (48, 29), (20, 48), (20, 29)}


@pytest.mark.parametrize("chunks", [32, (40, 90)])
def test_iterator_runs_each_tile_once_in_any_window_order(chunks):
    x = _data(seed=9)
    x[:, 150:, :60] = np.nan  # a nodata corner: tiles there are skipped, never run twice
    fake = LocalFake(3)
    wins = chunk_windows(x.shape[1:], chunks)
    order = np.random.default_rng(10).permutation(len(wins))
    stats = PredictionStats()
    got = list(iter_chunk_predictions(_dataset(x), fake, windows=[wins[i] for i in order], tile=48,
                                      overlap=12, margin=3, stats=stats))
    assert [w for w, _ in got] == [wins[i] for i in order]  # yielded in the order asked
    assert stats.tiles_run + stats.tiles_skipped == _GRID_TILES and stats.tiles_skipped >= 1
    assert stats.pixels_output == 200 * 173
    whole = predict_window(x, LocalFake(3), tile=48, overlap=12, margin=3)
    for (sy, sx), arr in got:  # the same bits as one pass over the whole array
        np.testing.assert_array_equal(arr, whole[sy, sx])


def test_default_plan_keeps_overlap_under_1_3():
    unet = LocalFake(224, size_multiple=16)  # the default enhanced U-Net: halo 224
    p = make_plan(unet)
    assert (p.tile, p.overlap, p.margin) == (576, 64, 16)
    assert make_plan(unet, 1024).overlap == 64  # larger tiles keep the 64 px blending band
    assert make_plan(LocalFake(3), 48).overlap == 12  # small halos: 4·halo, as before
    # a 4096-pixel axis: origins 0, 512, ..., 3584 (8 tiles, the last 512 long)
    per_axis = sum(min(p.tile, 4096 - int(o)) for o in p.origins(4096)) / 4096
    assert per_axis == 4544 / 4096 and per_axis**2 < 1.3
