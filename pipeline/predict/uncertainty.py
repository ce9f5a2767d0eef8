"""Per-pixel uncertainty: a flip ensemble (test-time augmentation) of any predictor.

:class:`FlipEnsemble` wraps a single-band predictor (``(N, C, H, W)`` in, ``(N, H, W)``
probabilities out) and returns two bands per pixel, ``(N, 2, H, W)`` float32:

* band 0, ``probability``: the mean of the wrapped predictor's probabilities over the
  four flips of each tile (identity, flip x, flip y, flip x and y; each output is flipped
  back before averaging);
* band 1, ``spread``: their population standard deviation (``ddof=0``) over those four
  passes, in probability units.

**What the spread means.** Landslide susceptibility has no preferred orientation in the
image grid (a slope facing east is no likelier to fail because it is drawn on the right),
so a well-trained model should give the same answer for a tile and its mirror images.
The spread measures how much it does not: ``0`` means the four passes agree; a large
spread means the prediction at that pixel hinges on the orientation of the input, that
is, the model is guessing rather than recognising a pattern it has learnt. It is a cheap
proxy for *epistemic* (model) uncertainty, not a calibrated error bar: it is not the
probability's standard error, it is blind to doubts the model holds in every orientation
(it misses errors shared by all four passes), and a model trained with flip
augmentation shows smaller spreads overall. Its upper bound is ``0.5`` (two passes at 0,
two at 1). Use it to rank or mask pixels ("confident" vs "guessed"), compared within one
model's outputs.

**Cost.** Four forward passes per tile (about 4× the model time of the plain predictor;
memory per call is unchanged: the passes run one after another, each on the caller's
batch). Mean and spread add a few float64 array operations per tile.

**Exactness.** Flips keep the pixel grid: a tile padded to a multiple of the network's
``size_multiple`` (the inference tiles always are) keeps its pooling cells under any flip,
and a flipped pixel sees exactly its original neighbourhood mirrored, so the wrapper's
receptive field, ``halo`` and ``size_multiple`` are the wrapped predictor's. The result
for a tile depends only on that tile, so the seam-free chunked inference of
:mod:`pipeline.predict.inference` stays chunk-invariant for both bands. (Square tiles
would also allow the 90° rotations; they are left out to keep the cost at four passes.)

Use it anywhere a predictor is accepted::

    ens = FlipEnsemble(predictor)
    for (sy, sx), bands in iter_chunk_predictions(ds, ens, windows=pending, tile=256):
        mean, spread = bands        # each (h, w) float32, NaN where an input is missing
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import InputDataError

__all__ = ["FLIPS", "FlipEnsemble"]

#: The four flips, as the array axes of a ``(..., H, W)`` block they reverse (in the
#: order of the passes: identity, flip x, flip y, flip x and y).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def _flip(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``a`` reversed along ``axes`` as a C-contiguous copy (torch refuses negative strides)."""
    return np.ascontiguousarray(np.flip(a, axes)) if axes else a


class FlipEnsemble:
    """A predictor's mean probability and flip spread, ``(N, 2, H, W)`` float32.

    Args:
        predictor: any single-band :class:`~pipeline.predict.inference.PredictorLike`
            (``(N, H, W)`` out; ``(N, 1, H, W)`` is accepted too). Its attributes
            (``channels``, ``halo``, ``size_multiple``, ``fill_values``,
            ``checkpoint_sha256``, ``metadata``, ``check_channels`` ...) are read through
            this object, so it stands in for the predictor anywhere.

    Attributes:
        output_bands: ``("probability", "spread")``: the inference drivers return
            ``(2, H, W)`` windows (band 0 the mean, band 1 the spread; see the module
            docstring for their meaning).
        passes: forward passes per batch (4).
        augmentation: ``"flip4"``, a tag for provenance and fingerprints (the delegated
            ``checkpoint_sha256`` alone does not tell a flip run from a plain one).
        predictor: the wrapped predictor.

    Raises :class:`~pipeline.core.errors.InputDataError` for a predictor declaring more
    than one output band, and (when called) for a batch that is not ``(N, C, H, W)`` or a
    wrapped output of the wrong shape.
    """

    output_bands: tuple[str, ...] = ("probability", "spread")
    passes: int = len(FLIPS)
    augmentation: str = "flip4"

    def __init__(self, predictor: Any) -> None:
        bands = getattr(predictor, "output_bands", None)
        if bands is not None and len(tuple(bands)) != 1:
            raise InputDataError(
                f"FlipEnsemble needs a predictor with one band; {predictor!r} declares "
                f"output_bands={list(bands)}.",
                "wrap the plain probability predictor (e.g. models.predictor.Predictor).",
            )
        self.predictor = predictor

    def __getattr__(self, name: str) -> Any:
        # only called for names not found on the wrapper; look in __dict__ directly so
        # that copying or unpickling (no attributes yet) does not recurse
        try:
            inner = self.__dict__["predictor"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(inner, name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Mean and spread ``(N, 2, H, W)`` float32 for raw inputs ``(N, C, H, W)``."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise InputDataError(
                f"FlipEnsemble expects a batch (N, C, H, W), got shape {batch.shape}.",
                "pass raw factor chips shaped (N, C, H, W).",
            )
        n, _, h, w = batch.shape
        runs = np.empty((len(FLIPS), n, h, w), dtype=np.float32)
        # the flipped passes first (on copies), the caller's batch itself last, so a
        # predictor that scribbles on its input cannot change the other passes
        for i in (1, 2, 3, 0):
            axes = FLIPS[i]
            pred = np.asarray(self.predictor(_flip(batch, axes)))
            if pred.ndim == 4 and pred.shape[1] == 1:
                pred = pred[:, 0]
            if pred.shape != (n, h, w):
                raise InputDataError(
                    f"predictor {self.predictor!r} returned shape {pred.shape} for a batch "
                    f"{batch.shape}.",
                    "FlipEnsemble wraps predictors returning (N, H, W) probabilities.",
                )
            runs[i] = _flip(pred, axes)
        out = np.empty((n, 2, h, w), dtype=np.float32)
        out[:, 0] = runs.mean(axis=0, dtype=np.float64)
        out[:, 1] = runs.std(axis=0, dtype=np.float64)  # population std (ddof=0)
        return out

    def __repr__(self) -> str:
        return f"FlipEnsemble({self.predictor!r})"
