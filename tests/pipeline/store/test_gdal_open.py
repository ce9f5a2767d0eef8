"""Every store the pipeline writes opens in GDAL (the GDAL 3.10 inside the pinned rasterio,
as QGIS would) with its CRS, geotransform and a nodata value that is never a valid value.

The stores are the real pipeline's: the cube, LSI and risk stages run on the tiny seeded
region (``tests/tinyregion.py``, 128 × 128 px in EPSG:32648) with a small untrained U-Net,
and ``slidewatch prepare``'s chip store from a GeoTIFF written here. GDAL (through
rasterio) is the independent reader; xarray must read the same stores as before, with the
fill values masked.
"""

from __future__ import annotations

import shutil
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from pipeline.core.classes import CLASS_CODES, NODATA_CLASS
from pipeline.core.config import CubeConfig, TimeWindow, ZoneGrid
from pipeline.core.layout import ZARR_FORMAT, fill_value, store_format
from pipeline.core.quality import QUALITY_NODATA, QualityFlag
from pipeline.store.tiles import TileStore, open_parent_group, template, write_tiles
from tests.tinyregion import GRID as TINY_GRID
from tests.tinyregion import FakeSource, make_tiny_region, tiny_checkpoint, tiny_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))
CLASS_LAYERS = ("risk_class", "susceptibility_class")


def gdal_open(store: Path, variable: str, group: str | None = None) -> rasterio.DatasetReader:
    """One variable of a store through GDAL's Zarr driver, as ``docs/zarr.md`` tells QGIS users."""
    inner = f"/{group}/{variable}" if group else f"/{variable}"
    return rasterio.open(f'ZARR:"{store}":{inner}')


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # type: ignore[no-untyped-def]
    """cube → LSI → risk on the tiny region with the real stages (one zone, utm48n)."""
    pytest.importorskip("torch")
    from flows import stages
    from pipeline.rain.events import resolve_rain

    root = tmp_path_factory.mktemp("gdal")
    source = FakeSource(make_tiny_region(root / "cogs"))
    region = tiny_region("tiny")
    result = stages.cube_stage(region, WINDOW, FakeSource.url, root / "out", CubeConfig(), chunk=32, source=source)
    rain = resolve_rain(None, None, None, region.bbox, WINDOW)  # R_m = 1: hazard = susceptibility
    stages.lsi_stage(result, rain)
    ckpt = tiny_checkpoint(result.zones[0].lsi_path, root / "model.safetensors")
    stages.risk_stage(result, rain, ckpt, tile=32, uncertainty=False)
    # thresholds at the terciles of this untrained model's output, so that every class occurs
    sus = xr.open_zarr(result.run_dir / "risk.zarr", group="utm48n", consolidated=False)["susceptibility"].values
    t1, t2 = (float(v) for v in np.nanquantile(sus, [1 / 3, 2 / 3]))
    stages.risk_stage(result, rain, ckpt, tile=32, uncertainty=False, thresholds=(t1, t2))
    return result


def _stores(run) -> list[tuple[Path, str | None]]:  # type: ignore[no-untyped-def]
    zone = run.zones[0]
    return [(zone.cube_path, None), (zone.lsi_path, None), (run.run_dir / "risk.zarr", "utm48n")]


def _grid_transform(run) -> tuple[float, ...]:  # type: ignore[no-untyped-def]
    return tuple(run.zones[0].grid.transform)


def test_every_store_is_in_the_format_gdal_reads(run) -> None:  # type: ignore[no-untyped-def]
    for store, group in _stores(run):
        assert store_format(store / group if group else store) == ZARR_FORMAT, store
    assert store_format(run.run_dir / "risk.zarr") == ZARR_FORMAT, "the mosaic's root group"


def test_gdal_opens_every_layer_with_crs_transform_and_nodata(run) -> None:  # type: ignore[no-untyped-def]
    transform = _grid_transform(run)
    seen = 0
    for store, group in _stores(run):
        ds = xr.open_zarr(store, group=group, decode_coords="all", consolidated=False, mask_and_scale=False)
        for name, var in ds.data_vars.items():
            if var.dims != ("y", "x"):
                continue
            with gdal_open(store, str(name), group) as src:
                assert src.crs is not None and src.crs.to_epsg() == 32648, (store, name)
                assert tuple(src.transform)[:6] == pytest.approx(transform), (store, name)
                assert src.shape == TINY_GRID.shape
                expected = fill_value(var.dtype)
                if np.isnan(expected):
                    assert src.nodata is not None and np.isnan(src.nodata), (store, name, src.nodata)
                else:
                    assert src.nodata == expected, (store, name, src.nodata)
                got = src.read(1)
            np.testing.assert_array_equal(got, var.values, err_msg=f"{store} {name}")
            seen += 1
    assert seen >= 20


def test_no_valid_class_or_flag_is_nodata_in_gdal(run) -> None:  # type: ignore[no-untyped-def]
    """The issue: with fill 0, GDAL hid every "low" pixel (98 % of the demo's classes)."""
    layers = [(run.zones[0].lsi_path, None, "risk_class"), (run.zones[0].lsi_path, None, "quality")]
    layers += [(run.run_dir / "risk.zarr", "utm48n", n) for n in (*CLASS_LAYERS, "quality")]
    for store, group, name in layers:
        with gdal_open(store, name, group) as src:
            values = src.read(1)
            masked = src.read(1, masked=True)
            nodata = src.nodata
        valid = values != nodata
        assert nodata not in CLASS_CODES and nodata != int(QualityFlag.OK), (name, nodata)
        assert not np.ma.getmaskarray(masked)[valid].any(), f"{name}: valid pixels hidden as nodata"
        if "class" in name:
            assert set(np.unique(values)) <= {*CLASS_CODES, NODATA_CLASS}, name
            assert (values == 0).any(), f"{name}: the test needs low-class pixels"
        else:
            assert (values == int(QualityFlag.OK)).any() and not (values == QUALITY_NODATA).any(), name


def test_xarray_opens_the_stores_as_before_with_the_fills_masked(run) -> None:  # type: ignore[no-untyped-def]
    for store, group in _stores(run):
        ds = xr.open_zarr(store, group=group, decode_coords="all", consolidated=False)
        assert ds.rio.crs.to_epsg() == 32648 and tuple(ds.rio.transform())[:6] == pytest.approx(_grid_transform(run))
        raw = xr.open_zarr(store, group=group, consolidated=False, mask_and_scale=False)
        for name, var in raw.data_vars.items():
            if var.dtype.kind == "u":  # CF decoding masks the fill: NaN exactly there, codes elsewhere
                dec = ds[name].values
                codes = var.values
                assert np.array_equal(np.isnan(dec), codes == fill_value(var.dtype)), (store, name)
                np.testing.assert_array_equal(dec[~np.isnan(dec)], codes[codes != fill_value(var.dtype)])


def test_one_array_folder_alone_carries_its_crs(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``_CRS`` beside the CF attributes: the folder of one array, copied away from its
    ``spatial_ref``, still tells GDAL its CRS."""
    alone = tmp_path / "risk_class"
    shutil.copytree(run.run_dir / "risk.zarr" / "utm48n" / "risk_class", alone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # no x/y arrays there: no transform
        with rasterio.open(f'ZARR:"{alone}"') as src:
            assert src.crs is not None and src.crs.to_epsg() == 32648


def test_a_missing_chunk_reads_as_nodata_not_as_low(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "risk.zarr"
    shutil.copytree(run.run_dir / "risk.zarr", store)
    chunk = store / "utm48n" / "risk_class" / "0.0"
    assert chunk.is_file()
    chunk.unlink()
    with gdal_open(store, "risk_class", "utm48n") as src:
        masked = src.read(1, masked=True)
    assert np.ma.getmaskarray(masked)[:32, :32].all()
    ds = xr.open_zarr(store, group="utm48n", consolidated=False)
    assert np.isnan(ds["risk_class"].values[:32, :32]).all()


def test_chip_store_opens_in_gdal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.acquire.rasters import prepare_chip_store

    tif = tmp_path / "chip.tif"
    tr = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    rng = np.random.default_rng(0)
    with rasterio.open(tif, "w", driver="GTiff", width=40, height=30, count=2, dtype="float32", crs="EPSG:32633",
                       transform=tr, nodata=-9999.0) as dst:
        dst.write(rng.uniform(0.0, 0.5, (2, 30, 40)).astype("float32"))
        dst.descriptions = ("B04", "B08")
    out = prepare_chip_store([tif], tmp_path / "chips.zarr", channels=["B04", "B08", "ndvi"])
    assert store_format(out.path) == ZARR_FORMAT
    with gdal_open(out.path, "ndvi", "chip") as src:
        assert src.crs.to_epsg() == 32633 and tuple(src.transform)[:6] == pytest.approx(tuple(tr)[:6])
        assert np.isnan(src.nodata)


GRID = ZoneGrid(epsg=32648, x0=320000.0, y1=3309440.0, width=64, height=64, chunk=32)


def _tile(tile):  # type: ignore[no-untyped-def]
    from pipeline.store.tiles import grid_coords

    sub = GRID.subgrid(tile)
    return xr.Dataset({"n": (("y", "x"), np.zeros(sub.shape, "uint8"))}, coords=grid_coords(sub))


def test_an_old_v3_store_is_rebuilt_not_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A store an older version finished in Zarr v3 (which GDAL 3.10 cannot open) is not
    complete for this version: it is rebuilt and replaced, and a v3 root group becomes one
    of this format keeping its attributes."""
    path = tmp_path / "old.zarr"
    old = xr.Dataset({"n": (("y", "x"), np.zeros((64, 64), "uint8"))},
                     attrs={"slidewatch_fingerprint": "fp", "slidewatch_complete": True})
    old.to_zarr(path, zarr_format=3, consolidated=False)
    store = TileStore(path, "fp")
    assert not store.is_complete() and store.outdated_format() == 3
    store.prepare(template(GRID, {"n": "uint8"}), {})
    write_tiles(store, GRID, GRID.tiles(1), _tile)
    store.finalize()
    assert store.is_complete() and store.outdated_format() is None and store_format(path) == ZARR_FORMAT
    with gdal_open(path, "n") as src:
        assert src.nodata == NODATA_CLASS and (src.read(1) == 0).all()

    root = tmp_path / "risk.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=3).attrs["region"] = "r"
    group = open_parent_group(root)
    assert store_format(root) == ZARR_FORMAT and dict(group.attrs) == {"region": "r"}


def test_has_data_counts_zero_as_data_and_the_fill_as_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = TileStore(tmp_path / "s.zarr", "fp")
    store.prepare(template(GRID, {"n": "uint8"}), {})
    assert not store.has_data("n")  # nothing written: all fill
    store.write_tile(GRID.tiles(1)[0], _tile(GRID.tiles(1)[0]))  # zeros: valid values (class low, count 0)
    assert store.has_data("n")
    assert not store.has_data("n", lambda count: count > 0)
