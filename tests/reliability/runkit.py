"""Helpers shared by the reliability tests: the tiny region as a run, store comparison,
directory snapshots, and a token signer for the fault server."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pystac
import xarray as xr
import zarr

from faultserver import FaultServer
from pipeline.acquire.items import load_items, register_signer, save_items
from pipeline.core.config import TimeWindow
from pipeline.plan.regions import Region
from tests.tinyregion import FakeSource, inner_bbox, tiny_region

#: The tiny region at chunk 32: a 4 × 4 chunk grid written as 4 tiles of 2 × 2 chunks.
CHUNK = 32
WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
STAC_URL = "http://fake.invalid/stac"
#: Attributes that differ between two runs by design (wall-clock times).
TIME_ATTRS = {"history", "completed", "slidewatch_generation"}  # the last: a fresh id per finished store


def bbox_arg() -> str:
    return ",".join(f"{v:.6f}" for v in inner_bbox())


def region(name: str = "tiny") -> Region:
    return tiny_region(name)


def run_tiny(items: dict[str, list[pystac.Item]], out: Path, *, name: str = "tiny", stac_url: str = STAC_URL,
             events: list | None = None, on_event=None, overwrite: bool = False,
             chunk: int = CHUNK):  # type: ignore[no-untyped-def]
    """``cube_stage`` of the tiny region from ``items`` (a FakeSource) into ``out``."""
    from flows.stages.cube import cube_stage

    def emit(kind: str, info: dict) -> None:
        if events is not None:
            events.append((kind, dict(info)))
        if on_event is not None:
            on_event(kind, info)

    return cube_stage(region(name), WINDOW, stac_url, out, source=FakeSource(items), chunk=chunk,
                        on_event=emit, overwrite=overwrite)


def dump_items(items: dict[str, list[pystac.Item]], folder: Path) -> Path:
    """Save items per collection (for a subprocess to load with :func:`load_item_dir`)."""
    for cid, its in items.items():
        save_items(its, folder / f"{cid}.json")
    return folder


def load_item_dir(folder: Path) -> dict[str, list[pystac.Item]]:
    return {p.stem: load_items(p) for p in sorted(Path(folder).glob("*.json"))}


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every data variable of a (finished or partial) store as numpy arrays."""
    ds = xr.open_zarr(str(path), consolidated=False)
    return {name: ds[name].values for name in ds.data_vars}


def store_attrs(path: Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs)


def assert_same_store(got: Path, want: Path, ignore_attrs: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Same variables, dtypes, values (NaN where NaN), coordinates and attrs (but wall-clock
    times and ``ignore_attrs``)."""
    a, b = store_arrays(got), store_arrays(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # NaN == NaN here
    ga, gb = xr.open_zarr(str(got), consolidated=False), xr.open_zarr(str(want), consolidated=False)
    for c in ("x", "y"):
        np.testing.assert_array_equal(ga[c].values, gb[c].values)
    skip = TIME_ATTRS | set(ignore_attrs)
    ta = {k: v for k, v in store_attrs(got).items() if k not in skip}
    tb = {k: v for k, v in store_attrs(want).items() if k not in skip}
    assert ta == tb


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """path → (size, mtime_ns, sha256) for every file under ``root``."""
    out: dict[str, tuple[int, int, str]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def grep_tree(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` (names or bytes) containing any of ``needles``."""
    hits = []
    raw = [n.encode() for n in needles]
    for p in sorted(root.rglob("*")):
        if any(n in str(p) for n in needles):
            hits.append(str(p))
        elif p.is_file() and any(n in p.read_bytes() for n in raw):
            hits.append(str(p))
    return hits


def http_items(items: dict[str, list[pystac.Item]], server) -> dict[str, list[pystac.Item]]:  # type: ignore[no-untyped-def]
    """Copies of ``items`` whose asset hrefs point at ``server`` (a FaultServer) instead of files."""
    out = {}
    for cid, its in items.items():
        new = []
        for it in its:
            c = it.clone()
            for asset in c.assets.values():
                asset.href = server.url(asset.href)
            new.append(c)
        out[cid] = new
    return out


class TokenSigner:
    """A Planetary-Computer-like signer for the fault server: appends ``?token=N`` from a
    cached token (fetched from the server once), ``refresh`` drops the cache. With
    ``secret`` it also embeds that string in every href (a worst-case signer)."""

    def __init__(self, server, secret: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.server = server
        self.secret = secret
        self.cached: int | None = None
        self.fetches = 0
        self.refreshes = 0

    def sign(self, item: pystac.Item) -> pystac.Item:
        if self.cached is None:
            self.cached = self.server.issue_token()
            self.fetches += 1
        out = item.clone()
        for asset in out.assets.values():
            assert "?" not in asset.href, f"signer got an already signed href {asset.href}"
            asset.href = f"{asset.href}?token={self.cached}"
            if self.secret:
                asset.href += f"&subscription-key={self.secret}"
        return out

    def refresh(self) -> None:
        self.refreshes += 1
        self.cached = None


class HttpRun:
    """A FaultServer over the tiny region's COGs, a TokenSigner registered for its STAC URL,
    and the items with hrefs on the server."""

    def __init__(self, cogs, items, plan, max_seconds: float = 90.0, secret: str | None = None):  # type: ignore[no-untyped-def]
        self.server = FaultServer(cogs, plan, max_seconds=max_seconds)
        self.items = items
        self.secret = secret

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.server.__enter__()
        self.url = self.server.base + "/stac"
        self.signer = TokenSigner(self.server, secret=self.secret)
        register_signer(self.url, self.signer)
        self.http = http_items(self.items, self.server)
        return self

    def __exit__(self, *exc):  # type: ignore[no-untyped-def]
        register_signer(self.url, None)
        self.server.__exit__(*exc)

    def run(self, out, **kw):  # type: ignore[no-untyped-def]
        return run_tiny(self.http, out, stac_url=self.url, **kw)


def ledger_tiles(store_path: Path) -> list[str]:
    """Tiles recorded in a store's progress ledger ([] when there is none or it is unreadable)."""
    ledger = store_path.with_name(store_path.name + ".progress.json")
    try:
        return list(json.loads(ledger.read_text()).get("tiles", []))
    except (OSError, ValueError):
        return []


def stac_api_files(items: dict[str, list[pystac.Item]], root: Path) -> list[Path]:
    """Collection and item files for :class:`pipeline.demo.server.LocalStacServer` (a real
    local STAC API) serving ``items`` as they are (hrefs unchanged)."""
    root.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for cid, its in items.items():
        coll = {"type": "Collection", "stac_version": "1.0.0", "id": cid, "description": cid, "license": "CC0-1.0",
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
                "links": []}
        (root / f"{cid}.collection.json").write_text(json.dumps(coll))
        fc = {"type": "FeatureCollection", "features": [it.to_dict(transform_hrefs=False) for it in its]}
        (root / f"{cid}.items.json").write_text(json.dumps(fc))
        files += [root / f"{cid}.collection.json", root / f"{cid}.items.json"]
    return files


CLIRUN = Path(__file__).resolve().parent / "clirun.py"
REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], *, token: str = "PLANTED-TOKEN-0", env: dict[str, str] | None = None,
            timeout: float = 240.0):  # type: ignore[no-untyped-def]
    """The ``slidewatch`` CLI in a subprocess (``clirun.py``: a signer appending
    ``?token=<token>`` is registered for ``--stac-url``); a ``CompletedProcess`` with text
    stdout/stderr. Killed after ``timeout`` seconds (``subprocess.run`` kills its child)."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    full_env.pop("SLIDEWATCH_DASK_ADDRESS", None)
    return subprocess.run([sys.executable, str(CLIRUN), token, *args], cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=full_env, timeout=timeout)
