"""GDAL settings for cloud reads, set in this one place and passed to every stackstac read."""

from __future__ import annotations

from stackstac.rio_reader import DEFAULT_GDAL_ENV
from stackstac.rio_env import LayeredEnv

#: stackstac's defaults plus retries for flaky object storage and no directory listing.
GDAL_ENV: LayeredEnv = DEFAULT_GDAL_ENV.updated(
    always=dict(
        GDAL_HTTP_MAX_RETRY=5,  # retry 429/5xx and timeouts ...
        GDAL_HTTP_RETRY_DELAY=1,  # ... starting one second apart (GDAL backs off)
        GDAL_HTTP_TIMEOUT=60,
        GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",  # never LIST a container on open
        CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif,.tiff,.TIF",
        GDAL_HTTP_MULTIPLEX="YES",
        GDAL_CACHEMAX=256,  # MB, per process
    ),
)
