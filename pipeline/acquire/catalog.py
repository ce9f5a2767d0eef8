"""STAC search with pystac-client, Planetary Computer signing, and saved item sets.

Planetary Computer (the default endpoint) is opened with
``modifier=planetary_computer.sign_inplace``; any other STAC API is used plain. Because
SAS tokens expire, :func:`sign_for_read` re-signs fresh copies of the items right before
pixels are read (once per write tile), from hrefs stripped of any earlier token; after a
``403`` (an expired token) :func:`refresh_signatures` drops cached tokens so the next
signing fetches new ones. Signing goes through a :class:`Signer` (Planetary Computer's by
default; :func:`register_signer` adds one for another STAC API, e.g. a fake in tests).

Credentials never leave the process: hrefs and messages go through
:mod:`pipeline.core.secrets` before they are saved, logged or shown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import pystac
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError

from pipeline.core.collections import (
    COP_DEM,
    PLANETARY_COMPUTER_STAC,
    SENTINEL1_GRD,
    SENTINEL1_RTC,
    SENTINEL2,
)
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import CatalogError, EmptySearchError, InputDataError
from pipeline.core.files import atomic_write_text
from pipeline.core.secrets import unsigned_href
from pipeline.plan.regions import BBox

log = logging.getLogger(__name__)

def is_planetary_computer(url: str) -> bool:
    """True for Planetary Computer's STAC API (whose assets need SAS signing)."""
    return urlparse(url).netloc.endswith("planetarycomputer.microsoft.com")


class ItemSource(Protocol):
    """The seam between slidewatch and a STAC API (faked in tests)."""

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

    @classmethod
    def open(cls, url: str = PLANETARY_COMPUTER_STAC, timeout: float = 30.0) -> StacApiSource:
        modifier = None
        if is_planetary_computer(url):
            import planetary_computer

            modifier = planetary_computer.sign_inplace
        try:
            client = Client.open(url, modifier=modifier, timeout=timeout)
        except APIError as exc:
            if getattr(exc, "status_code", None) is not None:
                raise CatalogError(
                    f"STAC API at {url} answered HTTP {exc.status_code}: {str(exc)[:200]}",
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
        return cls(url=url, client=client)

    def search(
        self,
        collection: str,
        bbox: BBox,
        datetime: str | None,
        max_cloud_cover: float | None = None,
        max_items: int | None = None,
    ) -> list[pystac.Item]:
        """Every item of ``collection`` over ``bbox`` in ``datetime``, following all pages.

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
            search = self.client.search(
                collections=[collection],
                bbox=list(bbox),
                datetime=datetime,
                query=query,
                max_items=max_items,
                limit=250,
            )
            items = list(search.items())
        except APIError as exc:
            raise CatalogError(
                f"Search of {collection!r} at {self.url} failed: {str(exc)[:200]}",
                "check the collection id and the STAC API's status.",
            ) from None
        except Exception as exc:
            raise CatalogError(
                f"Search of {collection!r} at {self.url} failed ({type(exc).__name__}: {str(exc)[:120]}).",
                "check your network and retry; runs resume where they stopped.",
            ) from None
        if client_side_cloud:
            items = [
                it for it in items
                if float(it.properties.get("eo:cloud_cover", 0.0)) < float(max_cloud_cover)  # type: ignore[arg-type]
            ]
        return items


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
        return {
            SENTINEL2: len(self.s2),
            self.s1_collection: len(self.s1),
            f"{self.s1_collection} (reference history)": len(self.s1_history),
            COP_DEM: len(self.dem),
        }

    def all_items(self) -> list[pystac.Item]:
        seen: dict[str, pystac.Item] = {}
        for it in [*self.s2, *self.s1_history, *self.dem]:
            seen[f"{it.collection_id}/{it.id}"] = it
        return list(seen.values())

    def ids(self) -> dict[str, list[str]]:
        return {
            SENTINEL2: sorted(it.id for it in self.s2),
            self.s1_collection: sorted(it.id for it in self.s1_history),
            COP_DEM: sorted(it.id for it in self.dem),
        }


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


def search_inputs(
    source: ItemSource,
    bbox: BBox,
    window: TimeWindow,
    config: CubeConfig = CubeConfig(),
) -> RunInputs:
    """Search the three collections a cube needs, with the Sentinel-1 RTC → GRD fallback.

    Raises :class:`EmptySearchError` naming the collection when a required search is empty.
    """
    s2 = source.search(
        SENTINEL2, bbox, window.stac_datetime(), max_cloud_cover=config.max_cloud_cover,
        max_items=config.max_items,
    )
    if not s2:
        raise EmptySearchError(
            f"No {SENTINEL2} scenes over {bbox} between {window.start} and {window.end} "
            f"with cloud cover below {config.max_cloud_cover}%.",
            "widen --start/--end or raise --max-cloud.",
        )
    hist_window = TimeWindow(window.start - timedelta(days=config.s1_reference_days), window.end)
    notes: list[str] = []
    s1_collection = SENTINEL1_RTC
    s1_hist = _dual_pol(source.search(SENTINEL1_RTC, bbox, hist_window.stac_datetime(), max_items=config.max_items),
                        SENTINEL1_RTC, notes)
    if not s1_hist and config.s1_grd_fallback:
        grd = _dual_pol(source.search(SENTINEL1_GRD, bbox, hist_window.stac_datetime(), max_items=config.max_items),
                        SENTINEL1_GRD, notes)
        if grd:
            s1_hist, s1_collection = grd, SENTINEL1_GRD
            radar = sum(not has_map_projection(it) for it in grd)
            notes.append(
                "No sentinel-1-rtc items: fell back to sentinel-1-grd (uncalibrated DN, usable only for "
                "the change-detection soil-moisture index)"
                + (f"; {radar} scene(s) in radar geometry are geocoded through their GCPs with a DEM "
                   "terrain shift, without radiometric terrain correction." if radar else ".")
            )
    s1 = [it for it in s1_hist if _in_window(it, window)]
    if not s1:
        notes.append(
            "No Sentinel-1 scene inside the time window: soil moisture falls back to the "
            "NDMI proxy and is flagged in the quality layer."
        )
    dem = source.search(COP_DEM, bbox, None, max_items=config.max_items)
    if not dem:
        raise EmptySearchError(
            f"No {COP_DEM} tiles over {bbox}.",
            "check the region (Copernicus DEM covers all land); with a custom --stac-url, "
            f"make sure it publishes {COP_DEM}.",
        )
    return RunInputs(s2=s2, s1=s1, s1_history=s1_hist, dem=dem, s1_collection=s1_collection, notes=notes)


def item_bbox(item: pystac.Item) -> tuple[float, float, float, float] | None:
    """An item's lon/lat bbox (2D), None when it has none; InputDataError when malformed."""
    bbox = item.bbox
    if bbox is None:
        return None
    vals = list(bbox)
    if len(vals) == 6:  # 3D: west, south, min z, east, north, max z
        vals = [vals[0], vals[1], vals[3], vals[4]]
    ok = len(vals) == 4
    try:
        w, s, e, n = (float(v) for v in vals) if ok else (0.0, 0.0, 0.0, 0.0)
    except (TypeError, ValueError):
        ok = False
    ok = ok and all(abs(v) < float("inf") for v in (w, s, e, n))
    ok = ok and -180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90
    if not ok:
        raise InputDataError(
            f"{item.collection_id} item {item.id!r} has an invalid bbox {bbox!r}.",
            "fix the item's bbox (west, south, east, north in degrees) in the catalog, or drop the item.",
        )
    return (w, s, e, n)


def items_over(items: Sequence[pystac.Item], epsg: int, bounds: tuple[float, float, float, float]) -> list[pystac.Item]:
    """Items whose bbox intersects the lon/lat footprint of ``bounds`` in EPSG:``epsg`` (items
    without a bbox are kept; a bbox with west > east crosses the antimeridian): the items
    that can hold pixels of one write tile."""
    from pyproj import Transformer

    w, s, e, n = Transformer.from_crs(epsg, 4326, always_xy=True).transform_bounds(*bounds, densify_pts=11)
    out = []
    for it in items:
        box = item_bbox(it)
        if box is None:
            out.append(it)
            continue
        iw, is_, ie, in_ = box
        lon_ok = (iw <= e and ie >= w) if iw <= ie else (iw <= e or ie >= w)
        if lon_ok and is_ <= n and in_ >= s:
            out.append(it)
    return out


def unsign_item(item: pystac.Item) -> pystac.Item:
    """A copy of ``item`` whose asset hrefs carry no SAS token (safe to save or log)."""
    out = item.clone()
    for asset in out.assets.values():
        asset.href = unsigned_href(asset.href)
    return out


class Signer(Protocol):
    """Signs item asset hrefs for reading; ``refresh`` forgets cached tokens (after a 403)."""

    def sign(self, item: pystac.Item) -> pystac.Item:
        """A signed copy of ``item`` (hrefs given unsigned)."""
        ...

    def refresh(self) -> None:
        """Drop cached tokens so the next :meth:`sign` fetches fresh ones."""
        ...


class PlanetaryComputerSigner:
    """Planetary Computer's SAS signing (``planetary_computer.sign``) and its token cache."""

    def sign(self, item: pystac.Item) -> pystac.Item:
        import planetary_computer

        return planetary_computer.sign(item)

    def refresh(self) -> None:
        import planetary_computer.sas

        planetary_computer.sas.TOKEN_CACHE.clear()


_SIGNERS: dict[str, Signer] = {}


def register_signer(stac_url: str, signer: Signer | None) -> None:
    """Use ``signer`` for items of the STAC API at ``stac_url`` (``None`` removes it)."""
    if signer is None:
        _SIGNERS.pop(stac_url.rstrip("/"), None)
    else:
        _SIGNERS[stac_url.rstrip("/")] = signer


def signer_for(stac_url: str) -> Signer | None:
    """The signer of a STAC API: a registered one, Planetary Computer's, or None (plain)."""
    registered = _SIGNERS.get(stac_url.rstrip("/"))
    if registered is not None:
        return registered
    return PlanetaryComputerSigner() if is_planetary_computer(stac_url) else None


def sign_for_read(items: Sequence[pystac.Item], stac_url: str) -> list[pystac.Item]:
    """Fresh signed copies of ``items`` for reading now (plain copies when unsigned)."""
    signer = signer_for(stac_url)
    if signer is None:
        return list(items)
    return [signer.sign(unsign_item(it)) for it in items]


def refresh_signatures(stac_url: str) -> None:
    """Forget cached tokens of ``stac_url``'s signer (call after a 403 from storage)."""
    signer = signer_for(stac_url)
    if signer is not None:
        signer.refresh()


def save_items(items: Sequence[pystac.Item], path: Path) -> None:
    """Save items (tokens stripped) as a FeatureCollection, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "type": "FeatureCollection",
        "features": [unsign_item(it).to_dict(transform_hrefs=False) for it in items],
    }
    atomic_write_text(path, json.dumps(doc))


def load_items(path: Path) -> list[pystac.Item]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return [pystac.Item.from_dict(f) for f in doc.get("features", [])]
