"""Search parsing, paging and signing against real recorded Planetary Computer responses.

The recorded bodies are served by a local HTTP server on 127.0.0.1 that stands in for
``https://planetarycomputer.microsoft.com/api/stac/v1`` (hrefs rewritten to it).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pystac
import numpy as np
import pytest

from pipeline.acquire import catalog, items
from pipeline.acquire.catalog import StacApiSource, search_inputs
from pipeline.acquire.items import load_items, save_items, sign_for_read, unsign_item
from pipeline.core.collections import PLANETARY_COMPUTER_STAC
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import CatalogError, EmptySearchError, SlidewatchError

PC = "https://planetarycomputer.microsoft.com/api/stac/v1"


class _Recorded(BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {}
    search_pages: list[bytes] = []
    requests: list[tuple[str, str, dict]] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/") or "/"
        self.requests.append(("GET", self.path, {}))
        body = self.routes.get(path)
        self._send(body if body is not None else b'{"code":"NotFound"}', 200 if body is not None else 404)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        payload = json.loads(self.rfile.read(length) or b"{}")
        self.requests.append(("POST", self.path, payload))
        page = 1 if "token" in payload else 0
        self._send(self.search_pages[page])


@pytest.fixture(scope="module")
def recorded_pc(shared_fixtures: Path):  # type: ignore[no-untyped-def]
    rec = shared_fixtures / "planetary-computer" / "pystac-client-recordings"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def local(p: Path) -> bytes:
        return p.read_text().replace(PC, base).encode()

    root = json.loads(local(rec / "planetary-computer-root.json"))
    _Recorded.routes = {"/": json.dumps(root).encode(), "/collections/sentinel-2-l2a": local(rec / "collections" / "sentinel-2-l2a.json")}
    page1 = json.loads(local(rec / "signing" / "s2search_07_FeatureCollection.json"))
    page2 = json.loads(local(rec / "datetime" / "s2dt_00_FeatureCollection.json"))
    page2["links"] = [link for link in page2.get("links", []) if link.get("rel") != "next"]
    _Recorded.search_pages = [json.dumps(page1).encode(), json.dumps(page2).encode()]
    _Recorded.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base, len(page1["features"]), len(page2["features"])
    server.shutdown()


def test_search_follows_pages_and_parses_pc_items(recorded_pc):  # type: ignore[no-untyped-def]
    base, n1, n2 = recorded_pc
    src = StacApiSource.open(base)
    items = src.search("sentinel-2-l2a", (-180, -90, 180, 90), "2024-05-01/2024-05-31", max_cloud_cover=None)
    assert len(items) == n1 + n2 == 250 + 33
    posts = [r for r in _Recorded.requests if r[0] == "POST"]
    assert posts[1][2]["token"].startswith("next:sentinel-2-l2a:")  # the recorded next token was sent back
    first = items[0]
    for key in ("B02", "B03", "B04", "B08", "B11", "B12", "SCL"):
        asset = first.assets[key]
        assert "proj:transform" in asset.extra_fields and "proj:shape" in asset.extra_fields
    assert first.assets["B11"].extra_fields["proj:transform"][0] == 20.0
    assert first.assets["B04"].extra_fields["proj:transform"][0] == 10.0
    from pipeline.acquire.cube import stackstac_dict

    zones = Counter(stackstac_dict(it)["properties"]["proj:epsg"] for it in items[:250])
    assert len(zones) >= 15  # the recorded page spans many UTM zones


def test_cloud_filter_query_or_client_side(recorded_pc):  # type: ignore[no-untyped-def]
    base, *_ = recorded_pc
    # the recorded (2021) landing page does not advertise the Query extension: filter client-side
    _Recorded.requests.clear()
    src = StacApiSource.open(base)
    items = src.search("sentinel-2-l2a", (0, 0, 1, 1), "2024-05-16/2024-05-16", max_cloud_cover=20.0)
    post = next(r for r in _Recorded.requests if r[0] == "POST")
    assert "query" not in post[2]
    assert items and all(it.properties["eo:cloud_cover"] < 20.0 for it in items)
    # an API that conforms to Query gets the filter sent
    src.client.add_conforms_to("QUERY")
    _Recorded.requests.clear()
    src.search("sentinel-2-l2a", (0, 0, 1, 1), "2024-05-16/2024-05-16", max_cloud_cover=20.0)
    post = next(r for r in _Recorded.requests if r[0] == "POST")
    assert post[2]["query"] == {"eo:cloud_cover": {"lt": 20.0}}


class _TokenHandler(BaseHTTPRequestHandler):
    count = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        type(self).count += 1
        body = json.dumps({"msft:expiry": "2099-01-01T00:00:00Z",
                           "token": f"st=2024-05-17T00%3A00%3A00Z&se=2099-01-01T00%3A00%3A00Z&sp=rl&sv=2021-06-08&sr=c&sig=fake{self.count}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_signing_and_resigning_recorded_items(shared_fixtures, monkeypatch):  # type: ignore[no-untyped-def]
    import planetary_computer
    from planetary_computer.settings import Settings

    doc = json.loads((shared_fixtures / "planetary-computer" / "pystac-client-recordings" / "signing" / "s2search_07_FeatureCollection.json").read_text())
    items = [pystac.Item.from_dict(f) for f in doc["features"][:3]]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1/token")
    Settings.get.cache_clear()
    planetary_computer.sas.TOKEN_CACHE.clear()
    try:
        signed = sign_for_read(items, PLANETARY_COMPUTER_STAC)
        href = signed[0].assets["B04"].href
        assert href.startswith(items[0].assets["B04"].href) and "sig=fake" in href and "se=" in href
        assert "sig=" not in items[0].assets["B04"].href  # originals untouched
        # re-signing strips the old token first, then signs again
        assert unsign_item(signed[0]).assets["B04"].href == items[0].assets["B04"].href
        planetary_computer.sas.TOKEN_CACHE.clear()
        resigned = sign_for_read(signed, PLANETARY_COMPUTER_STAC)
        assert resigned[0].assets["B04"].href != href and resigned[0].assets["B04"].href.count("sig=") == 1
        # outside Planetary Computer nothing is signed
        assert sign_for_read(items, "http://127.0.0.1:1/stac")[0].assets["B04"].href == items[0].assets["B04"].href
    finally:
        server.shutdown()
        Settings.get.cache_clear()
        planetary_computer.sas.TOKEN_CACHE.clear()


def test_recorded_s1_rtc_and_dem_items_have_the_assets_we_read(shared_fixtures):  # type: ignore[no-untyped-def]
    base = shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "items4"
    s1 = [pystac.Item.from_dict(d) for d in json.loads((base / "sentinel-1-rtc-pc.json").read_text())]
    dem = [pystac.Item.from_dict(d) for d in json.loads((base / "cop-dem-glo-30-pc.json").read_text())]
    from pipeline.acquire.cube import stackstac_dict

    assert all({"vv", "vh"} <= set(it.assets) for it in s1)
    assert all(stackstac_dict(it)["properties"]["proj:epsg"] == 32633 for it in s1)
    assert all(it.assets["vv"].extra_fields["raster:bands"][0]["nodata"] == -32768 for it in s1)
    assert all("data" in it.assets and stackstac_dict(it)["properties"]["proj:epsg"] == 4326 for it in dem)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The real demo generator on a 256 px region (same code, smaller extent)."""
    import pipeline.demo.generate as gen

    mp = pytest.MonkeyPatch()
    mp.setattr(gen, "GRID_SIZE", 256)
    mp.setattr(gen, "MARGIN", 16)
    try:
        layout = gen.generate(tmp_path_factory.mktemp("demo"), seed=7)
    finally:
        mp.undo()
    return layout


def _features(layout, collection: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return json.loads((layout.root / "items" / f"{collection}.json").read_text())["features"]


def test_demo_items_follow_pc_keys(shared_fixtures, small_demo):  # type: ignore[no-untyped-def]
    """The demo generator's items match Planetary Computer's: collection ids, asset keys,
    proj:* metadata and the properties the pipeline reads."""
    recorded = shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "items4"
    templates = shared_fixtures / "planetary-computer" / "collection-templates"
    # Sentinel-2 L2A
    pc = json.loads((recorded / "sentinel-2-l2a-pc.json").read_text())[0]
    demo = _features(small_demo, "sentinel-2-l2a")
    assert demo and all(f["collection"] == pc["collection"] == "sentinel-2-l2a" for f in demo)
    bands = {k for k in pc["assets"] if k.startswith("B") or k == "SCL"}
    for f in demo:
        assert bands <= set(f["assets"])
        for k in bands:
            assert f["assets"][k]["proj:transform"][0] == pc["assets"][k]["proj:transform"][0]  # 10/20/60 m
            assert len(f["assets"][k]["proj:shape"]) == 2
        for prop in ("eo:cloud_cover", "s2:processing_baseline", "proj:epsg", "s2:mgrs_tile", "platform", "datetime"):
            assert prop in f["properties"] and prop in pc["properties"], prop
    # Sentinel-1 RTC
    pc1 = json.loads((recorded / "sentinel-1-rtc-pc.json").read_text())[0]
    demo1 = _features(small_demo, "sentinel-1-rtc")
    rtc_keys = set(json.loads((templates / "sentinel-1-rtc__template.json").read_text())["item_assets"])
    assert demo1 and all(f["collection"] == pc1["collection"] == "sentinel-1-rtc" for f in demo1)
    for f in demo1:
        assert {"vv", "vh"} <= set(f["assets"]) <= rtc_keys | {"rendered_preview", "tilejson"}
        for prop in ("sar:polarizations", "sat:orbit_state", "platform"):
            assert prop in f["properties"] and prop in pc1["properties"], prop
    # Copernicus DEM GLO-30
    dem_keys = set(json.loads((templates / "cop-dem__cop-dem-glo-30__template.json").read_text())["item_assets"])
    demo_dem = _features(small_demo, "cop-dem-glo-30")
    assert demo_dem and all(f["collection"] == "cop-dem-glo-30" and dem_keys <= set(f["assets"]) for f in demo_dem)
    assert all(f["properties"].get("proj:epsg") == 4326 or f["properties"].get("proj:code") == "EPSG:4326" for f in demo_dem)


def test_demo_generation_is_deterministic(small_demo, tmp_path):  # type: ignore[no-untyped-def]
    import rasterio

    import pipeline.demo.generate as gen

    mp = pytest.MonkeyPatch()
    mp.setattr(gen, "GRID_SIZE", 256)
    mp.setattr(gen, "MARGIN", 16)
    try:
        again = gen.generate(tmp_path / "again", seed=7)
    finally:
        mp.undo()
    with rasterio.open(small_demo.truth_mask) as a, rasterio.open(again.truth_mask) as b:
        assert np.array_equal(a.read(1), b.read(1))
    for name in ("sentinel-2-l2a", "sentinel-1-rtc"):
        f1 = _features(small_demo, name)[0]
        f2 = _features(again, name)[0]
        key = "B04" if name == "sentinel-2-l2a" else "vv"
        with rasterio.open(f1["assets"][key]["href"]) as a, rasterio.open(f2["assets"][key]["href"]) as b:
            assert np.array_equal(a.read(1), b.read(1), equal_nan=True)


class _Empty:
    url = "http://x"

    def __init__(self, empty: set[str]) -> None:
        self.empty = empty

    def search(self, collection, bbox, datetime, max_cloud_cover=None, max_items=None):  # type: ignore[no-untyped-def]
        if collection in self.empty:
            return []
        props = {} if collection == "sentinel-1-grd" and "grd-unprojected" in self.empty else {"proj:epsg": 32648, "proj:transform": [10, 0, 0, 0, -10, 0]}
        item = pystac.Item(id=f"{collection}-1", geometry=None, bbox=None, datetime=__import__("datetime").datetime(2024, 7, 5), properties=props)
        for key in ("vv", "vh"):
            item.add_asset(key, pystac.Asset(href=f"http://x/{key}.tif"))
        return [item]


def test_empty_search_names_the_collection():
    win = TimeWindow(date(2024, 7, 1), date(2024, 7, 31))
    with pytest.raises(EmptySearchError, match="sentinel-2-l2a.*--max-cloud"):
        search_inputs(_Empty({"sentinel-2-l2a"}), (0, 0, 1, 1), win)
    with pytest.raises(EmptySearchError, match="cop-dem-glo-30"):
        search_inputs(_Empty({"cop-dem-glo-30"}), (0, 0, 1, 1), win)


def test_grd_fallback_when_no_rtc():
    win = TimeWindow(date(2024, 7, 1), date(2024, 7, 31))
    got = search_inputs(_Empty({"sentinel-1-rtc"}), (0, 0, 1, 1), win, CubeConfig())
    assert got.s1_collection == "sentinel-1-grd" and got.notes and "sentinel-1-grd" in got.notes[0]
    assert not any("GCPs" in n for n in got.notes)
    # real Planetary Computer GRD items are in radar geometry (no proj:*): geocoded through GCPs
    got = search_inputs(_Empty({"sentinel-1-rtc", "grd-unprojected"}), (0, 0, 1, 1), win)
    assert got.s1_collection == "sentinel-1-grd" and len(got.s1) == 1
    assert any("1 scene(s) in radar geometry are geocoded through their GCPs" in n for n in got.notes)
    got = search_inputs(_Empty({"sentinel-1-rtc"}), (0, 0, 1, 1), win, CubeConfig(s1_grd_fallback=False))
    assert got.s1 == [] and "NDMI proxy" in got.notes[0]


def test_recorded_grd_items_are_recognised_as_unprojected(shared_fixtures):  # type: ignore[no-untyped-def]
    doc = json.loads((shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "cassette-items" / "sentinel-1-grd_00_FeatureCollection.json").read_text())
    grd = [pystac.Item.from_dict(f) for f in doc["features"]]
    assert grd and not any(catalog.has_map_projection(it) for it in grd)
    rtc = json.loads((shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "cassette-items" / "sentinel-1-rtc_00_FeatureCollection.json").read_text())
    assert all(catalog.has_map_projection(pystac.Item.from_dict(f)) for f in rtc["features"])


def test_unreachable_stac_api():
    with pytest.raises(CatalogError, match="Could not reach"):
        StacApiSource.open("http://127.0.0.1:9/stac", timeout=2, backoff=0.01)


class _Many(_Empty):
    """A source that returns everything it has, whatever ``max_items`` says."""

    def search(self, collection, bbox, datetime, max_cloud_cover=None, max_items=None):  # type: ignore[no-untyped-def]
        return super().search(collection, bbox, datetime) * 3


def test_more_items_than_the_limit_are_refused_not_dropped():
    win = TimeWindow(date(2024, 7, 1), date(2024, 7, 31))
    with pytest.raises(SlidewatchError, match="sentinel-2-l2a.*more than 2 items.*--max-items") as err:
        search_inputs(_Many(set()), (0, 0, 1, 1), win, CubeConfig(max_items=2))
    assert not isinstance(err.value, CatalogError)  # not transient: flows do not retry it
    assert len(search_inputs(_Many(set()), (0, 0, 1, 1), win, CubeConfig(max_items=3)).s2) == 3


def test_saved_items_are_unsigned_and_reload(tmp_path):  # type: ignore[no-untyped-def]
    it = pystac.Item(id="a", geometry=None, bbox=None, datetime=__import__("datetime").datetime(2024, 1, 1), properties={})
    it.add_asset("B04", pystac.Asset(href="https://x.blob.core.windows.net/c/b04.tif?st=1&se=2&sig=secret"))
    save_items([it], tmp_path / "items.json")
    text = (tmp_path / "items.json").read_text()
    assert "secret" not in text
    assert load_items(tmp_path / "items.json")[0].assets["B04"].href == "https://x.blob.core.windows.net/c/b04.tif"
    assert items.is_planetary_computer(PLANETARY_COMPUTER_STAC) and not items.is_planetary_computer("http://127.0.0.1:1")


def test_recorded_dem_tile_at_the_antimeridian_is_accepted(shared_fixtures):  # type: ignore[no-untyped-def]
    doc = json.loads((shared_fixtures / "planetary-computer" / "stac-geoparquet-items" / "items4"
                      / "cop-dem-glo-30-pc.json").read_text())
    feats = doc if isinstance(doc, list) else doc.get("features", [doc])
    tile = next(pystac.Item.from_dict(f) for f in feats if f["id"] == "Copernicus_DSM_COG_10_S90_00_W180_00_DEM")
    assert tile.bbox[0] < -180  # half a pixel past the antimeridian, as Planetary Computer records it
    w, s, e, n = items.item_bbox(tile)
    assert w == -180.0 and e == pytest.approx(-179.0013888888889)
    bad = tile.clone()
    bad.bbox = [-181.0, s, e, n]
    with pytest.raises(SlidewatchError, match="invalid bbox"):
        items.item_bbox(bad)
