"""A run where only Sentinel-1 GRD exists (Planetary Computer's radar-geometry items): the cube
stage geocodes it, the run's items and attributes say GRD, and the LSI stage uses Sentinel-1
change detection for soil moisture instead of the NDMI proxy."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import xarray as xr

from flows import stages
from pipeline.rain.events import resolve_rain
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.quality import QualityFlag
from pipeline.plan.regions import Region
from tests import sar_scene as sim
from tests.tinyregion import FakeSource, make_tiny_region, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def _region() -> Region:
    return tiny_region("tiny-grd")


def test_grd_only_run_uses_change_detection(tmp_path, shared_fixtures) -> None:  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path / "cogs")
    items.pop("sentinel-1-rtc")
    items["cop-dem-glo-30"] = [sim.dem_item(tmp_path / "dem")]
    grd = []
    for k, (gain, day) in enumerate(zip((1.0, 1.3, 0.75, 1.1), ("2024-05-20", "2024-06-13", "2024-07-05", "2024-07-29"))):
        tif = tmp_path / "grd" / f"{k}.tif"
        info = sim.simulate(tif, "ascending", gain=gain)
        grd.append(sim.grd_item(shared_fixtures, tif, info, f"S1A_IW_GRDH_1SDV_sim{k}", day))
    items["sentinel-1-grd"] = grd
    events: list[tuple[str, dict]] = []
    result = stages.cube_stage(_region(), WINDOW, FakeSource.url, tmp_path / "out", CubeConfig(), chunk=32,
                               source=FakeSource(items), on_event=lambda k, i: events.append((k, dict(i))))
    notes = [n for k, i in events if k == "searched" for n in i["notes"]]
    assert any("geocoded through their GCPs" in n for n in notes)
    zone = result.zones[0]
    cube = xr.open_zarr(zone.cube_path, decode_coords="all")
    assert cube.attrs["s1_collection"] == "sentinel-1-grd"
    saved = json.loads((result.run_dir / "items" / zone.grid.zone_name / "sentinel-1-grd.json").read_text())
    assert [f["id"] for f in saved["features"]] == [it.id for it in grd]
    vv = cube["vv"].values
    assert np.isfinite(vv).all() and np.isfinite(cube["vv_dry"].values).all()
    # in-window scenes (gains 0.75 and 1.1): median of their dB is their mean
    x, y = np.meshgrid(cube["x"].values, cube["y"].values)
    expected = 20 * np.log10(sim.pattern(x, y)) + 10 * np.log10(0.75 * 1.1)
    assert np.median(np.abs(vv - expected)) < 0.05

    stages.lsi_stage(result, resolve_rain(None, None, None, _region().bbox, WINDOW))
    lsi = xr.open_zarr(zone.lsi_path, mask_and_scale=False)  # quality as its bit flags
    proxy = (lsi["quality"].values & int(QualityFlag.SMI_FROM_NDMI_PROXY)) != 0
    assert not proxy.any()  # every pixel has Sentinel-1 history: no NDMI proxy
    assert np.isfinite(lsi["smi"].values).mean() > 0.99
