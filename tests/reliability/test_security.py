"""Secrets and path safety: checkpoints are never unpickled, the Planetary Computer key and
SAS tokens never reach logs, errors, saved items or Zarr attrs, outputs stay under --out."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pystac
import pytest
import zarr

import pipeline.acquire.cube
import pipeline.store.tiles
from faultserver import FaultPlan
from pipeline.acquire.items import PlanetaryComputerSigner, refresh_signatures, sign_for_read, unsign_item
from pipeline.core.secrets import redact, unsigned_href
from pipeline.core.collections import PLANETARY_COMPUTER_STAC
from pipeline.core.errors import CatalogError, CheckpointError, StoreError
from pipeline.acquire.gdal import build_gdal_env, clear_http_cache
from pipeline.plan.regions import Region, region_from_geojson
from runkit import WINDOW, HttpRun, grep_tree, inner_bbox, run_tiny, snapshot

SECRET = "sk-test-SECRET123"


# ------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import EnhancedUNet

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = EnhancedUNet(base_width=4, depth=2).eval()
    stats = NormStats(tuple(0.0 for _ in range(7)), tuple(1.0 for _ in range(7)))
    good = save_checkpoint(root / "good.safetensors", model, stats)
    zipped = root / "zip.safetensors"
    torch.save(model.state_dict(), zipped)  # a torch.save zip archive renamed .safetensors
    raw = root / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=2))  # a bare pickle
    return good, zipped, raw


def test_checkpoints_are_never_unpickled(checkpoints, monkeypatch):  # type: ignore[no-untyped-def]
    import torch

    from models.checkpoint import load_checkpoint
    from models.predictor import Predictor

    good, zipped, raw = checkpoints
    calls: list[str] = []

    def forbidden(name):  # type: ignore[no-untyped-def]
        def fail(*a, **k):  # type: ignore[no-untyped-def]
            calls.append(name)
            raise AssertionError(f"{name} must never be called on a checkpoint")
        return fail

    for mod, attr in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, attr, forbidden(f"{mod.__name__}.{attr}"))
    for bad, needle in [(zipped, "zip archive"), (raw, "Python pickle")]:
        with pytest.raises(CheckpointError, match=needle) as err:
            load_checkpoint(bad)
        assert "Fix:" in str(err.value) and str(bad) in str(err.value)
        with pytest.raises(CheckpointError):
            Predictor.from_checkpoint(bad, device="cpu")
    model, meta = load_checkpoint(good)  # the safe path needs no pickle either
    assert meta.channels[-1] == "lsi" and not model.training
    assert calls == []


# ------------------------------------------------------------------- tokens and keys
def test_redaction_of_tokens_and_keys(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", SECRET)
    blob = "https://acct.blob.core.windows.net/c/x.tif?st=2024&se=2025&sp=rl&sig=abc%2Fdef"
    assert unsigned_href(blob) == "https://acct.blob.core.windows.net/c/x.tif"
    s3 = "https://b.s3.amazonaws.com/x.tif?versionId=7&X-Amz-Signature=ff&X-Amz-Credential=AK"
    assert unsigned_href(s3) == "https://b.s3.amazonaws.com/x.tif?versionId=7"
    assert unsigned_href("/data/x.tif") == "/data/x.tif"
    text = f"Error opening '/vsicurl/{blob}': boom; http://h:1/a.tif?token=9&page=2 key {SECRET}"
    clean = redact(text)
    assert "sig=" not in clean and "token=" not in clean and SECRET not in clean
    assert "/vsicurl/https://acct.blob.core.windows.net/c/x.tif" in clean and "page=2" in clean


class _SasHandler(BaseHTTPRequestHandler):
    """A fake Planetary Computer SAS endpoint: a new token per request; records headers."""

    seen: list[dict] = []

    def log_message(self, *args):  # type: ignore[no-untyped-def]
        pass

    def do_GET(self):  # type: ignore[no-untyped-def]  # noqa: N802
        type(self).seen.append(dict(self.headers))
        n = len(type(self).seen)
        body = json.dumps({"msft:expiry": "2099-01-01T00:00:00Z", "token": f"st=1&se=2099&sp=rl&sig=tok{n}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_planetary_computer_key_only_in_the_token_request_header(monkeypatch, caplog):  # type: ignore[no-untyped-def]
    import planetary_computer
    from planetary_computer.settings import Settings

    server = ThreadingHTTPServer(("127.0.0.1", 0), _SasHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    _SasHandler.seen = []
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1/token")
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", SECRET)
    Settings.get.cache_clear()
    planetary_computer.sas.TOKEN_CACHE.clear()
    item = pystac.Item("i", None, None, datetime(2024, 7, 4), {})
    item.add_asset("B04", pystac.Asset(href="https://acct.blob.core.windows.net/cont/b04.tif"))
    try:
        with caplog.at_level(logging.DEBUG):
            first = sign_for_read([item], PLANETARY_COMPUTER_STAC)[0].assets["B04"].href
            again = sign_for_read([item], PLANETARY_COMPUTER_STAC)[0].assets["B04"].href
            refresh_signatures(PLANETARY_COMPUTER_STAC)  # what a 403 triggers
            fresh = sign_for_read([item], PLANETARY_COMPUTER_STAC)[0].assets["B04"].href
    finally:
        server.shutdown()
        server.server_close()
        Settings.get.cache_clear()
        planetary_computer.sas.TOKEN_CACHE.clear()
    assert first.endswith("sig=tok1") and again == first and fresh.endswith("sig=tok2")
    assert len(_SasHandler.seen) == 2  # cached once, fetched again only after the refresh
    assert all(h.get("Ocp-Apim-Subscription-Key") == SECRET for h in _SasHandler.seen)
    assert SECRET not in first + fresh and SECRET not in caplog.text
    assert unsign_item(pystac.Item.from_dict({**item.to_dict(), "assets": {"B04": {"href": fresh}}})).assets[
        "B04"].href == "https://acct.blob.core.windows.net/cont/b04.tif"
    assert isinstance(PlanetaryComputerSigner(), PlanetaryComputerSigner)


@pytest.fixture()
def fast_network(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLIDEWATCH_GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("SLIDEWATCH_GDAL_HTTP_RETRY_DELAY", "0.1")
    monkeypatch.setenv("SLIDEWATCH_GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setattr(pipeline.acquire.cube, "gdal_env", build_gdal_env)
    monkeypatch.setattr(pipeline.store.tiles, "TILE_RETRY_DELAY_S", 0.05)
    monkeypatch.setattr(pipeline.store.tiles, "TILE_RETRIES", 1)
    clear_http_cache()
    yield
    clear_http_cache()


def test_key_and_tokens_never_leak_from_a_run(tiny, tmp_path, monkeypatch, caplog, fast_network):  # type: ignore[no-untyped-def]
    """A worst-case signer embeds the key in every href; logs (DEBUG), errors, saved items
    and Zarr attrs must still show neither the key nor any token."""
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with HttpRun(tiny.cogs, tiny.items, FaultPlan(require_token=True, always_status=503), secret=SECRET) as r:
        res = r.run(tmp_path / "ok", chunk=64)  # one tile is enough here
        served = [q.query for q in r.server.log]
        assert served and all(SECRET in q for q in served)  # the key really was in every URL
        r.server.plan.always_fail = ("s2/2/B08.tif",)  # and a run that fails on one asset
        clear_http_cache()  # (GDAL would serve the same URLs from its cache)
        with pytest.raises(CatalogError) as err:
            r.run(tmp_path / "failed", chunk=64)
    message = str(err.value)
    assert "s2/2/B08.tif" in message and "Fix:" in message
    assert "s2/2/B08.tif" in caplog.text  # GDAL's messages about the URL were logged (redacted)
    for text, what in [(message, "error message"), (caplog.text, "logs")]:
        assert SECRET not in text and "token=" not in text, what
    assert grep_tree(tmp_path, [SECRET, "SECRET123", "token="]) == []
    group = zarr.open_group(str(res.zones[0].cube_path), mode="r")
    assert SECRET not in json.dumps(dict(group.attrs), default=str)
    saved = json.loads((res.run_dir / "items" / "utm48n" / "sentinel-2-l2a.json").read_text())
    assert all("127.0.0.1" in a["href"] and "?" not in a["href"] for f in saved["features"] for a in f["assets"].values())


# ---------------------------------------------------------------------- path safety
def test_region_names_cannot_escape_the_output_root(tiny, tmp_path):  # type: ignore[no-untyped-def]
    from pipeline.core.layout import run_dir_for

    out = tmp_path / "a" / "out"
    for name in ["..", "../../x", "../..", ".", "/etc/passwd", "..\\..\\x", "a/../../b", "~root", "x" * 300]:
        reg = Region(name=name, bbox=inner_bbox())
        run_dir = run_dir_for(out, reg.slug, WINDOW.start, WINDOW.end, name=reg.name)
        assert run_dir.resolve().is_relative_to(out.resolve()) and run_dir.parent.parent == out.resolve(), name
    w, s, e, n = inner_bbox()
    gj = tmp_path / "...geojson"  # a GeoJSON file whose stem is ".."
    gj.write_text(json.dumps({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}))
    reg = region_from_geojson(gj)
    assert reg.name == ".."
    before = snapshot(tmp_path / "a")
    res = run_tiny(tiny.items, out, name=reg.name, chunk=64)
    assert res.run_dir.resolve().is_relative_to(out.resolve())
    created = set(snapshot(tmp_path / "a")) - set(before)
    assert created and all(p.startswith("out/") for p in created), sorted(created)[:5]


def test_symlink_under_out_pointing_elsewhere_is_refused(tiny, tmp_path):  # type: ignore[no-untyped-def]
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "tiny").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StoreError, match="outside the output root") as err:
        run_tiny(tiny.items, out)
    assert "Fix:" in str(err.value)
    assert list(elsewhere.iterdir()) == []
