"""Benchmark: cube assembly throughput and peak memory of the full cube write (a script).

Run: ``python tests/benchmarks/bench_cube.py [--repeat N] [--skip-rss] [--skip-throughput]`` (~5-8 min on 2 cores)

Prints figures and asserts nothing (machines are noisy: the alternatives are measured side
by side in the same run, interleaved repeat by repeat, and compared as ratios).

1. **Cube assembly throughput** on the demo region (2048 × 2048 px at 10 m, 4 Sentinel-2
   scenes), dask threaded scheduler, best of ``--repeat`` (default 1: the run must stay short):

   a. ``pipeline.acquire.cube.s2_composite`` computed: SCL mask, reflectance, median over time and
      valid count for the 6 cube bands (what the cube does with Sentinel-2);
   b. raw ``stackstac.stack`` of the same items, 6 bands + SCL, same grid, float32/NaN,
      ``chunksize=512``, reduced with ``da.nansum`` (reads and reprojects every pixel of
      every scene, holds only one chunk per thread: no compositing);
   c. ``odc.stac.load`` of the same items and bands onto the same ``GeoBox``,
      ``chunks={"x": 512, "y": 512}``, ``resampling="nearest"``, float32/NaN, reduced the
      same way as (b).

   Throughput is "output grid pixels × 6 bands / seconds / cores" (Mpx/s per core), the
   same normalisation for all three (b and c also read SCL, as a does). The whole
   ``build_cube`` (all variables: S2, S1 medians and references, DEM) is timed too.

2. **Peak RSS of the full cube write** (``flows.stages.cube.cube_stage`` with an
   in-memory item source, Zarr output in a temp dir, default chunk 512), each size in a
   fresh subprocess that reports its own peak RSS (``VmHWM``; its RSS is also sampled from
   here every 50 ms as a cross-check; ``ru_maxrss`` would inherit this process's peak
   through fork/exec, see ``_vm_hwm_kb``): the demo region and a
   region 4× larger (4096 × 4096 px) built as a 2×2 mosaic of the demo scenes through
   small GDAL VRTs that reference the original COGs with a shifted GeoTransform (no pixel
   is copied). The RSS ratio (4× / demo) should stay far below 4 (goal <= 1.3: a tile's
   working set follows the scenes per chunk, printed, and nothing accumulates across tiles).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import dask
import dask.array as da
import numpy as np
from rasterio.errors import NotGeoreferencedWarning

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.acquire.catalog import RunInputs  # noqa: E402
from pipeline.acquire.items import load_items  # noqa: E402
from pipeline.core.collections import COP_DEM, SENTINEL1_RTC, SENTINEL2  # noqa: E402
from pipeline.core.config import CubeConfig  # noqa: E402
from pipeline.demo import ensure_demo_data  # noqa: E402
from pipeline.demo.generate import DEMO_WINDOW, GRID_SIZE, GRID_X0, GRID_Y1, RES  # noqa: E402
from pipeline.plan.grid import plan_grids  # noqa: E402
from pipeline.plan.regions import DEMO_REGION, Region  # noqa: E402

DEMO_ROOT = ROOT / "data" / "demo"
COLLECTIONS = (SENTINEL2, SENTINEL1_RTC, COP_DEM)
#: The demo square's edge in metres (EPSG:32648): the 2×2 mosaic shifts copies by this.
SHIFT = GRID_SIZE * RES


# --------------------------------------------------------------------------- item source


class MemorySource:
    """An ``ItemSource`` over in-memory items, filtering by collection, datetime and bbox."""

    url = "http://fake.invalid/stac"

    def __init__(self, items: dict[str, list]) -> None:
        self.items = items

    def search(self, collection, bbox, datetime=None, max_cloud_cover=None, max_items=None):  # type: ignore[no-untyped-def]
        out = list(self.items.get(collection, []))
        if datetime:
            lo, hi = (_parse_dt(p) for p in datetime.split("/"))
            out = [it for it in out if lo <= _item_dt(it) <= hi]
        w, s, e, n = bbox
        out = [it for it in out if it.bbox is None
               or (it.bbox[0] <= e and it.bbox[2] >= w and it.bbox[1] <= n and it.bbox[3] >= s)]
        if max_cloud_cover is not None:
            out = [it for it in out if float(it.properties.get("eo:cloud_cover", 0.0)) < max_cloud_cover]
        return out[:max_items] if max_items else out


def _parse_dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _item_dt(item) -> datetime:  # type: ignore[no-untyped-def]
    dt = item.datetime
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def load_item_dir(items_dir: Path) -> dict[str, list]:
    return {c: load_items(items_dir / f"{c}.json") for c in COLLECTIONS}


def demo_inputs() -> RunInputs:
    items = load_item_dir(DEMO_ROOT / "items")
    s1 = [it for it in items[SENTINEL1_RTC] if DEMO_WINDOW.start <= it.datetime.date() <= DEMO_WINDOW.end]
    return RunInputs(s2=items[SENTINEL2], s1=s1, s1_history=items[SENTINEL1_RTC], dem=items[COP_DEM])


# --------------------------------------------------------------------------- 1. throughput


def _best_interleaved(fns: dict[str, object], repeat: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best wall time of each function, run alternately ``repeat`` times; and its last result."""
    best = {k: math.inf for k in fns}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()  # type: ignore[operator]
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, results


def throughput(repeat: int, cores: int, hypotheses: bool) -> dict[str, float]:
    import odc.stac
    import stackstac
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from rasterio.enums import Resampling

    from pipeline.acquire.cube import build_cube, s2_composite, stackstac_dict
    from pipeline.acquire.gdal import gdal_env
    from pipeline.acquire.readers import scenes_over, stack_blocks
    from stackstac.rio_reader import DEFAULT_GDAL_ENV

    inputs = demo_inputs()
    grid = plan_grids(DEMO_REGION)[0]
    bands = list(CubeConfig().s2_bands)
    assets = [*bands, "SCL"]
    npx = grid.width * grid.height
    print(f"grid {grid.width}x{grid.height} px EPSG:{grid.epsg} chunk {grid.chunk}; "
          f"{len(inputs.s2)} S2 scenes; bands {','.join(bands)} (+SCL); {cores} cores, dask threads")

    def composite(reader: str):  # type: ignore[no-untyped-def]
        return lambda: s2_composite(inputs.s2, grid, bands, reader).compute()

    def raw_stackstac(dtype: str = "float32", chunk: int = grid.chunk, env=None, native: bool = False):  # type: ignore[no-untyped-def]
        def run() -> float:
            kw = dict(epsg=grid.epsg, resolution=grid.resolution, bounds=grid.bounds)
            use = assets
            if native:  # each file's own grid (no warp): the 10 m bands over their full extent
                use = [b for b in bands if b in ("B02", "B03", "B04", "B08")]
                kw = {}
            fill = np.float32(np.nan) if dtype == "float32" else np.dtype(dtype).type(0)
            arr = stackstac.stack(
                [stackstac_dict(it) for it in inputs.s2], assets=use, snap_bounds=False,
                resampling=Resampling.nearest, chunksize=chunk, dtype=np.dtype(dtype),
                fill_value=fill, rescale=False, xy_coords="center", gdal_env=env or gdal_env(), **kw,
            )
            if not native:
                assert arr.shape[-2:] == grid.shape, arr.shape
            # per output pixel of the grid: a native read covers (2304/2048)^2 of the grid per 10 m band
            return float(da.nansum(arr.data.astype("float64")).compute())
        return run

    def raw_direct() -> float:
        scenes = scenes_over(inputs.s2, assets, grid)
        arrs = [stack_blocks(scenes, i, grid, dtype="float32", fill_value=np.nan, resampling=Resampling.nearest)
                for i in range(len(assets))]
        return float(sum(dask.compute(*[da.nansum(a) for a in arrs])))

    geobox = GeoBox(grid.shape, Affine(*grid.transform), f"EPSG:{grid.epsg}")

    def raw_odc() -> float:
        ds = odc.stac.load(inputs.s2, bands=assets, geobox=geobox, chunks={"x": grid.chunk, "y": grid.chunk},
                           resampling="nearest", dtype="float32", nodata=np.nan)
        assert ds.sizes["y"] == grid.height and ds.sizes["x"] == grid.width, dict(ds.sizes)
        sums = dask.compute(*[da.nansum(ds[b].data) for b in assets])
        return float(sum(sums))

    def whole_cube(reader: str):  # type: ignore[no-untyped-def]
        return lambda: build_cube(inputs, grid, bands, reader).compute()

    # warm the page cache: every method then reads the COGs from memory
    for it in [*inputs.s2, *inputs.s1_history, *inputs.dem]:
        for asset in it.assets.values():
            Path(asset.href).read_bytes()
    fns = {"a": composite("direct"), "a2": composite("stackstac"), "b": raw_stackstac(), "c": raw_odc, "d": raw_direct}
    if hypotheses:
        fns.update({
            "h_uint16": raw_stackstac(dtype="uint16"),
            "h_chunk1024": raw_stackstac(chunk=1024),
            "h_defaultenv": raw_stackstac(env=DEFAULT_GDAL_ENV),
            "h_native": raw_stackstac(native=True),
        })
    with dask.config.set(scheduler="threads", num_workers=cores):
        t, sums = _best_interleaved(fns, repeat)
        t.update(_best_interleaved({"cube": whole_cube("direct"), "cube_stackstac": whole_cube("stackstac")}, 1)[0])
    sb, so, sd = sums["b"], sums["c"], sums["d"]
    print(f"checksum (nansum of every pixel read, 7 assets x {len(inputs.s2)} scenes): stackstac {sb:.6e}  "
          f"odc-stac {so:.6e}  direct {sd:.6e}  rel.diff odc {abs(sb - so) / max(abs(sb), 1e-30):.1e} "
          f"direct {abs(sb - sd) / max(abs(sb), 1e-30):.1e}")

    def mpx(sec: float, px: float = npx, nb: int = len(bands)) -> float:
        return px * nb / sec / cores / 1e6

    print(f"\n1. Cube assembly throughput, demo region (best of {repeat}; Mpx/s per core = "
          f"{npx:,} px x {len(bands)} bands / s / {cores} cores)")
    rows = [
        ("a", "s2_composite, direct reader (default)"),
        ("a2", "s2_composite, stackstac reader"),
        ("b", "raw stackstac.stack 7 assets, da.nansum"),
        ("c", "odc.stac.load 7 assets, da.nansum"),
        ("d", "raw direct reader 7 assets, da.nansum"),
    ]
    if hypotheses:
        rows += [
            ("h_uint16", "hyp. stackstac as uint16 (no float32 cast)"),
            ("h_chunk1024", "hyp. stackstac, 1024 px chunks"),
            ("h_defaultenv", "hyp. stackstac, its default GDAL env"),
        ]
    for key, label in rows:
        print(f"  ({key}) {label:<46} {t[key]:7.2f} s  {mpx(t[key]):6.2f} Mpx/s/core  "
              f"throughput vs (b) x{t['b'] / t[key]:.2f}  vs odc-stac (c) x{t['c'] / t[key]:.2f}")
    if hypotheses:
        # no warp: the 4 10 m bands on their own 2304^2 grid (no SCL): per pixel read, vs (b) per pixel read
        native_rate = 2304 * 2304 * 4 * len(inputs.s2) / t["h_native"]
        warped_rate = npx * len(assets) * len(inputs.s2) / t["b"]
        print(f"  (h_native) hyp. stackstac without warping (files' own grids)  {t['h_native']:7.2f} s  "
              f"pixel reads/s x{native_rate / warped_rate:.2f} of (b) (warped onto the grid)")
    print(f"  goal: (a) >= 1.0x odc-stac's bare load (c): x{t['c'] / t['a']:.2f}")
    for key, label in (("cube", "direct"), ("cube_stackstac", "stackstac")):
        print(f"  whole build_cube (11 variables), {label:<9} reader  {t[key]:7.2f} s  "
              f"({npx / t[key] / cores / 1e6:.2f} Mpx/s/core of output grid)")
    return t


# --------------------------------------------------------------------------- 3. graph size


def graph_sizes() -> dict[str, int]:
    """Dask tasks of the 100,000 km² plan (docs/scaling_estimates.py): the whole-zone cube graph
    (what the dry run counts) and the busiest write tile's (what a run submits at once), per reader."""
    sys.path.insert(0, str(ROOT / "docs"))
    import scaling_estimates as se

    from pipeline.acquire.cube import build_cube
    from pipeline.acquire.items import items_over
    from pipeline.core.config import CHUNKS_PER_TILE
    from pipeline.plan.estimate import busiest_tile, graph_tasks

    out: dict[str, int] = {}
    grids = plan_grids(Region("scaling-example", se.region_bbox()))
    for reader in ("direct", "stackstac"):
        zone, tile_max = 0, 0
        for g in grids:
            inp = se.synthetic_inputs(g)
            zone = max(zone, graph_tasks(build_cube(inp, g, se.S2_CUBE_BANDS, reader)))
            tile = busiest_tile(g, g.tiles(CHUNKS_PER_TILE), inp.all_items())
            sub = g.subgrid(tile)  # type: ignore[arg-type]
            sel = RunInputs(*(items_over(x, sub.epsg, sub.bounds) for x in (inp.s2, inp.s1, inp.s1_history, inp.dem)))
            tile_max = max(tile_max, graph_tasks(build_cube(sel, sub, se.S2_CUBE_BANDS, reader)))
        out[reader], out[f"{reader}_tile"] = zone, tile_max
    chunks = grids[0].chunk_shape[0] * grids[0].chunk_shape[1]
    print(f"\n3. Dask tasks of the 100,000 km² plan ({len(grids)} zones, {chunks:,} chunks in the larger)")
    for reader in ("direct", "stackstac"):
        print(f"  {reader:<9} reader: whole-zone cube graph {out[reader]:8,d} ({out[reader] / chunks:5.1f} per chunk), "
              f"busiest write tile {out[reader + '_tile']:5,d}")
    print(f"  goal: whole-zone graph < 200,000 with the default reader: {out['direct']:,}")
    return out


# --------------------------------------------------------------------------- 4× mosaic


def _vrt(src: Path, dst: Path, dx: float, dy: float) -> None:
    """A VRT of ``src`` (all bands, full extent) with its GeoTransform shifted by (dx, dy)."""
    import rasterio

    with rasterio.open(src) as ds:
        a, b, c, d, e, f = tuple(ds.transform)[:6]
        gt = (c + dx, a, b, f + dy, d, e)
        bx, by = ds.block_shapes[0][1], ds.block_shapes[0][0]
        parts = [f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">',
                 f"  <SRS>{escape(ds.crs.to_wkt())}</SRS>",
                 "  <GeoTransform>" + ", ".join(repr(float(v)) for v in gt) + "</GeoTransform>"]
        gdal_types = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                      "int32": "Int32", "float32": "Float32", "float64": "Float64"}
        for i in range(1, ds.count + 1):
            dt = gdal_types[ds.dtypes[i - 1]]
            parts.append(f'  <VRTRasterBand dataType="{dt}" band="{i}">')
            if ds.nodatavals[i - 1] is not None:
                parts.append(f"    <NoDataValue>{ds.nodatavals[i - 1]!r}</NoDataValue>")
            parts += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="0">{escape(str(src))}</SourceFilename>',
                f"      <SourceBand>{i}</SourceBand>",
                f'      <SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" '
                f'DataType="{dt}" BlockXSize="{bx}" BlockYSize="{by}" />',
                f'      <SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}" />',
                f'      <DstRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}" />',
                "    </SimpleSource>",
                "  </VRTRasterBand>",
            ]
        parts.append("</VRTDataset>")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(parts) + "\n")


def _shift_proj(fields: dict, dx: float, dy: float) -> None:
    if "proj:transform" in fields:
        t = list(fields["proj:transform"])
        t[2] += dx
        t[5] += dy
        fields["proj:transform"] = t
    if "proj:bbox" in fields:
        x0, y0, x1, y1 = fields["proj:bbox"]
        fields["proj:bbox"] = [x0 + dx, y0 + dy, x1 + dx, y1 + dy]


def _lonlat_footprint(epsg: int, bounds: list[float]) -> tuple[dict, list[float]]:
    from pyproj import Transformer

    x0, y0, x1, y1 = bounds
    n = 21
    xs = [x0 + (x1 - x0) * k / n for k in range(n)]
    ys = [y0 + (y1 - y0) * k / n for k in range(n)]
    ring = ([(x, y0) for x in xs] + [(x1, y) for y in ys]
            + [(x, y1) for x in reversed(xs[1:] + [x1])] + [(x0, y) for y in reversed(ys[1:] + [y1])])
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    lon, lat = tr.transform([p[0] for p in ring], [p[1] for p in ring])
    coords = [[float(a), float(b)] for a, b in zip(lon, lat)]
    coords.append(coords[0])
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [coords]}, [float(v) for v in bbox]


def _shifted_item(item, ix: int, iy: int, vrt_root: Path):  # type: ignore[no-untyped-def]
    """A clone of ``item`` moved by (ix·SHIFT, -iy·SHIFT) metres (in degrees for EPSG:4326)."""
    import pystac

    d = copy.deepcopy(item.to_dict(transform_hrefs=False))  # to_dict shares nested dicts with item
    code = d["properties"].get("proj:code") or f"EPSG:{d['properties'].get('proj:epsg')}"
    epsg = int(str(code).split(":")[1])
    if epsg == 4326:  # the demo square's size in degrees at its centre latitude
        lat_c = 29.93
        dx, dy = ix * SHIFT / (111_320.0 * math.cos(math.radians(lat_c))), -iy * SHIFT / 110_850.0
    else:
        dx, dy = ix * SHIFT, -iy * SHIFT
    d["id"] = f"{item.id}_x{ix}y{iy}"
    _shift_proj(d["properties"], dx, dy)
    for key, asset in d["assets"].items():
        src = Path(asset["href"])
        dst = vrt_root / item.collection_id / d["id"] / f"{key}.vrt"
        _vrt(src, dst, dx, dy)
        asset["href"] = str(dst)
        asset["type"] = "application/x-ogc-vrt+xml"
        _shift_proj(asset, dx, dy)
    if epsg == 4326:
        w, s, e, n = item.bbox
        d["bbox"] = [w + dx, s + dy, e + dx, n + dy]
        geom = item.geometry
        d["geometry"] = {"type": geom["type"], "coordinates": [
            [[p[0] + dx, p[1] + dy] for p in ring] for ring in geom["coordinates"]]}
    else:
        # footprint = union of the shifted assets' proj:bbox (item-level when present)
        boxes = [a["proj:bbox"] for a in d["assets"].values() if "proj:bbox" in a]
        if "proj:bbox" in d["properties"]:
            boxes.append(d["properties"]["proj:bbox"])
        b = [min(x[0] for x in boxes), min(x[1] for x in boxes), max(x[2] for x in boxes), max(x[3] for x in boxes)]
        d["geometry"], d["bbox"] = _lonlat_footprint(epsg, b)
    return pystac.Item.from_dict(d)


def make_mosaic(tmp: Path) -> tuple[Region, Path]:
    """2×2 mosaic of the demo items (VRTs + items under ``tmp``) and a region 4× the demo's."""
    from pipeline.acquire.items import save_items
    from pyproj import Transformer

    items = load_item_dir(DEMO_ROOT / "items")
    out: dict[str, list] = {c: [] for c in COLLECTIONS}
    for c, its in items.items():
        for it in its:
            for ix, iy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                out[c].append(it if (ix, iy) == (0, 0) else _shifted_item(it, ix, iy, tmp / "vrt"))
    items_dir = tmp / "items"
    for c, its in out.items():
        save_items(its, items_dir / f"{c}.json")
    # lon/lat bbox inscribed in the 2×2 square (x 317440..358400, y 3281920..3322880)
    x0, x1, y0, y1 = GRID_X0, GRID_X0 + 2 * SHIFT, GRID_Y1 - 2 * SHIFT, GRID_Y1
    tr = Transformer.from_crs(32648, 4326, always_xy=True)
    ts = np.linspace(0, 1, 41)
    west = max(tr.transform(np.full_like(ts, x0), y0 + ts * (y1 - y0))[0])
    east = min(tr.transform(np.full_like(ts, x1), y0 + ts * (y1 - y0))[0])
    south = max(tr.transform(x0 + ts * (x1 - x0), np.full_like(ts, y0))[1])
    north = min(tr.transform(x0 + ts * (x1 - x0), np.full_like(ts, y1))[1])
    eps = 0.002
    region = Region("demo4x", tuple(round(float(v), 6) for v in (west + eps, south + eps, east - eps, north - eps)))  # type: ignore[arg-type]
    return region, items_dir


# --------------------------------------------------------------------------- 2. peak RSS


def child(kind: str, items_dir: Path, out: Path, bbox: list[float] | None) -> None:
    """Run the full cube write once and print one JSON line (run in a fresh process)."""
    import psutil

    from flows.stages.cube import cube_stage

    region = DEMO_REGION if kind == "demo" else Region("demo4x", tuple(bbox))  # type: ignore[arg-type]
    src = MemorySource(load_item_dir(items_dir))
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    res = cube_stage(region, DEMO_WINDOW, src.url, out, source=src)
    wall = time.perf_counter() - t0
    z = res.zones[0]
    print(json.dumps({"wall_s": wall, "rss_after_imports": rss0, "px": z.grid.width * z.grid.height,
                      "shape": [z.grid.height, z.grid.width], "path": str(z.cube_path),
                      "peak_kb": _vm_hwm_kb()}))


def _vm_hwm_kb() -> int:
    """This process's peak RSS (``VmHWM``, kB): the high-water mark of its own address
    space only. ``ru_maxrss`` is not used: on Linux it carries over the spawning parent's
    high-water mark through fork/exec, so a child of a big parent reports the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(kind: str, items_dir: Path, out: Path, region: Region) -> dict:
    """Run one size in a fresh interpreter; its VmHWM, plus its RSS sampled every 50 ms."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--items-dir", str(items_dir),
           "--out", str(out), "--bbox", json.dumps(list(region.bbox))]
    sampled = 0
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                sampled = max(sampled, ps.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        fo.seek(0)
        fe.seek(0)
        stdout, stderr = fo.read(), fe.read()
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({proc.returncode}):\n{stderr[-4000:]}")
    info = json.loads(stdout.strip().splitlines()[-1])
    info["sampled_peak_kb"] = sampled // 1024
    return info


def _stats(counts: list[int]) -> str:
    return f"{min(counts)}/{sum(counts) / len(counts):.1f}/{max(counts)}" if counts else "-"


def _per_chunk(items: list, asset: str, grid) -> str:  # type: ignore[no-untyped-def]
    """Scenes whose ``asset`` footprint reaches each chunk (min/mean/max over the chunks)."""
    from pipeline.acquire.readers import scenes_over

    return _stats([len(scenes_over(items, [asset], grid.subgrid(t))) for t in grid.tiles(1)])


def peak_rss() -> dict[str, dict]:
    from pipeline.acquire.items import items_over

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_cube_") as td:
        tmp = Path(td)
        region4, items4 = make_mosaic(tmp / "mosaic")
        grid4 = plan_grids(region4)[0]
        grid1 = plan_grids(DEMO_REGION)[0]
        assert (grid4.width, grid4.height, grid4.x0, grid4.y1) == (2 * GRID_SIZE, 2 * GRID_SIZE, GRID_X0, GRID_Y1), grid4
        print(f"\n2. Peak RSS of the full cube write (cube_stage, chunk {grid1.chunk}, write tiles of 2x2 chunks), "
              "one fresh subprocess per size")
        print(f"  4x region bbox {tuple(round(v, 4) for v in region4.bbox)} -> grid {grid4.width}x{grid4.height} "
              f"x0={grid4.x0:.0f} y1={grid4.y1:.0f} (VRT 2x2 mosaic of the demo scenes)")
        for kind, region, items_dir, grid in (("demo", DEMO_REGION, DEMO_ROOT / "items", grid1),
                                              ("4x", region4, items4, grid4)):
            s2 = load_items(items_dir / f"{SENTINEL2}.json")
            s1 = load_items(items_dir / f"{SENTINEL1_RTC}.json")
            per_tile = [len(items_over(s2, grid.epsg, grid.subgrid(t).bounds)) for t in grid.tiles(2)]
            info = run_child(kind, items_dir, tmp / f"out_{kind}", region)
            info["s2_per_tile"] = (min(per_tile), sum(per_tile) / len(per_tile), max(per_tile))
            info["tiles"] = len(per_tile)
            results[kind] = info
            print(f"  {kind:>4}: {info['shape'][0]}x{info['shape'][1]} = {info['px'] / 1e6:5.2f} Mpx, "
                  f"{info['tiles']:2d} write tiles (S2 scenes per tile min/mean/max "
                  f"{per_tile and min(per_tile)}/{info['s2_per_tile'][1]:.1f}/{max(per_tile)}), "
                  f"wall {info['wall_s']:6.1f} s, peak RSS {info['peak_kb'] / 1024:7.1f} MB "
                  f"(sampled {info['sampled_peak_kb'] / 1024:.1f} MB; after imports {info['rss_after_imports'] / 2**20:5.1f} MB, "
                  f"above imports {info['peak_kb'] / 1024 - info['rss_after_imports'] / 2**20:5.1f} MB)")
            # a chunk's task stacks only the scenes whose footprint reaches the chunk
            print(f"        scenes per chunk min/mean/max: S2 {_per_chunk(s2, 'B04', grid)}, "
                  f"S1 history {_per_chunk(s1, 'vv', grid)} (per write tile: S1 history "
                  f"{_stats([len(items_over(s1, grid.epsg, grid.subgrid(t).bounds)) for t in grid.tiles(2)])})")
    d, q = results["demo"], results["4x"]
    ratio = q["peak_kb"] / d["peak_kb"]
    grow = (q["peak_kb"] * 1024 - q["rss_after_imports"]) / max(d["peak_kb"] * 1024 - d["rss_after_imports"], 1)
    print(f"  pixels x{q['px'] / d['px']:.1f}, wall x{q['wall_s'] / d['wall_s']:.2f}, "
          f"peak RSS x{ratio:.2f} (above-imports RSS x{grow:.2f})")
    results["ratio"] = {"rss": ratio, "rss_above_imports": grow}
    return results


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1, help="interleaved repeats of (a)/(b)/(c), best kept")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--skip-graph", action="store_true")
    p.add_argument("--hypotheses", action="store_true",
                   help="also time stackstac as uint16, with 1024 px chunks, with its default GDAL env, without warping")
    p.add_argument("--child", choices=["demo", "4x"], help=argparse.SUPPRESS)
    p.add_argument("--items-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--bbox", type=json.loads, help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # odc-stac's internal reproject
    if args.child:
        child(args.child, args.items_dir, args.out, args.bbox)
        return
    ensure_demo_data(DEMO_ROOT)
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    t = throughput(args.repeat, cores, args.hypotheses) if not args.skip_throughput else None
    r = peak_rss() if not args.skip_rss else None
    g = graph_sizes() if not args.skip_graph else None
    parts = []
    if t:
        npx = GRID_SIZE * GRID_SIZE * 6
        parts.append(f"S2 composite {npx / t['a'] / cores / 1e6:.2f} Mpx/s/core, x{t['c'] / t['a']:.2f} of odc-stac's "
                     f"bare load (goal >= 1.0; stackstac reader x{t['c'] / t['a2']:.2f}, raw stackstac "
                     f"x{t['c'] / t['b']:.2f}), whole cube {t['cube']:.1f} s")
    if r:
        parts.append(f"peak RSS demo {r['demo']['peak_kb'] / 1024:.0f} MB, 4x {r['4x']['peak_kb'] / 1024:.0f} MB "
                     f"(x{r['ratio']['rss']:.2f} for 4x the pixels; goal <= 1.3)")
    if g:
        parts.append(f"100,000 km² plan: whole-zone cube graph {g['direct']:,} tasks (goal < 200,000; "
                     f"stackstac reader {g['stackstac']:,}), busiest tile {g['direct_tile']:,}")
    print("\nSUMMARY: " + ";\n         ".join(parts) + f"  [total {time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
