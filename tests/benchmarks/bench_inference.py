"""Chunked U-Net inference (pipeline.predict.inference) vs a bare forward pass of the same model.

    python tests/benchmarks/bench_inference.py [--quick] [--sizes 512 1024] [--width 16]
        [--depth 3] [--tile 576] [--chunk 512] [--batch 2] [--threads 2] [--cold]

A script: prints, asserts nothing. The model is a real ``models.networks.EnhancedUNet``
(random weights, seeded) wrapped in ``models.predictor.Predictor``.

1. *Bare*: the Predictor called on random batches of ``--batch`` tiles of ``--tile``²
   pixels (the full shape the chunked path feeds it), timed in each subprocess right
   before and after its chunked run (their mean is that run's reference: the machines
   are shared and noisy, so each ratio compares runs seconds apart).
2. *Chunked*: for each size, a fresh subprocess opens a synthetic 7-channel float32 Zarr
   (chunks ``--chunk``, written beforehand chunk by chunk) lazily (``chunks=None``, so
   each task reads its own window; ``--dask-source`` opens it with dask chunks), creates
   the output store (``to_zarr(compute=False)``, untimed: a run creates its store once per
   zone), computes the chunks' writes on dask's synchronous scheduler (torch uses the
   threads) and reports wall time (after one warm-up call on the full tile shape, as for
   the bare pass, one on each edge-tile shape of the grid, at most three more, and a tiny
   Zarr read and write, which start zarr's event loop and codec pipeline: the
   once-per-process cost a long run pays on its first tiles, about 0.3 s, a fifth of the
   512² run; ``--cold`` skips the latter two), the inference counters and its own peak RSS
   (``VmHWM``, plus RSS sampled from outside). Printed per size: output Mpx/s, processed
   Mpx/s (every pixel the model saw: overlap and edge padding included), and the issue-18
   figures with their goals: output px/s / bare (goal >= 0.7), processed px/s / bare
   (goal >= 0.9), overlap factor = processed px / output px (goal <= 1.3), and peak RSS
   (goal: flat when the region grows 4x). ``--tile`` defaults to the library's
   ``INFERENCE_TILE``; the bare reference always runs the chunked path's full tile shape.

The subprocesses run with ``MALLOC_MMAP_THRESHOLD_=65536`` (``--glibc-default`` drops it):
torch's CPU activations for the few distinct batch shapes otherwise stay in glibc's
heap once its dynamic mmap threshold has risen, adding a few hundred MB that plateau
once every shape has been seen (measured: 2048² peak 1.23 GB vs 0.70 GB for 1024²
without it; a numpy-only predictor over 2048² and 4096² peaks at 255 and 261 MB).
The region sides default to 512 (one tile: the fixed costs of one chunk), 1024 (four
tiles, three of them edge tiles of odd shapes) and 2048 (interior tiles batched in
pairs, as in a large area): about 2 minutes on 2 idle cores. The bare pass is timed
``--repeats`` times before and after each chunked run (median of each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHANNELS = ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi")
MEANS = (20.0, 800.0, 0.5, -0.3, 0.4, -0.1, 0.4)
STDS = (10.0, 200.0, 0.2, 0.1, 0.1, 0.1, 0.2)


def build_predictor(width: int, depth: int, batch: int):
    """A seeded, random-weight EnhancedUNet in a Predictor (CUDA when present)."""
    import torch

    from models.checkpoint import CheckpointMetadata
    from models.data import NormStats
    from models.networks import EnhancedUNet
    from models.predictor import Predictor

    torch.manual_seed(0)
    model = EnhancedUNet(CHANNELS, base_width=width, depth=depth)
    meta = CheckpointMetadata(architecture="EnhancedUNet", hyperparameters=model.config(),
                              channels=CHANNELS, normalisation=NormStats(MEANS, STDS))
    return Predictor(model, meta, device="auto", batch_size=batch)


def write_region(path: Path, size: int, chunk: int) -> None:
    """A synthetic factor Zarr (7 float32 channels, no NaN), written chunk by chunk."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    rs = da.random.RandomState(0)
    data = {c: (rs.standard_normal((size, size), chunks=chunk) * s + m).astype(np.float32)
            for c, m, s in zip(CHANNELS, MEANS, STDS)}
    ds = xr.Dataset({c: (("y", "x"), v) for c, v in data.items()},
                    coords={"y": 5e6 - 10.0 * (np.arange(size) + 0.5), "x": 5e5 + 10.0 * (np.arange(size) + 0.5)})
    ds.to_zarr(path, mode="w", consolidated=False)


def bare(pred, tile: int, batch: int, repeats: int, warm: bool = True) -> float:
    """Median Mpx/s of the Predictor on (batch, 7, tile, tile) raw inputs."""
    import numpy as np

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((batch, len(CHANNELS), tile, tile)) * np.asarray(STDS)[:, None, None]
         + np.asarray(MEANS)[:, None, None]).astype(np.float32)
    if warm:
        pred(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred(x)
        times.append(time.perf_counter() - t0)
    return batch * tile * tile / statistics.median(times) / 1e6


def _vm_hwm_kb() -> int:
    """This process's own peak RSS (VmHWM, kB); ru_maxrss would inherit the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(args) -> None:
    """One chunked run in a fresh process; prints one JSON line."""
    import dask
    import numpy as np
    import psutil
    import torch
    import xarray as xr

    from pipeline.predict.inference import PredictionStats, make_plan, predict_dataset

    torch.set_num_threads(args.threads)
    pred = build_predictor(args.width, args.depth, args.batch)
    # zarr-backed and lazily indexed (no dask chunks): each task reads its own window
    ds = xr.open_zarr(args.store, consolidated=False, chunks=None if not args.dask_source else {})
    pred(np.zeros((args.batch, len(CHANNELS), args.tile, args.tile), np.float32))  # warm-up, as for bare
    if not args.cold:  # and one call per edge-tile shape of the grid: a long run's first tiles
        plan = make_plan(pred, args.tile)
        n = int(ds.sizes["y"])
        sides = {-(-min(plan.tile, n - int(o)) // plan.size_multiple) * plan.size_multiple
                 for o in plan.origins(n)}
        for h in sides:
            for w in sides:
                if (h, w) != (args.tile, args.tile):
                    pred(np.zeros((1, len(CHANNELS), h, w), np.float32))
    if not args.cold:  # and the Zarr path once (a tiny read and write): its first use in a
        # process starts zarr's event loop and codec pipeline, a fixed cost paid once per run
        ds[list(CHANNELS)].isel(y=slice(0, 8), x=slice(0, 8)).load()
        xr.Dataset({"w": (("y", "x"), np.zeros((8, 8), np.float32))}).chunk(8).to_zarr(
            Path(args.out).with_suffix(".warm.zarr"), mode="w", consolidated=False)
    rss0 = psutil.Process().memory_info().rss
    # the bare pass of this process, right before and after: the machines are shared and
    # noisy, so each ratio compares runs a few seconds apart
    bare_before = bare(pred, args.tile, args.batch, args.repeats, warm=False)
    stats = PredictionStats()
    prob = predict_dataset(ds, pred, tile=args.tile, batch_size=args.batch, stats=stats)
    # the output store's metadata and coordinates first, untimed (a run creates its store once per
    # zone, then writes regions into it), then the chunks: read, run, blend and write
    writes = prob.to_dataset().to_zarr(args.out, mode="w", consolidated=False, compute=False)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        writes.compute()
    wall = time.perf_counter() - t0
    bare_after = bare(pred, args.tile, args.batch, args.repeats, warm=False)
    print(json.dumps({"wall_s": wall, "rss_after_setup_kb": rss0 // 1024, "peak_kb": _vm_hwm_kb(),
                      "bare_mpx_s": [bare_before, bare_after], "stats": stats.as_dict()}))


def run_child(args, size: int, store: Path, out: Path) -> dict:
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--store", str(store), "--out", str(out),
           "--width", str(args.width), "--depth", str(args.depth), "--tile", str(args.tile),
           "--batch", str(args.batch), "--threads", str(args.threads)] + (["--dask-source"] if args.dask_source else []) \
        + (["--cold"] if args.cold else [])
    sampled = 0
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        env = dict(os.environ)
        if not args.glibc_default:
            env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, cwd=ROOT, env=env)
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
        raise RuntimeError(f"child for size {size} failed ({proc.returncode}):\n{stderr[-4000:]}")
    info = json.loads(stdout.strip().splitlines()[-1])
    info["sampled_peak_kb"] = sampled // 1024
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 256 and 512, width 8, depth 3, tile 128")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="region sides (default 512 1024 2048)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tile", type=int, default=None, help="inference tile (default INFERENCE_TILE)")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2,
                    help="tiles per model call, chunked and bare (on CPU px/s hardly depends on it; 2 "
                         "keeps the run near 3 minutes at tile 576)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dask-source", action="store_true",
                    help="open the region with dask chunks (tasks share source blocks) instead of chunks=None")
    ap.add_argument("--glibc-default", action="store_true",
                    help="keep glibc's dynamic mmap threshold in the subprocesses (see the docstring)")
    ap.add_argument("--cold", action="store_true",
                    help="warm the chunked run up on the full tile shape only, not on the grid's edge-tile "
                         "shapes (shows the first-call cost of each new shape, paid once per process)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.width, args.depth, args.tile, args.chunk = 8, 3, 128, 256
        args.sizes = args.sizes or [256, 512]
    sizes = args.sizes or [512, 1024, 2048]

    import torch

    from pipeline.core.config import INFERENCE_TILE
    from pipeline.predict.inference import make_plan

    if args.tile is None:
        args.tile = INFERENCE_TILE

    torch.set_num_threads(args.threads)
    pred = build_predictor(args.width, args.depth, args.batch)
    plan = make_plan(pred, args.tile)
    print(f"torch {torch.__version__}, device {pred.device}, {torch.get_num_threads()} torch threads; "
          f"EnhancedUNet width {args.width} depth {args.depth} (halo {pred.halo}, size_multiple "
          f"{pred.size_multiple}); tile {plan.tile}, overlap {plan.overlap}, margin {plan.margin}, "
          f"batch {args.batch}; chunks {args.chunk}; dask synchronous scheduler; source Zarr opened "
          f"{'with dask chunks' if args.dask_source else 'lazily (chunks=None)'}; subprocess "
          f"{'glibc default malloc' if args.glibc_default else 'MALLOC_MMAP_THRESHOLD_=65536'}")

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as td:
        tmp = Path(td)
        stores = {}
        for n in sizes:
            stores[n] = tmp / f"region{n}.zarr"
            write_region(stores[n], n, args.chunk)
        for n in sizes:
            results[n] = run_child(args, n, stores[n], tmp / f"prob{n}.zarr")
    print(f"\n(a) bare Predictor on {args.batch}x7x{plan.tile}x{plan.tile} batches, in each subprocess right "
          "before and after its chunked run (their mean is that run's reference)")
    print("(b,c) chunked predict_dataset -> to_zarr, one fresh subprocess per size")
    print(f"{'region':>11} {'bare Mpx/s':>16} {'wall s':>7} {'out Mpx/s':>10} {'proc Mpx/s':>11} {'overlap':>8} "
          f"{'model %':>8} {'in-model/bare':>14} {'calls':>6} {'tiles':>6} {'RSS setup':>10} {'peak RSS':>9} {'sampled':>8}")
    figures = {}
    for n, r in results.items():
        s = r["stats"]
        b0, b1 = r["bare_mpx_s"]
        ref = (b0 + b1) / 2
        out_mpx = s["pixels_output"] / r["wall_s"] / 1e6
        proc_mpx = s["pixels_processed"] / r["wall_s"] / 1e6
        overlap = s["pixels_processed"] / s["pixels_output"]
        figures[n] = (out_mpx / ref, proc_mpx / ref, overlap)
        print(f"{f'{n}x{n}':>11} {f'{b0:.3f}/{b1:.3f}':>16} {r['wall_s']:7.1f} {out_mpx:10.3f} {proc_mpx:11.3f} "
              f"{overlap:8.2f} {100 * s['model_seconds'] / r['wall_s']:7.1f}% "
              f"{s['pixels_processed'] / s['model_seconds'] / 1e6 / ref:14.2f} {s['model_calls']:6d} {s['tiles_run']:6d} "
              f"{r['rss_after_setup_kb'] / 1024:8.0f}MB {r['peak_kb'] / 1024:7.0f}MB {r['sampled_peak_kb'] / 1024:6.0f}MB")
    if len(results) >= 2:
        a, b = sizes[0], sizes[-1]
        print(f"\npeak RSS {b}x{b} / {a}x{a} ({(b / a) ** 2:.0f}x the pixels): "
              f"{results[b]['peak_kb'] / results[a]['peak_kb']:.2f}x (goal: flat)")
    print("overlap = pixels the model processed per output pixel; model % = share of wall time inside "
          "the predictor; in-model/bare = the predictor's own speed on the chunked path's batches (edge "
          "shapes, balanced batch sizes) vs bare")
    print(f"\nissue 18 figures (tile {plan.tile}, overlap {plan.overlap}; each ratio against the bare pass of "
          "the same subprocess)")
    print(f"{'region':>11} {'figure':<42} {'measured':>9} {'goal':>8}  ok")
    for n, (out_ratio, proc_ratio, overlap) in figures.items():
        rows = [("output px/s / bare forward pass", out_ratio, ">= 0.7", out_ratio >= 0.7),
                ("processed px/s / bare forward pass", proc_ratio, ">= 0.9", proc_ratio >= 0.9),
                ("overlap factor (model px per output px)", overlap, "<= 1.3", overlap <= 1.3)]
        for name, value, goal, ok in rows:
            print(f"{f'{n}x{n}':>11} {name:<42} {value:9.2f} {goal:>8}  {'yes' if ok else 'NO'}")

if __name__ == "__main__":
    main()
