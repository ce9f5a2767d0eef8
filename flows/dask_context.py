"""Where a run's dask graphs execute.

Default: the threaded scheduler of this process. When a distributed ``Client`` is active
(``slidewatch run --dask-address`` or ``SLIDEWATCH_DASK_ADDRESS``, or a LocalCluster the
caller started), graphs go to it instead. Every stage computes inside
:func:`compute_context`, so the choice is made in this one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask


def active_client() -> object | None:
    """The current ``distributed.Client``, or ``None``."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


@contextlib.contextmanager
def compute_context() -> Iterator[None]:
    """Compute on the active distributed client if there is one, else on local threads."""
    if active_client() is not None:
        yield
        return
    with dask.config.set(scheduler="threads"):
        yield
