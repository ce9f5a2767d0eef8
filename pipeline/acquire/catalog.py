"""STAC search with pystac-client, Planetary Computer signing, and saved item sets.

Planetary Computer (the default endpoint) is opened with
``modifier=planetary_computer.sign_inplace``; any other STAC API is used plain. Every
request retries 429, 5xx, dropped connections and timeouts with exponential backoff
(urllib3's ``Retry`` inside pystac-client's ``StacApiIO``), searches follow every page,
and a search matching more than ``CubeConfig.max_items`` items is refused (``--max-items``
raises the limit), never cut short.

Sentinel-1 RTC on Planetary Computer needs an account (``msft:requires_account``): its SAS
token endpoint refuses anonymous users with 401/403. :func:`search_inputs` asks the token
endpoint once per source before searching (``CubeConfig.sar``): ``auto`` falls back to
GRD with a note, ``rtc`` fails naming the account and the fix. Because
SAS tokens expire, :func:`sign_for_read` re-signs fresh copies of the items right before
pixels are read (once per write tile), from hrefs stripped of any earlier token; after a
``403`` (an expired token) :func:`refresh_signatures` drops cached tokens so the next
signing fetches new ones. Signing goes through a :class:`Signer` (Planetary Computer's by
default; :func:`register_signer` adds one for another STAC API, e.g. a fake in tests).

Credentials never leave the process: hrefs and messages go through
:mod:`pipeline.core.secrets` before they are saved, logged or shown.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import pystac
import requests
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.core.collections import (
    COP_DEM,
    NO_SAR,
    PC_KEY_ENV,
    PLANETARY_COMPUTER_STAC,
    SENTINEL1_GRD,
    SENTINEL1_RTC,
    SENTINEL1_RTC_STORAGE,
    SENTINEL2,
)
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import (
    AccountRequiredError,
    CatalogError,
    EmptySearchError,
    RegionError,
)
from pipeline.acquire.items import (
    PlanetaryComputerSigner,
    Signer,
    signer_for,
)
from pipeline.plan.regions import BBox

log = logging.getLogger(__name__)

#: Retries of one STAC API or token request after a 429, a 5xx, a dropped connection or a
#: timeout (connection failures: at most :data:`CONNECT_RETRIES`).
SEARCH_RETRIES = 5
CONNECT_RETRIES = 2
#: Exponential backoff factor, seconds: waits of 0, 2, 4, 8, 16 s (at most 60 s each).
SEARCH_BACKOFF_S = 1.0
RETRY_STATUSES = (429, 500, 502, 503, 504)
#: Longest wait a server's ``Retry-After`` may ask for, seconds.
RETRY_AFTER_MAX_S = 60.0
#: Largest page asked of a STAC API (Planetary Computer's maximum is 1000).
PAGE_SIZE = 250


class _Retry(Retry):
    """urllib3's ``Retry`` with a server's ``Retry-After`` capped at :data:`RETRY_AFTER_MAX_S`."""

    def get_retry_after(self, response):  # type: ignore[no-untyped-def]
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_MAX_S)


def retry_policy(retries: int = SEARCH_RETRIES, backoff: float = SEARCH_BACKOFF_S) -> Retry:
    """urllib3 retries for STAC and token requests: 429/5xx, connection errors and timeouts,
    GET and POST (a STAC search is a read), with backoff; the last answer is returned (not
    raised) so its HTTP status can be reported."""
    return _Retry(
        total=retries, connect=min(retries, CONNECT_RETRIES), read=retries, status=retries, other=0,
        allowed_methods=frozenset({"GET", "HEAD", "POST"}), status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff, backoff_max=60.0, raise_on_status=False,
    )


@dataclass(frozen=True)
class TokenCheck:
    """What Planetary Computer's SAS token endpoint answered for a collection's storage."""

    collection: str
    granted: bool
    status: int
    #: Whether a subscription key (``PC_SDK_SUBSCRIPTION_KEY``) was sent.
    with_key: bool

    def reason(self) -> str:
        """Why access was refused, one phrase (never the key itself)."""
        who = f"the key in {PC_KEY_ENV} was refused" if self.with_key else f"no {PC_KEY_ENV} is set"
        return (f"{self.collection} on Planetary Computer needs an account: its SAS token endpoint "
                f"answered HTTP {self.status} ({who})")


class ItemSource(Protocol):
    """The seam between slidewatch and a STAC API (faked in tests).

    ``search`` returns every matching item, and raises (naming ``--max-items``) when more
    than ``max_items`` match. A source whose assets need tokens may also offer
    ``token_check(collection) -> TokenCheck | None`` (see :meth:`StacApiSource.token_check`);
    sources without it have no token endpoint.
    """

    url: str

    def search(
        self,
        collection: str,
        bbox: BBox,
        datetime: str | None,
        max_cloud_cover: float | None = None,
        max_items: int | None = None,
    ) -> list[pystac.Item]: ...


@dataclass
class StacApiSource:
    """A STAC API opened with pystac-client; Planetary Computer items are signed."""

    url: str
    client: Client
    #: Signs the items when they are read (Planetary Computer's for its API); None: plain.
    signer: Signer | None = None
    retries: int = SEARCH_RETRIES
    backoff: float = SEARCH_BACKOFF_S
    timeout: float = 30.0
    _tokens: dict[str, TokenCheck | None] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls, url: str = PLANETARY_COMPUTER_STAC, timeout: float = 30.0, *,
        retries: int = SEARCH_RETRIES, backoff: float = SEARCH_BACKOFF_S,
    ) -> StacApiSource:
        """Open the STAC API at ``url``; every request retries as :func:`retry_policy` says.
        Items are signed at search (``planetary_computer.sign_inplace``) when the API's
        signer is Planetary Computer's (its own URL, or one given to :func:`register_signer`)."""
        signer = signer_for(url)
        modifier = None
        if isinstance(signer, PlanetaryComputerSigner):
            import planetary_computer

            modifier = planetary_computer.sign_inplace
        stac_io = StacApiIO(timeout=timeout, max_retries=retry_policy(retries, backoff))
        try:
            client = Client.open(url, modifier=modifier, stac_io=stac_io, timeout=timeout)
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and (status == 429 or status >= 500):
                raise CatalogError(
                    f"STAC API at {url} answered HTTP {status} after {retries + 1} tries: {str(exc)[:200]}",
                    "the STAC API is overloaded or down; retry later.",
                ) from None
            if status is not None:
                raise CatalogError(
                    f"STAC API at {url} answered HTTP {status}: {str(exc)[:200]}",
                    "check the --stac-url; it must be a STAC API landing page.",
                ) from None
            raise CatalogError(
                f"Could not reach the STAC API at {url}.",
                "check the URL and your network; for an offline try run `slidewatch demo`.",
            ) from None
        except Exception as exc:  # requests' ConnectionError, timeouts, bad JSON
            raise CatalogError(
                f"Could not reach the STAC API at {url} ({type(exc).__name__}).",
                "check the URL and your network; for an offline try run `slidewatch demo`.",
            ) from None
        return cls(url=url, client=client, signer=signer, retries=retries, backoff=backoff, timeout=timeout)

    def token_check(self, collection: str = SENTINEL1_RTC) -> TokenCheck | None:
        """Whether Planetary Computer's SAS token endpoint grants ``collection``'s storage
        (asked once per source, then remembered); None when this API has no token endpoint
        (it is not signed like Planetary Computer) or does not publish ``collection``."""
        if not isinstance(self.signer, PlanetaryComputerSigner):
            return None
        if collection not in self._tokens:
            self._tokens[collection] = _check_pc_token(self, collection)
        return self._tokens[collection]

    def search(
        self,
        collection: str,
        bbox: BBox,
        datetime: str | None,
        max_cloud_cover: float | None = None,
        max_items: int | None = None,
    ) -> list[pystac.Item]:
        """Every item of ``collection`` over ``bbox`` in ``datetime``, following all pages;
        refused (:func:`too_many_items`) when more than ``max_items`` match.

        ``max_cloud_cover`` is sent as a ``query`` on ``eo:cloud_cover`` when the API
        conforms to the Query extension, and applied to the results otherwise.
        """
        query = None
        client_side_cloud = False
        if max_cloud_cover is not None:
            if self.client.conforms_to(ConformanceClasses.QUERY):
                query = {"eo:cloud_cover": {"lt": max_cloud_cover}}
            else:
                client_side_cloud = True
        try:
            with warnings.catch_warnings():
                # Planetary Computer's landing page advertises its search link without a method
                # ("GET" by the spec) while its API takes POST, which pystac-client warns about on
                # every search; the POST is what we mean (paging tokens ride in the body).
                warnings.filterwarnings("ignore", message="The requested method 'POST' is not advertised")
                search = self.client.search(
                    collections=[collection],
                    bbox=list(bbox),
                    datetime=datetime,
                    query=query,
                    max_items=None if max_items is None else max_items + 1,  # one more tells "too many"
                    limit=PAGE_SIZE if max_items is None else min(PAGE_SIZE, max_items + 1),
                )
                items = list(search.items())
        except APIError as exc:
            raise _search_error(collection, self.url, exc, self.retries + 1) from None
        except requests.HTTPError as exc:  # from signing: Planetary Computer's token endpoint
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise CatalogError(
                    f"Signing {collection} items failed: Planetary Computer's SAS token endpoint answered "
                    f"HTTP {status} (the collection needs an account, or the key was refused).",
                    f"set {PC_KEY_ENV} to your Planetary Computer subscription key, or use --sar grd.",
                ) from None
            raise CatalogError(
                f"Signing {collection} items failed: Planetary Computer's SAS token endpoint answered HTTP {status}.",
                "the token service may be down; retry later (runs resume where they stopped).",
            ) from None
        except Exception as exc:
            raise CatalogError(
                f"Search of {collection!r} at {self.url} failed ({type(exc).__name__}: {str(exc)[:120]}).",
                "check your network and retry; runs resume where they stopped.",
            ) from None
        if max_items is not None and len(items) > max_items:
            raise too_many_items(collection, max_items, self.url)
        if client_side_cloud:
            items = [
                it for it in items
                if float(it.properties.get("eo:cloud_cover", 0.0)) < float(max_cloud_cover)  # type: ignore[arg-type]
            ]
        return items


def _search_error(collection: str, url: str, exc: APIError, tries: int) -> CatalogError:
    """A failed search as one line that names the HTTP status (or the missing answer)."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:160]
    if status is None:
        return CatalogError(
            f"Search of {collection!r} at {url} got no answer after {tries} tries ({text}).",
            "check your network and retry; runs resume where they stopped.",
        )
    if status in (401, 403):
        return CatalogError(
            f"Search of {collection!r} at {url} was refused (HTTP {status}): {text}",
            "this STAC API wants credentials; check --stac-url (Planetary Computer's search needs none).",
        )
    if status == 429 or status >= 500:
        return CatalogError(
            f"Search of {collection!r} at {url} failed with HTTP {status} after {tries} tries: {text}",
            "the STAC API is overloaded or down; retry later (runs resume where they stopped).",
        )
    return CatalogError(
        f"Search of {collection!r} at {url} failed with HTTP {status}: {text}",
        "check the collection id and the STAC API's status.",
    )


def too_many_items(collection: str, max_items: int, url: str) -> RegionError:
    """The refusal of a search that matches more than ``max_items`` items (none is dropped)."""
    narrow = "narrow --region or --start/--end" + (" or lower --max-cloud" if collection == SENTINEL2 else "")
    return RegionError(
        f"The search of {collection!r} at {url} matches more than {max_items} items (the --max-items limit).",
        f"{narrow}, or raise --max-items (e.g. --max-items {max_items * 4}) if the region needs them.",
    )


def _check_pc_token(source: StacApiSource, collection: str) -> TokenCheck | None:
    """Ask Planetary Computer's SAS token endpoint (``PC_SDK_SAS_URL``) for a token to
    ``collection``'s storage (``msft:storage_account``/``msft:container`` of its collection
    document, with the subscription key when one is set). A granted token is cached for
    signing. 401/403: not granted. Anything else after retries: CatalogError."""
    import planetary_computer
    from planetary_computer.settings import Settings

    account, container = SENTINEL1_RTC_STORAGE if collection == SENTINEL1_RTC else ("", "")
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry_policy(min(source.retries, 3), source.backoff))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        try:
            doc = session.get(f"{source.url.rstrip('/')}/collections/{collection}", timeout=source.timeout)
            if doc.status_code == 404:
                return None  # not published here: the search finds nothing
            if doc.ok:
                fields = doc.json()
                account = fields.get("msft:storage_account") or account
                container = fields.get("msft:container") or container
        except (requests.RequestException, ValueError) as exc:  # the token request says more
            log.debug("collection %s unreadable (%s); using the known storage", collection, type(exc).__name__)
        if not account or not container:
            return None
        settings = Settings.get()
        key = settings.subscription_key or None
        token_url = f"{settings.sas_url}/{account}/{container}"
        try:
            resp = session.get(token_url, timeout=source.timeout,
                               headers={"Ocp-Apim-Subscription-Key": key} if key else None)
        except requests.RequestException as exc:
            raise CatalogError(
                f"Could not reach Planetary Computer's SAS token endpoint {token_url} ({type(exc).__name__}).",
                "check your network and retry; runs resume where they stopped.",
            ) from None
    finally:
        session.close()
    if resp.status_code in (401, 403):
        return TokenCheck(collection, False, resp.status_code, bool(key))
    if not resp.ok:
        raise CatalogError(
            f"Planetary Computer's SAS token endpoint {token_url} answered HTTP {resp.status_code}"
            f"{f' after {min(source.retries, 3) + 1} tries' if resp.status_code in RETRY_STATUSES else ''}.",
            "the token service may be down; retry later (runs resume where they stopped).",
        )
    try:  # the signing of the search results and of every read reuses it
        planetary_computer.sas.TOKEN_CACHE[token_url] = planetary_computer.sas.SASToken(**resp.json())
    except Exception as exc:  # noqa: BLE001 - a cache miss only costs one more request
        log.debug("token of %s not cached: %s", collection, type(exc).__name__)
    return TokenCheck(collection, True, resp.status_code, bool(key))


@dataclass
class RunInputs:
    """The items one zone of a run reads, per role."""

    s2: list[pystac.Item]
    s1: list[pystac.Item]
    #: SAR scenes of the reference period (includes ``s1``), for the soil-moisture index.
    s1_history: list[pystac.Item]
    dem: list[pystac.Item]
    s1_collection: str = SENTINEL1_RTC
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        sar = {} if self.s1_collection == NO_SAR else {
            self.s1_collection: len(self.s1),
            f"{self.s1_collection} (reference history)": len(self.s1_history),
        }
        return {SENTINEL2: len(self.s2), **sar, COP_DEM: len(self.dem)}

    def all_items(self) -> list[pystac.Item]:
        seen: dict[str, pystac.Item] = {}
        for it in [*self.s2, *self.s1_history, *self.dem]:
            seen[f"{it.collection_id}/{it.id}"] = it
        return list(seen.values())

    def ids(self) -> dict[str, list[str]]:
        sar = {} if self.s1_collection == NO_SAR else {self.s1_collection: sorted(it.id for it in self.s1_history)}
        return {SENTINEL2: sorted(it.id for it in self.s2), **sar, COP_DEM: sorted(it.id for it in self.dem)}


def has_map_projection(item: pystac.Item) -> bool:
    """True when the item (or its vv asset) states a CRS and transform stackstac can use."""
    fields = [item.properties, *(a.extra_fields for a in item.assets.values())]
    has_crs = any(("proj:epsg" in f and f["proj:epsg"]) or f.get("proj:code") for f in fields)
    has_tr = any("proj:transform" in f for f in fields)
    return bool(has_crs and has_tr)


def _dual_pol(items: list[pystac.Item], collection: str, notes: list[str]) -> list[pystac.Item]:
    """The items with both ``vv`` and ``vh`` assets; a note names how many others were skipped."""
    kept = [it for it in items if "vv" in it.assets and "vh" in it.assets]
    if len(kept) < len(items):
        notes.append(
            f"{len(items) - len(kept)} {collection} item(s) without VV and VH assets (e.g. HH/HV scenes) "
            "were skipped: soil moisture uses VV."
        )
    return kept


def _item_time(item: pystac.Item) -> datetime:
    dt = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _in_window(item: pystac.Item, window: TimeWindow) -> bool:
    day = _item_time(item).date()
    return window.start <= day <= window.end


def _grd_note(grd: list[pystac.Item], lead: str, tail: str = "") -> str:
    """One line saying why sentinel-1-grd is used and what that means."""
    parts = [f"{lead} sentinel-1-grd (uncalibrated DN, usable only for the change-detection soil-moisture index)"]
    radar = sum(not has_map_projection(it) for it in grd)
    if radar:
        parts.append(f"{radar} scene(s) in radar geometry are geocoded through their GCPs with a DEM "
                     "terrain shift, without radiometric terrain correction")
    if tail:
        parts.append(tail)
    return "; ".join(parts) + "."


def sar_mode(source: ItemSource, config: CubeConfig) -> tuple[str, str | None]:
    """The SAR mode a search uses (``rtc``, ``grd``, ``none`` or ``auto``: RTC, falling back to
    GRD when no RTC item exists) and, when ``auto`` became ``grd``, the reason. ``auto`` and
    ``rtc`` ask the source's token endpoint first (once per source; sources without one
    decide by their items). ``rtc`` without access: CatalogError naming the account and the fix."""
    mode = config.sar
    check = getattr(source, "token_check", None)
    token = check(SENTINEL1_RTC) if mode in ("auto", "rtc") and callable(check) else None
    if token is None or token.granted:
        return mode, None
    if mode == "rtc":
        raise AccountRequiredError(
            f"{token.reason()}.",
            f"set {PC_KEY_ENV} to your Planetary Computer subscription key, or use --sar grd "
            "(Sentinel-1 GRD needs no key) or --sar auto.",
        )
    return "grd", token.reason()


def search_inputs(
    source: ItemSource,
    bbox: BBox,
    window: TimeWindow,
    config: CubeConfig = CubeConfig(),
) -> RunInputs:
    """Search the three collections a cube needs; Sentinel-1 as ``config.sar`` says
    (:func:`sar_mode`), with the RTC → GRD fallback in ``auto``.

    Raises :class:`EmptySearchError` naming the collection when a required search is empty,
    and refuses a search matching more than ``config.max_items`` items.
    """
    mode, denied = sar_mode(source, config)  # before any search: a refused RTC fails fast

    def search(collection: str, datetime: str | None, **kw: Any) -> list[pystac.Item]:
        items = source.search(collection, bbox, datetime, max_items=config.max_items, **kw)
        if len(items) > config.max_items:  # a source that does not refuse by itself
            raise too_many_items(collection, config.max_items, source.url)
        return items

    s2 = search(SENTINEL2, window.stac_datetime(), max_cloud_cover=config.max_cloud_cover)
    if not s2:
        raise EmptySearchError(
            f"No {SENTINEL2} scenes over {bbox} between {window.start} and {window.end} "
            f"with cloud cover below {config.max_cloud_cover}%.",
            "widen --start/--end or raise --max-cloud.",
        )
    hist = TimeWindow(window.start - timedelta(days=config.s1_reference_days), window.end).stac_datetime()
    notes: list[str] = []
    s1_hist: list[pystac.Item] = []
    s1_collection = SENTINEL1_RTC
    if mode == "none":
        s1_collection = NO_SAR
        notes.append("SAR off (--sar none): soil moisture comes from the NDMI proxy and is flagged in the quality layer.")
    elif mode == "grd":
        s1_hist, s1_collection = _dual_pol(search(SENTINEL1_GRD, hist), SENTINEL1_GRD, notes), SENTINEL1_GRD
        if denied:
            notes.append(_grd_note(s1_hist, f"{denied}: fell back to", f"set {PC_KEY_ENV} for RTC"))
        else:
            notes.append(_grd_note(s1_hist, "--sar grd: using"))
    else:
        s1_hist = _dual_pol(search(SENTINEL1_RTC, hist), SENTINEL1_RTC, notes)
        if not s1_hist and mode == "auto" and config.s1_grd_fallback:
            grd = _dual_pol(search(SENTINEL1_GRD, hist), SENTINEL1_GRD, notes)
            if grd:
                s1_hist, s1_collection = grd, SENTINEL1_GRD
                notes.append(_grd_note(grd, "No sentinel-1-rtc items: fell back to"))
    s1 = [it for it in s1_hist if _in_window(it, window)]
    if not s1 and mode != "none":
        notes.append(
            "No Sentinel-1 scene inside the time window: soil moisture falls back to the "
            "NDMI proxy and is flagged in the quality layer."
        )
    dem = search(COP_DEM, None)
    if not dem:
        raise EmptySearchError(
            f"No {COP_DEM} tiles over {bbox}.",
            "check the region (Copernicus DEM covers all land); with a custom --stac-url, "
            f"make sure it publishes {COP_DEM}.",
        )
    return RunInputs(s2=s2, s1=s1, s1_history=s1_hist, dem=dem, s1_collection=s1_collection, notes=notes)
