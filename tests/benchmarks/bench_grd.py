"""Geocoding Sentinel-1 GRD in radar geometry (pipeline.acquire.sar_geocode) against GDAL's GCP warper.

    python tests/benchmarks/bench_grd.py [--size 1024] [--chunk 512]

A script: prints, asserts nothing. One simulated IW scene (tests/sar_scene.py: spherical-Earth
SAR geometry over a 700 m hill, GCPs only) is put onto a ``--size``² grid at 10 m, side by side
in one run, each on one core:

1. ``grd_stack`` with the DEM (the cube's path): dask, synchronous scheduler, ``--chunk`` chunks;
2. the same without the DEM (GCP reference surface only);
3. GDAL: ``rasterio.warp.reproject`` of the whole scene with its GCPs (``SRC_METHOD=GCP_TPS``,
   bilinear), one call, what ``gdalwarp -tps`` does;
4. stackstac reading the GDAL result written as a projected COG (what an RTC item costs).

Printed: Mpx/s of output per core, ratios against GDAL's warp, and the median / 99th percentile
error (DN) against the simulation's ground truth, which shows what the terrain shift buys.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.core.config import ZoneGrid  # noqa: E402
from pipeline.acquire.sar_geocode import grd_stack  # noqa: E402
from tests import sar_scene as sim  # noqa: E402


def _timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()
    n = args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tif = root / "grd.tif"
        info = sim.simulate(tif, "descending", rows=int(n * 1.6), half_cols=int(n * 0.9) + 150)
        item = sim.grd_item(Path(__file__).resolve().parents[3] / "shared" / "fixtures", tif, info, "sim", "2024-07-05") \
            if (Path(__file__).resolve().parents[3] / "shared" / "fixtures" / sim.GRD_ITEM).exists() else None
        if item is None:
            print("../shared/fixtures not found: the GRD item template is needed", file=sys.stderr)
            sys.exit(1)
        x0, y1 = sim.CENTRE[0] - 5 * n, sim.CENTRE[1] + 5 * n
        from pyproj import Transformer

        tf = Transformer.from_crs(sim.EPSG, 4326, always_xy=True)
        grid = ZoneGrid(epsg=sim.EPSG, x0=x0, y1=y1, width=n, height=n, resolution=10.0, chunk=args.chunk,
                        lonlat_bounds=tuple(tf.transform_bounds(x0, y1 - 10 * n, x0 + 10 * n, y1)))
        x = x0 + 10 * (np.arange(n) + 0.5)
        y = y1 - 10 * (np.arange(n) + 0.5)
        xx, yy = np.meshgrid(x, y)
        truth = sim.pattern(xx, yy)
        import xarray as xr

        dem = xr.DataArray(dask.array.from_array(sim.terrain(xx, yy).astype("float32"), chunks=args.chunk), dims=("y", "x"))
        rows = []
        with dask.config.set(scheduler="synchronous"):
            grd_stack([item], "vv", grid, dem)[0, :64, :64].compute()  # warm imports and caches
            ours, t_ours = _timed(lambda: grd_stack([item], "vv", grid, dem)[0].compute())
            flat, t_flat = _timed(lambda: grd_stack([item], "vv", grid, None)[0].compute())
        rows.append(("slidewatch, DEM terrain shift", t_ours, ours))
        rows.append(("slidewatch, GCP surface only", t_flat, flat))

        def gdal() -> np.ndarray:
            out = np.full((n, n), np.nan, dtype="float32")
            with rasterio.open(tif) as src:
                gcps, crs = src.gcps
                reproject(rasterio.band(src, 1), out, gcps=gcps, src_crs=crs, dst_transform=Affine(10, 0, x0, 0, -10, y1),
                          dst_crs=f"EPSG:{sim.EPSG}", resampling=Resampling.bilinear, src_nodata=0, dst_nodata=np.nan,
                          SRC_METHOD="GCP_TPS", num_threads=1)
            return out

        ref, t_gdal = _timed(gdal)
        rows.append(("GDAL reproject, GCP_TPS", t_gdal, ref))
        cog = root / "projected.tif"
        with rasterio.open(cog, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", tiled=True,
                           crs=f"EPSG:{sim.EPSG}", transform=Affine(10, 0, x0, 0, -10, y1), nodata=np.nan) as dst:
            dst.write(ref, 1)
        import stackstac

        item_dict = {"type": "Feature", "stac_version": "1.0.0", "id": "p", "geometry": None, "bbox": list(grid.lonlat_bounds),
                     "properties": {"datetime": "2024-07-05T00:00:00Z", "proj:epsg": sim.EPSG,
                                    "proj:transform": [10, 0, x0, 0, -10, y1], "proj:shape": [n, n]},
                     "assets": {"vv": {"href": str(cog), "type": "image/tiff"}}, "links": []}
        with dask.config.set(scheduler="synchronous"):
            arr = stackstac.stack([item_dict], assets=["vv"], epsg=sim.EPSG, resolution=10, bounds=grid.bounds,
                                  chunksize=args.chunk, dtype="float32", fill_value=np.float32(np.nan), rescale=False)
            st, t_st = _timed(lambda: arr[0, 0].values)
        rows.append(("stackstac, projected COG (RTC-like)", t_st, st))
        mpx = n * n / 1e6
        print(f"GRD geocoding, {n}x{n} px at 10 m, chunks {args.chunk}, one core each (descending IW scene, 700 m hill)")
        print(f"{'path':38s} {'s':>7s} {'Mpx/s':>7s} {'vs GDAL':>8s} {'median err':>11s} {'p99 err':>8s}")
        for name, t, arr_ in rows:
            err = np.abs(np.asarray(arr_, dtype="float64") - truth)
            print(f"{name:38s} {t:7.2f} {mpx / t:7.2f} {t_gdal / t:7.2f}x {np.nanmedian(err):11.1f} {np.nanpercentile(err, 99):8.1f}")
        print("(errors in DN of a pattern of amplitude 900; GDAL and 'GCP surface only' ignore the terrain)")


if __name__ == "__main__":
    main()
