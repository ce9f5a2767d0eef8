"""``slidewatch watch`` and ``slidewatch serve``: the rainfall watch from the command line.

Plain functions with typer annotations; the main CLI registers them with
``app.command("watch")(friendly_errors(watch))`` and ``app.command("serve")(friendly_errors(serve))``.
Wiring only: options are passed to :func:`flows.prefect_flows.rainfall_watch_flow`, results
printed as a rich table, and each recorded alert drawn against its threshold
(:func:`flows.stages.alert_plots.write_alert_plots`: ``OUT/alerts/<alert id>.png``, and ``RUN/plots/alert.png`` in
the run a new alert triggered). Prefect is imported when a command runs, not when the CLI
loads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.console import err_console, friendly_errors, out_console
from flows.stages.alert_plots import write_alert_plots
from flows.stages.inference_workers import parse_device
from pipeline.core.collections import PLANETARY_COMPUTER_STAC
from pipeline.core.config import DEFAULT_CHUNK
from pipeline.core.errors import SlidewatchError

__all__ = ["DEFAULT_CRON", "build_watch_deployment", "serve", "watch", "watch_table", "write_alert_plots"]

#: ``slidewatch serve``'s default schedule: every 30 minutes (IMERG's step).
DEFAULT_CRON = "*/30 * * * *"
DEPLOYMENT_NAME = "slidewatch-rainfall-watch"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return fmt.format(v)


def watch_table(rows: Sequence[dict], title: str = "rainfall watch") -> Table:
    """Regions × (I, D, threshold, alert and its kind, new run, status, forecast, run directory)."""
    table = Table(title=title)
    for col, justify in (("region", "left"), ("I mm/h", "right"), ("D h", "right"), ("threshold mm/h", "right"),
                         ("alert", "center"), ("new run", "center"), ("status", "left"), ("forecast", "left"),
                         ("run dir", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            str(r["region"]), _num(r.get("intensity_mm_h")), _num(r.get("duration_h"), "{:.1f}"),
            _num(r.get("threshold_mm_h")),
            (f"yes ({r.get('kind', 'observed')})" if r.get("alert") else "no"), "yes" if r.get("new") else "no",
            str(r.get("status", "")), str(r.get("forecast") or "–"), str(r.get("run_dir") or ""),
        )
    return table


def _path(p: Path | None) -> str | None:
    return str(Path(p).expanduser().resolve()) if p is not None else None


@friendly_errors
def watch(
    watchlist: Annotated[Path, typer.Option("--watchlist", help="YAML watch list: 'regions:' of {name, region, threshold: {a, b}}.")],
    out: Annotated[Path, typer.Option("--out", help="Output root: runs go to OUT/REGION/START_END/, alerts to OUT/alerts.jsonl.")] = Path("out"),
    once: Annotated[bool, typer.Option("--once", help="Check once, print the table and exit (default: check every --every minutes).")] = False,
    every: Annotated[float, typer.Option("--every", min=1.0, help="Minutes between checks without --once.")] = 30.0,
    hours: Annotated[float, typer.Option("--hours", min=0.5, help="Hours of rainfall checked before --now.")] = 72.0,
    now: Annotated[str | None, typer.Option("--now", help="Check as of this UTC time (ISO, e.g. 2024-08-31T12:00); default: now.")] = None,
    precip: Annotated[Path | None, typer.Option("--precip", help="Local IMERG-layout precipitation Zarr (then --rain-source local-zarr is the default).")] = None,
    stac_url: Annotated[str, typer.Option("--stac-url", help="STAC API of the triggered runs.")] = PLANETARY_COMPUTER_STAC,
    window_days: Annotated[int, typer.Option("--window-days", min=1, help="Days of imagery before the event for a triggered run.")] = 60,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="U-Net checkpoint for the triggered runs (without it they stop after the LSI).")] = None,
    dask_address: Annotated[str | None, typer.Option("--dask-address", envvar="SLIDEWATCH_DASK_ADDRESS", help="Dask scheduler address; default: a local cluster.")] = None,
    chunk: Annotated[int, typer.Option("--chunk", help="Chunk edge in pixels of the triggered runs.")] = DEFAULT_CHUNK,
    check_only: Annotated[bool, typer.Option("--check-only", help="Print the table but start no run and record no alert.")] = False,
    device: Annotated[str, typer.Option("--device", help="Inference device: auto (CUDA when present, else the CPU), cpu, or cuda (alias gpu).")] = "auto",
    rain_source: Annotated[str | None, typer.Option("--rain-source", help="Observed rain: imerg-early (default; NASA IMERG V07 Early Run, about 4 h behind, needs EARTHDATA_TOKEN), imerg-late (about 14 h behind), imerg-v06-pc (Planetary Computer archive, ended 2021-05-31) or local-zarr (with --precip, the default then).")] = None,
    forecast: Annotated[str, typer.Option("--forecast", help="Forecast checked too: ecmwf (IFS open data, keyless), gfs (NOAA, keyless) or none.")] = "ecmwf",
    lead_hours: Annotated[int, typer.Option("--lead-hours", min=1, max=240, help="Hours of forecast checked ahead (1 to 3 days is usual).")] = 72,
    static_period: Annotated[str, typer.Option("--static-period", help="Imagery of a triggered run: month (the --window-days before the event's month, shared by every alert of that month, so the cube is reused) or event (ending on the event's day).")] = "month",
) -> None:
    """Check watched regions' recent rainfall against their intensity–duration thresholds and
    run the regions whose alert is new."""
    from flows.prefect_flows import ALERTS_FILE, rainfall_watch_flow
    from pipeline.rain.watch import load_watchlist

    load_watchlist(watchlist)  # fail fast, before Prefect starts
    _check_sources(rain_source, forecast, precip, static_period)
    device = parse_device(device)
    while True:
        rows = rainfall_watch_flow(
            watchlist=_path(watchlist), out=_path(out), hours=hours, now=now, precip=_path(precip),
            stac_url=stac_url, window_days=window_days, checkpoint=_path(checkpoint), dask_address=dask_address,
            chunk=chunk, trigger=not check_only, device=device, rain_source=rain_source, forecast=forecast,
            lead_hours=lead_hours, static_period=static_period,
        )
        out_console().print(watch_table(rows, f"rainfall watch: last {hours:g} h before {now or 'now'}"))
        if not check_only:
            for row in rows:  # the flow draws what it records; a stand-in flow may not have
                drawn = row.get("plots")
                for plot in drawn if drawn is not None else write_alert_plots([row], Path(out) / ALERTS_FILE):
                    out_console().print(f"alert plot: {plot}", soft_wrap=True)
        failed = [r["region"] for r in rows if str(r.get("status", "")).startswith(("run failed", "check failed"))]
        if once:
            if failed:
                err_console().print(f"[red]error:[/red] the check or run failed for {', '.join(failed)} "
                              f"(see the status column and {out / 'alerts.jsonl'}).")
                raise typer.Exit(code=1)
            return
        err_console().print(f"next check in {every:g} min (Ctrl-C to stop)")
        time.sleep(every * 60)


def _check_sources(rain_source: str | None, forecast: str, precip: Path | None, static_period: str = "month") -> None:
    """Refuse unknown source names in one line before Prefect starts (nothing is contacted)."""
    from pipeline.rain.forecast import forecast_source
    from pipeline.rain.sources import rain_source as named

    from pipeline.core.errors import RainfallError
    from pipeline.rain.watch import STATIC_PERIODS

    src = named(rain_source or ("local-zarr" if precip is not None else "imerg-early"), path=precip)
    check = getattr(src, "check_credentials", None)
    if check is not None:  # a missing login is one line now, not a failed check per region later
        check()
    forecast_source(forecast)
    if static_period not in STATIC_PERIODS:
        raise RainfallError(f"--static-period {static_period!r} is unknown.", f"use one of {', '.join(STATIC_PERIODS)}.")


def build_watch_deployment(
    watchlist: Path,
    out: Path = Path("out"),
    cron: str = DEFAULT_CRON,
    *,
    name: str = DEPLOYMENT_NAME,
    hours: float = 72.0,
    precip: Path | None = None,
    stac_url: str = PLANETARY_COMPUTER_STAC,
    window_days: int = 60,
    checkpoint: Path | None = None,
    dask_address: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str = "auto",
    rain_source: str | None = None,
    forecast: str = "ecmwf",
    lead_hours: int = 72,
    static_period: str = "month",
    interval_s: float | None = None,
) -> Any:
    """The watch flow's Prefect deployment on ``cron`` (or every ``interval_s`` seconds when
    given; a ``RunnerDeployment``; paths made absolute so the runner can execute it from
    anywhere)."""
    from flows.prefect_flows import rainfall_watch_flow

    params = {"watchlist": _path(watchlist), "out": _path(out), "hours": hours, "precip": _path(precip),
              "stac_url": stac_url, "window_days": window_days, "checkpoint": _path(checkpoint),
              "dask_address": dask_address, "chunk": chunk, "device": device, "rain_source": rain_source,
              "forecast": forecast, "lead_hours": lead_hours, "static_period": static_period}
    try:
        schedule: dict[str, Any] = {"interval": timedelta(seconds=interval_s)} if interval_s else {"cron": cron}
        return rainfall_watch_flow.to_deployment(name=name, **schedule, parameters=params,
                                                 description="slidewatch rainfall watch (intensity-duration alerts)",
                                                 tags=["slidewatch", "watch"])
    except ValueError:
        raise SlidewatchError(f"--cron {cron!r} is not a valid cron schedule.",
                              "use five fields, e.g. '*/30 * * * *' for every 30 minutes.") from None


@friendly_errors
def serve(
    watchlist: Annotated[Path, typer.Option("--watchlist", help="YAML watch list: 'regions:' of {name, region, threshold: {a, b}}.")],
    out: Annotated[Path, typer.Option("--out", help="Output root: runs go to OUT/REGION/START_END/, alerts to OUT/alerts.jsonl.")] = Path("out"),
    cron: Annotated[str, typer.Option("--cron", help="When to check (cron, UTC).")] = DEFAULT_CRON,
    name: Annotated[str, typer.Option("--name", help="Deployment name.")] = DEPLOYMENT_NAME,
    hours: Annotated[float, typer.Option("--hours", min=0.5, help="Hours of rainfall checked at each run.")] = 72.0,
    precip: Annotated[Path | None, typer.Option("--precip", help="Local IMERG-layout precipitation Zarr (then --rain-source local-zarr is the default).")] = None,
    stac_url: Annotated[str, typer.Option("--stac-url", help="STAC API of the triggered runs.")] = PLANETARY_COMPUTER_STAC,
    window_days: Annotated[int, typer.Option("--window-days", min=1, help="Days of imagery before the event for a triggered run.")] = 60,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="U-Net checkpoint for the triggered runs.")] = None,
    dask_address: Annotated[str | None, typer.Option("--dask-address", envvar="SLIDEWATCH_DASK_ADDRESS", help="Dask scheduler address; default: a local cluster.")] = None,
    chunk: Annotated[int, typer.Option("--chunk", help="Chunk edge in pixels of the triggered runs.")] = DEFAULT_CHUNK,
    device: Annotated[str, typer.Option("--device", help="Inference device: auto (CUDA when present, else the CPU), cpu, or cuda (alias gpu).")] = "auto",
    rain_source: Annotated[str | None, typer.Option("--rain-source", help="Observed rain: imerg-early (default; NASA IMERG V07 Early Run, about 4 h behind, needs EARTHDATA_TOKEN), imerg-late (about 14 h behind), imerg-v06-pc (Planetary Computer archive, ended 2021-05-31) or local-zarr (with --precip, the default then).")] = None,
    forecast: Annotated[str, typer.Option("--forecast", help="Forecast checked too: ecmwf (IFS open data, keyless), gfs (NOAA, keyless) or none.")] = "ecmwf",
    lead_hours: Annotated[int, typer.Option("--lead-hours", min=1, max=240, help="Hours of forecast checked ahead (1 to 3 days is usual).")] = 72,
    static_period: Annotated[str, typer.Option("--static-period", help="Imagery of a triggered run: month (the --window-days before the event's month, shared by every alert of that month, so the cube is reused) or event (ending on the event's day).")] = "month",
    interval: Annotated[float | None, typer.Option("--interval", min=5.0, help="Check every this many seconds instead of --cron.")] = None,
) -> None:
    """Serve the rainfall watch on a schedule with Prefect (blocks; Ctrl-C stops it).

    Uses the Prefect server at PREFECT_API_URL; without one it starts a local Prefect
    server (API and scheduler, on 127.0.0.1, SQLite under OUT/.prefect) and stops it on exit."""
    from prefect import serve as prefect_serve

    from pipeline.rain.watch import load_watchlist

    load_watchlist(watchlist)
    _check_sources(rain_source, forecast, precip, static_period)
    device = parse_device(device)
    from flows.prefect_server import prefect_api

    with prefect_api(Path(out) / ".prefect") as (url, started):
        how = "a local Prefect server started here (stopped on exit)" if started else "PREFECT_API_URL"
        err_console().print(f"Prefect API: {url} ({how})")
        deployment = build_watch_deployment(watchlist, out, cron, name=name, hours=hours, precip=precip,
                                            stac_url=stac_url, window_days=window_days, checkpoint=checkpoint,
                                            dask_address=dask_address, chunk=chunk, device=device,
                                            rain_source=rain_source, forecast=forecast, lead_hours=lead_hours,
                                            static_period=static_period, interval_s=interval)
        when = f"every {interval:g} s" if interval else f"on cron {cron!r} (UTC)"
        err_console().print(f"serving deployment {name!r} {when}; Ctrl-C to stop")
        prefect_serve(deployment)
