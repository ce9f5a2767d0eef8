"""The one numpy-or-dask dispatch of the factor kernels (stackstac's kernel → dask → front)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["lift"]


def lift(kernel: Callable[..., np.ndarray], *arrays: Any, dtype: Any = np.float32, **params: Any) -> Any:
    """``kernel(*blocks, **params)`` over same-shaped arrays: one ``map_blocks`` task per
    chunk when any array is a dask array (the others are wrapped), else one numpy call.
    ``params`` are scalars passed to every call unchanged."""
    if any(isinstance(a, da.Array) for a in arrays):
        return da.map_blocks(kernel, *[da.asarray(a) for a in arrays], dtype=dtype, **params)
    return kernel(*[np.asarray(a) for a in arrays], **params)
