"""The ``slidewatch`` command line (typer). Wiring only: parse, call the library, show progress."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.console import err_console, friendly_errors, show_error
from flows.console import out_console as _out_console
from pipeline import __version__
from pipeline.core.collections import PLANETARY_COMPUTER_STAC
from pipeline.core.config import CHUNKS_PER_TILE, DEFAULT_CHUNK, CubeConfig, TimeWindow, check_max_cloud
from pipeline.core.errors import SlidewatchError
from pipeline.core.layout import RunLayout
from pipeline.plan.regions import parse_region

app = typer.Typer(
    name="slidewatch",
    help="Landslide risk mapping from Sentinel-1/2 and Copernicus DEM over STAC.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = err_console()
out_console = _out_console()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class _RunProgress:
    """Turns the run's events into a rich progress display."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, kind: str, info: dict) -> None:
        zone = info.get("zone", "")
        if kind == "search":
            console.print(f"[cyan]searching[/] STAC for zone {zone} ...")
        elif kind == "searched":
            counts = ", ".join(f"{k}: {v}" for k, v in info["counts"].items())
            console.print(f"  items: {counts}")
            for note in info.get("notes", []):
                console.print(f"  [yellow]note:[/] {note}")
        elif kind == "note":
            console.print(f"[yellow]note:[/] {info['text']}")
        elif kind == "zone-skipped":
            console.print(f"[yellow]note:[/] zone {zone} left out (the rest of the region goes on): {info['reason']}")
        elif kind == "reused":
            console.print(f"[green]reusing[/] finished store {info['path']}")
        elif kind == "tiles":
            self.progress.start()
            stage = info.get("stage", "cube")
            label = f"{stage} {zone.removesuffix(' ' + stage)}"  # "LSI utm48n", not "cube utm48n LSI"
            self.tasks[zone] = self.progress.add_task(label, total=info["total"], completed=0)
        elif kind == "tile":
            self.progress.advance(self.tasks[zone])
        elif kind == "written":
            self.progress.stop()
            for task in self.tasks.values():  # finished bars stay printed, not redrawn by the next stage
                self.progress.remove_task(task)
            self.tasks.clear()
            console.print(f"[green]{info.get('stage', 'cube')} written[/] {info['path']}")

    def stop(self) -> None:
        self.progress.stop()


def _print_plan(result) -> None:  # type: ignore[no-untyped-def]
    out_console.print("[bold]slidewatch dry-run plan[/] (nothing read or written)")
    total_bytes = total_tasks = 0
    for p in result.plans:
        g = p.grid
        cy, cx = g.chunk_shape
        out_console.print(f"zone {g.zone_name} (EPSG:{g.epsg})")
        out_console.print(f"  grid: {g.width}×{g.height} px at {g.resolution:g} m, {p.area_km2:,.1f} km², origin ({g.x0:.0f}, {g.y1:.0f})")
        out_console.print(f"  chunks: {cy}×{cx} = {cy * cx} of {g.chunk}×{g.chunk} px")
        out_console.print(f"  write tiles: {len(g.tiles(CHUNKS_PER_TILE))} of {CHUNKS_PER_TILE}×{CHUNKS_PER_TILE} chunks")
        if p.offline is not None:
            out_console.print(f"  items, bytes and the cube's tasks need the STAC API, which could not be reached: {p.offline}")
            out_console.print(f"  dask tasks of the LSI stage: {p.tasks:,}")
        else:
            for name, count in p.items.items():
                out_console.print(f"  items {name}: {count}")
            out_console.print(f"  estimated bytes read: {_human_bytes(p.bytes_read)}")
            out_console.print(f"  dask tasks: {p.tasks:,}")
            if p.largest_graph is not None:
                out_console.print(f"  largest submitted graph: {p.largest_graph:,} tasks (the busiest write tile's cube)")
        for note in p.notes:
            out_console.print(f"  note: {note}")
        total_bytes += p.bytes_read
        total_tasks += p.tasks
    if any(p.offline is not None for p in result.plans):
        out_console.print(f"total: {len(result.plans)} zone(s); items and bytes unknown without the STAC API")
        return
    out_console.print(f"total: {len(result.plans)} zone(s), {_human_bytes(total_bytes)} to read, {total_tasks:,} dask tasks")


def _lsi_stage(result, rain, progress, overwrite: bool = False, params=None, calibration=None,  # type: ignore[no-untyped-def]
               hazard: str = "decoupled") -> None:
    from flows.stages import lsi_stage

    where = "the hazard step (the LSI and the model are rain-free)" if hazard == "decoupled" else "the LSI (paper mode)"
    console.print(f"rainfall: P={rain.intensity_mm_h} mm/h, D={rain.duration_days} d, R_m={rain.multiplier:.3f} "
                  f"({rain.source}); enters {where}")
    if calibration:
        console.print(f"LSI calibration: centre {params.centre:.4f}, steepness {params.steepness:.4f} from {calibration}")
    lsi_stage(result, rain, params=params, calibration=calibration, overwrite=overwrite, on_event=progress, hazard=hazard)
    for z in result.zones:
        out_console.print(f"LSI {z.grid.zone_name}: {z.lsi_path}")
        out_console.print(f"quick look: {z.lsi_path.with_suffix('.png')}")


def _risk_stage(result, rain, checkpoint, progress, device: str = "auto", overwrite: bool = False,  # type: ignore[no-untyped-def]
                record: dict | None = None, **options) -> None:
    from flows.stages import risk_stage

    if checkpoint is None:
        console.print("[yellow]note:[/] no --checkpoint given: the run stops after the LSI (train one with `slidewatch train`).")
        return
    risk_stage(result, rain, checkpoint, device=device, overwrite=overwrite, on_event=progress, record=record, **options)


def _print_outputs(result, with_risk: bool) -> None:  # type: ignore[no-untyped-def]
    layout = RunLayout(result.run_dir)
    if with_risk:
        out_console.print(f"[bold green]risk mosaic[/]: {layout.risk} (one group per UTM zone)")
        out_console.print(f"exports (COGs + QGIS styles, region mosaics, PNG, STAC catalog): {layout.exports}")
        zone = result.zones[0].grid.zone_name
        out_console.print(f"open with: xr.open_zarr({str(layout.risk)!r}, group={zone!r}, decode_coords='all')")
        out_console.print(f"map: slidewatch report {layout.run_dir}")
    else:
        z = result.zones[0]
        out_console.print(f"open with: xr.open_zarr({str(z.lsi_path or z.cube_path)!r}, decode_coords='all')")


@app.command()
@friendly_errors
def run(
    region: Annotated[str, typer.Option(help="Built-in name (demo, hongya, junlian), bbox 'west,south,east,north' in degrees, or a GeoJSON file.")],
    start: Annotated[str, typer.Option(help="First day of the imagery window, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day of the imagery window, YYYY-MM-DD.")],
    stac_url: Annotated[str, typer.Option(help="STAC API; Planetary Computer by default (signed automatically).")] = PLANETARY_COMPUTER_STAC,
    out: Annotated[Path, typer.Option(help="Output root; the run writes under OUT/REGION/START_END/.")] = Path("out"),
    max_cloud: Annotated[float, typer.Option(help="Largest scene cloud cover (%) searched for Sentinel-2.")] = 60.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (items, grid, chunks, bytes, tasks) and exit.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished store made with other inputs.")] = False,
    chunk: Annotated[int, typer.Option(help="Chunk edge in pixels (Zarr chunks, dask chunks, tile lattice).")] = DEFAULT_CHUNK,
    rain_intensity: Annotated[Optional[float], typer.Option(help="Event rainfall intensity P in mm/h (with --rain-duration).")] = None,
    rain_duration: Annotated[Optional[float], typer.Option(help="Event rainfall duration D in days (with --rain-intensity).")] = None,
    precip: Annotated[Optional[Path], typer.Option(help="Local IMERG-layout precipitation Zarr to read P and D from (last 3 days of the window).")] = None,
    cube_only: Annotated[bool, typer.Option("--cube-only", help="Stop after the cube; skip factors and LSI.")] = False,
    checkpoint: Annotated[Optional[Path], typer.Option(help="U-Net checkpoint (model.safetensors from `slidewatch train`); without it the run stops after the LSI.")] = None,
    device: Annotated[str, typer.Option(help="Inference device: auto (CUDA where the model runs, else the CPU, announced), cpu, or cuda (alias gpu). With a Dask cluster the workers run the model, on those with a GPU resource when some have one.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Inference tiles (576 px) per model call; raise it on a GPU, lower it where memory is short (one call holds batch × 576² pixels of activations).")] = 8,
    dask_address: Annotated[Optional[str], typer.Option(envvar="SLIDEWATCH_DASK_ADDRESS", help="Dask scheduler address (tcp://host:8786); default: a local cluster.")] = None,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Serve the local Dask cluster's dashboard on 127.0.0.1 (its URL is printed); off by default.")] = False,
    sar: Annotated[str, typer.Option(help="Sentinel-1: auto (RTC when Planetary Computer grants it, i.e. with PC_SDK_SUBSCRIPTION_KEY; else GRD, noted), rtc (fail without access), grd, or none (NDMI proxy for soil moisture).")] = "auto",
    max_items: Annotated[int, typer.Option(min=1, help="Most items one search may match (per collection and zone); a search matching more is refused, never cut short.")] = 2000,
    calibration: Annotated[Optional[Path], typer.Option(help="LSI calibration (calibration.json, e.g. from `slidewatch demo`) whose sigmoid centre and steepness the LSI uses.")] = None,
    hazard: Annotated[str, typer.Option(help="Where the rain enters: decoupled (the model maps rain-free susceptibility; the event's hazard = 1-(1-s)^R_m afterwards) or paper (the source paper: rain-scaled LSI fed to the model).")] = "decoupled",
    uncertainty: Annotated[bool, typer.Option("--uncertainty/--no-uncertainty", help="Run the model on 4 flips of every tile and write their spread as `uncertainty` (4x the model time).")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse to map when a model input lies far outside its training range (default: say so and record it).")] = False,
) -> None:
    """Run a region: cube (Zarr) → factors and LSI → U-Net risk mosaic and exports."""
    from flows.stages import cube_stage, finish_run, run_lock, run_record
    from pipeline.factors.calibration import load_calibration
    from pipeline.rain.events import check_rain_options, resolve_rain

    reg = parse_region(region)
    window = TimeWindow.parse(start, end)
    config = CubeConfig(max_cloud_cover=check_max_cloud(max_cloud), sar=sar, max_items=max_items)
    check_rain_options(rain_intensity, rain_duration, precip)  # before any pixel is read
    params, calibrated_by = load_calibration(calibration) if calibration is not None else (None, None)
    from flows.dask_context import check_scheduler_address
    from flows.stages.inference_workers import parse_device

    check_scheduler_address(dask_address)
    device = parse_device(device)  # a misspelt device is refused before any work
    from pipeline.predict.hazard import check_hazard_mode

    check_hazard_mode(hazard)
    if checkpoint is not None:  # a missing or bad checkpoint is refused now, not after hours of cube and LSI
        from flows.stages import check_model_inputs
        from models.checkpoint import read_metadata

        check_model_inputs(read_metadata(checkpoint).channels, config, checkpoint)
    progress = _RunProgress()
    if dry_run:
        result = cube_stage(reg, window, stac_url, out, config, dry_run=True, on_event=progress, chunk=chunk)
        progress.stop()
        _print_plan(result)
        return
    from flows.dask_context import THREADS, dashboard_url, dask_client

    if checkpoint is not None and device.startswith("cuda") and (dask_address or "").strip() in ("", THREADS):
        from flows.stages.inference_workers import driver_device

        driver_device(device, None)  # a local run: CUDA here or refused, before anything is written
    with run_lock(out, reg, window), dask_client(dask_address, dashboard=dashboard) as client:
        if dashboard:
            url = dashboard_url(client) if client is not None else None
            console.print(f"dashboard: {url}" if url else "dashboard: none (no distributed client)")
        if checkpoint is not None and device.startswith("cuda") and client is not None:  # GPU workers?
            from flows.dask_context import task_pool
            from flows.stages.inference_workers import driver_device

            with task_pool() as pool:
                driver_device(device, pool)  # refused now, not after the cube and LSI
        try:
            result = cube_stage(reg, window, stac_url, out, config, overwrite=overwrite, on_event=progress, chunk=chunk)
        finally:
            progress.stop()
        for z in result.zones:
            out_console.print(f"cube {z.grid.zone_name}: {z.cube_path}")
        if cube_only:
            out_console.print(f"open with: xr.open_zarr({str(result.zones[0].cube_path)!r}, decode_coords='all')")
            return
        rain = resolve_rain(rain_intensity, rain_duration, precip, reg.bbox, window)
        _lsi_stage(result, rain, progress, overwrite=overwrite, params=params, calibration=calibrated_by, hazard=hazard)
        record = run_record(reg, window, stac_url, result, rain,
                            extra={"checkpoint": str(checkpoint) if checkpoint else None, "hazard_mode": hazard})
        _risk_stage(result, rain, checkpoint, progress, device=device, overwrite=overwrite, record=record,
                    hazard=hazard, uncertainty=uncertainty, strict=strict, batch_size=batch_size)
        finish_run(result.run_dir, record)  # run.json, last and under the run's lock
    _print_outputs(result, checkpoint is not None)


@app.command()
@friendly_errors
def demo(
    data: Annotated[Path, typer.Option(help="Where the generated demo region is cached.")] = Path("data/demo"),
    out: Annotated[Path, typer.Option(help="Output root of the demo run.")] = Path("out"),
    regenerate: Annotated[bool, typer.Option("--regenerate", help="Regenerate the synthetic region even if cached.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic region.")] = 20240701,
    no_model: Annotated[bool, typer.Option("--no-model", help="Stop after the LSI (no U-Net training or inference).")] = False,
    retrain: Annotated[bool, typer.Option("--retrain", help="Retrain the demo model even if a cached one matches.")] = False,
) -> None:
    """Generate (once) the synthetic demo region, serve it as a local STAC API, and run it."""
    from flows.stages import run_lock
    from pipeline.demo import ensure_demo_data
    from pipeline.demo.generate import DEMO_WINDOW, generate
    from pipeline.plan.regions import DEMO_REGION

    if regenerate:
        with console.status("generating the demo region"):
            layout = generate(data, seed, progress=lambda m: console.print(f"  {m}"))
    else:
        layout, made = ensure_demo_data(data, seed, progress=lambda m: console.print(f"  {m}"))
        console.print(("generated" if made else "reusing cached") + f" demo region in {layout.root}")
    progress = _RunProgress()
    with run_lock(out, DEMO_REGION, DEMO_WINDOW):
        _demo_run(layout, data, out, progress, no_model, retrain)


def _demo_run(layout, data, out, progress, no_model, retrain) -> None:  # type: ignore[no-untyped-def]
    """The demo region through every stage (under the run's lock)."""
    from flows.stages import cube_stage, finish_run, risk_stage, run_record
    from models.demo import ensure_demo_model
    from pipeline.demo import LocalStacServer
    from pipeline.demo.calibration import DEMO_DATA_SET, demo_calibration
    from pipeline.demo.generate import DEMO_WINDOW
    from pipeline.factors.calibration import format_report, load_calibration, save_calibration
    from pipeline.plan.regions import DEMO_REGION
    from pipeline.rain.events import resolve_rain

    hrefs = [*layout.collection_files(), *layout.item_files()]
    with LocalStacServer(hrefs) as url:
        console.print(f"local STAC API (rustac serve) at {url}")
        try:
            result = cube_stage(DEMO_REGION, DEMO_WINDOW, url, out, CubeConfig(), on_event=progress)
        finally:
            progress.stop()
    for z in result.zones:
        out_console.print(f"cube: {z.cube_path}")
    rain = resolve_rain(None, None, layout.precipitation if layout.precipitation.exists() else None, DEMO_REGION.bbox, DEMO_WINDOW)
    # the LSI with the demo's saved calibration (defaults the first time), reused when unchanged
    run_files = RunLayout(result.run_dir)
    params, calibrated_by = load_calibration(run_files.calibration) if run_files.calibration.is_file() else (None, None)
    _lsi_stage(result, rain, progress, params=params, calibration=calibrated_by)
    fit = demo_calibration([z.lsi_path for z in result.zones], layout.truth_mask)[0]
    out_console.print(format_report(fit, DEMO_DATA_SET))
    if fit.to_params() != params:  # apply what was fitted: the LSI again with its centre and steepness
        save_calibration(fit, run_files.calibration, DEMO_DATA_SET)
        params, calibrated_by = load_calibration(run_files.calibration)
        _lsi_stage(result, rain, progress, params=params, calibration=calibrated_by)
    out_console.print(f"ground truth (synthetic landslide scars): {layout.truth_mask}")
    if no_model:
        _print_outputs(result, False)
        return
    lsi_path = result.zones[0].lsi_path
    console.print("[cyan]model[/]: the demo U-Net is trained on the demo region's SYNTHETIC scars (cached after the first run)")
    ckpt = ensure_demo_model(lsi_path, layout.truth_mask, data / "model", retrain=retrain, on_event=progress)
    out_console.print(f"demo checkpoint: {ckpt}")
    record = run_record(DEMO_REGION, DEMO_WINDOW, "local demo STAC (rustac serve)", result, rain,
                        extra={"checkpoint": str(ckpt), "model_note": "trained on synthetic demo scars"})
    risk_stage(result, rain, ckpt, on_event=progress, record=record)  # reused when current, replaced when stale
    finish_run(result.run_dir, record)  # run.json, once every output is written
    _print_outputs(result, True)


def _register_optional_commands() -> None:
    """Commands whose modules need extras (torch for the model commands, prefect for the
    watch): registered only when their module imports."""
    import importlib

    for module, names in (
        ("flows.model_commands", ("train", "prepare", "evaluate", "ablate")),
        ("flows.report_command", ("report",)),
        ("flows.watch_commands", ("watch", "serve")),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            fn = getattr(mod, name, None)
            if fn is not None:
                app.command(name)(fn)  # each command shows its own errors (flows.console.friendly_errors)


_register_optional_commands()


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"slidewatch {__version__}")
        raise typer.Exit()


def _bound_malloc() -> None:
    """Keep peak memory flat across many differently shaped torch batches: glibc's dynamic
    mmap threshold otherwise grows and big freed blocks stay on the heap (measured by
    tests/benchmarks/bench_inference.py). Same effect as ``MALLOC_MMAP_THRESHOLD_=65536``; a no-op off glibc."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


#: Loggers quieted without ``-v`` (level while quiet): GDAL's per-request retry notices, one
#: line per HTTP retry, relayed by rasterio; slidewatch's own warnings say what matters.
_QUIET_LOGGERS = {"rasterio._env": logging.ERROR}


@app.callback()
def main_options(
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log library details (Dask's and GDAL's logs included).")] = False,
) -> None:
    """slidewatch: landslide risk from STAC imagery."""
    from flows.dask_context import dask_logging
    from pipeline.core.secrets import install_handler_redaction

    _bound_malloc()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Without -v a failed run prints its one-line error and a few warnings above it, not
    # Dask's tracebacks; every record is stripped of credentials whichever logger made it.
    restore_dask = dask_logging(verbose)
    quieted = {} if verbose else {n: logging.getLogger(n).level for n in _QUIET_LOGGERS}
    for name in quieted:
        logging.getLogger(name).setLevel(_QUIET_LOGGERS[name])
    install_handler_redaction()

    def restore() -> None:  # in-process callers (tests, notebooks) get their logging back
        restore_dask()
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)

    ctx.call_on_close(restore)


def main() -> None:
    """Console entry point: turns slidewatch errors into one line and a non-zero exit."""
    try:
        app()
    except SlidewatchError as exc:
        sys.exit(show_error(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: rerun the same command to resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
