"""Which pixels of a zone grid lie inside a region's polygon (lazy, one task per chunk).

A GeoJSON region is mapped as the polygon it is, holes included: pixels whose centre is
outside it are masked in the LSI and risk stores and flagged ``outside_region`` in
``quality`` (:func:`pipeline.factors.lsi.mask_outside`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from pipeline.core.config import ZoneGrid

__all__ = ["inside_geometry"]


def _grid_geometry(geometry: Mapping[str, Any], epsg: int) -> Any:
    """The lon/lat GeoJSON geometry in the grid's CRS (a shapely geometry)."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape

    to_grid = Transformer.from_crs(4326, epsg, always_xy=True)
    return shapely.transform(shape(geometry), to_grid.transform, interleaved=False)


def _inside_block(block: np.ndarray, block_info: dict | None = None, *, geom: Any, grid: ZoneGrid) -> np.ndarray:
    from rasterio.features import geometry_mask
    from rasterio.transform import Affine

    (r0, r1), (c0, c1) = block_info[0]["array-location"] if block_info else ((0, block.shape[0]), (0, block.shape[1]))
    res = grid.resolution
    tr = Affine(res, 0.0, grid.x0 + c0 * res, 0.0, -res, grid.y1 - r0 * res)
    return geometry_mask([geom], out_shape=(r1 - r0, c1 - c0), transform=tr, invert=True)


def inside_geometry(geometry: Mapping[str, Any], grid: ZoneGrid) -> xr.DataArray:
    """A lazy boolean ``(y, x)`` layer on ``grid`` (chunked like it): True where a pixel's
    centre is inside the lon/lat GeoJSON ``geometry`` (holes are outside)."""
    geom = _grid_geometry(geometry, grid.epsg)
    template = da.zeros(grid.shape, chunks=grid.chunk, dtype=bool)
    data = da.map_blocks(_inside_block, template, dtype=bool, geom=geom, grid=grid)
    y, x = grid.pixel_centres()
    return xr.DataArray(data, dims=("y", "x"), coords={"y": y, "x": x}, name="inside_region")
