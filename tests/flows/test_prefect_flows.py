"""Prefect flows on the tiny offline region: the rainfall watch alerts exactly the region
under a synthetic storm, triggers one run that reuses the finished cube and recomputes the
LSI with the storm's R_m, and never triggers twice. Runs against Prefect's test harness
(a temporary local server; its start-up dominates this module's time)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer
from typer.testing import CliRunner

from pipeline.core.errors import AccountRequiredError, CatalogError, EmptySearchError, NoValidDataError, RegionError, SlidewatchError, StoreError
from pipeline.demo.storm import make_synthetic_storm, write_precipitation_zarr
from pipeline.rain.events import rainfall_multiplier
from pipeline.rain.sources import LocalZarrSource
from pipeline.plan.regions import Region
from pipeline.rain.alerts import AlertLedger
from pipeline.rain.watch import check_region, imagery_window
from tests.tinyregion import GRID, FakeSource, make_tiny_region

pytestmark = pytest.mark.slow

NOW = "2024-09-01T00:00"
STORM = ("2024-08-28", "2024-09-01")
SIDE = 0.4  # degrees; the storm's wet footprint has a radius of 0.45 × SIDE around its centre


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Prefect's test harness on a temporary database, PREFECT_HOME in a temp folder."""
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect_home")
    with ps.temporary_settings(updates={ps.PREFECT_HOME: home, ps.PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=240):  # bounded; ~15-60 s on a busy 2-core box
            yield


def _inner_bbox() -> tuple[float, float, float, float]:
    """A lon/lat box 50 m inside the tiny region's grid (plans back onto that grid)."""
    tr = Transformer.from_crs(GRID.epsg, 4326, always_xy=True)
    minx, miny, maxx, maxy = GRID.bounds
    corners = [tr.transform(x, y) for x, y in ((minx + 50, miny + 50), (maxx - 50, maxy - 50),
                                               (minx + 50, maxy - 50), (maxx - 50, miny + 50))]
    w = max(corners[0][0], corners[2][0])
    e = min(corners[1][0], corners[3][0])
    s = max(corners[0][1], corners[3][1])
    n = min(corners[1][1], corners[2][1])
    return (round(w, 6), round(s, 6), round(e, 6), round(n, 6))


def _storm_over(target: tuple[float, float]):  # type: ignore[no-untyped-def]
    """A synthetic storm whose (seeded) centre lies on ``target``: the storm centre's
    position as a fraction of the box does not depend on the box, so find it on a unit box
    and place the real box around ``target``."""
    unit = make_synthetic_storm((0.0, 0.0, 1.0, 1.0), *STORM, seed=5)
    fx, fy = unit.attrs["storm_centre_lonlat"]
    box = (target[0] - fx * SIDE, target[1] - fy * SIDE, target[0] + (1 - fx) * SIDE, target[1] + (1 - fy) * SIDE)
    ds = make_synthetic_storm(box, *STORM, seed=5, peak_mm_h=20.0)
    assert np.allclose(ds.attrs["storm_centre_lonlat"], target)
    return ds, box


def _bbox_text(b) -> str:  # type: ignore[no-untyped-def]
    return ",".join(f"{v:.6f}" for v in b)


def _mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenario(prefect_harness, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Cold run of the covered region, then one watch check that alerts and triggers a run."""
    from flows import stages
    from flows.prefect_flows import rainfall_watch_flow, regional_run_flow

    root = tmp_path_factory.mktemp("watch")
    fake = FakeSource(make_tiny_region(root / "cogs"))
    bbox = _inner_bbox()
    centre = ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    ds, box = _storm_over(centre)
    precip = write_precipitation_zarr(ds, root / "imerg.zarr")
    # The box corner farthest from the storm centre is outside the footprint: a dry region.
    fx = box[2] - 0.03 if centre[0] < (box[0] + box[2]) / 2 else box[0] + 0.03
    fy = box[3] - 0.03 if centre[1] < (box[1] + box[3]) / 2 else box[1] + 0.03
    dry = (fx - 0.02, fy - 0.02, fx + 0.02, fy + 0.02)
    wet_high = (centre[0] + 0.01, centre[1] - 0.02, centre[0] + 0.05, centre[1] + 0.02)
    watchlist = root / "watch.yaml"
    watchlist.write_text(
        "regions:\n"
        f"  - name: covered\n    region: '{_bbox_text(bbox)}'\n"
        f"  - name: dry\n    region: '{_bbox_text(dry)}'\n"
        f"  - name: strict\n    region: '{_bbox_text(wet_high)}'\n    threshold: {{a: 1000, b: 0.44}}\n"
        "  - name: outside\n    region: junlian\n"  # not on the precipitation grid: reported, not fatal
    )
    event = check_region(LocalZarrSource(precip), Region("covered", bbox), NOW, hours=96)
    assert event is not None
    start, end = imagery_window(event.start, 60, "month")  # the watch keys runs by the month before the event
    out = root / "out"
    calls: list[dict] = []

    def fake_risk(result, rain, checkpoint, *, overwrite=False, on_event=None, device="auto", **kw):  # type: ignore[no-untyped-def]
        calls.append({"reused": [z.reused for z in result.zones], "rain": rain, "checkpoint": checkpoint,
                      "overwrite": overwrite, "run_dir": result.run_dir})
        return None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "risk_stage", fake_risk, raising=False)
        mp.delenv("SLIDEWATCH_DASK_ADDRESS", raising=False)
        cold = regional_run_flow(region=_bbox_text(bbox), region_name="covered", start=start.isoformat(),
                                 end=end.isoformat(), stac_url=fake.url, out=out, chunk=64, source=fake)
        run_dir = Path(cold["run_dir"])
        cube = run_dir / "cube_utm48n.zarr"
        lsi = run_dir / "lsi_utm48n.zarr"
        before = {"cube": _mtimes(cube), "lsi": xr.open_zarr(lsi)["lsi"].values.copy(),
                  "lsi_rm": xr.open_zarr(lsi).attrs["rain_multiplier"], "cold_calls": len(calls)}
        kwargs = dict(watchlist=watchlist, out=out, hours=96.0, now=NOW, precip=precip, stac_url=fake.url,
                      window_days=60, chunk=64, source=fake)
        rows = rainfall_watch_flow(**kwargs)
        yield {"rows": {r["region"]: r for r in rows}, "event": event, "out": out, "run_dir": run_dir, "cube": cube,
               "lsi": lsi, "before": before, "calls": calls, "kwargs": kwargs, "flow": rainfall_watch_flow,
               "watchlist": watchlist, "precip": precip, "fake": fake}


def test_watch_alerts_exactly_the_covered_region(scenario):  # type: ignore[no-untyped-def]
    rows = scenario["rows"]
    assert set(rows) == {"covered", "dry", "strict", "outside"}
    assert rows["outside"]["status"].startswith("check failed") and "outside the precipitation grid" in rows["outside"]["status"]
    assert not rows["outside"]["alert"]
    cov, dry, strict = rows["covered"], rows["dry"], rows["strict"]
    assert cov["alert"] and cov["new"] and cov["status"] == "run finished"
    assert cov["run_dir"] == str(scenario["run_dir"])
    assert cov["intensity_mm_h"] == pytest.approx(scenario["event"].intensity_mm_h)
    assert cov["intensity_mm_h"] >= cov["threshold_mm_h"] == pytest.approx(2.20 * cov["duration_h"] ** -0.44)
    assert not dry["alert"] and dry["status"] == "dry" and dry["run_dir"] is None
    assert strict["intensity_mm_h"] > 0 and not strict["alert"] and strict["status"] == "below threshold"
    records = AlertLedger(scenario["out"] / "alerts.jsonl").records()
    assert [r["region"] for r in records.values()] == ["covered"]
    (rec,) = records.values()
    assert rec["status"] == "succeeded" and rec["id"] == cov["alert_id"]
    # one triggered run (plus the cold run before it), for the covered region only
    assert len(scenario["calls"]) == scenario["before"]["cold_calls"] + 1
    assert sorted(p.name for p in scenario["out"].iterdir() if p.is_dir()) == ["alerts", "covered"]
    # the flow itself draws what it records (so a served watch does too)
    drawn = [scenario["out"] / "alerts" / f"{rec['id']}.png", scenario["run_dir"] / "plots" / "alert.png"]
    assert cov["plots"] == [str(p) for p in drawn] and all(p.stat().st_size > 0 for p in drawn)


def test_triggered_run_reuses_the_cube_and_the_rain_free_lsi(scenario):  # type: ignore[no-untyped-def]
    """The event's rain goes to the hazard step (the risk stage gets it); the cube and the
    rain-free LSI store of the cold run are reused untouched."""
    ev, run_dir = scenario["event"], scenario["run_dir"]
    call = scenario["calls"][-1]
    assert call["reused"] == [True] and call["run_dir"] == run_dir
    assert _mtimes(scenario["cube"]) == scenario["before"]["cube"]  # not one cube file rewritten
    expected_rm = float(rainfall_multiplier(ev.intensity_mm_h, ev.duration_h / 24.0))
    assert call["rain"].multiplier == pytest.approx(expected_rm) and expected_rm != pytest.approx(1.0)
    ds = xr.open_zarr(scenario["lsi"])
    assert scenario["before"]["lsi_rm"] is None and ds.attrs["rain_multiplier"] is None
    assert ds.attrs["hazard_mode"] == "decoupled"
    np.testing.assert_array_equal(ds["lsi"].values, scenario["before"]["lsi"])  # the same, rain-free LSI
    record = json.loads((run_dir / "run.json").read_text())
    assert record["alert"]["id"] == scenario["rows"]["covered"]["alert_id"]
    assert record["zones"]["utm48n"]["cube_reused"] is True
    assert record["rain"]["multiplier"] == pytest.approx(expected_rm)
    assert record["hazard_mode"] == "decoupled"


def test_second_check_with_the_same_data_triggers_nothing(scenario):  # type: ignore[no-untyped-def]
    from flows import stages

    n = len(scenario["calls"])
    lines = (scenario["out"] / "alerts.jsonl").read_text().splitlines()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "risk_stage", lambda *a, **k: pytest.fail("a second run was started"), raising=False)
        rows = {r["region"]: r for r in scenario["flow"](**scenario["kwargs"])}
    assert rows["covered"]["alert"] and not rows["covered"]["new"]
    assert rows["covered"]["status"] == "seen before (succeeded)"
    assert rows["covered"]["alert_id"] == scenario["rows"]["covered"]["alert_id"]
    assert len(scenario["calls"]) == n
    assert (scenario["out"] / "alerts.jsonl").read_text().splitlines() == lines


def test_watch_once_command_prints_the_table(scenario):  # type: ignore[no-untyped-def]
    import typer

    from flows.watch_commands import watch

    app = typer.Typer()
    app.command("watch")(watch)
    app.command("noop")(lambda: None)  # a second command keeps `watch` a subcommand
    res = CliRunner().invoke(app, ["watch", "--watchlist", str(scenario["watchlist"]), "--out", str(scenario["out"]),
                                   "--once", "--check-only", "--hours", "96", "--now", NOW,
                                   "--precip", str(scenario["precip"]), "--forecast", "none"], env={"COLUMNS": "250"})
    assert res.exit_code == 1, res.output  # the 'outside' region's check failed: reported, non-zero exit
    assert "the check or run failed for outside" in res.output
    for needle in ("covered", "dry", "strict", "threshold", "alert", "below threshold", "check failed"):
        assert needle in res.output
    line = next(ln for ln in res.output.splitlines() if "covered" in ln)
    assert "yes" in line and f"{scenario['rows']['covered']['intensity_mm_h']:.2f}" in line


def test_a_forecast_only_exceedance_is_a_forecast_alert_and_maps_the_forecast_event(scenario, tmp_path):  # type: ignore[no-untyped-def]
    """Observed rain below the threshold, a forecast above it: one ``forecast`` alert in the
    ledger, one run with the forecast event's rain; the next check triggers nothing."""
    from datetime import timedelta

    from pipeline.rain.forecast import ForecastEvent
    from pipeline.rain.sources import LocalZarrSource

    class Dry:  # the scenario's precipitation, all zero
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            self.inner = inner

        def read(self, *a, **k):  # type: ignore[no-untyped-def]
            da = self.inner.read(*a, **k)
            return (da * 0).assign_attrs(da.attrs)

    class Forecast:
        name = "fake NWP"

        def forecast(self, bbox, issued_before, lead_hours):  # type: ignore[no-untyped-def]
            start = issued_before.replace(minute=0, second=0, microsecond=0)
            return ForecastEvent(source="fake NWP", run=start - timedelta(hours=6), lead_start=start,
                                 lead_end=start + timedelta(hours=lead_hours), lead_window_h=(6.0, 6.0 + lead_hours),
                                 intensity_mm_h=1.0, duration_days=1.0, total_mm=72.0, wet_intensity_mm_h=3.0,
                                 windows=((6.0, 6.0 + lead_hours, 72.0),))

    wl = tmp_path / "w.yaml"
    wl.write_text("regions:\n" f"  - name: covered\n    region: '{_bbox_text(_inner_bbox())}'\n")
    kwargs = {**scenario["kwargs"], "watchlist": wl, "out": tmp_path / "out",
              "precip_source": Dry(LocalZarrSource(scenario["precip"])), "forecast_source": Forecast(), "lead_hours": 48}
    n = len(scenario["calls"])
    (row,) = scenario["flow"](**kwargs)
    assert row["kind"] == "forecast" and row["alert"] and row["new"], row
    assert row["status"] == "run finished" and "ABOVE threshold" in row["forecast"]
    assert row["intensity_mm_h"] == 3.0 and row["duration_h"] == 24.0
    claimed, finished = (json.loads(ln) for ln in (tmp_path / "out" / "alerts.jsonl").read_text().splitlines())
    assert claimed["kind"] == "forecast" and claimed["source"].startswith("fake NWP run")
    assert finished["status"] == "succeeded" and finished["id"] == claimed["id"]
    assert len(scenario["calls"]) == n + 1 and scenario["calls"][-1]["rain"].intensity_mm_h == 3.0
    (again,) = scenario["flow"](**kwargs)
    assert again["kind"] == "forecast" and not again["new"] and again["status"] == "seen before (succeeded)"
    assert len(scenario["calls"]) == n + 1


def test_bad_watchlist_fails_before_prefect_runs(tmp_path):  # type: ignore[no-untyped-def]
    import typer

    from flows.watch_commands import watch

    (tmp_path / "w.yaml").write_text("regions:\n  - name: a\n    region: atlantis\n")
    app = typer.Typer()
    app.command("watch")(watch)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["watch", "--watchlist", str(tmp_path / "w.yaml"), "--once"], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "Unknown region" in res.output and "Traceback" not in res.output


def test_serve_builds_a_cron_deployment(tmp_path):  # type: ignore[no-untyped-def]
    from flows.watch_commands import DEFAULT_CRON, build_watch_deployment

    d = build_watch_deployment(tmp_path / "w.yaml", tmp_path / "out", DEFAULT_CRON, hours=48, chunk=256)
    assert DEFAULT_CRON == "*/30 * * * *"
    (sched,) = d.schedules
    assert sched.schedule.cron == "*/30 * * * *" and sched.active
    assert d.name == "slidewatch-rainfall-watch" and d.entrypoint.endswith("prefect_flows.py:rainfall_watch_flow")
    assert d.parameters["watchlist"] == str(tmp_path / "w.yaml") and d.parameters["hours"] == 48
    assert d.parameters["chunk"] == 256 and d.parameters["out"] == str(tmp_path / "out")
    json.dumps(d.parameters)  # deployment parameters are plain JSON
    other = build_watch_deployment(tmp_path / "w.yaml", cron="0 * * * *")
    assert other.schedules[0].schedule.cron == "0 * * * *"
    with pytest.raises(SlidewatchError, match="not a valid cron"):
        build_watch_deployment(tmp_path / "w.yaml", cron="every 30 minutes")


@pytest.mark.parametrize("exc,retried", [
    (CatalogError("STAC API unreachable."), True),
    (AccountRequiredError("RTC needs an account."), False),
    (OSError("connection reset"), True),
    (TimeoutError("read timed out"), True),
    (RegionError("bad region."), False),
    (EmptySearchError("no items."), False),
    (NoValidDataError("all clouds."), False),
    (StoreError("locked."), False),
    (ValueError("a bug"), False),
])
def test_retry_condition_classifies_errors(exc, retried):  # type: ignore[no-untyped-def]
    from prefect.states import Failed

    from flows.prefect_flows import is_transient, retry_transient

    assert is_transient(exc) is retried
    assert retry_transient(None, None, Failed(data=exc)) is retried


def test_cube_task_retries_transient_errors_only(prefect_harness, monkeypatch):  # type: ignore[no-untyped-def]
    from prefect import flow

    from flows import prefect_flows, stages
    from pipeline.core.config import CubeConfig, TimeWindow

    attempts: list[str] = []

    def flaky(kind):  # type: ignore[no-untyped-def]
        def cube_stage(*a, **k):  # type: ignore[no-untyped-def]
            attempts.append(kind)
            if kind == "transient" and len(attempts) < 3:
                raise CatalogError("The STAC API could not be reached.", "retry later.")
            if kind == "bad":
                raise EmptySearchError("No Sentinel-2 items.", "widen the window.")
            return "result"
        return cube_stage

    task = prefect_flows.cube_task.with_options(retry_delay_seconds=0)
    window = TimeWindow(*imagery_window(datetime(2024, 8, 1, tzinfo=timezone.utc), 10))

    @flow
    def one() -> object:
        return task(Region("r", (1.0, 1.0, 2.0, 2.0)), window, "http://x", Path("."), CubeConfig(), 64)

    monkeypatch.setattr(stages, "cube_stage", flaky("transient"))
    assert one() == "result" and attempts == ["transient"] * 3  # failed twice, retried twice
    attempts.clear()
    monkeypatch.setattr(stages, "cube_stage", flaky("bad"))
    with pytest.raises(EmptySearchError):
        one()
    assert attempts == ["bad"]  # bad input: no retry


def test_rerun_with_the_same_rain_reuses_cube_and_lsi(scenario):  # type: ignore[no-untyped-def]
    from flows import stages
    from flows.prefect_flows import regional_run_flow

    record = json.loads((scenario["run_dir"] / "run.json").read_text())
    cube_before, lsi_before = _mtimes(scenario["cube"]), _mtimes(scenario["lsi"])
    calls: list[bool] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "risk_stage", lambda *a, overwrite=False, **k: calls.append(overwrite), raising=False)
        again = regional_run_flow(
            region=",".join(map(str, record["region_bbox"])), region_name="covered", start=record["time_window"][0],
            end=record["time_window"][1], stac_url=scenario["fake"].url, out=scenario["out"], chunk=64,
            rain_intensity=record["rain"]["intensity_mm_h"], rain_duration=record["rain"]["duration_days"],
            dask_address="threads", source=scenario["fake"])
    assert again["run_dir"] == str(scenario["run_dir"]) and again["zones"]["utm48n"]["cube_reused"]
    assert _mtimes(scenario["cube"]) == cube_before and _mtimes(scenario["lsi"]) == lsi_before
    assert calls == [False]  # same rain: the rain-dependent stages are not forced


def test_train_flow_passes_its_parameters_to_training(prefect_harness, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    import models.training as training

    from flows.prefect_flows import train_flow

    seen = {}

    def fake_train(cube, inventory, out, config, progress=True):  # type: ignore[no-untyped-def]
        seen.update(cube=cube, inventory=inventory, out=out, config=config, progress=progress)
        return Path(out) / "model.safetensors"

    monkeypatch.setattr(training, "train", fake_train)
    path = train_flow(cube=tmp_path / "lsi.zarr", inventory=tmp_path / "inv.geojson", out=tmp_path / "m",
                      epochs=3, arch="unet", base_width=8, channels=["slope", "lsi"], seed=4, device="cpu")
    assert path == str(tmp_path / "m" / "model.safetensors")
    cfg = seen["config"]
    assert (cfg.epochs, cfg.arch, cfg.base_width, cfg.channels, cfg.seed, cfg.device) == (
        3, "unet", 8, ("slope", "lsi"), 4, "cpu")
    assert seen["cube"] == tmp_path / "lsi.zarr" and seen["progress"] is False


def test_watch_without_an_earthdata_login_is_one_line_before_prefect_starts(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    import typer

    from flows.watch_commands import watch

    for var in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "w.yaml").write_text("regions:\n  - name: a\n    region: 103.10,29.80,103.20,29.90\n")
    app = typer.Typer()
    app.command("watch")(watch)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["watch", "--watchlist", str(tmp_path / "w.yaml"), "--once", "--out",
                                   str(tmp_path / "out")], env={"COLUMNS": "250"})
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "EARTHDATA_TOKEN is not set" in text and "Fix:" in text, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["watch", "serve"])
def test_watch_and_serve_refuse_an_unknown_device_before_prefect_starts(tmp_path, command):  # type: ignore[no-untyped-def]
    import typer

    from flows.watch_commands import serve, watch

    (tmp_path / "w.yaml").write_text("regions:\n  - name: a\n    region: 103.10,29.80,103.20,29.90\n")
    app = typer.Typer()
    app.command("watch")(watch)
    app.command("serve")(serve)
    res = CliRunner().invoke(app, [command, "--watchlist", str(tmp_path / "w.yaml"), "--out", str(tmp_path / "out"),
                                   "--precip", str(tmp_path / "p.zarr"), "--forecast", "none", "--device", "tpu"],
                             env={"COLUMNS": "250"})
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--device 'tpu'" in text and "Fix:" in text, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()
