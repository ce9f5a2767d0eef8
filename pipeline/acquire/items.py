"""What is done with items once found: their bboxes checked, the ones under a write tile
picked, their hrefs signed for reading (and re-signed after a 403) or stripped of every
token before they are saved. Search itself is :mod:`pipeline.acquire.catalog`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import pystac

from pipeline.core.errors import InputDataError
from pipeline.core.files import atomic_write_text
from pipeline.core.secrets import unsigned_href

__all__ = [
    "BBOX_SLACK_DEG",
    "is_planetary_computer",
    "PlanetaryComputerSigner",
    "Signer",
    "item_bbox",
    "items_over",
    "load_items",
    "refresh_signatures",
    "register_signer",
    "save_items",
    "sign_for_read",
    "signer_for",
    "unsign_item",
]


def is_planetary_computer(url: str) -> bool:
    """True for Planetary Computer's STAC API (whose assets need SAS signing)."""
    return urlparse(url).netloc.endswith("planetarycomputer.microsoft.com")


#: How far (degrees) an item's bbox may reach past ±180° longitude: a few pixels of a
#: raster whose edge pixels are centred on the antimeridian.
BBOX_SLACK_DEG = 0.01


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
    # bboxes of pixel-is-area rasters reach half a pixel past ±180° (Planetary Computer's
    # Copernicus DEM tile at 180°W starts at -180.0014): accepted, then clamped
    slack = BBOX_SLACK_DEG
    ok = ok and -180 - slack <= w <= 180 + slack and -180 - slack <= e <= 180 + slack and -90 <= s <= n <= 90
    w, e = min(max(w, -180.0), 180.0), min(max(e, -180.0), 180.0)
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
    """A copy of ``item`` whose asset and link hrefs carry no token or key (safe to save or log)."""
    out = item.clone()
    for asset in out.assets.values():
        asset.href = unsigned_href(asset.href)
    for link in out.links:
        href = link.get_href(transform_href=False)
        if href:
            link.target = unsigned_href(href)
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
