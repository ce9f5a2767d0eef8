"""Hillshade of a north-up DEM: the relief drawn under the report map's layers.

:func:`hillshade` is the Lambertian reflectance of the terrain lit by a distant sun (by
default from the north-west, azimuth 315°, 45° above the horizon, the cartographic
convention and ``gdaldem hillshade``'s default): the cosine of the angle between the
surface normal and the direction of the sun, 0 where the slope faces away from it, 1
where it faces the sun squarely. With ``p = ∂z/∂E`` and ``q = ∂z/∂N`` (Horn's 3 × 3
weighted differences, as ``gdaldem`` and :mod:`pipeline.factors.terrain`), azimuth ``A``
clockwise from north and altitude ``h``::

    hillshade = max(0, (sin h − cos h · (p · sin A + q · cos A)) / √(1 + p² + q²))

so a flat pixel gets ``sin h`` (0.707 at 45°) and a plane tilted towards the sun more.
``gdaldem hillshade`` writes ``1 + 254 · hillshade`` as a byte (tested against it).

The map needs a shade for every pixel of the zone, so the raster edge is padded with
its nearest values (a one-sided estimate there; ``gdaldem`` leaves it empty without
``-compute_edges``); a NaN elevation in the 3 × 3 window, centre included, gives NaN
(drawn transparent), as ``gdaldem`` gives no data.

Pure helper of :mod:`pipeline.products.report`: numpy only. (``pipeline.products`` may
not import :mod:`pipeline.factors`, whose Horn kernel works on Dask blocks; this is the
same stencil on one in-memory array at report resolution.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALTITUDE", "AZIMUTH", "hillshade"]

#: Default direction of the light, degrees clockwise from north (north-west).
AZIMUTH = 315.0
#: Default elevation of the light above the horizon, degrees.
ALTITUDE = 45.0


def hillshade(dem: np.ndarray, dx: float, dy: float, *, azimuth: float = AZIMUTH,
              altitude: float = ALTITUDE) -> np.ndarray:
    """Hillshade (float32, 0..1, NaN where the 3 × 3 window holds a NaN) of ``dem``.

    ``dem`` is a 2-D elevation array in metres, row 0 north and column 0 west; ``dx`` is
    the pixel width (metres, east) and ``dy`` the pixel height (metres, positive: rows
    run south). Edges are padded with their nearest values (see the module notes).
    """
    z = np.asarray(dem, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"hillshade needs a 2-D DEM, got shape {z.shape}")
    if not (dx > 0 and dy > 0):
        raise ValueError(f"pixel sizes must be positive, got dx={dx}, dy={dy}")
    p = np.pad(z, 1, mode="edge")
    a, b, c = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    d, f = p[1:-1, :-2], p[1:-1, 2:]
    g, h, i = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    dz_de = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * dx)
    dz_dn = ((a + 2 * b + c) - (g + 2 * h + i)) / (8.0 * dy)  # row 0 is north: north minus south
    az, alt = np.radians(azimuth), np.radians(altitude)
    shade = (np.sin(alt) - np.cos(alt) * (dz_de * np.sin(az) + dz_dn * np.cos(az))) / np.sqrt(
        1.0 + dz_de * dz_de + dz_dn * dz_dn)
    shade[np.isnan(z)] = np.nan  # Horn's stencil skips the centre; no elevation, no shade
    return np.clip(shade, 0.0, 1.0).astype(np.float32)
