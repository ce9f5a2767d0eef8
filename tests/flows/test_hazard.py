"""Susceptibility and trigger kept apart (issue 16): the same cube under two rains gives the
same susceptibility and a hazard that orders as the rain does; the paper's coupling stays
available; a model on cube bands deploys; inputs unlike the training data are named."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import pipeline.acquire.catalog
from flows import stages
from flows.cli import app
from flows.stages.risk import open_zone
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.errors import CheckpointError, InputDataError
from pipeline.rain.events import resolve_rain
from tests.tinyregion import FakeSource, inner_bbox, make_tiny_region, tiny_region

torch = pytest.importorskip("torch")
WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def _checkpoint(path, channels, lsi_or_cube=None, **meta):  # type: ignore[no-untyped-def]
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import EnhancedUNet

    torch.manual_seed(0)
    if lsi_or_cube is not None:
        mean = tuple(float(lsi_or_cube[c].mean()) for c in channels)
        std = tuple(float(lsi_or_cube[c].std()) or 1.0 for c in channels)
    else:
        mean, std = (0.0,) * len(channels), (1.0,) * len(channels)
    return save_checkpoint(path, EnhancedUNet(tuple(channels), base_width=4, depth=2), NormStats(mean, std), **meta)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hazard")
    items = make_tiny_region(root / "cogs")
    region = tiny_region("tiny")
    result = stages.cube_stage(region, WINDOW, FakeSource.url, root / "out", CubeConfig(), chunk=32,
                               source=FakeSource(items))
    light = resolve_rain(0.5, 0.5, None, region.bbox, WINDOW)
    stages.lsi_stage(result, light)
    from models.networks import DEFAULT_CHANNELS

    ckpt = _checkpoint(root / "m.safetensors", DEFAULT_CHANNELS, xr.open_zarr(result.zones[0].lsi_path))
    return root, region, items, result, ckpt


def test_same_cube_under_two_rains_same_susceptibility_hazard_orders_as_rain(tiny) -> None:  # type: ignore[no-untyped-def]
    _, region, _, result, ckpt = tiny
    light = resolve_rain(0.5, 0.5, None, region.bbox, WINDOW)
    heavy = resolve_rain(2.0, 1.0, None, region.bbox, WINDOW)
    assert heavy.multiplier > light.multiplier
    layers = {}
    lsi_gen = {}
    events: dict[str, list] = {}
    for name, rain in (("light", light), ("heavy", heavy)):
        stages.lsi_stage(result, rain)
        lsi_gen[name] = xr.open_zarr(result.zones[0].lsi_path).attrs["slidewatch_generation"]
        events[name] = []
        stages.risk_stage(result, rain, ckpt, tile=32, uncertainty=False,
                          on_event=lambda k, i, n=name: events[n].append((k, i)))
        layers[name] = open_zone(result.run_dir, "utm48n").load()
    assert lsi_gen["light"] == lsi_gen["heavy"], "the rain-free LSI store was rebuilt for another rain"
    a, b = layers["light"], layers["heavy"]
    np.testing.assert_array_equal(a["susceptibility"].values, b["susceptibility"].values)
    np.testing.assert_array_equal(a["susceptibility_class"].values, b["susceptibility_class"].values)
    np.testing.assert_array_equal(a["lsi"].values, b["lsi"].values)
    ok = np.isfinite(a["hazard"].values)
    ha, hb, s = a["hazard"].values[ok], b["hazard"].values[ok], a["susceptibility"].values[ok]
    assert ok.mean() > 0.5
    assert (hb >= ha).all() and (hb > ha).mean() > 0.9, "more rain must never lower the hazard"
    assert (a["risk_class"].values[ok] <= b["risk_class"].values[ok]).all()
    # the hazard step by hand: 1 - (1 - s)^R_m
    np.testing.assert_allclose(hb, 1 - (1 - s.astype(np.float64)) ** heavy.multiplier, rtol=1e-5, atol=1e-7)
    assert b.attrs["rain_multiplier"] == heavy.multiplier and a.attrs["rain_multiplier"] == light.multiplier
    assert "1 - (1 - susceptibility) ** R_m" in b.attrs["hazard_formula"]
    # only the rain changed: the second map reuses the stored susceptibility, the model never runs
    (stats,) = [i["stats"] for k, i in events["heavy"] if k == "inference"]
    assert stats["model_calls"] == 0
    assert any(k == "note" and "recomputed from the stored susceptibility" in i["text"] for k, i in events["heavy"])


def test_paper_mode_scales_the_lsi_by_the_rain(tiny) -> None:  # type: ignore[no-untyped-def]
    _, region, _, result, ckpt = tiny
    heavy = resolve_rain(2.0, 1.0, None, region.bbox, WINDOW)
    stages.lsi_stage(result, heavy)
    free = xr.open_zarr(result.zones[0].lsi_path)["lsi"].values
    stages.lsi_stage(result, heavy, hazard="paper")
    lsi = xr.open_zarr(result.zones[0].lsi_path)
    assert lsi.attrs["hazard_mode"] == "paper" and lsi.attrs["rain_multiplier"] == heavy.multiplier
    assert not np.allclose(lsi["lsi"].values, free, equal_nan=True)
    stages.risk_stage(result, heavy, ckpt, tile=32, uncertainty=False, hazard="paper")
    zone = open_zone(result.run_dir, "utm48n")
    np.testing.assert_array_equal(zone["hazard"].values, zone["susceptibility"].values)
    assert zone.attrs["hazard_mode"] == "paper"
    stages.lsi_stage(result, heavy)  # back to the default for the other tests


def test_inputs_unlike_training_are_named_and_refused_with_strict(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.networks import DEFAULT_CHANNELS

    _, region, _, result, _ = tiny
    rain = resolve_rain(0.5, 0.5, None, region.bbox, WINDOW)
    lsi = xr.open_zarr(result.zones[0].lsi_path)
    ranges = {c: [float(lsi[c].quantile(0.005)), float(lsi[c].quantile(0.995))] for c in DEFAULT_CHANNELS}
    ranges["slope"] = [60.0, 80.0]  # "trained" on far steeper terrain than this region's
    ckpt = _checkpoint(tmp_path / "m.safetensors", DEFAULT_CHANNELS, lsi, inputs={"ranges": ranges,
                                                                                  "quantiles": [0.005, 0.995]})
    with pytest.raises(InputDataError, match=r"slope: 100% of pixels outside its training range \[60, 80\]"):
        stages.risk_stage(result, rain, ckpt, tile=32, uncertainty=False, strict=True)
    notes: list[str] = []
    stages.risk_stage(result, rain, ckpt, tile=32, uncertainty=False,
                      on_event=lambda k, i: notes.append(i["text"]) if k == "note" else None)
    assert any("slope: 100% of pixels outside" in n for n in notes) and not any("ndvi:" in n for n in notes)
    drift = open_zone(result.run_dir, "utm48n").attrs["input_drift"]
    assert [d["channel"] for d in drift] == ["slope"] and drift[0]["outside"] == 1.0


def test_calibrated_thresholds_from_the_checkpoint_are_used(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.networks import DEFAULT_CHANNELS

    _, region, _, result, _ = tiny
    rain = resolve_rain(0.5, 0.5, None, region.bbox, WINDOW)
    cal = {"class_thresholds": [0.41, 0.47], "method": "val blocks: test"}
    ckpt = _checkpoint(tmp_path / "m.safetensors", DEFAULT_CHANNELS, xr.open_zarr(result.zones[0].lsi_path),
                       calibration=cal)
    stages.risk_stage(result, rain, ckpt, tile=32, uncertainty=False)
    zone = open_zone(result.run_dir, "utm48n")
    assert zone.attrs["class_thresholds"] == [0.41, 0.47]
    assert zone.attrs["class_thresholds_source"] == "checkpoint calibration: val blocks: test"
    s = zone["susceptibility"].values
    ok = np.isfinite(s)
    want = (s[ok] >= 0.41).astype(int) + (s[ok] >= 0.47).astype(int)
    np.testing.assert_array_equal(zone["susceptibility_class"].values[ok], want)


def test_a_model_on_cube_bands_deploys_in_run_and_unknown_channels_are_refused_first(tiny, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A 4-channel model on Sentinel-2 bands: `run` reads them from the cube (the LSI store
    has none); a model on a channel no store holds is refused before the cube stage."""
    _, _, items, result, _ = tiny
    bands = ("B02", "B03", "B04", "B08")
    cube = xr.open_zarr(result.zones[0].cube_path)
    ckpt = _checkpoint(tmp_path / "bands.safetensors", bands, cube)
    monkeypatch.setenv("SLIDEWATCH_DASK_ADDRESS", "threads")
    calls: list[str] = []

    def opened(cls, url, timeout=30.0):  # type: ignore[no-untyped-def]
        calls.append(url)
        return FakeSource(items)

    monkeypatch.setattr(pipeline.acquire.catalog.StacApiSource, "open", classmethod(opened))
    out = tmp_path / "out"
    bbox = ",".join(f"{v:.6f}" for v in inner_bbox())
    args = ["run", "--region", bbox, "--start", "2024-07-01", "--end", "2024-08-31", "--out", str(out),
            "--chunk", "32", "--rain-intensity", "20", "--rain-duration", "2", "--no-uncertainty"]
    res = CliRunner().invoke(app, [*args, "--checkpoint", str(ckpt)])
    assert res.exit_code == 0, res.output
    (risk,) = out.rglob("risk.zarr")
    zone = xr.open_zarr(risk, group="utm48n", consolidated=False)
    assert zone.attrs["model"]["channels"] == list(bands)
    assert np.isfinite(zone["susceptibility"].values).mean() > 0.5
    assert json.loads(next(out.rglob("run.json")).read_text())["hazard_mode"] == "decoupled"

    odd = _checkpoint(tmp_path / "odd.safetensors", ("B02", "B05"))
    calls.clear()
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out2"), "--checkpoint", str(odd)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "['B05']" in text and "Fix:" in text, res.output
    assert not calls, "the STAC API was asked before the model was checked"


def test_deployable_channels_follow_the_cube_config() -> None:
    assert "vv" in stages.deployable_channels(CubeConfig())
    assert "vv" not in stages.deployable_channels(CubeConfig(sar="none"))
    with pytest.raises(CheckpointError, match=r"\['ndmi'\]"):
        stages.check_model_inputs(("slope", "ndmi"), CubeConfig(), "m.safetensors")  # type: ignore[arg-type]
