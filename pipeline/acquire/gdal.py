"""GDAL settings for cloud reads, set in this one place and passed to every stackstac read.

Network settings can be overridden from the environment without code changes, e.g. for a
slow link or a test: ``SLIDEWATCH_GDAL_HTTP_TIMEOUT=120 slidewatch run ...``. Each key of
:data:`OVERRIDABLE` is read from ``SLIDEWATCH_<KEY>``; a value that is not a positive
number is ignored with a warning (the default stays). Overrides are read when
:func:`gdal_env` is first called, i.e. by the first read.

Reads go through :class:`CrsCheckedReader`, stackstac's reader plus one check: the file's
own CRS must be the one its STAC item declares (``proj:epsg``/``proj:code``), otherwise
the pixels would silently land elsewhere (or nowhere) on the grid. A read error is
explained by :func:`read_failure` (URL, HTTP status, whether retrying can help), and
:func:`clear_http_cache` makes GDAL forget a failed URL before a retry.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import DEFAULT_GDAL_ENV, AutoParallelRioReader

from pipeline.core.errors import CatalogError, InputDataError, SlidewatchError
from pipeline.core.secrets import install_log_redaction, redact

log = logging.getLogger(__name__)

ENV_PREFIX = "SLIDEWATCH_"

#: Settings that may be overridden from ``SLIDEWATCH_<KEY>``, with their defaults.
OVERRIDABLE: dict[str, float] = {
    "GDAL_HTTP_MAX_RETRY": 5,  # retry 429/5xx and timeouts ...
    "GDAL_HTTP_RETRY_DELAY": 1,  # ... starting one second apart (GDAL backs off)
    "GDAL_HTTP_TIMEOUT": 60,  # seconds for a whole request
    "GDAL_HTTP_CONNECTTIMEOUT": 30,  # seconds to connect
}

#: Integer-valued settings (GDAL parses them with atoi).
_INTEGER = {"GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT"}


def gdal_options(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The GDAL options slidewatch sets on every read, with ``SLIDEWATCH_*`` overrides applied."""
    env = os.environ if environ is None else environ
    options: dict[str, object] = {
        **OVERRIDABLE,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # never LIST a container on open
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_CACHEMAX": 256,  # MB, per process
    }
    for key, default in OVERRIDABLE.items():
        raw = env.get(ENV_PREFIX + key)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not (value >= 0 and value < float("inf")) or (key != "GDAL_HTTP_MAX_RETRY" and value == 0):
            log.warning("ignoring %s%s=%r: not a positive number; using %s", ENV_PREFIX, key, raw, default)
            continue
        if key in _INTEGER:
            value = int(value) if key == "GDAL_HTTP_MAX_RETRY" else max(1, int(round(value)))
        options[key] = value
    return options


def build_gdal_env(environ: Mapping[str, str] | None = None) -> LayeredEnv:
    """stackstac's default GDAL environment plus :func:`gdal_options`."""
    return DEFAULT_GDAL_ENV.updated(always=gdal_options(environ))


@functools.cache
def gdal_env() -> LayeredEnv:
    """The environment every read uses: stackstac's defaults plus retries for flaky object
    storage and no directory listing, with the ``SLIDEWATCH_*`` overrides read on first use.

    GDAL's messages reach Python through rasterio's loggers with full (signed) URLs, so the
    first call also puts the credential filter on those loggers.
    """
    import rasterio  # noqa: F401  (creates its loggers)

    install_log_redaction()
    return build_gdal_env()


def _libgdal():  # type: ignore[no-untyped-def]
    """The GDAL shared library rasterio has loaded (ctypes handle), or None."""
    import ctypes
    import ctypes.util
    from pathlib import Path

    import rasterio  # loads libgdal

    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            candidates = sorted({line.split()[-1] for line in fh if "libgdal" in line and "/" in line})
    except OSError:
        pass
    # Other wheels bundle their own GDAL (pyogrio's is loaded beside rasterio's when an
    # inventory is read): the cache to clear is the one of the GDAL rasterio links against.
    libs = str(Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs")
    candidates.sort(key=lambda path: not path.startswith(libs))
    found = ctypes.util.find_library("gdal")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def clear_http_cache(url: str | None = None) -> bool:
    """Forget what GDAL cached about ``url`` (or every URL): sizes, blocks and failures.

    GDAL's ``/vsicurl/`` layer caches a failed request per URL, so a retry of the same URL
    in the same process would fail again without asking the server; call this before a
    retry. Returns False when the GDAL library could not be reached (nothing cleared).
    """
    global _LIB
    if _LIB is None:
        _LIB = _libgdal() or False
    if not _LIB:
        return False
    try:
        if url is None:
            _LIB.VSICurlClearCache()
        else:
            prefix = url if url.startswith("/vsi") else "/vsicurl/" + url
            _LIB.VSICurlPartialClearCache(prefix.encode())
    except AttributeError:
        return False
    return True


_LIB = None


# ------------------------------------------------------------------------------ reading
#: (file URL without query, EPSG) pairs already checked in this process (one check per file).
_CRS_CHECKED: set[tuple[str, int]] = set()


class CrsCheckedReader(AutoParallelRioReader):
    """stackstac's reader, refusing a file whose CRS differs from its item's declared one."""

    def __init__(self, *, expected_epsg: Mapping[str, tuple[str, int]] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.expected_epsg = expected_epsg or {}

    def _open(self):  # type: ignore[no-untyped-def]
        opened = super()._open()
        expected = self.expected_epsg.get(self.url)
        if expected is not None:
            key = (self.url.split("?", 1)[0], expected[1])  # the file, whatever its token
            if key not in _CRS_CHECKED:
                self._check_crs(*expected)
                if len(_CRS_CHECKED) > 100_000:
                    _CRS_CHECKED.clear()
                _CRS_CHECKED.add(key)
        return opened

    def _check_crs(self, what: str, epsg: int) -> None:
        import rasterio

        with self.gdal_env.open:  # the header is in GDAL's cache: no new request
            with rasterio.open(self.url) as ds:
                crs = ds.crs
        found = _horizontal_epsg(crs)
        if found == epsg:
            return
        if found is None and crs is not None and _same_crs(crs, epsg):
            return
        found = "no CRS" if crs is None else (f"EPSG:{found}" if isinstance(found, int) else crs.to_string()[:80])
        raise InputDataError(
            f"{what} ({redact(self.url)}) is in {found}, but its STAC item declares EPSG:{epsg}; "
            "its pixels would land in the wrong place.",
            "fix the item's proj:code/proj:epsg or the file's CRS (gdal_edit.py -a_srs), or drop the item.",
        )

    def __getstate__(self):  # type: ignore[no-untyped-def]
        # stackstac's __setstate__ calls __init__(**state), which takes expected_epsg back
        return {**super().__getstate__(), "expected_epsg": self.expected_epsg}


def _horizontal_epsg(crs) -> int | None:  # type: ignore[no-untyped-def]
    """EPSG code of a CRS's horizontal part (compound CRSs like DEMs with a vertical datum)."""
    if crs is None:
        return None
    from pyproj import CRS as ProjCRS

    try:
        pc = ProjCRS.from_wkt(crs.to_wkt())
        if pc.is_compound and pc.sub_crs_list:
            pc = pc.sub_crs_list[0]
        return pc.to_epsg(min_confidence=20)
    except Exception:  # noqa: BLE001 - an unparseable CRS is compared below
        return None


def _same_crs(crs, epsg: int) -> bool:  # type: ignore[no-untyped-def]
    from pyproj import CRS as ProjCRS

    try:
        pc = ProjCRS.from_wkt(crs.to_wkt())
        if pc.is_compound and pc.sub_crs_list:
            pc = pc.sub_crs_list[0]
        return bool(pc.equals(ProjCRS.from_epsg(epsg), ignore_axis_order=True))
    except Exception:  # noqa: BLE001
        return False


def crs_checked_reader(item_dicts: Iterable[Mapping], assets: Iterable[str]):  # type: ignore[no-untyped-def]
    """A stackstac ``reader`` checking each asset's file CRS against its item's (see
    :class:`CrsCheckedReader`); items as the dicts passed to ``stackstac.stack``."""
    keys = list(assets)
    expected: dict[str, tuple[str, int]] = {}
    for d in item_dicts:
        props = d.get("properties", {})
        for key in keys:
            asset = d.get("assets", {}).get(key)
            if not asset or not asset.get("href"):
                continue
            epsg = asset.get("proj:epsg", props.get("proj:epsg"))
            if isinstance(epsg, int) and epsg > 0:
                expected[asset["href"]] = (f"asset {key!r} of item {d.get('id')!r}", epsg)
    return functools.partial(CrsCheckedReader, expected_epsg=expected)


_HTTP_STATUS = re.compile(r"HTTP (?:response )?code:? ?(\d{3})|HTTP error code ?: ?(\d{3})")
#: stackstac's "Error opening '<url>': ..." (quotes escaped when dask.distributed re-wraps it).
_STACKSTAC_URL = re.compile(r"Error (?:opening|reading .*? from) \\*'(.+?)\\*': ")
#: HTTP answers that retrying the same request cannot fix (403 is re-signed and retried).
_PERMANENT_STATUS = {400, 401, 404, 405, 410, 416}


@dataclass(frozen=True)
class ReadFailure:
    """What went wrong reading one asset: its URL (may hold tokens: redact before showing),
    the HTTP status if any, GDAL's reason, and whether it was read over HTTP."""

    url: str | None
    status: int | None
    reason: str
    remote: bool

    @property
    def expired(self) -> bool:
        """A 403: for signed URLs, usually an expired token (re-sign, then retry)."""
        return self.status == 403

    @property
    def transient(self) -> bool:
        """Worth retrying: a remote read that did not fail with a permanent HTTP status."""
        return self.remote and self.status not in _PERMANENT_STATUS


def read_failure(exc: BaseException) -> ReadFailure | None:
    """Explain a pixel-read error raised through stackstac/rasterio; None for anything else."""
    import rasterio.errors

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    url = None
    detail = ""
    for e in chain:
        m = _STACKSTAC_URL.search(str(e))
        if m:
            url = m.group(1)
            inner = re.search(r"\w*Error\((.*)\)", str(e)[m.end():])
            detail = (inner.group(1) if inner else str(e)[m.end():]).replace("\\", "").strip("'\" )")
            break
    gdal = [e for e in chain if isinstance(e, rasterio.errors.RasterioError)
            or type(e).__module__.startswith("rasterio")]
    if url is None and not gdal:
        return None
    status = None
    for e in chain:
        m = _HTTP_STATUS.search(str(e))
        if m:
            status = int(m.group(1) or m.group(2))
            break
    reason = str(gdal[-1]) if gdal else (detail or str(exc))
    remote = bool(url and re.match(r"^(/vsicurl/)?https?://", url)) or status is not None
    return ReadFailure(url=url, status=status, reason=reason, remote=remote)


def read_error(failure: ReadFailure, zone: str, tile: str, attempts: int, done: int, total: int) -> SlidewatchError:
    """The SlidewatchError for a read that failed for good in write tile ``tile`` of ``zone``
    after ``attempts`` tries, ``done`` of ``total`` tiles being kept (tokens and secrets redacted)."""
    url = redact(failure.url) if failure.url else "an input asset"
    reason = redact(failure.reason)
    where = f"tile {tile} of zone {zone}; {done} of {total} tiles are written and kept"
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    resume = "then rerun the same command: finished tiles are kept and only the missing ones are read."
    if not failure.remote:
        return InputDataError(
            f"Cannot read {url}: {reason} ({where}).",
            f"the file is missing, corrupt or truncated: restore or regenerate it (check it with `rio info`), {resume}",
        )
    if failure.status == 403:
        hint = ("storage refused the URL even freshly signed: check your access (PC_SDK_SUBSCRIPTION_KEY) and the "
                f"system clock, {resume}")
    elif failure.status in (404, 410):
        hint = f"the asset is gone from the catalog's storage: report it to the catalog or exclude the item, {resume}"
    else:
        hint = ("check your network, or raise SLIDEWATCH_GDAL_HTTP_TIMEOUT / SLIDEWATCH_GDAL_HTTP_MAX_RETRY for a "
                f"slow or flaky link, {resume}")
    status = f"HTTP {failure.status}: " if failure.status and str(failure.status) not in reason else ""
    return CatalogError(f"Reading {url} failed after {tries} ({status}{reason}) for {where}.", hint)
