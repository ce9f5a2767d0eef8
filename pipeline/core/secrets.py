"""Credentials never leave the process: scrub them from URLs, text and log records.

:func:`unsigned_href` strips SAS tokens and other credential query parameters from hrefs
(saved items, provenance), :func:`redact` strips them, and secret environment values such
as the Planetary Computer subscription key, from any text (error messages), and
:func:`install_log_redaction` attaches :class:`RedactingFilter` to the loggers that may
print signed URLs (:func:`install_handler_redaction` to the handlers that write them).
Foundation: imports nothing else of ours.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

__all__ = ["HANDLER_LOGGERS", "LOG_PREFIXES", "SECRET_ENV_VARS", "RedactingFilter", "install_handler_redaction",
           "install_log_redaction", "redact", "unsigned_href"]

_BLOB_DOMAIN = ".blob.core.windows.net"


#: Query parameters that carry credentials (Azure SAS, AWS/GCS presigned URLs, API keys).
_SECRET_PARAMS = frozenset({
    "sig", "signature", "se", "st", "sp", "sv", "sr", "ss", "srt", "spr", "si", "sdd",
    "skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid",
    "token", "access_token", "auth", "key", "api_key", "apikey", "api-key",
    "subscription-key", "subscription_key", "ocp-apim-subscription-key", "awsaccesskeyid", "expires",
})
_SECRET_PREFIXES = ("x-amz-", "x-goog-")
_URL_RE = re.compile(r"(?:/vsicurl/)?https?://[^\s'\"<>()\[\]{},]+")
#: Environment variables whose values are secrets to scrub from any text we show or save.
SECRET_ENV_VARS = ("PC_SDK_SUBSCRIPTION_KEY", "EARTHDATA_TOKEN", "EARTHDATA_PASSWORD")


def _is_secret_param(name: str) -> bool:
    low = name.lower()
    return low in _SECRET_PARAMS or low.startswith(_SECRET_PREFIXES)


def unsigned_href(href: str) -> str:
    """``href`` without credentials: no query string at all for Azure Blob Storage (SAS
    tokens), and no credential parameters (signatures, tokens, keys) for any other URL."""
    parsed = urlparse(href)
    if not parsed.query or parsed.scheme not in ("http", "https"):
        return href
    if parsed.netloc.endswith(_BLOB_DOMAIN):
        return urlunparse(parsed._replace(query=""))
    pairs = parse_qsl(parsed.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if not _is_secret_param(k)]
    if len(kept) == len(pairs):
        return href
    return urlunparse(parsed._replace(query=urlencode(kept)))


def redact(text: str) -> str:
    """``text`` with credentials removed from every URL in it and secret env values masked."""
    out = _URL_RE.sub(lambda m: _redact_url(m.group(0)), text)
    for var in SECRET_ENV_VARS:
        secret = os.environ.get(var, "")
        if len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


def _redact_url(url: str) -> str:
    prefix = "/vsicurl/" if url.startswith("/vsicurl/") else ""
    return prefix + unsigned_href(url[len(prefix):])


class RedactingFilter(logging.Filter):
    """A logging filter that strips credentials (see :func:`redact`) from records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logger's business
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_REDACTOR = RedactingFilter()
#: Logger name prefixes that may print signed URLs: GDAL messages (through rasterio), readers,
#: HTTP clients, Dask's distributed scheduler and workers (their "Compute Failed" records and
#: pickled exceptions carry the failing task's signed href), the event loop and web server
#: they run on, Prefect's task logs, and slidewatch itself.
LOG_PREFIXES = ("rasterio", "stackstac", "urllib3", "requests", "pystac_client", "planetary_computer",
                "distributed", "dask", "tornado", "bokeh", "asyncio", "prefect",
                "pipeline", "flows", "models")
#: Loggers whose handlers get the filter too (:func:`install_handler_redaction`): the root's
#: (where records of every logger end up) and distributed's own stream handler.
HANDLER_LOGGERS = ("", "distributed")


def install_log_redaction(prefixes: Sequence[str] = LOG_PREFIXES) -> None:
    """Attach :class:`RedactingFilter` to every existing logger under ``prefixes`` (idempotent).

    Logger filters only see records of their own logger, so each logger gets one; call again
    after importing more modules.
    """
    names = set(prefixes) | {n for n in logging.root.manager.loggerDict
                             if any(n == p or n.startswith(p + ".") for p in prefixes)}
    for name in names:
        lg = logging.getLogger(name)
        if _REDACTOR not in lg.filters:
            lg.addFilter(_REDACTOR)


def install_handler_redaction(loggers: Sequence[str] = HANDLER_LOGGERS) -> None:
    """Attach :class:`RedactingFilter` to every handler of ``loggers`` (idempotent).

    A handler's filter sees every record the handler writes, whichever logger made it, also
    loggers created after this call; so filtering the root's handlers (and distributed's own
    stream handler, which does not propagate) covers what :func:`install_log_redaction`
    cannot: loggers that do not exist yet. Call again after adding handlers.
    """
    for name in loggers:
        for handler in logging.getLogger(name or None).handlers:
            if _REDACTOR not in handler.filters:
                handler.addFilter(_REDACTOR)
