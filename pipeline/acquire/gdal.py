"""GDAL settings for cloud reads, set in this one place and passed to every stackstac read.

Network settings can be overridden from the environment without code changes, e.g. for a
slow link or a test: ``SLIDEWATCH_GDAL_HTTP_TIMEOUT=120 slidewatch run ...``. Each key of
:data:`OVERRIDABLE` is read from ``SLIDEWATCH_<KEY>``; a value that is not a positive
number is ignored with a warning (the default stays). Overrides are read when
:func:`gdal_env` is first called, i.e. by the first read.

Reads go through :class:`CrsCheckedReader`, stackstac's reader plus one check
(:func:`check_georef`, once per file): the file's own CRS, geotransform and shape must be
the ones its STAC item declares (``proj:epsg``/``proj:code``, ``proj:transform``,
``proj:shape``; asset-level fields override item-level ones), otherwise the pixels would
silently land elsewhere (or nowhere) on the grid. A read error is
explained by :func:`read_failure` (URL, HTTP status, whether retrying can help), and
:func:`clear_http_cache` makes GDAL forget a failed URL before a retry.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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
#: How far (in pixels of the file) the file's georeferencing may stray from its item's before it
#: is refused: float rounding only.
GEOREF_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class AssetGeoref:
    """What a STAC item says about one asset's file (``proj:*``, asset-level fields overriding
    item-level ones): its EPSG code, geotransform (a, b, c, d, e, f) and (rows, cols); None where
    the item says nothing. ``what`` names the asset and item in messages."""

    what: str
    epsg: int | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    shape: tuple[int, int] | None = None


def _declared_epsg(value: object) -> int | None:
    if isinstance(value, str) and value.upper().startswith("EPSG:"):
        value = value.split(":", 1)[1]
        value = int(value) if value.isdigit() else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _declared_transform(value: object) -> tuple[float, float, float, float, float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) < 6:
        return None
    try:
        t = tuple(float(v) for v in value[:6])
    except (TypeError, ValueError):
        return None
    return t if all(abs(v) < float("inf") for v in t) else None  # type: ignore[return-value]


def _declared_shape(value: object) -> tuple[int, int] | None:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    dims = []
    for v in value[-2:]:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            return None
        dims.append(v)
    return (dims[0], dims[1])


def asset_georef(item: Mapping, key: str) -> AssetGeoref | None:
    """What ``item`` (a STAC item dict) says about asset ``key``'s georeferencing, asset-level
    ``proj:*`` fields overriding item-level ones; None when it says nothing."""
    props = item.get("properties") or {}
    asset = (item.get("assets") or {}).get(key) or {}

    def field(name: str) -> object:
        return asset[name] if name in asset else props.get(name)

    if "proj:epsg" in asset or "proj:code" in asset:  # the asset's CRS, in either spelling, wins
        epsg = _declared_epsg(asset.get("proj:epsg")) or _declared_epsg(asset.get("proj:code"))
    else:
        epsg = _declared_epsg(props.get("proj:epsg")) or _declared_epsg(props.get("proj:code"))
    transform = _declared_transform(field("proj:transform"))
    shape = _declared_shape(field("proj:shape"))
    if epsg is None and transform is None and shape is None:
        return None
    return AssetGeoref(f"asset {key!r} of item {item.get('id')!r}", epsg, transform, shape)


#: (file URL without query, AssetGeoref) pairs already checked in this process (one check per file).
_CRS_CHECKED: set[tuple[str, AssetGeoref]] = set()


def check_georef(ds, url: str, expected: AssetGeoref) -> None:  # type: ignore[no-untyped-def]
    """Refuse (InputDataError) an opened file whose CRS, geotransform or shape differ from what
    its STAC item declares (``expected``): its pixels would land in the wrong place. Each file
    is checked once per process (whatever its token)."""
    key = (url.split("?", 1)[0], expected)
    if key in _CRS_CHECKED:
        return
    if expected.epsg is not None:
        _check_crs(ds.crs, url, expected.what, expected.epsg)
    _check_grid(ds.transform, (ds.height, ds.width), url, expected)
    if len(_CRS_CHECKED) > 100_000:
        _CRS_CHECKED.clear()
    _CRS_CHECKED.add(key)


def _check_crs(crs, url: str, what: str, epsg: int) -> None:  # type: ignore[no-untyped-def]
    found = _horizontal_epsg(crs)
    if found == epsg:
        return
    if found is None and crs is not None and _same_crs(crs, epsg):
        return
    found = "no CRS" if crs is None else (f"EPSG:{found}" if isinstance(found, int) else crs.to_string()[:80])
    raise InputDataError(
        f"{what} ({redact(url)}) is in {found}, but its STAC item declares EPSG:{epsg}; "
        "its pixels would land in the wrong place.",
        "fix the item's proj:code/proj:epsg or the file's CRS (gdal_edit.py -a_srs), or drop the item.",
    )


def _fmt_transform(t: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:.12g}" for v in t) + "]"


def _check_grid(transform, shape: tuple[int, int], url: str, expected: AssetGeoref) -> None:  # type: ignore[no-untyped-def]
    """The file's geotransform and shape against the item's (when it declares them)."""
    from affine import Affine

    problems: list[str] = []
    says: list[str] = []
    has: list[str] = []
    if expected.shape is not None and tuple(shape) != expected.shape:
        problems.append("shape")
        says.append(f"proj:shape [{expected.shape[0]}, {expected.shape[1]}]")
    if expected.transform is not None:
        item_tr = Affine(*expected.transform)
        file_tr = Affine(*tuple(transform)[:6])
        rows, cols = expected.shape or tuple(shape)
        corners = [(0.0, 0.0), (float(cols), 0.0), (0.0, float(rows)), (float(cols), float(rows))]
        try:
            inverse = ~file_tr
            off = [inverse * (item_tr * p) for p in corners]
            worst = max(max(abs(u - p[0]), abs(v - p[1])) for (u, v), p in zip(off, corners))
        except Exception:  # noqa: BLE001 - a degenerate geotransform cannot match
            off, worst = [], float("inf")
        if not worst <= GEOREF_TOLERANCE_PX:
            problems.append("geotransform")
            says.insert(0, f"proj:transform {_fmt_transform(expected.transform)}")
            if off:
                # where the file's origin is, in its pixels and in CRS units from the item's (+ 0.0: no "-0")
                du, dv = -off[0][0] + 0.0, -off[0][1] + 0.0
                dx, dy = file_tr.c - item_tr.c + 0.0, file_tr.f - item_tr.f + 0.0
                scale = "" if worst <= max(abs(du), abs(dv)) + 1e-3 else (
                    f"; pixel size or rotation differ too: {worst:.3g} px off at a corner")
                has.append(f"geotransform {_fmt_transform(tuple(file_tr)[:6])} (origin off by {dx:+.6g}, {dy:+.6g} "
                           f"in CRS units, i.e. {du:+.3g} columns, {dv:+.3g} rows{scale})")
            else:
                has.append(f"geotransform {_fmt_transform(tuple(transform)[:6])}")
    if not problems:
        return
    has.append(f"shape {shape[0]} x {shape[1]}")
    raise InputDataError(
        f"{expected.what} ({redact(url)}) has {' and '.join(has)}, but its STAC item says {' and '.join(says)}; "
        "its pixels would land in the wrong place.",
        "fix the item's proj:transform/proj:shape or the file's georeferencing (gdal_edit.py -a_ullr), "
        "or drop the item.",
    )


class CrsCheckedReader(AutoParallelRioReader):
    """stackstac's reader, refusing a file whose CRS, geotransform or shape differ from its
    item's declared ones (see :func:`check_georef`)."""

    def __init__(self, *, expected: Mapping[str, AssetGeoref] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.expected = expected or {}

    def _open(self):  # type: ignore[no-untyped-def]
        opened = super()._open()
        expected = self.expected.get(self.url)
        if expected is not None and (self.url.split("?", 1)[0], expected) not in _CRS_CHECKED:
            import rasterio

            with self.gdal_env.open, rasterio.open(self.url) as ds:  # the header is cached: no new request
                check_georef(ds, self.url, expected)
        return opened

    def __getstate__(self):  # type: ignore[no-untyped-def]
        # stackstac's __setstate__ calls __init__(**state), which takes expected back
        return {**super().__getstate__(), "expected": self.expected}


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
    """A stackstac ``reader`` checking each asset's file CRS, geotransform and shape against its
    item's (see :class:`CrsCheckedReader`); items as the dicts passed to ``stackstac.stack``."""
    keys = list(assets)
    expected: dict[str, AssetGeoref] = {}
    for d in item_dicts:
        for key in keys:
            asset = d.get("assets", {}).get(key)
            if not asset or not asset.get("href"):
                continue
            georef = asset_georef(d, key)
            if georef is not None:
                expected[asset["href"]] = georef
    return functools.partial(CrsCheckedReader, expected=expected)


_HTTP_STATUS = re.compile(r"HTTP (?:response )?code:? ?(\d{3})|HTTP error code ?: ?(\d{3})")
#: stackstac's "Error opening '<url>': ..." (quotes escaped when dask.distributed re-wraps it).
_STACKSTAC_URL = re.compile(r"Error (?:opening|reading .*? from) \\*'(.+?)\\*': ")
#: HTTP answers that retrying the same request cannot fix (403 is re-signed and retried once).
_PERMANENT_STATUS = {400, 401, 404, 405, 410, 416}
#: HTTP answers that say the asset is gone (the item may have been reprocessed or removed).
GONE_STATUS = frozenset({404, 410})
#: GDAL's words for a remote open that failed without naming a status. vsicurl's HEAD was
#: answered, then the ranged GET of the file's header failed (404, 403, 503 ...): GDAL keeps
#: that status only in a debug message and reports the empty header as an unknown format.
_OPEN_WITHOUT_STATUS = re.compile(
    r"not recognized as (?:being in )?a supported file format|No such file or directory|does not exist in the file system",
    re.IGNORECASE,
)
#: Attribute under which :func:`read_failure` keeps its answer on the exception (one probe per error).
_FAILURE_ATTR = "_slidewatch_read_failure"

#: Environment variable: how long (seconds) slidewatch keeps retrying a failing read.
READ_RETRY_ENV = "SLIDEWATCH_READ_RETRY_SECONDS"
#: Its default: two minutes of tile retries, counted from a tile's first failed read.
DEFAULT_READ_RETRY_S = 120.0


def read_retry_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``SLIDEWATCH_READ_RETRY_SECONDS`` (default :data:`DEFAULT_READ_RETRY_S`): the longest
    time a failing read of a write tile is retried, counted from its first failure; ``0``
    turns tile retries off. A value that is not a number ≥ 0 is ignored with a warning."""
    env = os.environ if environ is None else environ
    raw = env.get(READ_RETRY_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_READ_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        log.warning("ignoring %s=%r: not a number of seconds >= 0; using %s", READ_RETRY_ENV, raw, DEFAULT_READ_RETRY_S)
        return DEFAULT_READ_RETRY_S
    return value


@dataclass(frozen=True)
class ReadFailure:
    """What went wrong reading one asset: its URL (may hold tokens: redact before showing),
    the HTTP status if any, GDAL's reason, whether it was read over HTTP, and whether the
    status was learned by asking the server again (``probed``, see :func:`probe_http_status`)."""

    url: str | None
    status: int | None
    reason: str
    remote: bool
    probed: bool = False

    @property
    def expired(self) -> bool:
        """A 403: for signed URLs, usually an expired token (re-sign, then retry once)."""
        return self.status == 403

    @property
    def gone(self) -> bool:
        """A 404/410: the asset is not there (any more); retrying cannot bring it back."""
        return self.status in GONE_STATUS

    @property
    def transient(self) -> bool:
        """Worth retrying: a remote read that did not fail with a permanent HTTP status."""
        return self.remote and self.status not in _PERMANENT_STATUS

    @property
    def described(self) -> str:
        """The reason, led by the HTTP status when the reason does not name it (may hold
        tokens: redact before showing)."""
        if self.status is None or _names_status(self.reason, self.status):
            return self.reason
        return f"HTTP {self.status}: {self.reason}"


def _names_status(text: str, status: int) -> bool:
    return any(int(a or b) == status for a, b in _HTTP_STATUS.findall(text)) or f"HTTP {status}" in text


def probe_http_status(url: str, timeout_s: float | None = None) -> int | None:
    """The HTTP status ``url`` answers now to a ranged GET of its first byte, or None when
    there is no answer (no connection, a timeout, not an HTTP URL).

    A GET of the header, as GDAL's own open does, not a HEAD: the failing request may be the
    GET while the HEAD passes, and presigned URLs (S3) are valid for one method only. Same
    timeouts as GDAL's (``GDAL_HTTP_CONNECTTIMEOUT``/``GDAL_HTTP_TIMEOUT`` with their
    ``SLIDEWATCH_*`` overrides, at most 30 s), proxies and CA bundle from the environment
    (``HTTPS_PROXY``, ``CURL_CA_BUNDLE``) as curl reads them; no retry: one request.
    """
    import requests

    plain = url.removeprefix("/vsicurl/")
    if not re.match(r"^https?://", plain, re.IGNORECASE):
        return None
    opts = gdal_options()
    read_s = min(float(opts["GDAL_HTTP_TIMEOUT"]), 30.0) if timeout_s is None else timeout_s  # type: ignore[arg-type]
    connect_s = min(float(opts["GDAL_HTTP_CONNECTTIMEOUT"]), read_s)  # type: ignore[arg-type]
    try:
        with requests.get(plain, headers={"Range": "bytes=0-0"}, timeout=(connect_s, read_s), stream=True) as resp:
            return int(resp.status_code)
    except requests.RequestException as err:
        log.debug("no answer re-requesting %s: %s", redact(plain), redact(str(err)))
        return None


def read_failure(exc: BaseException, *, probe: bool = True) -> ReadFailure | None:
    """Explain a pixel-read error raised through stackstac/rasterio; None for anything else.

    GDAL's message names the HTTP status when the failing request was a HEAD or a block, but
    not when it was the ranged GET of the file's header (the open): it then says only "not
    recognized as being in a supported file format". For such a remote failure, with
    ``probe``, the status is learned by asking the server once more
    (:func:`probe_http_status`); the answer is kept on the exception, so asking about the
    same error again (retry test, retry hook, final message) costs no second request.
    """
    import rasterio.errors

    known = getattr(exc, _FAILURE_ATTR, None)
    if isinstance(known, ReadFailure):
        return known
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
    probed = False
    if probe and status is None and url and remote and _OPEN_WITHOUT_STATUS.search(f"{reason} {detail}"):
        status = probe_http_status(url)
        probed = status is not None
        if probed:  # GDAL's words without the (signed) path it repeats: the message names the URL
            said = _OPEN_WITHOUT_STATUS.search(reason)
            reason = (f"the file's header answers HTTP {status}; GDAL: "
                      f"{said.group(0) if said else reason}")
    failure = ReadFailure(url=url, status=status, reason=reason, remote=remote, probed=probed)
    if probe:
        try:
            setattr(exc, _FAILURE_ATTR, failure)
        except (AttributeError, TypeError):  # pragma: no cover - exceptions with __slots__
            pass
    return failure


class ReadRetryBudget:
    """When to stop retrying the failed reads of one run's write tiles, besides the retry count.

    * 429, 5xx and network errors: each tile is retried for at most ``seconds``
      (:func:`read_retry_seconds`, ``SLIDEWATCH_READ_RETRY_SECONDS``), counted from that
      tile's first failed read. A retry is made only when its pause and an attempt as long
      as the longest retry so far still end within that time, so a tile that keeps failing
      gives up after its first attempt plus at most ``seconds``.
    * 403: re-signed and retried once per tile; a freshly signed URL refused again means the
      account or key lacks access, not an expired token.
    * 404/410 and other permanent answers are never retried (``retry_if`` says so first).

    Thread-safe: tiles written concurrently share one budget, each with its own clock.
    """

    def __init__(self, seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = read_retry_seconds() if seconds is None else max(0.0, float(seconds))
        self._clock = clock
        self._first: dict[str, float] = {}  # tile → when it first failed
        self._granted: dict[str, tuple[float, float]] = {}  # tile → (when the last retry was granted, its pause)
        self._attempt_s: dict[str, float] = {}  # tile → its longest retry so far
        self._resigned: set[str] = set()
        self._lock = threading.Lock()

    def elapsed_s(self, key: str) -> float:
        """Seconds since tile ``key`` first failed (0 before that)."""
        with self._lock:
            first = self._first.get(key)
        return 0.0 if first is None else self._clock() - first

    def stop(self, failure: ReadFailure | None, key: str, pause_s: float = 0.0) -> str | None:
        """Called after each failed attempt at tile ``key``, before pausing ``pause_s`` for the
        next one: None to go on, else why not (``"resigned"`` or ``"time"``)."""
        pause_s = max(0.0, pause_s)
        with self._lock:
            now = self._clock()
            first = self._first.setdefault(key, now)
            granted = self._granted.get(key)
            if granted is not None:  # the retry granted then has just failed: how long did it take?
                took = now - granted[0] - granted[1]
                self._attempt_s[key] = max(self._attempt_s.get(key, 0.0), took)
            if failure is not None and failure.expired:
                if key in self._resigned:
                    return "resigned"
                self._resigned.add(key)
            if now - first + pause_s + self._attempt_s.get(key, 0.0) > self.seconds:
                return "time"
            self._granted[key] = (now, pause_s)
        return None


def read_error(failure: ReadFailure, zone: str, tile: str, attempts: int, done: int, total: int,
               *, retried_s: float | None = None, budget_s: float | None = None) -> SlidewatchError:
    """The SlidewatchError for a read that failed for good in write tile ``tile`` of ``zone``
    after ``attempts`` tries (over ``retried_s`` seconds of retries, against a ``budget_s``
    bound), ``done`` of ``total`` tiles being kept (tokens and secrets redacted). The message
    names the HTTP status and says what it means: gone (404/410), refused even when freshly
    signed (403), rate-limited (429) or unavailable (5xx), or a network error."""
    url = redact(failure.url) if failure.url else "an input asset"
    reason = redact(failure.reason)
    where = f"tile {tile} of zone {zone}; {done} of {total} tiles are written and kept"
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if retried_s is not None and attempts > 1:
        tries += f" over {retried_s:.0f} s"
    resume = "then rerun the same command: finished tiles are kept and only the missing ones are read."
    if not failure.remote:
        return InputDataError(
            f"Cannot read {url}: {reason} ({where}).",
            f"the file is missing, corrupt or truncated: restore or regenerate it (check it with `rio info`), {resume}",
        )
    code = failure.status
    more_time = f"{READ_RETRY_ENV}" + (f" (now {budget_s:g} s)" if budget_s is not None else "")
    if code == 403:
        what = "storage refused it even with a freshly signed URL: the account or key lacks access"
        hint = ("check your access: set PC_SDK_SUBSCRIPTION_KEY to a Planetary Computer key that may read this "
                "collection (other catalogs: the credentials of your signer), and check the system clock (a wrong "
                f"clock makes fresh tokens look expired), {resume}")
    elif code in GONE_STATUS:
        what = "the asset is gone (not retried); the item may have been reprocessed or removed from the catalog"
        hint = ("rerun later so that the search finds the item's current version (a reprocessed item has new "
                "asset URLs), or choose a time window without it; report it to the catalog if it stays gone, "
                f"{resume}")
    elif code == 429:
        what = "the server is rate-limiting (too many requests)"
        hint = (f"wait and rerun, read fewer tiles at once (SLIDEWATCH_TILE_CONCURRENCY), or allow more retry time "
                f"with {more_time}, {resume}")
    elif code is not None and code >= 500:
        what = f"the server kept answering HTTP {code} (unavailable or overloaded)"
        hint = f"rerun later, or allow more retry time with {more_time}, {resume}"
    elif failure.probed and code is not None and 200 <= code < 300:
        what = f"the server answers (HTTP {code}) but GDAL cannot read the file as a raster"
        hint = ("the file is corrupt or not a GeoTIFF: report it to the catalog or choose a time window without "
                f"the item, {resume}")
    else:
        what = ""
        hint = ("check your network, or raise SLIDEWATCH_GDAL_HTTP_TIMEOUT / SLIDEWATCH_GDAL_HTTP_MAX_RETRY / "
                f"{READ_RETRY_ENV} for a slow or flaky link, {resume}")
    head = f"Reading {url} failed after {tries} ({redact(failure.described)}) for {where}"
    return CatalogError(f"{head}: {what}." if what else f"{head}.", hint)
