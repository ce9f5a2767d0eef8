"""Facts about the STAC collections slidewatch reads (foundation: imports nothing of ours).

The ids, asset keys and value conventions follow Planetary Computer's collections;
the embedded demo region publishes the same ones.
"""

from __future__ import annotations

from typing import Final

PLANETARY_COMPUTER_STAC: Final = "https://planetarycomputer.microsoft.com/api/stac/v1"

SENTINEL2: Final = "sentinel-2-l2a"
SENTINEL1_RTC: Final = "sentinel-1-rtc"
SENTINEL1_GRD: Final = "sentinel-1-grd"
COP_DEM: Final = "cop-dem-glo-30"

#: ``--sar``: ``auto`` (RTC when its token endpoint grants it, else GRD), ``rtc``, ``grd``, or
#: ``none`` (no SAR: soil moisture from the NDMI proxy).
SAR_MODES: Final = ("auto", "rtc", "grd", "none")
#: The ``s1_collection`` of a run with ``--sar none``.
NO_SAR: Final = "none"
#: Where Planetary Computer keeps sentinel-1-rtc (``msft:storage_account``/``msft:container``
#: of its collection, which also says ``msft:requires_account: true``): SAS tokens for it are
#: granted only with a subscription key. Used when the collection document cannot be read.
SENTINEL1_RTC_STORAGE: Final = ("sentinel1euwestrtc", "sentinel1-grd-rtc")
#: The environment variable that carries a Planetary Computer subscription key.
PC_KEY_ENV: Final = "PC_SDK_SUBSCRIPTION_KEY"

#: All Sentinel-2 L2A band assets on Planetary Computer and their native resolution (m).
S2_BAND_RESOLUTION: Final[dict[str, int]] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}
#: The bands the cube keeps: blue, green, red, NIR, SWIR1, SWIR2.
S2_CUBE_BANDS: Final = ("B02", "B03", "B04", "B08", "B11", "B12")
S2_SCL: Final = "SCL"

#: Scene classification (SCL) classes of Sen2Cor.
SCL_CLASSES: Final[dict[int, str]] = {
    0: "no data", 1: "saturated or defective", 2: "dark area pixels", 3: "cloud shadows",
    4: "vegetation", 5: "not vegetated", 6: "water", 7: "unclassified",
    8: "cloud medium probability", 9: "cloud high probability", 10: "thin cirrus", 11: "snow",
}
#: SCL classes kept for the composite. Masked: no data, defective, shadows, clouds, cirrus.
SCL_VALID: Final = (2, 4, 5, 6, 7, 11)

#: Sen2Cor processing baseline 04.00 (25 Jan 2022) added an offset of -1000 to L2A DNs.
S2_OFFSET_BASELINE: Final = "04.00"
S2_BOA_OFFSET: Final = -1000
S2_QUANTIFICATION: Final = 10000.0

#: nodata of sentinel-1-rtc's float32 gamma0 COGs (raster:bands on Planetary Computer); a
#: bilinear read blends it into its neighbours, so gamma0 is valid only above S1_VALID_ABOVE.
S1_RTC_NODATA: Final = -32768.0
S1_VALID_ABOVE: Final = -32767.0

DEM_ASSET: Final = "data"
#: Copernicus DEM's nodata. Bilinear reads blend it into neighbouring pixels, so an
#: elevation counts as valid only above DEM_VALID_ABOVE (below any land surface).
DEM_NODATA: Final = -32767.0
DEM_VALID_ABOVE: Final = -1000.0
