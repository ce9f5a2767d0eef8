"""Why a pixel read failed, and what to do about it: the asset's URL, the HTTP status (asked
of the server once when GDAL lost it), whether retrying can help, a retry budget per tile,
and the one-line error for a read that failed for good.

Statuses: 404/410 mean the asset is gone (never retried); 403 is re-signed once (an expired
SAS token), then reported as an account problem; 429 and 5xx are retried within
``SLIDEWATCH_READ_RETRY_SECONDS`` per tile. GDAL's own settings and the CRS/georeferencing
checks are :mod:`pipeline.acquire.gdal`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.core.errors import CatalogError, InputDataError, SlidewatchError
from pipeline.acquire.gdal import gdal_options
from pipeline.core.secrets import redact

log = logging.getLogger(__name__)


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
