"""Scaling on paper: the figures quoted in docs/scaling.md, reproducible offline.

Run: ``python docs/scaling_estimates.py`` (about 10 s on 2 cores; no network, no pixels).

It plans a ~316 × 316 km (~100,000 km²) region across the UTM 47N/48N boundary with the
real planner (``pipeline.plan.grid.plan_grids``), makes synthetic STAC items from revisit rates
(assumptions below), and asks the real estimators for bytes (``pipeline.plan.estimate.estimate_bytes``,
the same assets and sample sizes as the dry-run plan) and dask tasks
(``pipeline.plan.estimate.graph_tasks`` of ``pipeline.acquire.cube.build_cube``: the lazy cube graph, nothing
is read; with the default ``direct`` reader, and the whole-zone graph with the ``stackstac`` reader too).
Time figures scale throughputs measured elsewhere (constants below, with sources).

The output is a Markdown table; docs/scaling.md embeds it verbatim and
tests/infra/test_infra_files.py checks that the two agree.
"""

from __future__ import annotations

import math
import sys
from datetime import date, timedelta
from pathlib import Path

import dask
import pystac
from pyproj import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.acquire.catalog import RunInputs  # noqa: E402
from pipeline.core.collections import COP_DEM, S2_BAND_RESOLUTION, S2_CUBE_BANDS, SENTINEL1_RTC, SENTINEL2  # noqa: E402
from pipeline.core.config import CubeConfig, Tile, TimeWindow, ZoneGrid  # noqa: E402
from pipeline.acquire.cube import build_cube  # noqa: E402
from pipeline.plan.grid import plan_grids  # noqa: E402
from pipeline.plan.estimate import estimate_bytes, graph_tasks  # noqa: E402
from pipeline.plan.regions import Region  # noqa: E402

# ----------------------------------------------------------------------------- the region
#: Centre on the 102°E meridian (zones 47N | 48N), Longmen Shan, Sichuan.
CENTRE = (102.0, 30.0)
EDGE_KM = 316.2
WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
#: Write tiles are CHUNKS_PER_TILE² chunks (pipeline/core/config.py, CHUNKS_PER_TILE).
CHUNKS_PER_TILE = 2

# ----------------------------------------------------------------------------- assumptions
S2_REVISIT_DAYS = 5  # Sentinel-2A+2B at the equator; every date images every tile (upper bound)
S1_REPEAT_DAYS = 12  # one Sentinel-1 satellite, one orbit direction
TILE_M = 109_800.0  # MGRS tile edge: 109.8 km tiles on a 100 km lattice, per UTM zone
TILE_STEP_M = 100_000.0
S1_REFERENCE_DAYS = CubeConfig().s1_reference_days  # SAR history before the window (SMI)

# ----------------------------------------------------------------------------- measured elsewhere
#: tests/benchmarks/bench_cube.py (a): S2 composite, demo (2048² px, 4 scenes),
#: "grid px × 6 bands / s / core"; assumed to scale linearly with scenes read per pixel.
S2_COMPOSITE_MPX_BANDS_PER_S_CORE = 0.71
DEMO_S2_SCENES = 4
#: tests/benchmarks/bench_models.py: EnhancedUNet forward, CPU, 2 cores, 128² chips.
UNET_CPU_CHIPS_PER_S, UNET_CPU_CORES, CHIP = 30.3, 2, 128
#: The paper: 21.66 chips/s of 128² on an RTX 3060 Ti (15 M parameters).
PAPER_GPU_FPS = 21.66
#: Inference halo overhead (pixels pushed through the net / output pixels): to be measured;
#: assumed 1.5 to 2.
HALO_LOW, HALO_HIGH = 1.5, 2.0
#: tests/benchmarks/bench_lsi.py: tasks per chunk of the LSI alone and of the whole
#: stored-cube → factors → LSI graph (all outputs).
LSI_TASKS_PER_CHUNK, LSI_STAGE_TASKS_PER_CHUNK = 7, 33
#: Keep one submitted graph below this many tasks (DESIGN.md).
GRAPH_TASK_BUDGET = 500_000
#: Target size of one submitted graph: dask's docs put scheduler overhead at ~200 µs to 1 ms
#: per task, so 50k tasks cost 10 to 50 s of scheduling per batch.
BATCH_TASK_TARGET = 50_000
#: Assumed first-byte latency of one HTTP range request to blob storage (not measured).
REQUEST_LATENCY_S = 0.05
#: Example cluster: CPU workers × cores each.
CLUSTER_WORKERS, CLUSTER_CORES = 16, 4

S2_ASSETS = [*S2_CUBE_BANDS, "SCL"]
S2_GSD = {**S2_BAND_RESOLUTION, "SCL": 20}


def region_bbox() -> tuple[float, float, float, float]:
    """A lon/lat box of EDGE_KM × EDGE_KM around CENTRE (spherical Earth, R = 6371 km)."""
    lon, lat = CENTRE
    dlat = math.degrees(EDGE_KM / 6371.0)
    dlon = dlat / math.cos(math.radians(lat))
    return (lon - dlon / 2, lat - dlat / 2, lon + dlon / 2, lat + dlat / 2)


def bbox_area_km2(bbox: tuple[float, float, float, float]) -> float:
    """Area of a lon/lat box on a sphere of radius 6371 km."""
    w, s, e, n = bbox
    return 6371.0**2 * math.radians(e - w) * (math.sin(math.radians(n)) - math.sin(math.radians(s)))


def _item(cid: str, iid: str, when: str, epsg: int, bbox: tuple, assets: dict) -> pystac.Item:
    w, s, e, n = bbox
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": cid, "links": [],
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": list(bbox),
        "properties": {"datetime": when, "proj:epsg": epsg, "s2:processing_baseline": "05.11", "eo:cloud_cover": 10.0},
        "assets": assets,
    }, preserve_dict=False)


def _asset(href: str, x: float, y1: float, gsd: float) -> dict:
    n = int(TILE_M // gsd)
    return {"href": href, "gsd": float(gsd), "roles": ["data"], "proj:shape": [n, n], "proj:transform": [gsd, 0, x, 0, -gsd, y1]}


def synthetic_inputs(grid: ZoneGrid) -> RunInputs:
    """Items a search would return for ``grid`` under the revisit assumptions."""
    to_ll = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    minx, miny, maxx, maxy = grid.bounds
    cells = [
        (x, y)
        for x in [TILE_STEP_M * k for k in range(math.floor(minx / TILE_STEP_M) - 1, math.ceil(maxx / TILE_STEP_M))]
        for y in [TILE_STEP_M * k for k in range(math.floor(miny / TILE_STEP_M) - 1, math.ceil(maxy / TILE_STEP_M))]
        if x + TILE_M > minx and x < maxx and y + TILE_M > miny and y < maxy
    ]

    def tiles(cid: str, first: date, last: date, step: int, assets: dict[str, float]) -> list[pystac.Item]:
        out = []
        for k in range((last - first).days // step + 1):
            day = first + timedelta(days=step * k)
            for x, y in cells:
                ll = to_ll.transform_bounds(x, y, x + TILE_M, y + TILE_M, densify_pts=11)
                a = {name: _asset(f"https://example.invalid/{cid}/{day}/{x:.0f}_{y:.0f}/{name}.tif", x, y + TILE_M, g)
                     for name, g in assets.items()}
                out.append(_item(cid, f"{cid}_{day}_{x:.0f}_{y:.0f}", f"{day}T03:30:00Z", grid.epsg, ll, a))
        return out

    s2 = tiles(SENTINEL2, WINDOW.start, WINDOW.end, S2_REVISIT_DAYS, {a: S2_GSD[a] for a in S2_ASSETS})
    history = tiles(SENTINEL1_RTC, WINDOW.start - timedelta(days=S1_REFERENCE_DAYS), WINDOW.end, S1_REPEAT_DAYS,
                    {"vv": 10.0, "vh": 10.0})
    s1 = [it for it in history if it.datetime is not None and it.datetime.date() >= WINDOW.start]
    w, s, e, n = grid.lonlat_bounds
    dem = []
    for lon in range(math.floor(w), math.ceil(e)):
        for lat in range(math.floor(s), math.ceil(n)):
            asset = {"href": f"https://example.invalid/dem/{lon}_{lat}.tif", "roles": ["data"],
                     "proj:shape": [3600, 3600], "proj:transform": [1 / 3600, 0, lon, 0, -1 / 3600, lat + 1]}
            dem.append(_item(COP_DEM, f"dem_{lon}_{lat}", "2021-04-22T00:00:00Z", 4326,
                             (lon, lat, lon + 1, lat + 1), {"data": asset}))
    return RunInputs(s2=s2, s1=s1, s1_history=history, dem=dem)


def _overlap(item: pystac.Item, bbox: tuple) -> float:
    """Fraction of ``bbox`` (lon/lat) the item's bbox covers (as pipeline.plan.estimate counts it)."""
    w, s, e, n = bbox
    iw, is_, ie, in_ = item.bbox or bbox
    dx = max(0.0, min(e, ie) - max(w, iw))
    dy = max(0.0, min(n, in_) - max(s, is_))
    return dx * dy / ((e - w) * (n - s))


def _intersecting(items: list[pystac.Item], grid: ZoneGrid) -> list[pystac.Item]:
    """Items whose bbox meets a (sub)grid, as the run selects them per write tile."""
    w, s, e, n = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform_bounds(*grid.bounds, densify_pts=11)
    return [it for it in items if it.bbox[0] <= e and it.bbox[2] >= w and it.bbox[1] <= n and it.bbox[3] >= s]


def sample_tiles(grid: ZoneGrid) -> list[Tile]:
    """Write tiles to build graphs for: the centre one and the four at the quarter points."""
    tiles = grid.tiles(CHUNKS_PER_TILE)
    step = grid.chunk * CHUNKS_PER_TILE
    rows, cols = -(-grid.height // step), -(-grid.width // step)
    picks = [(rows // 2, cols // 2)] + [(rows * i // 4, cols * j // 4) for i in (1, 3) for j in (1, 3)]
    return [tiles[r * cols + c] for r, c in picks]


def optimised_tasks(ds) -> int:  # type: ignore[no-untyped-def]
    """Tasks left after dask's optimisation (fusion), which is what a scheduler receives."""
    graph: dict = {}
    for arr in dask.optimize(*[ds[v].data for v in ds.data_vars]):
        graph.update(dict(arr.__dask_graph__()))
    return len(graph)


def estimates() -> list[tuple[str, float, str, str, str]]:
    """Rows ``(key, value, format, unit, meaning)`` of the scaling table."""
    bbox = region_bbox()
    grids = plan_grids(Region("scaling-example", bbox))
    px = sum(g.width * g.height for g in grids)
    chunks = sum(g.chunk_shape[0] * g.chunk_shape[1] for g in grids)
    tiles = sum(len(g.tiles(CHUNKS_PER_TILE)) for g in grids)
    counts = {"s2": 0, "s1": 0, "hist": 0, "dem": 0}
    nbytes = {"s2": 0, "s1": 0, "dem": 0}
    scenes_px = {"s2": 0.0, "s1": 0.0, "hist": 0.0, "dem": 0.0}  # Σ overlap × grid px
    requests = 0.0
    zone_tasks: list[int] = []
    zone_tasks_stackstac: list[int] = []
    tile_tasks: list[int] = []
    tile_tasks_opt: list[int] = []
    max_scenes_tile = 0
    for g in grids:
        inp = synthetic_inputs(g)
        gpx = g.width * g.height
        nch = g.chunk_shape[0] * g.chunk_shape[1]
        for key, items, nassets in (("s2", inp.s2, len(S2_ASSETS)), ("s1", inp.s1, 2), ("hist", inp.s1_history, 1), ("dem", inp.dem, 1)):
            counts[key] += len(items)
            cover = sum(_overlap(it, g.lonlat_bounds) for it in items)
            scenes_px[key] += cover * gpx
            requests += cover * nch * nassets
        # the same assets and sample sizes as pipeline/acquire/cube.py zone_plan
        nbytes["s2"] += estimate_bytes(inp.s2, S2_ASSETS, g, [2] * len(S2_ASSETS))
        nbytes["s1"] += estimate_bytes(inp.s1_history, ["vv", "vh"], g, [4, 4])
        nbytes["dem"] += estimate_bytes(inp.dem, ["data"], g, [4])
        zone_tasks.append(graph_tasks(build_cube(inp, g, S2_CUBE_BANDS, "direct")))
        zone_tasks_stackstac.append(graph_tasks(build_cube(inp, g, S2_CUBE_BANDS, "stackstac")))
        for t in sample_tiles(g):
            sub = g.subgrid(t)
            sel = RunInputs(s2=_intersecting(inp.s2, sub), s1=_intersecting(inp.s1, sub),
                            s1_history=_intersecting(inp.s1_history, sub), dem=_intersecting(inp.dem, sub))
            if not sel.s2 or not sel.dem:
                continue  # the run writes a blank tile there
            max_scenes_tile = max(max_scenes_tile, len(sel.s2), len(sel.s1_history))
            cube = build_cube(sel, sub, S2_CUBE_BANDS, "direct")
            tile_tasks.append(graph_tasks(cube))
            tile_tasks_opt.append(optimised_tasks(cube))
    per_px = {k: v / px for k, v in scenes_px.items()}
    total_bytes = sum(nbytes.values())

    # cube time: "pixel reads" (output px × scenes × assets) at the S2 composite's measured rate
    reads_per_s_core = S2_COMPOSITE_MPX_BANDS_PER_S_CORE * 1e6 * (len(S2_ASSETS) / len(S2_CUBE_BANDS)) * DEMO_S2_SCENES
    s2_reads = px * per_px["s2"] * len(S2_ASSETS)
    other_reads = px * (per_px["s1"] * 2 + per_px["hist"] * 1 + per_px["dem"])
    cube_core_h = (s2_reads + other_reads) / reads_per_s_core / 3600
    cpu_unet_px_s_core = UNET_CPU_CHIPS_PER_S * CHIP**2 / UNET_CPU_CORES
    gpu_paper_px_s = PAPER_GPU_FPS * CHIP**2
    cluster_cores = CLUSTER_WORKERS * CLUSTER_CORES
    cube_wall_h = cube_core_h / cluster_cores
    # cores of cube assembly needed to keep one inference device busy (halo 1.5)
    grid_px_s_core = reads_per_s_core / (s2_reads + other_reads) * px
    feed_cores_paper_gpu = gpu_paper_px_s / HALO_LOW / grid_px_s_core
    max_tile = max(tile_tasks)
    mean_tile = sum(tile_tasks) / len(tile_tasks)
    zone_chunks = grids[0].chunk_shape[0] * grids[0].chunk_shape[1]
    return [
        ("region_area_km2", bbox_area_km2(bbox), ",.0f", "km²", f"lon/lat box {EDGE_KM} km square centred on {CENTRE}"),
        ("zones", len(grids), "d", "", " + ".join(g.zone_name for g in grids)),
        ("grid_mpx", px / 1e6, ",.0f", "Mpx", "both zone grids at 10 m, snapped out to whole chunks"),
        ("grid_overhead_pct", 100 * (px / 1e4 / bbox_area_km2(bbox) - 1), ".1f", "%", "grid area beyond the region's area"),
        ("chunks", chunks, ",d", "", "512² chunks, both zones"),
        ("write_tiles", tiles, ",d", "", f"{CHUNKS_PER_TILE}×{CHUNKS_PER_TILE}-chunk write tiles"),
        ("s2_items", counts["s2"], ",d", "", f"Sentinel-2 L2A items, every {S2_REVISIT_DAYS} d, no cloud filter"),
        ("s1_history_items", counts["hist"], ",d", "", f"Sentinel-1 RTC items, every {S1_REPEAT_DAYS} d, window + {S1_REFERENCE_DAYS} d history"),
        ("dem_items", counts["dem"], ",d", "", "Copernicus DEM 1° tiles"),
        ("s2_scenes_per_px", per_px["s2"], ".1f", "", "mean S2 scenes over a pixel (tile overlaps included)"),
        ("s1_scenes_per_px", per_px["hist"], ".1f", "", "mean S1 scenes (history) over a pixel"),
        ("max_scenes_per_tile", max_scenes_tile, ",d", "", "most S2 or S1 items one write tile stacks (sampled tiles)"),
        ("stack_mib_per_chunk", max_scenes_tile * grids[0].chunk**2 * 4 / 2**20, ",.0f", "MiB", "that stack for one 512² float32 chunk, held by one task"),
        ("bytes_s2_tb", nbytes["s2"] / 1e12, ".2f", "TB", "S2 bytes read, uncompressed, native resolution"),
        ("bytes_s1_tb", nbytes["s1"] / 1e12, ".2f", "TB", "S1 RTC bytes read (vv, vh float32, with history)"),
        ("bytes_dem_gb", nbytes["dem"] / 1e9, ".1f", "GB", "DEM bytes read"),
        ("bytes_total_tb", total_bytes / 1e12, ".2f", "TB", "all of it (COG compression makes the wire bytes fewer)"),
        ("range_requests_k", requests / 1e3, ",.0f", "k", "HTTP range requests: at least one per chunk × item × asset"),
        ("cube_tasks_zone_graph", max(zone_tasks), ",d", "", "tasks of the larger whole-zone cube graph (the dry-run count)"),
        ("cube_tasks_per_chunk_zone", max(zone_tasks) / zone_chunks, ".0f", "", "the same, per chunk"),
        ("cube_tasks_zone_graph_stackstac", max(zone_tasks_stackstac), ",d", "", "the same with SLIDEWATCH_READER=stackstac"),
        ("cube_tasks_per_tile", max_tile, ",d", "", "largest sampled write-tile cube graph (what a run computes at once)"),
        # dask's fusion varies by a few tasks with the hash seed (136 or 142 seen): rounded
        ("cube_tasks_per_tile_optimised", round(max(tile_tasks_opt), -1), ",d", "", "the same after dask's fusion, to the nearest 10 (what the scheduler gets)"),
        ("cube_tasks_all_tiles", tiles * mean_tile, ",.0f", "", "all write tiles as one graph (tiles × mean sampled tile)"),
        ("tiles_per_batch", BATCH_TASK_TARGET // max_tile, ",d", "", f"write tiles per submitted batch of at most {BATCH_TASK_TARGET:,} tasks"),
        ("lsi_tasks", LSI_TASKS_PER_CHUNK * chunks, ",d", "", f"LSI alone, {LSI_TASKS_PER_CHUNK} tasks/chunk (measured)"),
        ("lsi_stage_tasks", LSI_STAGE_TASKS_PER_CHUNK * chunks, ",d", "", f"stored cube → factors → LSI, {LSI_STAGE_TASKS_PER_CHUNK} tasks/chunk (measured)"),
        ("cube_core_h", cube_core_h, ",.0f", "core-h", "cube assembly at the measured S2 composite rate, scaled by scenes"),
        ("cube_wall_min", cube_wall_h * 60, ",.0f", "min", f"the same on {CLUSTER_WORKERS} workers × {CLUSTER_CORES} cores, if I/O keeps up"),
        ("read_rate_mb_s", total_bytes / (cube_wall_h * 3600) / 1e6, ",.0f", "MB/s", "uncompressed read rate that wall time implies"),
        ("request_rate_per_s", requests / (cube_wall_h * 3600), ",.0f", "1/s", "range requests per second at that wall time"),
        ("latency_thread_h", requests * REQUEST_LATENCY_S / 3600, ",.1f", "thread-h", f"time threads wait on requests at {REQUEST_LATENCY_S * 1000:.0f} ms each, serial"),
        ("unet_cpu_core_h_low", px * HALO_LOW / cpu_unet_px_s_core / 3600, ",.1f", "core-h", f"U-Net on CPU, halo ×{HALO_LOW}"),
        ("unet_cpu_core_h_high", px * HALO_HIGH / cpu_unet_px_s_core / 3600, ",.1f", "core-h", f"U-Net on CPU, halo ×{HALO_HIGH}"),
        ("unet_gpu_h_paper_low", px * HALO_LOW / gpu_paper_px_s / 3600, ",.1f", "GPU-h", f"at the paper's {PAPER_GPU_FPS} chips/s, halo ×{HALO_LOW}"),
        ("unet_gpu_h_paper_high", px * HALO_HIGH / gpu_paper_px_s / 3600, ",.1f", "GPU-h", f"at the paper's {PAPER_GPU_FPS} chips/s, halo ×{HALO_HIGH}"),
        ("feed_cores_per_paper_gpu", feed_cores_paper_gpu, ".0f", "cores", f"cube-assembly cores that keep one such GPU busy (halo ×{HALO_LOW})"),
    ]


def render(rows: list[tuple[str, float, str, str, str]]) -> str:
    """The Markdown table docs/scaling.md embeds."""
    lines = ["| key | value | unit | what |", "|---|---:|---|---|"]
    for key, value, fmt, unit, what in rows:
        lines.append(f"| `{key}` | {format(value, fmt)} | {unit} | {what} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(estimates()))
