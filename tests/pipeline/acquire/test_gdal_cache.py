"""GDAL's HTTP cache is cleared in the GDAL that rasterio reads with, even when another
wheel (pyogrio, for GeoPackage inventories) has loaded its own libgdal into the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import ctypes
import pyogrio  # noqa: F401  - its bundled libgdal is loaded first
import rasterio
from pipeline.acquire.gdal import _libgdal
lib = _libgdal()
lib.GDALVersionInfo.restype = ctypes.c_char_p
print(lib.GDALVersionInfo(b"RELEASE_NAME").decode(), rasterio.__gdal_version__)
"""


def test_cache_is_cleared_in_rasterios_gdal_with_pyogrio_loaded() -> None:
    pytest.importorskip("pyogrio")
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1], f"clear_http_cache would talk to GDAL {out[0]}, rasterio reads with {out[1]}"
