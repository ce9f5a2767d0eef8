"""Concurrent write tiles (``SLIDEWATCH_TILE_CONCURRENCY``) over a high-latency link.

    python tests/benchmarks/bench_tiles.py [--latency 0.04] [--size 256] [--concurrency 1 2 4]

A script: prints, asserts nothing. The reliability tests' tiny region is generated at
``--size``² px and served by their local HTTP server (tests/reliability/faultserver.py) with
``--latency`` seconds before every answer, like object storage's round trip; the same cube
run (``flows.stages.cube.cube_stage``, 64 px chunks, write tiles of 2×2 chunks, the threaded
scheduler or ``--local-cluster THREADS``) is timed at each concurrency, interleaved over ``--repeat`` rounds (best of),
side by side in one run, and every store is checked equal to the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reliability")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.04)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--local-cluster", type=int, default=0, metavar="THREADS",
                    help="run on an in-process distributed LocalCluster with this many threads (the CLI's default "
                         "kind of cluster) instead of the threaded scheduler")
    args = ap.parse_args()

    import tests.tinyregion as tiny
    from faultserver import FaultPlan
    from flows.dask_context import CONCURRENCY_ENV
    from pipeline.core.config import ZoneGrid
    from pipeline.acquire.gdal import clear_http_cache
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds
    from runkit import HttpRun, store_arrays

    n = args.size
    tiny.N = n  # the generator reads the module's size
    tiny.GRID = ZoneGrid(epsg=tiny.EPSG, x0=tiny.X0, y1=tiny.Y1, width=n, height=n, resolution=tiny.RES, chunk=64,
                         lonlat_bounds=tuple(transform_bounds(CRS.from_epsg(tiny.EPSG), "EPSG:4326", tiny.X0,
                                                              tiny.Y1 - n * tiny.RES, tiny.X0 + n * tiny.RES, tiny.Y1)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = tiny.make_tiny_region(root / "cogs")
        times: dict[int, list[float]] = {c: [] for c in args.concurrency}
        ref = None
        tiles = None
        for rnd in range(args.repeat):
            for conc in args.concurrency:
                os.environ[CONCURRENCY_ENV] = str(conc)
                clear_http_cache()
                from flows.dask_context import dask_client

                cluster = dask_client(threads_per_worker=args.local_cluster) if args.local_cluster else dask_client("threads")
                with cluster, HttpRun(root / "cogs", items, FaultPlan(latency_s=args.latency), max_seconds=3600) as r:
                    events: list = []
                    t = time.perf_counter()
                    res = r.run(root / f"out{rnd}_{conc}", chunk=64, events=events)
                    times[conc].append(time.perf_counter() - t)
                    requests = len(r.server.log)
                tiles = sum(1 for k, _ in events if k == "tile")
                arrays = store_arrays(res.zones[0].cube_path)
                if ref is None:
                    ref = arrays
                else:
                    assert all(np.array_equal(arrays[k], ref[k], equal_nan=True) for k in ref), "stores differ"
        print(f"cube of {n}x{n} px, {tiles} write tiles, {requests} HTTP requests per run, "
              f"{args.latency * 1000:.0f} ms per request, {os.cpu_count()} cores, "
              + (f"in-process LocalCluster with {args.local_cluster} threads" if args.local_cluster else "threaded scheduler"))
        base = min(times[args.concurrency[0]])
        for conc in args.concurrency:
            best = min(times[conc])
            print(f"  concurrency {conc:2d}: {best:6.2f} s (best of {len(times[conc])})  speed-up x{base / best:.2f}")
        print("every store equal to the first")


if __name__ == "__main__":
    main()
