"""STAC search with pystac-client, Planetary Computer signing, and saved item sets.

Planetary Computer (the default endpoint) is opened with
``modifier=planetary_computer.sign_inplace``; any other STAC API is used plain. Because
SAS tokens expire, :func:`sign_for_read` re-signs fresh copies of the items right before
pixels are read (once per write tile), from hrefs stripped of any earlier token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse, urlunparse

import pystac
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError

from pipeline.collections import (
    COP_DEM,
    PLANETARY_COMPUTER_STAC,
    SENTINEL1_GRD,
    SENTINEL1_RTC,
    SENTINEL2,
)
from pipeline.config import CubeConfig, TimeWindow
from pipeline.errors import CatalogError, EmptySearchError
from pipeline.regions import BBox

log = logging.getLogger(__name__)

_BLOB_DOMAIN = ".blob.core.windows.net"


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


def _has_projection(item: pystac.Item) -> bool:
    """True when the item (or its vv asset) states a CRS and transform stackstac can use."""
    fields = [item.properties, *(a.extra_fields for a in item.assets.values())]
    has_crs = any(("proj:epsg" in f and f["proj:epsg"]) or f.get("proj:code") for f in fields)
    has_tr = any("proj:transform" in f for f in fields)
    return bool(has_crs and has_tr)


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
    s1_hist = source.search(SENTINEL1_RTC, bbox, hist_window.stac_datetime(), max_items=config.max_items)
    if not s1_hist and config.s1_grd_fallback:
        grd = source.search(SENTINEL1_GRD, bbox, hist_window.stac_datetime(), max_items=config.max_items)
        s1_hist = [it for it in grd if _has_projection(it)]
        if grd and not s1_hist:
            notes.append(
                f"No sentinel-1-rtc items; {len(grd)} sentinel-1-grd items were found but carry no map "
                "projection (radar geometry with GCPs), which this version cannot read: soil moisture "
                "falls back to the NDMI proxy and is flagged in the quality layer."
            )
        if s1_hist:
            s1_collection = SENTINEL1_GRD
            notes.append(
                "No sentinel-1-rtc items: fell back to sentinel-1-grd (uncalibrated DN, "
                "usable only for the change-detection soil-moisture index)."
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


def unsigned_href(href: str) -> str:
    """``href`` without a SAS token (query string) when it points to Azure Blob Storage."""
    parsed = urlparse(href)
    if parsed.netloc.endswith(_BLOB_DOMAIN) and parsed.query:
        return urlunparse(parsed._replace(query=""))
    return href


def unsign_item(item: pystac.Item) -> pystac.Item:
    """A copy of ``item`` whose asset hrefs carry no SAS token (safe to save or log)."""
    out = item.clone()
    for asset in out.assets.values():
        asset.href = unsigned_href(asset.href)
    return out


def sign_for_read(items: Sequence[pystac.Item], stac_url: str) -> list[pystac.Item]:
    """Fresh signed copies of ``items`` for reading now (no-op copy outside Planetary Computer)."""
    if not is_planetary_computer(stac_url):
        return list(items)
    import planetary_computer

    return [planetary_computer.sign(unsign_item(it)) for it in items]


def save_items(items: Sequence[pystac.Item], path: Path) -> None:
    """Save items (tokens stripped) as a FeatureCollection, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "type": "FeatureCollection",
        "features": [unsign_item(it).to_dict(transform_hrefs=False) for it in items],
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def load_items(path: Path) -> list[pystac.Item]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return [pystac.Item.from_dict(f) for f in doc.get("features", [])]
