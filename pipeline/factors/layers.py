"""The six landslide factors on a cube's grid, and their quality layer (all lazy).

``slope`` (degrees, Horn), ``dem`` (m), ``ndvi``, ``ndwi``, ``ndbi`` (Sentinel-2
normalised differences) and ``smi`` (Sentinel-1 change detection, NDMI proxy where SAR is
missing); ``quality`` says why a pixel has no value or a degraded one.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.factors.kernels import lift
from pipeline.core.errors import MissingAssetError
from pipeline.core.quality import QualityFlag, quality_attrs
from pipeline.factors.indices import normalized_difference
from pipeline.factors.soil_moisture import soil_moisture
from pipeline.factors.terrain import Edges, slope as terrain_slope

__all__ = ["FACTORS", "compute_factors"]

#: Factor variable names, in the order of the method's weights w1..w6.
FACTORS: tuple[str, ...] = ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi")


def compute_factors(cube: xr.Dataset, *, edges: Edges = "nearest") -> xr.Dataset:
    """The six LSI factors plus a uint8 ``quality`` layer from a cube (all lazy).

    Needs ``dem`` and ``B03``/``B04``/``B08``/``B11``; uses ``vv``/``vv_dry``/``vv_wet``
    for the SMI where present (NDMI proxy elsewhere). Slope uses
    ``edges="nearest"`` by default so the region's outer pixels are not lost.
    Quality bits: ``no_s2`` where a band is NaN, ``no_dem`` where the DEM is NaN,
    ``smi_from_ndmi_proxy`` from the SMI, ``nan_factor`` where any factor is NaN.

    Raises
    ------
    MissingAssetError
        Naming the first missing band or the DEM.
    """
    for name in ("dem", "B03", "B04", "B08", "B11"):
        if name not in cube.data_vars:
            raise MissingAssetError(
                f"The cube lacks {name!r}, needed for the LSI factors (have {sorted(map(str, cube.data_vars))}).",
                hint="Build the cube with the Copernicus DEM and Sentinel-2 B03, B04, B08, B11.",
            )
    dem = cube["dem"].astype(np.float32)
    template = dem

    def grid(name: str) -> xr.DataArray:
        return cube[name].transpose(*template.dims)

    b03, b04, b08, b11 = (grid(n).data for n in ("B03", "B04", "B08", "B11"))
    slope = terrain_slope(dem, edges=edges)
    sm = soil_moisture(cube)

    def wrap(data, name: str, units: str, long_name: str) -> xr.DataArray:
        return xr.DataArray(
            data, dims=template.dims, coords=template.coords, name=name, attrs={"units": units, "long_name": long_name}
        )

    ndvi = wrap(normalized_difference(b08, b04), "ndvi", "1", "normalised difference vegetation index")
    ndwi = wrap(normalized_difference(b03, b08), "ndwi", "1", "normalised difference water index")
    ndbi = wrap(normalized_difference(b11, b08), "ndbi", "1", "normalised difference built-up index")

    def qkernel(b03, b04, b08, b11, dem, slp, smi, smiq):
        q = np.asarray(smiq, dtype=np.uint8) & np.uint8(QualityFlag.SMI_FROM_NDMI_PROXY)
        no_s2 = np.isnan(b03) | np.isnan(b04) | np.isnan(b08) | np.isnan(b11)
        q[no_s2] |= np.uint8(QualityFlag.NO_S2)
        q[np.isnan(dem)] |= np.uint8(QualityFlag.NO_DEM)
        nanf = no_s2 | np.isnan(dem) | np.isnan(slp) | np.isnan(smi)
        q[nanf] |= np.uint8(QualityFlag.NAN_FACTOR)
        return q

    parts = [b03, b04, b08, b11, dem.data, slope.data, sm["smi"].data, sm["smi_quality"].data]
    qdata = lift(qkernel, *parts, dtype=np.uint8)
    quality = wrap(qdata, "quality", "1", "factor quality flags (bit field)")
    quality.attrs = quality_attrs("factor quality flags (bit field)")
    dem_out = dem.copy()
    dem_out.attrs = {"units": "m", "long_name": "elevation (Copernicus DEM GLO-30 on the cube grid)"}
    slope.attrs["long_name"] = "terrain slope (Horn)"
    return xr.Dataset(
        {
            "slope": slope,
            "dem": dem_out,
            "ndvi": ndvi,
            "ndwi": ndwi,
            "smi": sm["smi"],
            "ndbi": ndbi,
            "quality": quality,
        }
    )
