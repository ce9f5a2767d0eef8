"""The run's static STAC catalog (pipeline/products/catalog.py, stac_item.export_run).

A demo-like run (one 257 x 300 zone written to risk.zarr, saved input items, a small
checkpoint inside the run) is exported once; its catalog is validated by pystac against
the JSON schemas of STAC 1.1 and of every extension it declares, all read from
``stac_schemas/`` beside this file (no network: a schema that is not there fails the
test). References: the bundled schemas, ``xr.open_zarr`` of the store, hashlib, the
checkpoint written here (and, when torch is installed, one written by models.checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import xarray as xr
from pystac.errors import STACValidationError
from pystac.validation import JsonSchemaSTACValidator, RegisteredValidator, set_validator

from pipeline.core.errors import CheckpointError
from pipeline.products.catalog import read_checkpoint_header
from pipeline.products.stac_item import export_run
from tests.pipeline.products.test_export import _save_items, make_zone

SCHEMAS = Path(__file__).with_name("stac_schemas")
CHANNELS = ["slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi"]
STAC_API = "http://127.0.0.1:8642/api/stac"  # the (demo) STAC API the run read: no link may point at it
INPUT = "https://example.test/collections/sentinel-2-l2a/items/S2_0"


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator served only from ``stac_schemas/`` (the folders mirror
    the schemas' URLs); it records every schema used and refuses any it does not hold."""

    def __init__(self) -> None:
        super().__init__()
        self.schema_cache = {"https://" + p.relative_to(SCHEMAS).as_posix(): json.loads(p.read_text())
                             for p in SCHEMAS.rglob("*.json")}
        self.used: set[str] = set()

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        uri = schema_uri.split("#")[0]
        if uri not in self.schema_cache:
            raise AssertionError(f"schema {schema_uri} is not bundled in {SCHEMAS}")
        self.used.add(uri)
        return self.schema_cache[uri]


@pytest.fixture
def offline() -> OfflineValidator:
    before = RegisteredValidator._validator
    validator = OfflineValidator()
    set_validator(validator)
    yield validator
    RegisteredValidator._validator = before


@pytest.fixture
def no_rasters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the COGs and the region mosaic (tested with the catalog in demo_run) where a test is
    about something else: the catalog then has the Zarr asset and the model only."""
    import pipeline.products.stac_item as stac_item

    monkeypatch.setattr(stac_item, "write_cogs", lambda *a, **k: {})
    monkeypatch.setattr(stac_item, "write_region_mosaic", lambda *a, **k: {})


def _risk_zone(**kw: Any) -> xr.Dataset:
    """make_zone as the risk stage writes it today: hazard, susceptibility, uncertainty."""
    ds = make_zone(chunks=(128, 128), **kw)
    prob = ds["probability"]
    return ds.drop_vars("probability").assign(
        hazard=prob.assign_attrs(long_name="landslide hazard for the event"),
        susceptibility=prob.assign_attrs(long_name="landslide susceptibility"),
        uncertainty=(prob * 0.1).assign_attrs(long_name="susceptibility spread", units="1"),
    )


def write_checkpoint(path: Path, channels: list[str], seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """A slidewatch checkpoint by hand: safetensors (8-byte little-endian header length, JSON
    header with ``__metadata__["slidewatch"]``, raw little-endian tensors)."""
    rng = np.random.default_rng(seed)
    tensors = {"enc.weight": rng.random((4, len(channels), 3, 3)).astype("<f4"), "enc.bias": np.zeros(4, "<f4"),
               "head.weight": rng.random((1, 4, 1, 1)).astype("<f4")}
    meta = {"format": "slidewatch-checkpoint", "format_version": 1, "architecture": "EnhancedUNet",
            "hyperparameters": {"channels": channels, "num_classes": 1, "base_width": 4, "depth": 2},
            "channels": channels, "normalisation": {"mean": [float(i) for i in range(len(channels))],
                                                    "std": [1.0 + i for i in range(len(channels))]},
            "output": "logit", "software": {"slidewatch": "0.1.0", "torch": "2.13.0"},
            "created": "2026-01-02T03:04:05+00:00", "calibration": {"class_thresholds": [0.3, 0.6]},
            "provenance": {"cube": "https://example.test/cube.zarr?sig=SECRET&se=2026"}}
    header: dict[str, Any] = {"__metadata__": {"slidewatch": json.dumps(meta)}}
    offset, blobs = 0, []
    for name, arr in tensors.items():
        blob = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return meta, tensors


def make_run(root: Path, *, zarr_format: int = 3, consolidated: bool = False, checkpoint: str = "inside",
             zones: tuple[tuple[str, int, float], ...] = (("utm48n", 32648, 320000.0),)) -> tuple[Path, Path]:
    """A finished run folder with its risk.zarr, saved input items, run.json and checkpoint
    (``inside`` the run, ``outside`` it, or ``other``: a file the mosaic was not made with)."""
    run = root / "test-valley" / "20240701_20240831"
    ckpt = run / "model" / "model.safetensors" if checkpoint == "inside" else root / "models" / "model.safetensors"
    write_checkpoint(ckpt, CHANNELS)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    if checkpoint == "other":
        write_checkpoint(ckpt, CHANNELS, seed=1)
    for zone, epsg, x0 in zones:
        ds = _risk_zone(epsg=epsg, x0=x0)
        ds.attrs["checkpoint_sha256"] = sha
        ds.to_zarr(run / "risk.zarr", group=zone, zarr_format=zarr_format, consolidated=consolidated,
                   encoding={"risk_class": {"_FillValue": 255}})
        _save_items(run, zone, {"sentinel-2-l2a": [("S2_0", INPUT), ("S2_1", None)]})
    (run / "run.json").write_text(json.dumps({"alert": None, "stac_url": STAC_API, "checkpoint": str(ckpt)}))
    return run, ckpt


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    run, ckpt = make_run(tmp_path_factory.mktemp("catalog"))
    (run / "exports").mkdir()
    (run / "exports" / "slidewatch-risk-test-valley-20240701_20240831.json").write_text("{}")  # an older export's item
    return run, ckpt, export_run(run, blocksize=64)


def _hrefs(doc: dict) -> list[tuple[str, str]]:
    out = [(f"link {ln['rel']}", ln["href"]) for ln in doc.get("links", [])]
    return out + [(f"asset {k}", a["href"]) for k, a in doc.get("assets", {}).items()]


def test_catalog_validates_offline_and_is_self_contained(demo_run, offline):
    run, ckpt, path = demo_run
    assert path == run / "exports" / "collection.json"
    files = sorted((run / "exports").rglob("*.json"))
    assert [p.relative_to(run / "exports").as_posix() for p in files] == [
        "collection.json", f"items/slidewatch-model-{hashlib.sha256(ckpt.read_bytes()).hexdigest()[:12]}.json",
        "items/slidewatch-risk-test-valley-20240701_20240831-utm48n.json"]  # the old single item is gone

    coll = pystac.Collection.from_file(str(path))
    coll.validate_all()
    declared = {uri for p in files for uri in json.loads(p.read_text()).get("stac_extensions", [])}
    assert declared == {f"https://stac-extensions.github.io/{e}/schema.json" for e in (
        "processing/v1.2.0", "projection/v2.0.0", "raster/v1.1.0", "datacube/v2.2.0", "classification/v2.0.0",
        "xarray-assets/v1.0.0", "mlm/v1.4.0", "file/v2.1.0")}
    core = {f"https://schemas.stacspec.org/v1.1.0/{k}-spec/json-schema/{k}.json" for k in ("item", "collection")}
    assert declared | core <= offline.used  # every declared extension was checked, offline

    for p in files:
        doc = json.loads(p.read_text())
        assert STAC_API not in p.read_text() and "SECRET" not in p.read_text()
        assert not [ln for ln in doc["links"] if ln["rel"] == "self"]
        for what, href in _hrefs(doc):
            if what == "link derived_from" and href.startswith("https://"):
                assert href == INPUT, href  # the input item, by its canonical URL
                continue
            assert "://" not in href and not href.startswith("/"), (p.name, what, href)
            target = (p.parent / href).resolve()
            assert target.exists() and target.is_relative_to(run.resolve()), (p.name, what, href)

    (zone,) = [it for it in coll.get_items() if it.id.endswith("-utm48n")]
    inputs = [ln for ln in zone.links if ln.rel == "derived_from" and ln.href.startswith("https://")]
    assert [(ln.href, ln.title) for ln in inputs] == [(INPUT, "sentinel-2-l2a/S2_0")]  # S2_1 has no URL
    assert set(coll.item_assets) == set(zone.assets)
    assert {"zarr", "hazard", "susceptibility", "uncertainty", "class", "quality", "lsi"} <= set(zone.assets)
    assert set(zone.properties["proj:shape"]) == {257, 300} and zone.properties["proj:code"] == "EPSG:32648"
    d = coll.to_dict()
    assert d["license"] == "other" and d["summaries"]["proj:code"] == ["EPSG:32648"]
    assert d["extent"]["temporal"]["interval"] == [["2024-07-01T00:00:00Z", "2024-08-31T23:59:59Z"]]


def test_model_item_carries_the_checkpoint(demo_run, offline):
    run, ckpt, path = demo_run
    coll = pystac.Collection.from_file(str(path))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    model = coll.get_item(f"slidewatch-model-{sha[:12]}")
    meta, tensors = write_checkpoint(run.parent / "scratch.safetensors", CHANNELS)  # what make_run wrote (seed 0)
    p = model.properties
    (inp,) = p["mlm:input"]
    assert inp["bands"] == CHANNELS == [b["name"] for b in p["bands"]]
    assert inp["input"] == {"shape": [-1, 7, -1, -1], "dim_order": ["batch", "channel", "height", "width"],
                            "data_type": "float32"}
    assert [(v["mean"], v["stddev"]) for v in inp["value_scaling"]] == list(zip(meta["normalisation"]["mean"],
                                                                                meta["normalisation"]["std"]))
    assert p["mlm:total_parameters"] == sum(t.size for t in tensors.values()) == 4 * 7 * 9 + 4 + 4
    assert (p["mlm:framework"], p["mlm:framework_version"], p["mlm:tasks"]) == ("PyTorch", "2.13.0",
                                                                                ["semantic-segmentation"])
    assert p["mlm:hyperparameters"] == {"num_classes": 1, "base_width": 4, "depth": 2}
    assert p["mlm:accelerator"] is None and p["slidewatch:calibration"] == {"class_thresholds": [0.3, 0.6]}
    assert p["slidewatch:training"]["provenance"]["cube"] == "https://example.test/cube.zarr"  # signature dropped
    asset = model.assets["model"]
    assert "mlm:model" in asset.roles and asset.extra_fields["mlm:artifact_type"] == "safetensors.torch.save_file"
    assert Path(asset.get_absolute_href()) == ckpt
    assert asset.extra_fields["file:checksum"] == "1220" + sha  # multihash: sha2-256, 32 bytes
    assert asset.extra_fields["file:size"] == ckpt.stat().st_size
    (zone,) = [it for it in coll.get_items() if it.id.endswith("-utm48n")]
    (link,) = [ln for ln in zone.links if ln.rel == "derived_from" and "mlm:name" in ln.extra_fields]
    assert link.extra_fields["mlm:name"] == p["mlm:name"] and link.resolve_stac_object().target.id == model.id
    assert zone.properties["slidewatch:checkpoint_sha256"] == sha


def test_validation_is_not_vacuous(demo_run, offline):
    run, _, path = demo_run
    model_file = next((run / "exports" / "items").glob("slidewatch-model-*.json"))
    doc = json.loads(model_file.read_text())
    pystac.validation.validate_dict(doc)
    broken = json.loads(model_file.read_text())
    del broken["properties"]["mlm:input"]
    with pytest.raises(STACValidationError, match="mlm"):
        pystac.validation.validate_dict(broken)
    zone_file = next((run / "exports" / "items").glob("*-utm48n.json"))
    broken = json.loads(zone_file.read_text())
    broken["assets"]["class"]["classification:classes"][0]["name"] = "not a name"
    with pytest.raises(STACValidationError, match="classification"):
        pystac.validation.validate_dict(broken)
    broken = json.loads(zone_file.read_text())
    broken["assets"]["zarr"]["cube:dimensions"]["x"]["type"] = "time"
    with pytest.raises(STACValidationError, match="datacube"):
        pystac.validation.validate_dict(broken)


@pytest.mark.parametrize(("zarr_format", "consolidated"), [(3, False), (2, True)])
def test_zarr_asset_opens_through_xpystac(tmp_path, no_rasters, zarr_format, consolidated):
    pytest.importorskip("xpystac")
    run, _ = make_run(tmp_path, zarr_format=zarr_format, consolidated=consolidated)
    coll = pystac.Collection.from_file(str(export_run(run, blocksize=64)))
    (item,) = [it for it in coll.get_items() if it.id.endswith("-utm48n")]
    kwargs = item.assets["zarr"].extra_fields["xarray:open_kwargs"]
    assert (kwargs["zarr_format"], kwargs["consolidated"]) == (zarr_format, consolidated)  # read from the store
    assert kwargs["decode_coords"] == "all" and kwargs["group"] == "utm48n"
    item.make_asset_hrefs_absolute()  # xpystac opens asset.href as it is: resolve it against the item first
    got = xr.open_dataset(item.assets["zarr"])
    ref = xr.open_zarr(run / "risk.zarr", group="utm48n", decode_coords="all", consolidated=consolidated)
    assert set(got.data_vars) == set(ref.data_vars) and got.sizes == ref.sizes
    xr.testing.assert_identical(got.load(), ref.load())
    assert got.rio.crs.to_epsg() == 32648 and got.rio.transform() == ref.rio.transform()


def test_two_zones_one_collection(tmp_path, offline):
    run, _ = make_run(tmp_path, zones=(("utm47n", 32647, 800000.0), ("utm48n", 32648, 200000.0)))
    coll = pystac.Collection.from_file(str(export_run(run, blocksize=64)))
    coll.validate_all()
    zones = {it.properties["slidewatch:zone"]: it for it in coll.get_items() if "slidewatch:zone" in it.properties}
    assert sorted(zones) == ["utm47n", "utm48n"]
    codes = {z: it.properties["proj:code"] for z, it in zones.items()}
    assert codes == {"utm47n": "EPSG:32647", "utm48n": "EPSG:32648"}
    overall, *per_zone = coll.extent.spatial.bboxes
    assert per_zone == [zones["utm47n"].bbox, zones["utm48n"].bbox]
    assert overall[0] < 102.0 < overall[2]  # spans the zone boundary at 102 E
    for w, s, e, n in per_zone:
        assert overall[0] <= w < e <= overall[2] and overall[1] <= s < n <= overall[3]
    assert coll.summaries.lists["proj:code"] == ["EPSG:32647", "EPSG:32648"]
    for key, asset in coll.assets.items():  # the region mosaic and its styles
        assert key.startswith("region_") and (run / "exports" / asset.href).exists()


@pytest.mark.parametrize("case", ["outside", "other", "gone"])
def test_model_asset_outside_the_run_and_fallbacks(tmp_path, no_rasters, offline, caplog, case):
    run, ckpt = make_run(tmp_path, checkpoint="other" if case == "other" else "outside")
    if case == "gone":
        ckpt.unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.products.catalog"):
        coll = pystac.Collection.from_file(str(export_run(run, blocksize=64)))
    coll.validate_all()
    models = [it for it in coll.get_items() if it.id.startswith("slidewatch-model-")]
    if case == "outside":
        (model,) = models
        assert model.to_dict()["assets"]["model"]["href"] == ckpt.resolve().as_uri()  # absolute: not in the run
        assert "slidewatch:notes" not in coll.extra_fields and not caplog.records
        return
    assert models == []
    (note,) = coll.extra_fields["slidewatch:notes"]
    assert ("not the one the mosaic was made with" if case == "other" else "is not there any more") in note
    assert [r.getMessage() for r in caplog.records] == [f"STAC export: {note}"]


def test_a_file_that_is_no_checkpoint_refuses_the_export(tmp_path):
    run, ckpt = make_run(tmp_path)
    ckpt.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*Fix:"):
        export_run(run, blocksize=64)
    assert not (run / "exports").exists()  # refused before any file was written


def test_header_agrees_with_models_checkpoint(tmp_path):
    """The header reader against the real writer and reader (models.checkpoint, needs torch)."""
    pytest.importorskip("torch")
    from models.checkpoint import read_metadata, save_checkpoint, sha256
    from models.data import NormStats
    from models.networks import build_model

    model = build_model("UNet", channels=CHANNELS[:3], base_width=4, depth=1)
    path = save_checkpoint(tmp_path / "m.safetensors", model, NormStats((0.0, 1.0, 2.0), (1.0, 2.0, 3.0)))
    header = read_checkpoint_header(path)
    meta = read_metadata(path)
    assert header.metadata["channels"] == list(meta.channels) == CHANNELS[:3]
    assert header.metadata["normalisation"] == meta.normalisation.to_json()
    assert header.parameters == sum(t.numel() for t in model.state_dict().values())
    assert header.sha256 == sha256(path) and header.size == path.stat().st_size


def test_reexport_removes_stale_items(tmp_path, no_rasters):
    run, _ = make_run(tmp_path)
    export_run(run, blocksize=64)
    stale = run / "exports" / "items" / "slidewatch-risk-gone-utm99n.json"
    stale.write_text("{}")
    export_run(run, blocksize=64)
    assert not stale.exists() and len(list((run / "exports" / "items").glob("*.json"))) == 2


def test_bundled_schemas_are_what_their_paths_say():
    """Each schema sits at the path of its URL (its ``$id``), and the README names its source."""
    readme = (SCHEMAS / "README.md").read_text()
    for p in SCHEMAS.rglob("*.json"):
        url = "https://" + p.relative_to(SCHEMAS).as_posix()
        sid = json.loads(p.read_text()).get("$id", "").rstrip("#")
        assert sid.removesuffix("commonjson") == url.removesuffix("common.json"), (p, sid)  # a typo in STAC 1.1.0
        assert url.split("/")[2] in readme
