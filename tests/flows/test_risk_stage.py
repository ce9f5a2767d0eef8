"""The risk stage end to end on the tiny region: LSI store → U-Net over tiles → risk.zarr
(one group per zone) → COGs, PNG and a STAC item; resumable and reused when current."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import torch
import xarray as xr

import models.demo
from flows import stages
from flows.stages.risk import open_zone
from models.checkpoint import save_checkpoint
from models.data import NormStats
from models.demo import ensure_demo_model
from models.networks import DEFAULT_CHANNELS, EnhancedUNet
from models.predictor import Predictor
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import CheckpointError
from pipeline.core.quality import QualityFlag
from pipeline.plan.regions import Region
from pipeline.predict.inference import predict_window
from pipeline.predict.mosaic import classify
from pipeline.predict.uncertainty import FlipEnsemble
from pipeline.rain.events import resolve_rain
from tests.tinyregion import FakeSource, make_tiny_region, tiny_checkpoint, tiny_region

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
    ckpt = tiny_checkpoint(result.zones[0].lsi_path, root / "model.safetensors",
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


class CountingPredictor:
    """A numpy stand-in for the U-Net (a fixed weighted sum of the channels through a
    sigmoid, halo 1) that keeps a digest of every tile it is given."""

    channels = tuple(DEFAULT_CHANNELS)
    halo = 1

    def __init__(self) -> None:
        import threading

        self.calls = 0
        self.tiles: list[str] = []
        self._lock = threading.Lock()
        self.weights = np.linspace(-1.0, 1.0, len(self.channels), dtype=np.float32)

    def check_channels(self, names) -> None:  # type: ignore[no-untyped-def]
        if tuple(names) != self.channels:
            raise CheckpointError(f"channels {list(names)} are not {list(self.channels)}.", "pass them in order.")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        import threading

        self.__dict__.update(state, _lock=threading.Lock())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import hashlib

        with self._lock:
            self.calls += 1
            self.tiles += [hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest() for t in batch]
        z = np.tensordot(self.weights, np.nan_to_num(batch), axes=(0, 1)) / 100.0
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def test_each_inference_tile_runs_once_across_write_tiles(lsi_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Four 64 px write tiles over one grid of 40 px inference tiles (overlap 4, stride 36:
    origins 0, 36, 72, 108 on each 128 px axis, the last clipped to 20 px): the model sees
    each of the 16 tiles once, i.e. (3·40 + 20)² = 140² pixels for 128² output pixels
    (1.20), not once per write tile that needs it (2 + 3 tiles per axis: 180² / 128² = 1.98)."""
    from flows.stages.risk import write_risk

    result, _, _ = lsi_run
    (zone,) = result.zones
    assert len(zone.grid.tiles(2)) == 4
    fake = CountingPredictor()
    res = write_risk(tmp_path / "once", [(zone.grid, zone.lsi_path)], fake, region="tiny", tile=40, uncertainty=False)
    s = res.stats
    assert len(fake.tiles) == len(set(fake.tiles)) == s.tiles_run  # no tile twice
    assert s.tiles_run + s.tiles_skipped == 16 and s.model_calls == fake.calls
    assert s.pixels_output == 128 * 128
    sizes = [40, 40, 40, 20]
    if s.tiles_skipped == 0:
        assert s.pixels_processed == sum(sizes) ** 2
    assert s.overlap_factor <= 1.3, s.overlap_factor

    # a resumed run computes only the tiles the missing write tiles need: with one tile per
    # group, the write tile at (0, 0) alone needs the tile at (0, 0)
    class Stop(Exception):
        pass

    def stop_at(key: str):  # type: ignore[no-untyped-def]
        def on_event(kind: str, info: dict) -> None:
            if kind == "tile" and not info["skipped"] and info["tile"] == key:
                raise Stop
        return on_event

    first = zone.grid.tiles(2)[0].key
    partial = CountingPredictor()
    with pytest.raises(Stop):  # one tile per group: the graph finishes write tile (0, 0) alone first
        write_risk(tmp_path / "resume", [(zone.grid, zone.lsi_path)], partial, region="tiny", tile=40,
                   uncertainty=False, batch_size=1, on_event=stop_at(first))
    again = CountingPredictor()
    events: list[tuple[str, bool]] = []
    res2 = write_risk(tmp_path / "resume", [(zone.grid, zone.lsi_path)], again, region="tiny", tile=40,
                      uncertainty=False, batch_size=1,
                      on_event=lambda k, i: events.append((i["tile"], i["skipped"])) if k == "tile" else None)
    done_before = {t for t, skipped in events if skipped}
    assert first in done_before
    assert len(again.tiles) == len(set(again.tiles)) == res2.stats.tiles_run
    assert res2.stats.tiles_run + res2.stats.tiles_skipped == 16 - len(done_before)  # all but the corner tile only r0_c0 needs
    ref = xr.open_zarr(tmp_path / "once" / "risk.zarr", group="utm48n", consolidated=False)["susceptibility"].values
    got = xr.open_zarr(tmp_path / "resume" / "risk.zarr", group="utm48n", consolidated=False)["susceptibility"].values
    np.testing.assert_array_equal(got, ref)


def test_a_worker_that_cannot_see_the_inputs_fails_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Dask worker without the shared volume would read the LSI store as empty (all
    nodata): the model refuses to run there instead."""
    import pickle

    from flows.stages.inference_workers import WorkerModel, run_counters, take_counters
    from pipeline.core.errors import StoreError

    fake = CountingPredictor()
    sent = WorkerModel(fake, fake, run_counters("unseen"), inputs=[str(tmp_path / "gone.zarr")])
    model = pickle.loads(pickle.dumps(sent))  # as a worker gets it
    with pytest.raises(StoreError, match=r"cannot read .*gone\.zarr") as info:
        model(np.zeros((1, len(fake.channels), 8, 8), dtype=np.float32))
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)
    (tmp_path / "gone.zarr").mkdir()
    assert model(np.zeros((1, len(fake.channels), 8, 8), dtype=np.float32)).shape == (1, 8, 8)
    _, devices = take_counters("unseen")  # the calls' device, in this process's counters
    assert devices == ["CountingPredictor (in memory)"] and take_counters("unseen") is None
