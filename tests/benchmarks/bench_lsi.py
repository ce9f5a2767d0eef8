"""Benchmark: LSI from stored factors (Zarr, lazy, dask) vs eager numpy on in-memory arrays.

Run: ``python tests/benchmarks/bench_lsi.py [--size 4096] [--chunk 512] [--repeat 3]``

Prints, measured side by side in one run (machines are noisy; no timing assertions):

* LSI only: dask (read factor Zarr + fused kernel) vs numpy eager formula;
* full LSI output (lsi + 6 contributions + quality) vs numpy eager of the same;
* task counts per chunk: LSI graph from stored factors, and the whole
  cube → factors (slope, indices, SMI, quality) → LSI graph, raw and optimised.
"""

from __future__ import annotations

import argparse
import warnings
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.factors.lsi import FACTORS, LsiParams, compute_factors, landslide_susceptibility, normalisation_ranges  # noqa: E402


def make_cube(n: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
    coords = {"y": 5_000_000 - 5 - 10.0 * np.arange(n), "x": 500_005 + 10.0 * np.arange(n)}

    def mk(a):
        return xr.DataArray(a.astype(np.float32), dims=("y", "x"), coords=coords)

    ds = xr.Dataset({"dem": mk(900 + 300 * np.sin(xx / 200) * np.cos(yy / 170) + rng.normal(0, 1, (n, n)))})
    for band, (lo, hi) in {"B03": (0.03, 0.15), "B04": (0.02, 0.2), "B08": (0.1, 0.5), "B11": (0.05, 0.35)}.items():
        ds[band] = mk(rng.uniform(lo, hi, (n, n)))
    vv = rng.uniform(-17, -6, (n, n)).astype(np.float32)
    vv[:, : n // 5] = np.nan
    ds["vv"] = mk(vv)
    ds["vv_dry"] = mk(np.full((n, n), -16.0))
    ds["vv_wet"] = mk(np.full((n, n), -7.0))
    return ds


def numpy_lsi(arrs: dict[str, np.ndarray], ranges, p: LsiParams, rm: float, full: bool):
    """The same formula, written the plain numpy way (what a notebook would do)."""
    w = p.weights
    s = 0
    contribs = {}
    for f in FACTORS:
        lo, hi = ranges[f]
        x = np.clip((arrs[f] - lo) / (hi - lo), 0, 1)
        c = w[f] * x
        if full:
            contribs[f] = c
        s = s + c
    lsi = 1 / (1 + np.exp(-p.steepness * (rm * s - p.centre)))
    if full:
        nan = np.zeros(lsi.shape, bool)
        for f in FACTORS:
            nan |= np.isnan(arrs[f])
        q = np.where(nan, 8, 0).astype(np.uint8)
        return lsi, contribs, q
    return lsi


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def graph_tasks(arrays) -> int:
    g = {}
    for a in arrays:
        g.update(dict(a.__dask_graph__()))
    return len(g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Consolidated metadata")
    n, ch = args.size, args.chunk
    params, rm = LsiParams(), 1.3
    print(f"grid {n}x{n} float32 ({n * n / 1e6:.1f} Mpx), chunks {ch}x{ch}, dask {dask.__version__}, "
          f"threads scheduler, best of {args.repeat}")

    mpx = n * n / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cube = make_cube(n).chunk({"y": ch, "x": ch})
        factors = compute_factors(cube)
        stores = {}
        for sc in (ch, 2 * ch):
            stores[sc] = Path(tmp) / f"factors-{sc}.zarr"
            factors.chunk({"y": sc, "x": sc}).to_zarr(stores[sc], mode="w")
        print(f"setup: factors computed and written to Zarr (chunks {ch} and {2 * ch}) in {time.perf_counter() - t:.1f} s")

        stored = xr.open_zarr(stores[ch])
        ranges = normalisation_ranges(stored)
        mem = {f: stored[f].values for f in FACTORS}  # the same arrays, in memory, for numpy
        in_memory = xr.Dataset({f: xr.DataArray(mem[f], dims=("y", "x")) for f in FACTORS}).chunk({"y": ch, "x": ch})
        nchunks = stored["slope"].data.npartitions

        def from_store(sc, full):
            out = landslide_susceptibility(xr.open_zarr(stores[sc]), ranges, params, rm)
            return dask.compute(*[out[v].data for v in (out.data_vars if full else ["lsi"])])

        def from_memory(full):
            out = landslide_susceptibility(in_memory, ranges, params, rm)
            return dask.compute(*[out[v].data for v in (out.data_vars if full else ["lsi"])])

        def read_only(sc):
            z = xr.open_zarr(stores[sc])
            return dask.compute(*[z[f].data for f in FACTORS])

        # correctness check before timing
        np.testing.assert_allclose(from_store(ch, False)[0], numpy_lsi(mem, ranges, params, rm, False), atol=1e-5)

        for full in (False, True):
            t_np = best(lambda: numpy_lsi(mem, ranges, params, rm, full), args.repeat)
            rows = [("numpy eager, in-memory arrays", t_np),
                    (f"dask, same arrays in memory ({ch}^2)", best(lambda: from_memory(full), args.repeat))]
            for sc in stores:
                rows.append((f"dask, from factor Zarr ({sc}^2 chunks)", best(lambda: from_store(sc, full), args.repeat)))
            print()
            print(("LSI only" if not full else "LSI + 6 contributions + quality").ljust(44) + "time (s)   Mpx/s   vs numpy")
            for label, tt in rows:
                print(f"  {label:<42s}{tt:8.3f} {mpx / tt:7.1f} {t_np / tt:8.2f}x")
        print()
        print("for reference: reading the 6 stored factors alone (Zarr v3, default zstd)")
        for sc in stores:
            tt = best(lambda: read_only(sc), args.repeat)
            print(f"  {f'{sc}^2 chunks':<42s}{tt:8.3f} {mpx / tt:7.1f}")

        out = landslide_susceptibility(stored, ranges, params, rm)
        lsi_arrays = [out[v].data for v in out.data_vars]
        print()
        print(f"task counts per chunk ({nchunks} chunks of {ch}^2)")
        print(f"  LSI only, from stored factors        {graph_tasks([out.lsi.data]) / nchunks:6.2f}")
        print(f"  LSI dataset, from stored factors     {graph_tasks(lsi_arrays) / nchunks:6.2f}"
              f"   optimised {graph_tasks(dask.optimize(*lsi_arrays)) / nchunks:6.2f}")
        cube.to_zarr(Path(tmp) / "cube.zarr", mode="w")
        cz = xr.open_zarr(Path(tmp) / "cube.zarr")
        fz = compute_factors(cz)
        whole = landslide_susceptibility(fz, ranges, params, rm)
        arrays = [whole[v].data for v in whole.data_vars] + [fz["quality"].data]
        reads = graph_tasks([cz[v].data for v in cz.data_vars])
        print(f"  cube Zarr reads alone (9 variables)  {reads / nchunks:6.2f}")
        print(f"  cube -> factors -> LSI, all outputs  {graph_tasks(arrays) / nchunks:6.2f}"
              f"   optimised {graph_tasks(dask.optimize(*arrays)) / nchunks:6.2f}")


if __name__ == "__main__":
    main()
