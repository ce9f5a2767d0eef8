"""The risk stage end to end on the tiny region: LSI store → U-Net over tiles → risk.zarr
(one group per zone) → COGs, PNG and a STAC item; resumable and reused when current."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import torch
import xarray as xr

from flows import stages
from pipeline.rain.events import resolve_rain
import models.demo
from models.demo import ensure_demo_model
from flows.stages.risk import open_zone
from models.checkpoint import save_checkpoint
from models.data import NormStats
from models.networks import DEFAULT_CHANNELS, EnhancedUNet
from models.predictor import Predictor
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import CheckpointError
from pipeline.predict.inference import predict_window
from pipeline.predict.mosaic import classify
from pipeline.predict.uncertainty import FlipEnsemble
from pipeline.core.quality import QualityFlag
from pipeline.plan.regions import Region
from tests.tinyregion import FakeSource, make_tiny_region, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def _region() -> Region:
    return tiny_region("tiny")


@pytest.fixture(scope="module")
def lsi_run(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("risk")
    items = make_tiny_region(root / "cogs")
    out = root / "out"
    result = stages.cube_stage(_region(), WINDOW, FakeSource.url, out, CubeConfig(), chunk=32,
                               source=FakeSource(items))
    rain = resolve_rain(20.0, 2.0, None, _region().bbox, WINDOW)
    stages.lsi_stage(result, rain)
    torch.manual_seed(0)
    model = EnhancedUNet(DEFAULT_CHANNELS, base_width=4, depth=2)
    lsi = xr.open_zarr(result.zones[0].lsi_path)
    mean = tuple(float(lsi[c].mean()) for c in DEFAULT_CHANNELS)
    std = tuple(float(lsi[c].std()) or 1.0 for c in DEFAULT_CHANNELS)
    ckpt = save_checkpoint(root / "model.safetensors", model, NormStats(mean, std),
                           provenance={"note": "random weights for tests"})
    return result, rain, ckpt


def test_mosaic_equals_one_pass_and_is_georeferenced(lsi_run) -> None:  # type: ignore[no-untyped-def]
    result, rain, ckpt = lsi_run
    events: list[tuple[str, dict]] = []
    path = stages.risk_stage(result, rain, ckpt, tile=32, on_event=lambda k, i: events.append((k, i)))
    zone = open_zone(result.run_dir, "utm48n")
    assert path == result.run_dir / "risk.zarr"
    assert zone.rio.crs.to_epsg() == 32648 and zone.sizes == {"y": 128, "x": 128}
    assert zone.attrs["slidewatch_complete"] is True and len(zone.attrs["checkpoint_sha256"]) == 64
    assert all("units" in v.attrs and "long_name" in v.attrs for v in zone.data_vars.values())

    # Independent reference: the same predictor (4 flips) over the whole LSI array in one call.
    lsi = xr.open_zarr(result.zones[0].lsi_path)
    x = np.stack([lsi[c].values for c in DEFAULT_CHANNELS])
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    ref, ref_spread = predict_window(x, FlipEnsemble(pred), tile=32)
    prob = zone["susceptibility"].values
    assert np.array_equal(np.isnan(prob), np.isnan(ref))
    np.testing.assert_allclose(prob, ref, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(zone["uncertainty"].values, ref_spread, atol=1e-5, equal_nan=True)
    # the integer variables as stored (their no-data code, not decoded to NaN)
    raw = xr.open_zarr(result.run_dir / "risk.zarr", group="utm48n", consolidated=False, mask_and_scale=False)
    assert np.array_equal(raw["susceptibility_class"].values, classify(prob))
    haz = zone["hazard"].values
    np.testing.assert_allclose(haz, 1 - (1 - prob.astype(np.float64)) ** rain.multiplier, atol=1e-6, equal_nan=True)
    assert np.array_equal(raw["risk_class"].values, classify(haz))
    assert zone.attrs["hazard_mode"] == "decoupled" and zone.attrs["rain_multiplier"] == rain.multiplier
    assert zone.attrs["class_thresholds_source"].startswith("default")
    np.testing.assert_array_equal(zone["lsi"].values, lsi["lsi"].values)
    no_model = (raw["quality"].values & QualityFlag.NO_MODEL) > 0
    assert np.array_equal(no_model, np.isnan(prob))
    assert np.isfinite(prob).mean() > 0.5

    exports = result.run_dir / "exports"
    for layer in ("hazard", "susceptibility", "uncertainty", "class"):
        assert (exports / f"risk_utm48n_{layer}.tif").is_file(), layer
    assert (exports / "risk_utm48n.png").is_file()
    # the run's STAC catalog: exports/collection.json and an item per zone under exports/items/
    (item_path,) = [p for p in exports.rglob("*.json") if p.name != "collection.json" and "utm48n" in p.name]
    import pystac

    item = pystac.Item.from_file(str(item_path))
    assert item.properties.get("slidewatch:checkpoint_sha256") == zone.attrs["checkpoint_sha256"]
    # the tiny region's items have no self links, so they are listed by id (derived_from needs an href)
    assert sorted(item.properties["slidewatch:input_items"]["sentinel-2-l2a"]) == ["S2_0", "S2_1", "S2_2"]


def test_rerun_reuses_and_interrupted_run_resumes(lsi_run) -> None:  # type: ignore[no-untyped-def]
    result, rain, ckpt = lsi_run
    stages.risk_stage(result, rain, ckpt, tile=32)
    before = open_zone(result.run_dir, "utm48n")["susceptibility"].values

    events: list[str] = []
    stages.risk_stage(result, rain, ckpt, tile=32, on_event=lambda k, i: events.append(k))
    assert "reused" in events and "tile" not in events

    # Interrupt after the first freshly written tile, then resume.
    class Stop(Exception):
        pass

    written: list[str] = []

    def stop_after_one(kind: str, info: dict) -> None:
        if kind == "tile" and not info["skipped"]:
            written.append(info["tile"])
            if len(written) == 1:
                raise Stop

    with pytest.raises(Stop):
        stages.risk_stage(result, rain, ckpt, tile=64, overwrite=True, on_event=stop_after_one)  # new settings
    group = result.run_dir / "risk.zarr" / "utm48n"
    assert (group.parent / "utm48n.partial").is_dir()
    resumed: list[tuple[str, bool]] = []
    stages.risk_stage(result, rain, ckpt, tile=64, overwrite=True,
                      on_event=lambda k, i: resumed.append((i["tile"], i["skipped"])) if k == "tile" else None)
    assert (written[0], True) in resumed and sum(not s for _, s in resumed) == len(resumed) - 1
    after = open_zone(result.run_dir, "utm48n")
    assert after.attrs["slidewatch_complete"] is True
    assert np.isfinite(after["susceptibility"].values).sum() == np.isfinite(before).sum()


def test_channel_mismatch_is_refused(lsi_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result, rain, _ = lsi_run
    channels = ("slope", "dem", "ndvi", "soil_moisture_index")  # the last is not in the LSI store
    model = EnhancedUNet(channels, base_width=4, depth=2)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, NormStats((0.0,) * 4, (1.0,) * 4))
    mosaic = result.run_dir / "risk.zarr" / "utm48n"
    before = sorted(p.name for p in mosaic.iterdir()) if mosaic.exists() else None
    with pytest.raises(CheckpointError, match="soil_moisture_index"):
        stages.risk_stage(result, rain, ckpt, tile=32)
    assert (sorted(p.name for p in mosaic.iterdir()) if mosaic.exists() else None) == before


def test_demo_model_is_trained_once_and_cached(lsi_run, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rasterio

    result, _, _ = lsi_run
    lsi_path = result.zones[0].lsi_path
    lsi = xr.open_zarr(lsi_path)
    truth = tmp_path / "truth.tif"
    mask = (lsi["slope"].values > np.nanpercentile(lsi["slope"].values, 97)).astype("uint8")
    with rasterio.open(truth, "w", driver="GTiff", width=128, height=128, count=1, dtype="uint8",
                       crs="EPSG:32648", transform=lsi.rio.transform() if hasattr(lsi, "rio") else None) as dst:
        dst.write(mask, 1)
    tiny = {"arch": "unet", "base_width": 4, "depth": 2, "chip_size": 32, "block_size": 32, "epochs": 1,
            "chips_per_epoch": 16, "batch_size": 8, "seed": 0}
    monkeypatch.setattr(models.demo, "DEMO_TRAIN", tiny)
    events: list[str] = []
    first = ensure_demo_model(lsi_path, truth, tmp_path / "model", on_event=lambda k, i: events.append(k))
    assert first.is_file() and "training" in events and not (tmp_path / "model.partial").exists()
    events.clear()
    again = ensure_demo_model(lsi_path, truth, tmp_path / "model", on_event=lambda k, i: events.append(k))
    assert again == first and events == ["model-reused"]
    monkeypatch.setattr(models.demo, "DEMO_TRAIN", {**tiny, "seed": 1})  # other settings → retrained
    events.clear()
    ensure_demo_model(lsi_path, truth, tmp_path / "model", on_event=lambda k, i: events.append(k))
    assert "training" in events


def test_device_used_is_announced_and_recorded(lsi_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from pipeline.core.errors import InputDataError

    result, rain, ckpt = lsi_run
    run = replace(result, run_dir=tmp_path / "run")  # a fresh mosaic beside the module's
    if not torch.cuda.is_available():  # `gpu` is `cuda`: refused in one line, nothing written
        with pytest.raises(InputDataError, match="--device cuda") as info:
            stages.risk_stage(run, rain, ckpt, tile=64, device="gpu", uncertainty=False)
        assert "\n" not in str(info.value) and "Fix:" in str(info.value)
        assert not (tmp_path / "run").exists()
    with pytest.raises(InputDataError, match="'tpu'"):
        stages.risk_stage(run, rain, ckpt, tile=64, device="tpu", uncertainty=False)
    events: list[tuple[str, dict]] = []
    stages.risk_stage(run, rain, ckpt, tile=64, device="auto", uncertainty=False,
                      on_event=lambda k, i: events.append((k, i)))
    zone = open_zone(run.run_dir, "utm48n")
    want = "cpu (float32)" if not torch.cuda.is_available() else zone.attrs["inference_device"]
    assert zone.attrs["inference_device"] == want and want.split()[0] in ("cpu", "cuda:0")
    notes = [i["text"] for k, i in events if k == "note" and "inference on the CPU" in i["text"]]
    assert len(notes) == (0 if torch.cuda.is_available() else 1)  # the fallback, said once
    (stats,) = [i for k, i in events if k == "inference"]
    assert stats["devices"] == [want] and stats["stats"]["chunks_run"] > 0
