"""Generations of finished stores: a fresh id each time a store is finished, so that a
reader can tell that the store it reads tile by tile is still the one it started with.

Foundation: imports only :mod:`pipeline.core.errors`. Written by
:meth:`pipeline.store.tiles.TileStore.finalize`; checked by the stages that read one store
to write another (LSI from the cube, risk from the LSI) and by the exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zarr

from pipeline.core.errors import StoreChangedError

__all__ = ["GENERATION_ATTR", "GenerationGuard", "StoreChangedError", "store_generation"]

#: A fresh id given to a store each time it is finished (see :class:`GenerationGuard`).
GENERATION_ATTR = "slidewatch_generation"


def store_generation(path: str | Path) -> str | None:
    """The ``slidewatch_generation`` of the finished store at ``path`` (None when it has none,
    e.g. a store written before generations existed); raises :class:`StoreChangedError`
    when no store can be read there."""
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
        value = attrs.get(GENERATION_ATTR)
    except Exception as exc:  # missing, half-replaced or unreadable
        raise StoreChangedError(
            f"{path} could not be read while this run was using it ({type(exc).__name__}).",
            "another process removed or replaced it; rerun the same command (finished tiles are kept).",
        ) from None
    return None if value is None else str(value)


@dataclass
class GenerationGuard:
    """What a reader of a store started with; :meth:`check` after reading each tile."""

    path: Path
    generation: str | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.generation = store_generation(self.path)

    def check(self) -> None:
        """Raise :class:`StoreChangedError` when the store is no longer the one first read."""
        now = store_generation(self.path)
        if now != self.generation:
            raise StoreChangedError(
                f"{self.path} was replaced while this run was reading it (generation "
                f"{self.generation} became {now}): another run or process rewrote it, so tiles "
                "read from now on would come from other inputs.",
                "rerun the same command once the other writer is done; the tiles written from "
                "the first generation are kept only if the inputs are unchanged.",
            )
