"""Frozen, documented configuration and plan records (foundation: imports only the errors).

These are plain dataclasses: hashable, picklable and tokenizable by dask, so they can
travel to workers unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import numpy as np

from pipeline.core.collections import S2_CUBE_BANDS, SAR_MODES
from pipeline.core.errors import SlidewatchError, TimeWindowError

#: Default pixel size of every grid, metres.
DEFAULT_RESOLUTION = 10.0
#: Default chunk edge, pixels. Zarr chunks, dask chunks and write tiles align on it.
DEFAULT_CHUNK = 512

#: Chunks per write tile edge: a write tile is (CHUNKS_PER_TILE × chunk)² pixels, the unit
#: every stage writes, records in its ledger and resumes.
CHUNKS_PER_TILE = 2
#: Edge (pixels) of the tiles the U-Net sees in the risk stage (a model input, not a write tile).
#: 576 = 9 × 64, the smallest multiple of 64 for which the default 64 px overlap keeps the
#: pixels the model sees per output pixel, (tile / (tile - 64))² = 1.27, under 1.3 (256 px
#: tiles: 1.78); one batch of 8 tiles is 2.7 Mpx. See docs/inference.md.
INFERENCE_TILE = 576
#: Most overlap (pixels) ``make_plan`` picks by default between neighbouring tiles (the
#: blending band: ``4·halo`` capped at ``tile // 4`` and at this), so larger tiles cost less.
INFERENCE_OVERLAP = 64


def _parse_day(text: str | date, what: str) -> date:
    if isinstance(text, date):
        return text
    try:
        return datetime.strptime(str(text), "%Y-%m-%d").date()
    except ValueError:
        raise TimeWindowError(f"{what} {text!r} is not a date.", "use YYYY-MM-DD, e.g. 2024-07-01.") from None


def check_max_cloud(value: float, name: str = "--max-cloud") -> float:
    """``value`` when it is a cloud-cover percentage in (0, 100]; TimeWindowError otherwise."""
    if not 0 < value <= 100:
        raise TimeWindowError(f"{name} {value} is outside (0, 100].", "give a percentage such as 60.")
    return value


@dataclass(frozen=True)
class TimeWindow:
    """An inclusive date window ``[start, end]``."""

    start: date
    end: date

    @classmethod
    def parse(cls, start: str | date, end: str | date, names: tuple[str, str] = ("--start", "--end")) -> TimeWindow:
        """The window of two days given as ``YYYY-MM-DD`` (or ``date``); ``names`` are the
        options the user wrote them in, for the message of :class:`TimeWindowError`."""
        s, e = _parse_day(start, names[0]), _parse_day(end, names[1])
        if e < s:
            raise TimeWindowError(f"{names[1]} {e} is before {names[0]} {s}.", "swap them.")
        return cls(s, e)

    def stac_datetime(self) -> str:
        """The STAC API ``datetime`` parameter for the whole days of the window."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59Z"

    def days(self) -> int:
        return (self.end - self.start).days + 1


@dataclass(frozen=True)
class ZoneGrid:
    """A north-up grid in one UTM zone whose extent is a whole number of chunks.

    ``x0``/``y1`` are the outer (left/top) edges in metres; pixel ``(row, col)`` has its
    centre at ``(x0 + (col + 0.5) * res, y1 - (row + 0.5) * res)``.
    """

    epsg: int
    x0: float
    y1: float
    width: int
    height: int
    resolution: float = DEFAULT_RESOLUTION
    chunk: int = DEFAULT_CHUNK
    #: The part of the region (lon/lat) this zone grid covers.
    lonlat_bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) outer edges in the grid CRS."""
        return (
            self.x0,
            self.y1 - self.height * self.resolution,
            self.x0 + self.width * self.resolution,
            self.y1,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """Affine coefficients (a, b, c, d, e, f) as rasterio/GDAL order them."""
        return (self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y1)

    def pixel_centres(self, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) pixel-centre coordinates in metres (float64), for the whole grid or the pixel
        ranges ``rows`` and ``cols`` (start, stop)."""
        r0, r1 = rows or (0, self.height)
        c0, c1 = cols or (0, self.width)
        y = self.y1 - (np.arange(r0, r1, dtype="float64") + 0.5) * self.resolution
        x = self.x0 + (np.arange(c0, c1, dtype="float64") + 0.5) * self.resolution
        return y, x

    @property
    def chunk_shape(self) -> tuple[int, int]:
        """Number of chunks along (y, x)."""
        return (-(-self.height // self.chunk), -(-self.width // self.chunk))

    @property
    def zone_name(self) -> str:
        """Like ``utm48n`` for EPSG:32648 and ``utm19s`` for EPSG:32719."""
        hemi = "n" if self.epsg < 32700 else "s"
        return f"utm{self.epsg % 100:02d}{hemi}"

    def tiles(self, chunks_per_tile: int = 1) -> list[Tile]:
        """Write tiles: blocks of ``chunks_per_tile``² chunks, row-major."""
        step = self.chunk * chunks_per_tile
        out: list[Tile] = []
        for r0 in range(0, self.height, step):
            for c0 in range(0, self.width, step):
                out.append(Tile(r0, min(r0 + step, self.height), c0, min(c0 + step, self.width)))
        return out

    def subgrid(self, tile: Tile) -> ZoneGrid:
        """The grid of one tile (same CRS, resolution and chunking)."""
        return ZoneGrid(
            epsg=self.epsg,
            x0=self.x0 + tile.col0 * self.resolution,
            y1=self.y1 - tile.row0 * self.resolution,
            width=tile.col1 - tile.col0,
            height=tile.row1 - tile.row0,
            resolution=self.resolution,
            chunk=self.chunk,
            lonlat_bounds=self.lonlat_bounds,
        )


@dataclass(frozen=True)
class Tile:
    """A window of rows ``[row0, row1)`` and columns ``[col0, col1)`` of a grid."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def key(self) -> str:
        return f"r{self.row0}_c{self.col0}"


@dataclass(frozen=True)
class CubeConfig:
    """What goes into a cube, beyond the grid and the time window."""

    #: Largest ``eo:cloud_cover`` (percent) of a Sentinel-2 scene to consider.
    max_cloud_cover: float = 60.0
    s2_bands: tuple[str, ...] = S2_CUBE_BANDS
    #: With ``sar="auto"``: use ``sentinel-1-grd`` (uncalibrated, documented in README) when
    #: no RTC item is found.
    s1_grd_fallback: bool = True
    #: Days before the window's start searched for the SAR reference history (SMI dry/wet).
    s1_reference_days: int = 180
    #: Most items one search may match (per collection and zone); a search that matches more
    #: is refused (``--max-items`` raises it), never cut short.
    max_items: int = 2000
    #: Which Sentinel-1 collection (``--sar``): ``auto`` (RTC when Planetary Computer's token
    #: endpoint grants it or, on other STAC APIs, when RTC items exist; else GRD, with a note),
    #: ``rtc``, ``grd`` or ``none`` (no SAR: soil moisture from the NDMI proxy).
    sar: str = "auto"

    def __post_init__(self) -> None:
        if self.sar not in SAR_MODES:
            raise SlidewatchError(f"--sar {self.sar!r} is not a SAR mode.", f"use one of {', '.join(SAR_MODES)}.")
        if int(self.max_items) < 1:
            raise SlidewatchError(f"--max-items {self.max_items} is below 1.", "give the most items one search may match, e.g. 2000.")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's cube; its fingerprint keys cached stores."""

    region: str
    window: TimeWindow
    stac_url: str
    cube: CubeConfig = field(default_factory=CubeConfig)

    def fingerprint(self, extra: object = None) -> str:
        payload = {
            "region": self.region,
            "start": self.window.start.isoformat(),
            "end": self.window.end.isoformat(),
            "cube": self.cube.as_dict(),
            "extra": extra,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
