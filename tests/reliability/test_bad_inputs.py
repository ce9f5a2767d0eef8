"""A sweep of bad inputs through the CLI: each gives one clear line (culprit + "Fix:"), exit
code 2, no traceback, and leaves existing outputs exactly as they were."""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from typer.testing import CliRunner

import pipeline.acquire.catalog
from flows.cli import app
from pipeline.plan.regions import parse_region
from pipeline.store.tiles import TileStore
from runkit import bbox_arg, snapshot, store_arrays
from tests.tinyregion import FakeSource, make_tiny_region

runner = CliRunner()
SEED = 5
BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


@dataclass
class World:
    out: Path  #: output root holding one finished run (the "existing outputs")
    store: Path  #: its cube store
    ckpt: Path  #: a valid checkpoint
    cube: Path  #: a small factor cube (7 channels) for train/evaluate
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("badinputs")
    items = make_tiny_region(root / "cogs", seed=SEED)
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDEWATCH_DASK_ADDRESS", "threads")
    mp.setattr(pipeline.acquire.catalog.StacApiSource, "open", classmethod(lambda cls, url, timeout=30.0: FakeSource(items)))
    res = runner.invoke(app, _run_args(root / "out", "2024-08-31"))
    mp.undo()
    assert res.exit_code == 0, res.output
    (store,) = list((root / "out").rglob("cube_utm48n.zarr"))
    return World(root / "out", store, _checkpoint(root), _factor_cube(root / "factors.zarr"), root)


def _run_args(out: Path, end: str, region: str | None = None, *extra: str) -> list[str]:
    return ["run", "--region", region or bbox_arg(), "--start", "2024-07-01", "--end", end,
            "--out", str(out), "--chunk", "64", "--cube-only", *extra]


def _checkpoint(root: Path) -> Path:
    torch = pytest.importorskip("torch")
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import EnhancedUNet

    torch.manual_seed(0)
    stats = NormStats(tuple(0.0 for _ in range(7)), tuple(1.0 for _ in range(7)))
    return save_checkpoint(root / "ckpt" / "model.safetensors", EnhancedUNet(base_width=4, depth=2), stats)


def _factor_cube(path: Path, channels=("slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi")) -> Path:  # type: ignore[no-untyped-def]
    import rioxarray  # noqa: F401
    import xarray as xr

    rng = np.random.default_rng(0)
    n = 64
    xs = 500_000.0 + (np.arange(n) + 0.5) * 10
    ys = 5_000_000.0 - (np.arange(n) + 0.5) * 10
    ds = xr.Dataset({c: (("y", "x"), rng.normal(size=(n, n)).astype("float32")) for c in channels},
                    coords={"y": ys, "x": xs}).rio.write_crs("EPSG:32633")
    ds.to_zarr(path, mode="w", consolidated=False)
    return path


def _web_server_as_scheduler(c: Ctx, eager: bool) -> list[str]:
    """A web server given as the scheduler: one that waits for a request (an HTTP server,
    the dashboard's port) or one that speaks first (``HTTP/1.1 …``, read by distributed as a
    frame length of exabytes before the probe)."""
    import socket
    import threading

    import flows.dask_context

    c.mp.setattr(flows.dask_context, "PROBE_TIMEOUT_S", 1.0)
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                if eager:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                stop.wait(2.0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def cleanup() -> None:
        stop.set()
        thread.join(5)
        srv.close()

    c.cleanup = cleanup
    return c.run("--dask-address", f"tcp://127.0.0.1:{srv.getsockname()[1]}")


# ------------------------------------------------------------------ case builders
@dataclass
class Ctx:
    world: World
    tmp: Path
    mp: pytest.MonkeyPatch
    end: str  #: a window end of this case alone, so its run folder is its own
    cleanup: Callable[[], None] | None = None

    def items(self, mutate: Callable[[dict], None] | None = None, **kw) -> dict:  # type: ignore[no-untyped-def]
        """A fresh copy of the tiny region (same seed as the finished run), mutated, served."""
        items = make_tiny_region(self.tmp / "cogs", seed=SEED, **kw)
        if mutate:
            mutate(items)
        self.mp.setattr(pipeline.acquire.catalog.StacApiSource, "open",
                        classmethod(lambda cls, url, timeout=30.0: FakeSource(items)))
        return items

    def run(self, *extra: str, out: Path | None = None, end: str | None = None) -> list[str]:
        return _run_args(out or self.world.out, end or self.end, None, *extra)


def _href(items: dict, cid: str, i: int, asset: str) -> Path:
    return Path(items[cid][i].assets[asset].href)


def _rewrite(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    with rasterio.open(path) as src:
        arr, prof = src.read(1), src.profile
    arr, prof = fn(arr, prof)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr, 1)


def corrupt_cog(c: Ctx) -> list[str]:
    def mutate(items):  # type: ignore[no-untyped-def]
        p = _href(items, "sentinel-2-l2a", 1, "B04")
        p.write_bytes(np.random.default_rng(1).bytes(p.stat().st_size))
    c.items(mutate)
    return c.run()


def truncated_cog(c: Ctx) -> list[str]:
    def mutate(items):  # type: ignore[no-untyped-def]
        p = _href(items, "sentinel-2-l2a", 2, "B08")
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    c.items(mutate)
    return c.run()


def missing_cog_file(c: Ctx) -> list[str]:
    c.items(lambda items: _href(items, "sentinel-1-rtc", 0, "vv").unlink())
    return c.run()


def asset_in_unexpected_crs(c: Ctx) -> list[str]:
    def mutate(items):  # type: ignore[no-untyped-def]
        _rewrite(_href(items, "sentinel-2-l2a", 1, "B04"), lambda a, p: (a, {**p, "crs": "EPSG:32647"}))
    c.items(mutate)
    return c.run()


def nan_only_s2_bands(c: Ctx) -> list[str]:
    def mutate(items):  # type: ignore[no-untyped-def]
        for i in range(3):
            for b in BANDS:
                _rewrite(_href(items, "sentinel-2-l2a", i, b), lambda a, p: (np.zeros_like(a), p))
    c.items(mutate)
    return c.run()


def nan_only_dem(c: Ctx) -> list[str]:
    c.items(lambda items: _rewrite(_href(items, "cop-dem-glo-30", 0, "data"),
                                   lambda a, p: (np.full_like(a, np.nan), p)))
    return c.run()


def all_cloudy(c: Ctx) -> list[str]:
    c.items(scl_override=9)
    return c.run()


def missing_asset(c: Ctx) -> list[str]:
    c.items(drop_asset="B04")
    return c.run()


def item_with_invalid_bbox(c: Ctx) -> list[str]:
    def mutate(items):  # type: ignore[no-untyped-def]
        items["sentinel-1-rtc"][1].bbox = [103.2, 95.0, 103.1, -95.0]
    c.items(mutate)
    return c.run()


def no_sentinel2_items(c: Ctx) -> list[str]:
    c.items(lambda items: items.update({"sentinel-2-l2a": []}))
    return c.run()


def no_dem_items(c: Ctx) -> list[str]:
    c.items(lambda items: items.update({"cop-dem-glo-30": []}))
    return c.run()


def finished_store_other_inputs(c: Ctx) -> list[str]:
    c.items(lambda items: items["sentinel-2-l2a"].pop())  # another item set, same run folder
    return c.run(end="2024-08-31")


def store_locked_by_another_run(c: Ctx) -> list[str]:
    c.items()
    slug = parse_region(bbox_arg()).slug
    lock = TileStore(c.world.out / slug / f"20240701_{c.end.replace('-', '')}" / "cube_utm48n.zarr", "x")
    lock.acquire()
    c.cleanup = lock.release
    return c.run()


def out_is_a_file(c: Ctx) -> list[str]:
    c.items()
    f = c.tmp / "not-a-dir"
    f.write_text("x")
    return c.run(out=f)


def out_read_only(c: Ctx) -> list[str]:
    c.items()
    if os.geteuid() == 0:  # root writes through file modes: use a read-only file system
        return c.run(out=Path("/sys/slidewatch-test-out"))
    ro = c.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    c.cleanup = lambda: ro.chmod(0o755)
    return c.run(out=ro / "out")


def symlink_escapes_out(c: Ctx) -> list[str]:
    c.items()
    out = c.tmp / "out"
    out.mkdir()
    (c.tmp / "elsewhere").mkdir()
    (out / parse_region(bbox_arg()).slug).symlink_to(c.tmp / "elsewhere", target_is_directory=True)
    return c.run(out=out)


def out_symlink_loop(c: Ctx) -> list[str]:
    loop = c.tmp / "loop"
    loop.symlink_to(loop)  # resolving it never ends
    return c.run(out=loop / "out")


def _geojson(c: Ctx, name: str, doc: object) -> str:
    p = c.tmp / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def _safetensors_tamper(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return dst


def _tamper_channels(header: dict) -> None:
    meta = json.loads(header["__metadata__"]["slidewatch"])
    meta["channels"] = list(reversed(meta["channels"]))  # no longer matches the hyper-parameters
    header["__metadata__"]["slidewatch"] = json.dumps(meta)


def _tamper_norm(std: float):  # type: ignore[no-untyped-def]
    def edit(header: dict) -> None:
        meta = json.loads(header["__metadata__"]["slidewatch"])
        meta["normalisation"]["std"][0] = std
        header["__metadata__"]["slidewatch"] = json.dumps(meta)
    return edit


def _tamper_width(header: dict) -> None:
    meta = json.loads(header["__metadata__"]["slidewatch"])
    meta["hyperparameters"]["base_width"] = 200000
    header["__metadata__"]["slidewatch"] = json.dumps(meta)


def _evaluate(c: Ctx, ckpt: Path, cube: Path | None = None) -> list[str]:
    return ["evaluate", "--checkpoint", str(ckpt), "--cube", str(cube or c.world.cube),
            "--inventory", str(c.tmp / "inv.geojson"), "--device", "cpu"]


def _train(c: Ctx, inventory: str) -> list[str]:
    return ["train", "--cube", str(c.world.cube), "--inventory", inventory, "--out", str(c.tmp / "model"),
            "--epochs", "1", "--device", "cpu", "--block-size", "32", "--chip-size", "16", "--no-progress"]


def _torch_zip(c: Ctx) -> list[str]:
    import torch

    p = c.tmp / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, p)
    return _evaluate(c, p)


def _raw_pickle(c: Ctx) -> list[str]:
    p = c.tmp / "model.safetensors"
    p.write_bytes(pickle.dumps({"w": [0.0, 0.0]}))
    return _evaluate(c, p)


def _header_length(c: Ctx) -> list[str]:
    p = c.tmp / "model.safetensors"
    raw = c.world.ckpt.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    return _evaluate(c, p)


BOWTIE = {"type": "Feature", "properties": {"id": "bowtie"}, "geometry": {"type": "Polygon", "coordinates": [
    [[500100, 4999900], [500500, 4999500], [500500, 4999900], [500100, 4999500], [500100, 4999900]]]}}
UTM33 = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Ctx], list[str]]
    needle: str  #: a piece of the message naming the culprit


CASES = [
    # command-line arguments
    Case("unknown_region", lambda c: c.run()[:2] + ["atlantis"] + c.run()[3:], "Unknown region 'atlantis'"),
    Case("inverted_bbox", lambda c: _run_args(c.world.out, c.end, "10,50,9,51"), "inverted or empty in longitude"),
    Case("bbox_lon_out_of_range", lambda c: _run_args(c.world.out, c.end, "10,50,200,51"), "outside [-180, 180]"),
    Case("bbox_lat_out_of_range", lambda c: _run_args(c.world.out, c.end, "10,85,11,86"), "outside UTM's range"),
    Case("bbox_not_finite", lambda c: _run_args(c.world.out, c.end, "10,50,inf,51"), "non-finite"),
    Case("bad_date", lambda c: c.run()[:4] + ["2024-13-01"] + c.run()[5:], "--start '2024-13-01' is not a date"),
    Case("end_before_start", lambda c: c.run(end="2024-06-01"), "before --start"),
    Case("max_cloud_zero", lambda c: c.run("--max-cloud", "0"), "--max-cloud 0.0 is outside"),
    Case("max_cloud_nan", lambda c: c.run("--max-cloud", "nan"), "--max-cloud nan is outside"),
    Case("chunk_too_small", lambda c: c.run()[:-2] + ["8", "--cube-only"], "Chunk size 8 px is too small"),
    Case("region_too_large", lambda c: _run_args(c.world.out, c.end, "0,0,5.9,60") + ["--chunk", "512"], "pixel limit"),
    Case("geojson_missing", lambda c: _run_args(c.world.out, c.end, str(c.tmp / "nope.geojson")), "does not exist"),
    Case("geojson_not_json", lambda c: _run_args(c.world.out, c.end, _geojson(c, "bad.geojson", "{oops")), "not readable JSON"),
    Case("geojson_no_features", lambda c: _run_args(c.world.out, c.end, _geojson(
        c, "empty.geojson", {"type": "FeatureCollection", "features": []})), "has no features with geometry"),
    Case("geojson_features_null", lambda c: _run_args(c.world.out, c.end, _geojson(
        c, "null.geojson", {"type": "FeatureCollection", "features": None})), "is not a list of Feature objects"),
    Case("geojson_features_not_objects", lambda c: _run_args(c.world.out, c.end, _geojson(
        c, "ones.geojson", {"type": "FeatureCollection", "features": [1]})), "is not a list of Feature objects"),
    Case("geojson_nested_deep", lambda c: _run_args(c.world.out, c.end, _geojson(
        c, "deep.geojson", "[" * 100_000 + "]" * 100_000)), "nested too deeply"),
    Case("chunk_huge", lambda c: c.run()[:-2] + ["60000", "--cube-only"], "Chunk size 60000 px is too large"),
    Case("rain_duration_zero", lambda c: c.run("--rain-intensity", "5", "--rain-duration", "0"), "--rain-duration 0.0 days"),
    Case("rain_intensity_absurd", lambda c: c.run("--rain-intensity", "1e30", "--rain-duration", "1"), "--rain-intensity 1e+30 mm/h"),
    Case("rain_intensity_nan", lambda c: c.run("--rain-intensity", "nan", "--rain-duration", "1"), "--rain-intensity nan mm/h"),
    # output paths and existing outputs
    Case("out_is_a_file", out_is_a_file, "Cannot create the output folder"),
    Case("out_read_only", out_read_only, "choose a writable --out"),
    Case("symlink_escapes_out", symlink_escapes_out, "outside the output root"),
    Case("out_symlink_loop", out_symlink_loop, "cannot be resolved"),
    Case("finished_store_other_inputs", finished_store_other_inputs, "finished store made with other inputs"),
    Case("store_locked_by_another_run", store_locked_by_another_run, f"(pid {os.getpid()}"),
    # input data
    Case("corrupt_cog", corrupt_cog, "not recognized as being in a supported file format"),
    Case("truncated_cog", truncated_cog, "s2/2/B08.tif"),
    Case("missing_cog_file", missing_cog_file, "s1/0/vv.tif: No such file"),
    Case("asset_in_unexpected_crs", asset_in_unexpected_crs, "is in EPSG:32647, but its STAC item declares EPSG:32648"),
    Case("nan_only_s2_bands", nan_only_s2_bands, "have no valid pixel"),
    Case("nan_only_dem", nan_only_dem, "gives no elevation"),
    Case("all_cloudy", all_cloudy, "No cloud-free Sentinel-2 pixel"),
    Case("missing_asset", missing_asset, "lacks asset(s) ['B04']"),
    Case("item_with_invalid_bbox", item_with_invalid_bbox, "item 'S1_1' has an invalid bbox"),
    Case("no_sentinel2_items", no_sentinel2_items, "No sentinel-2-l2a scenes"),
    Case("no_dem_items", no_dem_items, "No cop-dem-glo-30 tiles"),
    # checkpoints
    Case("checkpoint_torch_save_zip", _torch_zip, "is a zip archive"),
    Case("checkpoint_raw_pickle", _raw_pickle, "is a Python pickle"),
    Case("checkpoint_header_length_tampered", _header_length, "bad header length"),
    Case("checkpoint_metadata_tampered", lambda c: _evaluate(c, _safetensors_tamper(
        c.world.ckpt, c.tmp / "model.safetensors", _tamper_channels)), "differ from channels"),
    Case("checkpoint_std_nan", lambda c: _evaluate(c, _safetensors_tamper(
        c.world.ckpt, c.tmp / "model.safetensors", _tamper_norm(float("nan")))), "normalisation must be finite"),
    Case("checkpoint_std_tiny", lambda c: _evaluate(c, _safetensors_tamper(
        c.world.ckpt, c.tmp / "model.safetensors", _tamper_norm(1e-30))), "every std >= 1e-06"),
    Case("checkpoint_width_absurd", lambda c: _evaluate(c, _safetensors_tamper(
        c.world.ckpt, c.tmp / "model.safetensors", _tamper_width)), "base_width = 200000 is outside"),
    Case("train_width_absurd", lambda c: _train(c, str(c.tmp / "inv.geojson")) + ["--width", "200000"],
         "base_width 200000 is outside [1, 512]"),
    Case("dask_address_not_an_address", lambda c: c.run("--dask-address", "foo"), "--dask-address 'foo' is not"),
    Case("dask_address_bad_ipv6", lambda c: c.run("--dask-address", "tcp://[::1"), "is not an address"),
    Case("dask_address_is_a_web_server", lambda c: _web_server_as_scheduler(c, eager=False), "sent no Dask greeting"),
    Case("dask_address_answers_http", lambda c: _web_server_as_scheduler(c, eager=True), "not a Dask greeting"),
    Case("run_with_missing_checkpoint", lambda c: c.run("--checkpoint", str(c.tmp / "nope.safetensors")),
         "nope.safetensors"),
    Case("cube_lacks_a_checkpoint_channel", lambda c: _evaluate(c, c.world.ckpt, _factor_cube(
        c.tmp / "six.zarr", ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi"))), "lacks channel(s) lsi"),
    # landslide inventories
    Case("inventory_self_intersecting", lambda c: _train(c, _geojson(
        c, "inv.geojson", {"type": "FeatureCollection", "crs": UTM33, "features": [BOWTIE]})), "is an invalid polygon"),
    Case("inventory_only_empty_polygons", lambda c: _train(c, _geojson(c, "inv.geojson", {
        "type": "FeatureCollection", "crs": UTM33, "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": []}}]})),
        "puts no landslide pixel"),
    Case("inventory_points_not_polygons", lambda c: _train(c, _geojson(c, "inv.geojson", {
        "type": "FeatureCollection", "crs": UTM33, "features": [
            {"type": "Feature", "properties": {"id": "p1"}, "geometry": {"type": "Point", "coordinates": [500100, 4999900]}}]})),
        "landslide inventories need polygons"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_without_damage(case, world, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLIDEWATCH_DASK_ADDRESS", "threads")
    ctx = Ctx(world, tmp_path, monkeypatch, (date(2024, 9, 1) + timedelta(days=CASES.index(case))).isoformat())
    before = snapshot(world.out)
    try:
        args = case.build(ctx)
        res = runner.invoke(app, args)
    finally:
        if ctx.cleanup:
            ctx.cleanup()
    text = " ".join(res.output.split())  # rich may wrap long lines
    assert res.exit_code == 2, res.output
    assert case.needle in text, res.output
    assert "Fix:" in text and "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    after = snapshot(world.out)
    assert {k: after.get(k) for k in before} == before, "an existing output was changed"
    assert not [p for p in after if p.endswith(("zarr/zarr.json", "zarr/.zmetadata")) and p not in before], \
        "a new store looks finished"


@pytest.mark.parametrize("mutation", ["null_geometry_and_no_bbox", "no_item_properties_epsg"])
def test_tolerated_odd_items_give_the_same_cube(mutation, world, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Items without geometry/bbox (footprint from proj:transform), or whose EPSG is only on
    the assets, are read normally: same cube as the finished run."""
    import pystac

    monkeypatch.setenv("SLIDEWATCH_DASK_ADDRESS", "threads")
    ctx = Ctx(world, tmp_path, monkeypatch, "2024-08-31")

    def mutate(items):  # type: ignore[no-untyped-def]
        for cid, its in items.items():
            new = []
            for it in its:
                d = it.to_dict()
                if mutation == "null_geometry_and_no_bbox":
                    d["geometry"] = None
                    d.pop("bbox", None)
                elif cid == "sentinel-2-l2a":
                    epsg = d["properties"].pop("proj:epsg")
                    for a in d["assets"].values():
                        a["proj:epsg"] = epsg
                new.append(pystac.Item.from_dict(d))
            items[cid] = new

    ctx.items(mutate)
    res = runner.invoke(app, ctx.run(out=tmp_path / "out", end="2024-08-31"))
    assert res.exit_code == 0, res.output
    (store,) = list((tmp_path / "out").rglob("cube_utm48n.zarr"))
    got, want = store_arrays(store), store_arrays(world.store)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_sweep_is_wide_enough():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)
