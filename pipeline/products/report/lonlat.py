"""Grid metres to lon/lat on the report page, without projection maths in the page.

The page cannot run PROJ, so :func:`lonlat_lattice` computes with pyproj the lon/lat of an
``n × n`` lattice of grid points spanning the zone (corners included), for any projected
CRS, UTM or not. The page's script (``templates/report.js``, ``toLonLat``) interpolates
between these nodes with a cubic per axis: a 4 × 4-node Lagrange stencil, the formula of
:func:`interpolate` here. The cubic gives the nodes back exactly (the zone's corners, and
its centre for the odd ``n`` used) and between them follows the smooth projection closely:
``n`` is the smallest of 9, 17, 33, 65, 129 for which the interpolated lon/lat, projected
back to the grid with PROJ, lies within :data:`TOLERANCE_M` of the true point at every
midpoint between nodes (rows, columns and cell centres). A 100 km UTM zone needs 9 nodes a
side, 600 km at 60° N 33; the largest difference found is stated on the page.

Pure helper of :mod:`pipeline.products.report`: numpy and pyproj only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NODE_COUNTS", "TOLERANCE_M", "Lattice", "interpolate", "lagrange_weights", "lonlat_lattice"]

#: Largest distance (metres, in the grid CRS) allowed between the interpolated point and PROJ's.
TOLERANCE_M = 0.001
#: Nodes per lattice side, tried in order; the last one is used even when it misses the tolerance.
NODE_COUNTS = (9, 17, 33, 65, 129)


@dataclass(frozen=True)
class Lattice:
    """Lon/lat nodes over a zone and how closely their interpolation matches PROJ.

    ``nodes[i][j]`` is ``[lon, lat]`` of grid point ``x0 + j / (n - 1) * width``,
    ``y1 - i / (n - 1) * height`` (row 0 north, column 0 west).
    """

    nodes: list[list[list[float]]]
    max_error_m: float

    @property
    def size(self) -> int:
        return len(self.nodes)


def lagrange_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 stencil nodes at offsets 0..3 for positions ``t`` (shape ``(..., 4)``)."""
    t = np.asarray(t, dtype=np.float64)
    return np.stack([-(t - 1) * (t - 2) * (t - 3) / 6, t * (t - 2) * (t - 3) / 2,
                     -t * (t - 1) * (t - 3) / 2, t * (t - 1) * (t - 2) / 6], axis=-1)


def interpolate(nodes: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cubic interpolation of ``nodes`` (``(rows, cols, 2)``) at column ``u`` and row ``v``
    (lattice index units, fractional); returns ``(..., 2)``. Each axis uses the 4 nodes
    around the point (the first or last 4 at the lattice edges), as the page's script does."""
    nodes = np.asarray(nodes, dtype=np.float64)
    m, k = nodes.shape[0] - 1, nodes.shape[1] - 1
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    i = np.clip(np.floor(v).astype(np.intp) - 1, 0, m - 3)
    j = np.clip(np.floor(u).astype(np.intp) - 1, 0, k - 3)
    wv, wu = lagrange_weights(v - i), lagrange_weights(u - j)
    out = np.zeros(u.shape + (2,))
    for a in range(4):
        for b in range(4):
            out += (wv[..., a] * wu[..., b])[..., None] * nodes[i + a, j + b]
    return out


def lonlat_lattice(crs: object, x0: float, y1: float, width_m: float, height_m: float) -> Lattice:
    """The lon/lat lattice over the extent ``x0 .. x0 + width_m``, ``y1 - height_m .. y1``
    of a projected ``crs`` (anything pyproj accepts), with the fewest nodes that keep the
    page's interpolation within :data:`TOLERANCE_M` of PROJ (see the module notes)."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    for n in NODE_COUNTS:
        gx, gy = np.meshgrid(np.linspace(x0, x0 + width_m, n), np.linspace(y1, y1 - height_m, n))
        nodes = np.stack(to_ll.transform(gx, gy), axis=-1)
        half = np.arange(2 * n - 1) / 2.0  # the nodes and every midpoint between them
        u, v = np.meshgrid(half, half)
        ll = interpolate(nodes, u, v)
        bx, by = to_grid.transform(ll[..., 0], ll[..., 1])
        err = np.hypot(bx - (x0 + u / (n - 1) * width_m), by - (y1 - v / (n - 1) * height_m))
        max_error = float(np.max(err)) if np.isfinite(err).all() else float("inf")
        if max_error <= TOLERANCE_M:
            break
    return Lattice(nodes.tolist(), max_error)
