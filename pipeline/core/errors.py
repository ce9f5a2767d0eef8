"""One place for slidewatch's exceptions.

Every class subclasses a built-in exception so callers can catch either the
slidewatch class or the familiar built-in. Messages name the culprit and the
fix; the CLI prints ``str(error)`` as a one-line cause and exits non-zero.
"""

from __future__ import annotations


class SlidewatchError(Exception):
    """Base class for every error slidewatch raises on purpose."""

    exit_code: int = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} Fix: {hint}")


class RegionError(SlidewatchError, ValueError):
    """Unknown region name, malformed bbox or unreadable GeoJSON."""


class TimeWindowError(SlidewatchError, ValueError):
    """Start/end dates that are malformed or inverted."""


class CatalogError(SlidewatchError, ConnectionError):
    """The STAC API could not be reached or answered with an error."""


class AccountRequiredError(CatalogError, PermissionError):
    """The catalog refuses access without an account key (retrying cannot help)."""


class EmptySearchError(SlidewatchError, LookupError):
    """A STAC search returned no items for a required collection."""


class MissingAssetError(SlidewatchError, LookupError):
    """An item lacks an asset (band) the pipeline needs."""


class NoValidDataError(SlidewatchError, ValueError):
    """Every pixel of a required layer is masked (clouds, nodata, NaN)."""


class InputDataError(SlidewatchError, ValueError):
    """Input rasters with the wrong CRS, shape, dtype or values."""


class StoreError(SlidewatchError, RuntimeError):
    """An output store is locked, unwritable, outside its root or inconsistent."""


class StoreChangedError(StoreError):
    """A store was replaced while a stage was reading it (see :mod:`pipeline.core.generation`)."""


class CheckpointError(SlidewatchError, ValueError):
    """A model checkpoint that is missing, corrupt, unsafe or incompatible."""


class RainfallError(SlidewatchError, ValueError):
    """Bad rainfall parameters or an unreadable precipitation source."""


class WatchListError(SlidewatchError, ValueError):
    """A watch list that cannot be read or has a bad entry."""

