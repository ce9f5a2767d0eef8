"""Slope and aspect from a DEM on a projected grid (Horn's method).

Three layers, like stackstac's ``ops.py``:

* numpy kernels (:func:`horn_slope_aspect_kernel`, :func:`slope_kernel`,
  :func:`aspect_kernel`) on one padded block;
* dask wrappers (:func:`slope_dask`, :func:`aspect_dask`) that lift the kernels
  with :func:`dask.array.map_overlap` and a one-pixel halo, so chunk edges are
  exact: a pixel's result never depends on how the array is chunked;
* xarray fronts (:func:`slope`, :func:`aspect`) that read the pixel spacing from
  the ``x``/``y`` coordinates, refuse geographic grids and attach attributes.

Conventions (they match ``gdaldem slope`` / ``gdaldem aspect`` with default
options away from the raster edge):

* Horn (1981) 3x3 finite differences, eight-neighbour weighted::

      dz/dx = ((c + 2f + i) - (a + 2d + g)) / (8 * dx)
      dz/dy = ((g + 2h + i) - (a + 2b + c)) / (8 * dy)

  with the window ``a b c / d e f / g h i`` in array order and ``dx``, ``dy``
  the *signed* coordinate steps along columns and rows (``dy`` is negative for
  the usual north-up grid), so south-up grids come out right as well.
* slope: degrees, ``atan(hypot(dz/dx, dz/dy))``, 0 (flat) .. 90.
* aspect: the direction the slope faces (downslope), degrees clockwise from
  north in [0, 360): 0 north, 90 east, 180 south, 270 west. Flat pixels
  (both gradients exactly zero) are **NaN** (gdaldem writes its nodata value
  there unless ``-zero_for_flat``).
* any NaN in the 3x3 window gives NaN (gdaldem: nodata in the window → nodata).
* edges: ``edges="nan"`` (default) makes the outermost row/column of the whole
  array NaN, as gdaldem does without ``-compute_edges``; ``edges="nearest"``
  pads the array by repeating its edge values, so edge pixels get a one-sided
  estimate instead (close to, but not identical with, ``-compute_edges``).
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from pipeline.core.errors import InputDataError

__all__ = [
    "aspect",
    "aspect_dask",
    "aspect_kernel",
    "grid_spacing",
    "horn_slope_aspect_kernel",
    "slope",
    "slope_dask",
    "slope_kernel",
]

Edges = Literal["nan", "nearest"]

_RAD2DEG = np.float32(180.0 / np.pi)


# --------------------------------------------------------------------------- kernels


def _horn_gradients(z: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/dx, dz/dy (float32) for the interior of a padded block ``z`` (shape +2 each side)."""
    z = np.asarray(z, dtype=np.float32)
    a = z[:-2, :-2]
    b = z[:-2, 1:-1]
    c = z[:-2, 2:]
    d = z[1:-1, :-2]
    f = z[1:-1, 2:]
    g = z[2:, :-2]
    h = z[2:, 1:-1]
    i = z[2:, 2:]
    # Differences of neighbours first: they are exact in float32 for nearby
    # elevations, so the sums lose no precision (GDAL works in float64).
    gx = c - a
    gx += i - g
    gx += 2 * (f - d)
    gx *= np.float32(1.0 / (8.0 * dx))
    gy = g - a
    gy += i - c
    gy += 2 * (h - b)
    gy *= np.float32(1.0 / (8.0 * dy))
    return gx, gy


def slope_kernel(z: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Slope in degrees of the interior of a block padded by one pixel on each side.

    ``z`` has shape ``(ny + 2, nx + 2)``; the result has shape ``(ny, nx)``.
    """
    gx, gy = _horn_gradients(z, dx, dy)
    out = np.hypot(gx, gy)
    np.arctan(out, out=out)
    out *= _RAD2DEG
    return out


def aspect_kernel(z: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Aspect (degrees clockwise from north, downslope direction; flat = NaN) of a padded block."""
    gx, gy = _horn_gradients(z, dx, dy)
    # Downslope vector is -grad z; its east component is -gx, its north component -gy.
    out = np.arctan2(-gx, -gy)
    out *= _RAD2DEG
    out[out < 0] += np.float32(360.0)
    out[out >= 360.0] = 0.0
    out[(gx == 0) & (gy == 0)] = np.nan
    return out


def horn_slope_aspect_kernel(z: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect of an unpadded 2-D array, edges NaN (a convenience for eager use)."""
    z = np.asarray(z, dtype=np.float32)
    padded = np.pad(z, 1, mode="constant", constant_values=np.nan)
    return slope_kernel(padded, dx, dy), aspect_kernel(padded, dx, dy)


# --------------------------------------------------------------------------- dask wrappers


def _lift(kernel, arr: da.Array, dx: float, dy: float, edges: Edges) -> da.Array:
    if edges not in ("nan", "nearest"):
        raise InputDataError(
            f"edges={edges!r} is not a known edge mode.", hint="Use edges='nan' or edges='nearest'."
        )
    arr = arr.astype(np.float32) if arr.dtype != np.float32 else arr
    boundary = np.float32(np.nan) if edges == "nan" else "nearest"

    def _block(block: np.ndarray) -> np.ndarray:
        # map_overlap hands over the block padded by one pixel; return the padded
        # shape back (it trims the halo afterwards), so pad the kernel's result.
        out = np.empty(block.shape, dtype=np.float32)
        out[1:-1, 1:-1] = kernel(block, dx, dy)
        out[0, :] = out[-1, :] = np.nan
        out[:, 0] = out[:, -1] = np.nan
        return out

    return da.map_overlap(
        _block,
        arr,
        depth=1,
        boundary=boundary,
        trim=True,
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
    )


def slope_dask(arr: da.Array, dx: float, dy: float, *, edges: Edges = "nan") -> da.Array:
    """Lazy slope (degrees, float32) of a 2-D dask array with signed spacings ``dx``, ``dy``."""
    return _lift(slope_kernel, arr, dx, dy, edges)


def aspect_dask(arr: da.Array, dx: float, dy: float, *, edges: Edges = "nan") -> da.Array:
    """Lazy aspect (degrees clockwise from north, flat NaN, float32) of a 2-D dask array."""
    return _lift(aspect_kernel, arr, dx, dy, edges)


# --------------------------------------------------------------------------- xarray fronts


def _crs_of(dem: xr.DataArray):
    """The DEM's CRS as a ``rasterio.crs.CRS``, or None when it carries none.

    Uses rioxarray's ``.rio.crs`` when the accessor is registered (the caller
    imported rioxarray); otherwise reads the CF grid-mapping coordinate
    (``crs_wkt``/``spatial_ref`` attrs) or a ``crs`` attribute with rasterio.
    """
    rio = getattr(dem, "rio", None)
    if rio is not None:
        try:
            crs = rio.crs
        except Exception:  # a malformed grid mapping: fall through to the attrs
            crs = None
        if crs is not None:
            return crs
    from rasterio.crs import CRS

    gm = dem.attrs.get("grid_mapping", "spatial_ref")
    candidates = []
    if gm in dem.coords:
        candidates += [dem.coords[gm].attrs.get("crs_wkt"), dem.coords[gm].attrs.get("spatial_ref")]
    candidates.append(dem.attrs.get("crs"))
    for c in candidates:
        if c:
            try:
                return CRS.from_user_input(c)
            except Exception:
                continue
    return None


def _label(dem: xr.DataArray) -> str:
    return repr(dem.name) if dem.name is not None else "(unnamed)"


def grid_spacing(dem: xr.DataArray) -> tuple[float, float]:
    """Signed coordinate steps ``(dx, dy)`` of a 2-D ``(y, x)`` DataArray, in CRS units.

    Raises :class:`InputDataError` when the grid is not ``(y, x)``, has fewer
    than 3 pixels on a side, is unevenly spaced, or is geographic (a CRS that is
    geographic, or coordinates that look like degrees): slope needs metres.
    """
    if dem.ndim != 2 or tuple(dem.dims) != ("y", "x"):
        raise InputDataError(
            f"DEM {_label(dem)} has dims {tuple(dem.dims)}; slope needs a 2-D ('y', 'x') array.",
            hint="Select a single band/time and transpose to ('y', 'x').",
        )
    if dem.sizes["y"] < 3 or dem.sizes["x"] < 3:
        raise InputDataError(
            f"DEM {_label(dem)} is {dem.sizes['y']}x{dem.sizes['x']} pixels; Horn's method needs 3x3.",
            hint="Use a larger area of interest.",
        )
    if "x" not in dem.coords or "y" not in dem.coords:
        raise InputDataError(
            f"DEM {_label(dem)} has no 'x'/'y' coordinates, so its pixel size is unknown.",
            hint="Attach pixel-centre coordinates in metres (e.g. open it with rioxarray).",
        )
    crs = _crs_of(dem)
    if crs is not None and getattr(crs, "is_geographic", False):
        raise InputDataError(
            f"DEM {_label(dem)} is in a geographic CRS ({crs}); slope in degrees needs a "
            "projected grid in metres.",
            hint="Reproject the DEM to its UTM zone first (e.g. dem.rio.reproject(dem.rio.estimate_utm_crs())).",
        )
    x = np.asarray(dem["x"].values, dtype=np.float64)
    y = np.asarray(dem["y"].values, dtype=np.float64)
    dxs, dys = np.diff(x), np.diff(y)
    dx, dy = float(dxs.mean()), float(dys.mean())
    if dx == 0 or dy == 0 or not (
        np.allclose(dxs, dx, rtol=1e-6, atol=0) and np.allclose(dys, dy, rtol=1e-6, atol=0)
    ):
        raise InputDataError(
            f"DEM {_label(dem)} is not on a regular grid (x steps {dxs.min():g}..{dxs.max():g}, "
            f"y steps {dys.min():g}..{dys.max():g}).",
            hint="Resample it onto the regular UTM grid of the cube first.",
        )
    if (
        crs is None
        and max(abs(dx), abs(dy)) < 0.1
        and np.all(np.abs(x) <= 180)
        and np.all(np.abs(y) <= 90)
    ):
        raise InputDataError(
            f"DEM {_label(dem)} has pixel size {abs(dx):g} x {abs(dy):g} with coordinates inside "
            "±180/±90, which looks like degrees, not metres.",
            hint="Reproject the DEM to UTM (metres) before computing slope, or write its CRS with rio.write_crs.",
        )
    return dx, dy


def _front(dem: xr.DataArray, lifted, edges: Edges, name: str, long_name: str) -> xr.DataArray:
    dx, dy = grid_spacing(dem)
    data = dem.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1)
    out = lifted(data, dx, dy, edges=edges)
    result = xr.DataArray(out, dims=dem.dims, coords=dem.coords, name=name)
    result.attrs = {
        "units": "degree",
        "long_name": long_name,
        "method": "Horn (1981) 3x3, as gdaldem; edges=" + edges,
    }
    if "grid_mapping" in dem.attrs:
        result.attrs["grid_mapping"] = dem.attrs["grid_mapping"]
    return result


def slope(dem: xr.DataArray, *, edges: Edges = "nan") -> xr.DataArray:
    """Lazy slope in degrees (float32) of a projected ``(y, x)`` DEM.

    Parameters
    ----------
    dem:
        Elevation in metres on a regular projected grid with ``x``/``y`` pixel-centre
        coordinates (metres). dask-backed arrays stay lazy; numpy arrays are wrapped.
    edges:
        ``"nan"`` (default, like gdaldem) or ``"nearest"``; see the module docstring.

    Raises
    ------
    InputDataError
        For a geographic DEM (reproject to UTM first) or an irregular grid.
    """
    return _front(dem, slope_dask, edges, "slope", "terrain slope (Horn)")


def aspect(dem: xr.DataArray, *, edges: Edges = "nan") -> xr.DataArray:
    """Lazy aspect (float32 degrees clockwise from north, direction the slope faces; flat = NaN)."""
    return _front(dem, aspect_dask, edges, "aspect", "terrain aspect, clockwise from north (Horn)")
