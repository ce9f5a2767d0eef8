"""Multi-band inference and the flip ensemble (pipeline.predict.uncertainty), numpy-only.

Fakes are plain numpy (no torch); data are seeded. The chunk-invariance checks follow
``test_inference.py``: a chunked run must equal one pass over the whole array.
"""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from pipeline.core.errors import CheckpointError, InputDataError
from pipeline.predict.inference import (
    PredictionStats,
    PredictorLike,
    iter_chunk_predictions,
    predict_chunk,
    predict_dataset,
    predict_window,
)
from pipeline.predict.uncertainty import FlipEnsemble

CH = ("a", "b", "c")


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


class Fake:
    """Base numpy fake: per-tile ``_one`` (C, H, W) -> (H, W); records its calls."""

    halo = 0
    size_multiple = 1

    def __init__(self, channels=CH) -> None:
        self.channels = tuple(channels)
        self.calls = 0
        self.checked: list[list[str]] = []
        self.batches: list[np.ndarray] = []

    def check_channels(self, names) -> None:
        self.checked.append(list(names))
        if list(names) != list(self.channels):
            raise CheckpointError(f"channels {list(names)} != {list(self.channels)}", "reorder")

    def _one(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.ndim == 4 and batch.dtype == np.float32 and np.isfinite(batch).all()
        self.calls += 1
        self.batches.append(batch.copy())
        return np.stack([self._one(t.astype(np.float64)) for t in batch]).astype(np.float32)


class PointFake(Fake):
    """sigmoid of a weighted channel sum, pixel by pixel: exactly flip-equivariant."""

    def _one(self, x):
        return _sigmoid(np.tensordot([0.7, -0.4, 0.2], x, axes=1))


class BoxFake(Fake):
    """sigmoid of a centred box filter (radius 2): flip-equivariant up to rounding."""

    halo = 2

    def _one(self, x):
        s = np.tensordot([1.0, 2.0, 3.0], x, axes=1)
        return _sigmoid(ndimage.uniform_filter(s, size=5, mode="constant", cval=0.0))


class DiffFake(Fake):
    """0.5 + 0.1·(backward difference of channel ``a`` along x), 0.5 in the first column:
    depends on orientation (a flip in x changes the sign of the difference)."""

    halo = 1

    def _one(self, x):
        d = np.zeros(x.shape[1:])
        d[:, 1:] = x[0, :, 1:] - x[0, :, :-1]
        return 0.5 + 0.1 * d


class SkewFake(Fake):
    """sigmoid of an asymmetric 5×5 correlation (zeros outside): local (halo 2) and
    orientation-dependent in both x and y."""

    halo = 2

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(11)
        self.kernel = rng.normal(0.0, 0.5, (5, 5))

    def _one(self, x):
        s = np.tensordot([1.0, -0.5, 0.25], x, axes=1)
        return _sigmoid(ndimage.correlate(s, self.kernel, mode="constant", cval=0.0))


class TwoBandFake(PointFake):
    """A K=2 predictor that declares its bands: (p, 1 - p)."""

    output_bands = ("p", "q")

    def __call__(self, batch):
        p = super().__call__(batch)
        return np.stack([p, 1.0 - p], axis=1)


def _data(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (len(CH), h, w)).astype(np.float32)


def _dataset(x: np.ndarray, chunk: int | None = None) -> xr.Dataset:
    h, w = x.shape[1:]
    ds = xr.Dataset({c: (("y", "x"), x[i]) for i, c in enumerate(CH)},
                    coords={"y": 1000.0 - 10 * np.arange(h), "x": 10.0 * np.arange(w)})
    return ds.chunk({"y": chunk, "x": chunk}) if chunk else ds


def _iterate(ds, predictor, chunks, **kw) -> np.ndarray:
    h, w = ds.sizes["y"], ds.sizes["x"]
    out = np.full((2, h, w), -1.0, dtype=np.float32)
    for (sy, sx), arr in iter_chunk_predictions(ds, predictor, chunks, **kw):
        assert arr.shape == (2, sy.stop - sy.start, sx.stop - sx.start) and arr.dtype == np.float32
        out[:, sy, sx] = arr
    return out


# -- (a) an orientation-invariant predictor: spread 0, mean = the plain prediction ------


def test_invariant_predictor_has_zero_spread_and_plain_mean():
    x = _data(90, 70, seed=1)
    fake = PointFake()
    plain = predict_window(x, fake, tile=32, overlap=8)
    both = predict_window(x, FlipEnsemble(fake), tile=32, overlap=8)
    assert plain.shape == (90, 70) and both.shape == (2, 90, 70) and both.dtype == np.float32
    np.testing.assert_array_equal(both[0], plain)
    np.testing.assert_array_equal(both[1], 0.0)
    # a centred box filter is flip-equivariant up to rounding
    box = BoxFake()
    plain = predict_window(x, box, tile=32, overlap=8)
    both = predict_window(x, FlipEnsemble(box), tile=32, overlap=8)
    np.testing.assert_allclose(both[0], plain, atol=1e-6, rtol=0)
    assert np.abs(both[1]).max() < 1e-6


# -- (b) an orientation-dependent predictor: the spread worked by hand -----------------


def test_orientation_dependent_spread_hand_values():
    # channel a: the row [0, 1, 3] (twice); differences along x:
    #   identity          [0, 1, 2]   -> p = [.5, .6, .7]
    #   flip x: [3, 1, 0] -> [0, -2, -1] -> [.5, .3, .4], un-flipped [.4, .3, .5]
    #   flip y = identity, flip x+y = flip x
    # per pixel {.5,.4,.5,.4}, {.6,.3,.6,.3}, {.7,.5,.7,.5}:
    #   mean [.45, .45, .6], population std [.05, .15, .1]
    x = np.zeros((1, 3, 2, 3), dtype=np.float32)
    x[0, 0] = [[0, 1, 3], [0, 1, 3]]
    fake = DiffFake()
    ens = FlipEnsemble(fake)
    out = ens(x)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [[0.45, 0.45, 0.6]] * 2, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [[0.05, 0.15, 0.1]] * 2, atol=1e-6)
    assert fake.calls == 4  # four forward passes
    # the inputs it saw: the batch and its three flips
    seen = sorted(tuple(b[0, 0].ravel()) for b in fake.batches)
    want = sorted(tuple(v.ravel()) for v in (x[0, 0], x[0, 0][:, ::-1], x[0, 0][::-1], x[0, 0][::-1, ::-1]))
    assert seen == want
    # the same numbers through the tiled path (one tile covers the array)
    win = predict_window(x[0], ens, tile=16)
    np.testing.assert_allclose(win, out[0], atol=1e-6)


def test_spread_is_the_population_std_of_the_four_passes():
    x = np.stack([_data(12, 16, seed=3), _data(12, 16, seed=30)])  # a batch of two
    fake = SkewFake()
    out = FlipEnsemble(fake)(x)
    assert out.shape == (2, 2, 12, 16)
    p = np.stack([
        fake._one(x[0].astype(np.float64)),
        fake._one(x[0, :, :, ::-1].astype(np.float64))[:, ::-1],
        fake._one(x[0, :, ::-1].astype(np.float64))[::-1],
        fake._one(x[0, :, ::-1, ::-1].astype(np.float64))[::-1, ::-1],
    ]).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(out[0, 0], p.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(out[0, 1], p.std(axis=0, ddof=0), atol=1e-6)
    assert out[:, 1].max() > 1e-2  # the skewed kernel really depends on orientation


# -- (c) chunk invariance of mean and spread -------------------------------------------


def test_flip_ensemble_is_chunk_invariant():
    x = _data(150, 131, seed=4)
    x[:, 10:30, 100:131] = np.nan  # a nodata corner: NaN in both bands
    x[1, 70, 40] = np.nan          # one channel missing at one pixel
    ds = _dataset(x)
    ens = FlipEnsemble(SkewFake())
    kw = {"tile": 32, "overlap": 12, "margin": 2}
    a = _iterate(ds, ens, 64, **kw)
    b = _iterate(ds, ens, (40, 50), **kw)
    np.testing.assert_array_equal(a, b)
    whole = predict_window(x, ens, **kw)
    np.testing.assert_array_equal(a, whole)
    invalid = ~np.isfinite(x).all(axis=0)
    assert np.array_equal(np.isnan(a[0]), invalid) and np.array_equal(np.isnan(a[1]), invalid)
    assert np.nanmax(a[1]) > 1e-2
    # the dask graph gives the same (band, y, x) array
    lazy = predict_dataset(_dataset(x, 48), ens, **kw)
    assert lazy.dims == ("band", "y", "x") and list(lazy["band"].values) == ["probability", "spread"]
    assert lazy.shape == (2, 150, 131) and lazy.chunks[0] == (2,)
    with dask.config.set(scheduler="threads", num_workers=2):
        np.testing.assert_array_equal(lazy.values, a)


# -- the K-band API --------------------------------------------------------------------


def test_declared_bands_are_blended_like_the_probability():
    x = _data(100, 90, seed=5)
    x[:, 0:40, 40:80] = np.nan  # one whole chunk of 40×40 at (0, 40)
    fake = TwoBandFake()
    plain = predict_window(x, PointFake(), tile=32, overlap=8)
    two = predict_window(x, fake, tile=32, overlap=8)
    assert two.shape == (2, 100, 90)
    np.testing.assert_array_equal(two[0], plain)
    np.testing.assert_allclose(two[1], 1.0 - plain, atol=1e-6)
    # an all-nodata window: (K, h, w) NaN without a model call
    calls, st = fake.calls, PredictionStats()
    dead = predict_chunk(x, 0, 40, 40, 80, fake, tile=32, stats=st)
    assert dead.shape == (2, 40, 40) and np.isnan(dead).all() and fake.calls == calls
    assert st.chunks_skipped == 1
    got = {(sy.start, sx.start): arr
           for (sy, sx), arr in iter_chunk_predictions(_dataset(x), fake, 40, tile=32, overlap=8)}
    assert got[(0, 40)].shape == (2, 40, 40) and np.isnan(got[(0, 40)]).all()
    for (y, x0), arr in got.items():
        np.testing.assert_array_equal(arr, two[:, y : y + 40, x0 : x0 + 40])
    lazy = predict_dataset(_dataset(x, 40), fake, tile=32, overlap=8)
    assert list(lazy["band"].values) == ["p", "q"]
    with dask.config.set(scheduler="threads", num_workers=2):
        np.testing.assert_array_equal(lazy.values, two)


def test_one_declared_band_keeps_its_axis():
    class OneBand(PointFake):
        output_bands = ("probability",)

        def __call__(self, batch):
            return super().__call__(batch)[:, None]

    x = _data(40, 30, seed=6)
    out = predict_window(x, OneBand(), tile=32, overlap=8)
    assert out.shape == (1, 40, 30)
    np.testing.assert_array_equal(out[0], predict_window(x, PointFake(), tile=32, overlap=8))


def test_band_shape_mismatch_is_refused():
    class Undeclared(PointFake):  # returns (N, 2, H, W) without declaring its bands
        def __call__(self, batch):
            p = super().__call__(batch)
            return np.stack([p, p], axis=1)

    class Liar(TwoBandFake):  # declares two bands, returns three
        def __call__(self, batch):
            p = PointFake.__call__(self, batch)
            return np.stack([p, p, p], axis=1)

    x = _data(20, 20, seed=7)
    with pytest.raises(InputDataError, match="output_bands"):
        predict_window(x, Undeclared(), tile=32)
    with pytest.raises(InputDataError, match=r"\(N, 2, H, W\)"):
        predict_window(x, Liar(), tile=32)


# -- the wrapper -----------------------------------------------------------------------


def test_flip_ensemble_delegates_attributes():
    fake = SkewFake()
    fake.size_multiple = 4
    fake.fill_values = (0.5, -1.0, 2.0)
    fake.checkpoint_sha256 = "ab" * 32
    fake.metadata = {"architecture": "fake"}
    ens = FlipEnsemble(fake)
    assert isinstance(ens, PredictorLike)
    assert ens.channels == CH and ens.halo == 2 and ens.size_multiple == 4
    assert ens.fill_values == (0.5, -1.0, 2.0) and ens.checkpoint_sha256 == "ab" * 32
    assert ens.metadata == {"architecture": "fake"} and ens.predictor is fake
    assert ens.output_bands == ("probability", "spread") and ens.augmentation == "flip4"
    assert not hasattr(fake, "augmentation")
    ens.check_channels(list(CH))
    with pytest.raises(CheckpointError):
        ens.check_channels(["c", "b", "a"])
    with pytest.raises(AttributeError):
        ens.no_such_attribute  # noqa: B018
    assert "FlipEnsemble" in repr(ens)
    copy = pickle.loads(pickle.dumps(ens))
    x = _data(8, 8, seed=8)[None]
    np.testing.assert_array_equal(copy(x), ens(x))
    # fill values reach the tiles through the wrapper
    xs = _data(24, 24, seed=9)
    xs[:, 5, 5] = np.nan
    predict_window(xs, ens, tile=32)
    assert len(fake.batches) == 4 + 4  # the pickled copy ran its own fake
    assert any(np.array_equal(b[0, :, 5, 5], [0.5, -1.0, 2.0]) for b in fake.batches[-4:])


def test_flip_ensemble_refuses_multiband_predictors_and_bad_batches():
    with pytest.raises(InputDataError, match="one band"):
        FlipEnsemble(TwoBandFake())
    with pytest.raises(InputDataError, match=r"\(N, C, H, W\)"):
        FlipEnsemble(PointFake())(np.zeros((3, 4, 4), np.float32))
