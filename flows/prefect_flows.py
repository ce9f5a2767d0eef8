"""Prefect 3 flows: the regional run, the rainfall watch and training. Wiring only.

* :func:`regional_run_flow`: cube → LSI → risk for one region and window, each stage a
  task, inside :func:`flows.dask_context.dask_client` (a LocalCluster by default, or the
  scheduler at ``dask_address``). The cube task retries transient failures (a STAC API
  or storage hiccup) but not bad input. A finished cube is reused; the rain-dependent
  stages are recomputed when the rainfall differs from the stored LSI's.
* :func:`rainfall_watch_flow`: checks every region of a watch list against its
  intensity–duration threshold (:mod:`pipeline.rain.watch`), records alerts in
  ``OUT/alerts.jsonl`` and starts one regional run (a subflow) per *new* alert, with the
  event's P and D and an imagery window ending on the event's start day.
* :func:`train_flow`: :func:`models.training.train` as a flow.

Flows take plain parameters (str, numbers, paths) so deployments can call them; ``source``
and ``precip_source`` are injection points for tests and in-process callers only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.dask_context import dask_client
from flows.stages import RunResult
from pipeline.core.collections import PLANETARY_COMPUTER_STAC
from pipeline.core.config import DEFAULT_CHUNK, CubeConfig, TimeWindow, check_max_cloud
from pipeline.core.errors import AccountRequiredError, CatalogError, SlidewatchError
from pipeline.core.secrets import redact
from pipeline.core.layout import RunLayout, run_dir_for, zarr_attrs
from pipeline.core.provenance import Rain
from pipeline.plan.regions import Region, parse_region
from pipeline.rain.events import resolve_rain
from pipeline.rain.forecast import forecast_source as forecast_source_named
from pipeline.rain.sources import rain_source as rain_source_named
from pipeline.rain.alerts import FAILED, SUCCEEDED, Alert, AlertLedger
from pipeline.rain.watch import (
    Event,
    check_region,
    forecast_as_event,
    imagery_window,
    load_watchlist,
    parse_now,
    watch_row,
)

__all__ = [
    "ALERTS_FILE",
    "is_transient",
    "rain_changed",
    "rainfall_watch_flow",
    "regional_run_flow",
    "retry_transient",
    "train_flow",
]

#: The alert ledger's file name under the output root.
ALERTS_FILE = "alerts.jsonl"


# --------------------------------------------------------------------------- retries


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a STAC API that could not be reached (CatalogError) or an OS-level
    I/O or network error. Never a slidewatch error about the input (bad region, empty
    search, no valid pixels, a locked store, ...)."""
    if isinstance(exc, SlidewatchError):
        return isinstance(exc, CatalogError) and not isinstance(exc, AccountRequiredError)
    return isinstance(exc, (OSError, TimeoutError))


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure :func:`is_transient`."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the state's exception is what we classify
        return is_transient(exc)
    return False


# --------------------------------------------------------------------------- helpers


def _region(spec: str, name: str | None) -> Region:
    reg = parse_region(spec)
    return replace(reg, name=name) if name else reg


def _logger_events() -> Callable[[str, dict], None]:
    log = get_run_logger()

    def emit(kind: str, info: dict) -> None:
        if kind != "tile":  # one line per stage event, not per tile
            log.info("%s %s", kind, info)

    return emit


def rain_changed(result: RunResult, rain: Rain) -> bool:
    """True when a zone's finished LSI store or mosaic group was made with other rainfall
    than ``rain`` (so the rain-dependent stages must be recomputed with ``overwrite=True``).
    Stores that record no rain (the rain-free LSI) do not depend on it."""
    layout = RunLayout(result.run_dir)
    for z in result.zones:
        for path in (layout.lsi(z.grid.zone_name), layout.risk / z.grid.zone_name):
            if not path.exists():
                continue
            try:
                stored = Rain.from_attrs(zarr_attrs(path))
            except Exception:  # noqa: BLE001 - unreadable: let the stage rewrite it
                return True
            if stored is not None and stored != rain:
                return True
    return False


# --------------------------------------------------------------------------- tasks


@task(name="cube", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def cube_task(region: Region, window: TimeWindow, stac_url: str, out: Path, config: CubeConfig,
              chunk: int, source: Any = None) -> RunResult:
    """Search and write (or reuse) the region's cube stores."""
    return stages.cube_stage(region, window, stac_url, out, config, on_event=_logger_events(),
                             chunk=chunk, source=source)


@task(name="rain", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def rain_task(intensity: float | None, duration: float | None, precip: Path | None, region: Region,
              window: TimeWindow) -> Rain:
    """The run's rainfall (explicit P and D, a precipitation Zarr, or none)."""
    return resolve_rain(intensity, duration, precip, region.bbox, window)


@task(name="lsi", cache_policy=NO_CACHE, persist_result=False)
def lsi_task(result: RunResult, rain: Rain, overwrite: bool, hazard: str = "decoupled") -> list[Path]:
    """Factors and LSI of every zone (rain-free unless ``hazard="paper"``)."""
    return stages.lsi_stage(result, rain, overwrite=overwrite, on_event=_logger_events(), hazard=hazard)


@task(name="risk", cache_policy=NO_CACHE, persist_result=False)
def risk_task(result: RunResult, rain: Rain, checkpoint: Path | None, overwrite: bool,
              device: str, record: dict | None = None, hazard: str = "decoupled") -> Path | None:
    """U-Net inference → ``risk.zarr`` (susceptibility, hazard for ``rain``) + exports
    (skipped without a checkpoint)."""
    return stages.risk_stage(result, rain, checkpoint, overwrite=overwrite, on_event=_logger_events(),
                             device=device, record=record, hazard=hazard)


@task(name="check-region", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def check_region_task(source: Any, region: Region, now: datetime, hours: float) -> Event | None:
    """The latest rainfall event over a watched region (``None`` when dry)."""
    return check_region(source, region, now, hours)


# --------------------------------------------------------------------------- flows


@flow(name="slidewatch-regional-run", flow_run_name="run-{region}-{start}-{end}")
def regional_run_flow(
    region: str,
    start: str,
    end: str,
    stac_url: str = PLANETARY_COMPUTER_STAC,
    out: Path = Path("out"),
    rain_intensity: float | None = None,
    rain_duration: float | None = None,
    precip: Path | None = None,
    checkpoint: Path | None = None,
    dask_address: str | None = None,
    alert: dict | None = None,
    region_name: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    max_cloud: float = 60.0,
    overwrite: bool = False,
    device: str = "auto",
    sar: Literal["auto", "rtc", "grd", "none"] = "auto",
    max_items: int = 2000,
    source: Any = None,
    hazard: Literal["decoupled", "paper"] = "decoupled",
) -> dict:
    """One regional run: cube (reused when finished) → rain → LSI → risk; writes ``run.json``.
    ``hazard``: where the rain enters (``decoupled``: after the model, default; ``paper``: in the LSI).

    ``region`` is a built-in name, a bbox ``w,s,e,n`` or a GeoJSON path (``region_name``
    renames it, e.g. the watch list's name); ``start``/``end`` are ISO days; rainfall is
    ``rain_intensity`` (mm/h) with ``rain_duration`` (days), or ``precip`` (a local
    IMERG-layout Zarr), or none. ``sar`` picks Sentinel-1 (``auto``: RTC when Planetary
    Computer's token endpoint grants it, else GRD with a note; ``rtc``, ``grd``, ``none``);
    a search matching more than ``max_items`` items is refused. ``dask_address`` (else
    ``SLIDEWATCH_DASK_ADDRESS``) names a scheduler; without one a LocalCluster runs the
    graphs (``"threads"``: no cluster).
    ``alert`` (the triggering alert) goes into ``run.json``. Returns the run record.
    """
    reg = _region(region, region_name)
    window = TimeWindow.parse(start, end, ("start", "end"))
    check_max_cloud(max_cloud, "max_cloud")
    out = Path(out)
    log = get_run_logger()
    with stages.run_lock(out, reg, window), dask_client(dask_address) as client:
        log.info("dask: %s", client if client is not None else "local threads")
        result = cube_task(reg, window, stac_url, out, CubeConfig(max_cloud_cover=max_cloud, sar=sar, max_items=max_items), chunk, source)
        rain = rain_task(rain_intensity, rain_duration, precip, reg, window)
        recompute = overwrite or rain_changed(result, rain)
        log.info("rain: P=%s mm/h, D=%s d, R_m=%.3f (%s); rain-dependent stages %s", rain.intensity_mm_h,
                 rain.duration_days, rain.multiplier, rain.source, "recomputed" if recompute else "reused if finished")
        lsi_task(result, rain, recompute and hazard == "paper", hazard)
        extra = {"checkpoint": str(checkpoint) if checkpoint else None, "run_dir": str(result.run_dir),
                 "dask_address": dask_address, "hazard_mode": hazard}
        record = stages.run_record(reg, window, stac_url, result, rain, alert=alert, extra=extra)
        risk = risk_task(result, rain, checkpoint, recompute, device, record, hazard)
        record["risk"] = str(risk) if risk else None
        stages.finish_run(result.run_dir, record)  # under the run's lock, once every output is written
    return record


def _forecast_check(src: Any, entry: Any, when: datetime, lead_hours: int, row: dict, log: Any) -> Event | None:
    """Check a region's forecast; fill the row's ``forecast`` column, and when the forecast
    crosses the threshold make the row a ``forecast`` alert and return its event."""
    try:
        fc = src.forecast(entry.region.bbox, when, lead_hours)
    except Exception as exc:  # noqa: BLE001 - a forecast that cannot be read never fails the region
        row["forecast"] = f"unavailable: {redact(f'{type(exc).__name__}: {exc}')}"
        log.warning("%s: forecast unavailable: %s", entry.name, row["forecast"])
        return None
    event = forecast_as_event(entry.region.name, fc, entry.region.bbox)
    frow = watch_row(entry.name, event, entry.threshold)
    row["forecast"] = f"{fc.describe()}: {'ABOVE' if frow['alert'] else 'below'} threshold"
    if not frow["alert"]:
        return None
    row.update({k: frow[k] for k in ("intensity_mm_h", "duration_h", "threshold_mm_h", "alert", "event_start",
                                    "event_end")}, kind="forecast", status="forecast above threshold")
    return event


@flow(name="slidewatch-rainfall-watch")
def rainfall_watch_flow(
    watchlist: Path,
    out: Path = Path("out"),
    hours: float = 72.0,
    now: str | None = None,
    precip: Path | None = None,
    stac_url: str = PLANETARY_COMPUTER_STAC,
    window_days: int = 60,
    checkpoint: Path | None = None,
    dask_address: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    max_cloud: float = 60.0,
    trigger: bool = True,
    device: str = "auto",
    source: Any = None,
    precip_source: Any = None,
    rain_source: str | None = None,
    forecast: str = "none",
    lead_hours: int = 72,
    forecast_source: Any = None,
    static_period: str = "month",
) -> list[dict]:
    """Check every watched region's rainfall over the ``hours`` before ``now`` (UTC, ISO;
    default: the current time) and start a regional run for each new alert.

    Observed precipitation comes from ``rain_source`` (a name of
    :data:`pipeline.rain.sources.RAIN_SOURCES`; default ``imerg-early``, the current IMERG
    Early Run, or ``local-zarr`` when ``precip`` is given). ``forecast`` (``ecmwf``, ``gfs``
    or ``none``) also checks the next ``lead_hours`` of that forecast: a region whose
    observed rain stays below its threshold but whose forecast crosses it gets a
    ``forecast`` alert and a run mapping the forecast event's hazard. A forecast that cannot
    be read is reported in the row (``forecast`` column) and never fails the region. An
    alert whose id is already in ``OUT/alerts.jsonl`` does not trigger again. A triggered
    run uses the event's P (mm/h) and D (days), and the ``window_days`` days of imagery
    before the event's month (``static_period="month"``, default: every alert of a month
    reuses one cube and LSI and recomputes only the hazard and exports) or before the
    event's day (``"event"``). ``trigger=False`` only checks
    (nothing is recorded). Returns one row per region (I, D, threshold, alert, new,
    status, run directory); a region whose check or run fails gets a ``check failed`` /
    ``run failed`` status (a failed run is recorded as ``failed`` in the ledger) and the
    other regions go on.
    """
    log = get_run_logger()
    wl = load_watchlist(watchlist)
    out = Path(out)
    if precip_source is not None:
        src = precip_source
    else:
        src = rain_source_named(rain_source or ("local-zarr" if precip is not None else "imerg-early"), path=precip)
    fc_src = forecast_source if forecast_source is not None else forecast_source_named(forecast)
    when = parse_now(now)
    ledger = AlertLedger(out / ALERTS_FILE)
    rows = []
    for entry in wl:
        try:
            event = check_region_task(src, entry.region, when, hours)
        except SlidewatchError as exc:  # e.g. a region outside the precipitation grid: report, go on
            row = watch_row(entry.name, None, entry.threshold)
            row["status"] = f"check failed: {exc}"
            rows.append(row)
            log.error("%s: rainfall check failed: %s", entry.name, exc)
            continue
        row = watch_row(entry.name, event, entry.threshold, source=src, now=when)
        row["kind"] = "observed"
        rows.append(row)
        if (event is None or not row["alert"]) and fc_src is not None:
            fc_event = _forecast_check(fc_src, entry, when, lead_hours, row, log)
            if fc_event is not None:
                event = fc_event
        if event is None or not row["alert"]:
            log.info("%s: %s", entry.name, row["status"])
            continue
        observed = row["kind"] == "observed"  # a percentile threshold reads the observed window before now
        alert = Alert.from_event(event, entry.threshold, kind=row["kind"], source=src if observed else None,
                                 now=when if observed else None)
        start, end = imagery_window(min(event.start, when), window_days, static_period)  # a forecast starts later
        run_dir = run_dir_for(out, entry.region.slug, start, end, name=entry.region.name)
        row.update(alert_id=alert.id, run_dir=str(run_dir))
        if not trigger:
            row["status"] = "alert (not triggered: check only)"
            continue
        if not ledger.claim(alert, run_dir):
            previous = ledger.get(alert.id) or {}
            row.update(status=f"seen before ({previous.get('status', '?')})", run_dir=previous.get("run_dir"))
            log.info("%s: alert %s was handled before (%s)", entry.name, alert.id, previous.get("status"))
            continue
        row["new"] = True
        log.warning("%s: ALERT %s: I=%.2f mm/h over D=%.1f h >= %.2f mm/h; starting a run in %s", entry.name,
                    alert.id, alert.intensity_mm_h, alert.duration_h, alert.threshold_mm_h, run_dir)
        try:
            regional_run_flow(
                region=entry.spec, region_name=entry.name, start=start.isoformat(), end=end.isoformat(),
                stac_url=stac_url, out=out, rain_intensity=event.intensity_mm_h,
                rain_duration=event.duration_days, checkpoint=checkpoint, dask_address=dask_address,
                alert=alert.as_dict(), chunk=chunk, max_cloud=max_cloud, device=device, source=source,
            )
        except Exception as exc:  # noqa: BLE001 - record the failure, go on with the other regions
            ledger.update(alert.id, FAILED, run_dir, error=redact(f"{type(exc).__name__}: {exc}"))
            row["status"] = f"run failed: {exc}"
            log.error("%s: run for alert %s failed: %s", entry.name, alert.id, exc)
            row["plots"] = _draw_alert(row, ledger)
            continue
        ledger.update(alert.id, SUCCEEDED, run_dir)
        row["status"] = "run finished"
        row["plots"] = _draw_alert(row, ledger)
    return rows


def _draw_alert(row: dict, ledger: AlertLedger) -> list[str]:
    """The recorded alert of ``row`` drawn against its threshold (``OUT/alerts/<id>.png`` and
    ``RUN/plots/alert.png``), so a served watch draws what it records; returns the paths."""
    from flows.stages.alert_plots import write_alert_plots

    return [str(p) for p in write_alert_plots([row], ledger.path)]


@flow(name="slidewatch-train")
def train_flow(
    cube: Path,
    inventory: Path,
    out: Path,
    epochs: int = 50,
    arch: str = "enhanced",
    base_width: int = 16,
    depth: int = 4,
    batch_size: int = 16,
    chip_size: int = 128,
    block_size: int = 512,
    lr: float = 1e-3,
    patience: int = 10,
    chips_per_epoch: int | None = None,
    channels: list[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
    label_values: str | None = None,
    label_field: str | None = None,
    outside: str | None = None,
    split_buffer: int = 0,
    split_file: str | None = None,
) -> str:
    """Train a U-Net on a factor cube and an inventory (see ``slidewatch train``; the label
    convention and split options are its ``--label-values``, ``--label-field``,
    ``--outside``, ``--split-buffer`` and ``--split-file``); returns the checkpoint path."""
    from models.training import TrainConfig
    from models.training import train as run_train

    kwargs: dict[str, Any] = dict(arch=arch, base_width=base_width, depth=depth, batch_size=batch_size,
                                  chip_size=chip_size, block_size=block_size, epochs=epochs, lr=lr,
                                  patience=patience, chips_per_epoch=chips_per_epoch, seed=seed, device=device,
                                  num_threads=num_threads, label_values=label_values, label_field=label_field,
                                  outside=outside, split_buffer=split_buffer, split_file=split_file)
    if channels:
        kwargs["channels"] = tuple(channels)
    path = run_train(cube, inventory, out, TrainConfig(**kwargs), progress=False)
    get_run_logger().info("checkpoint: %s", path)
    return str(path)
