"""Bring your own rasters (issue 16): `slidewatch prepare` on a folder of chips in two CRSs,
then `slidewatch train --cube <chip store>` with per-chip 0/1/2 masks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from models_testdata import CHIP_BANDS, torch_threads, write_chip_folder  # noqa: F401  (fixture)
from typer.testing import CliRunner

from flows.cli import app
from models.checkpoint import read_metadata
from models.data import CHIP_GUTTER, IGNORE, label_store, open_cube, open_store
from models.labels import parse_label_values
from pipeline.core.errors import InputDataError
from pipeline.core.layout import ZARR_FORMAT

runner = CliRunner()
TINY = ["--epochs", "1", "--width", "4", "--depth", "2", "--chip-size", "64", "--batch-size", "8",
        "--chips-per-epoch", "16", "--device", "cpu", "--threads", "1", "--no-progress"]
LABELS = ["--label-values", "positive=2,negative=1,ignore=0"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("byo")
    chips, masks, truth = write_chip_folder(d, seed=0)
    res = runner.invoke(app, ["prepare", str(chips), "--out", str(d / "store.zarr")])
    assert res.exit_code == 0, res.output
    return d, chips, masks, truth, d / "store.zarr"


def test_prepare_writes_one_group_per_chip_with_its_crs(prepared):
    _, _, _, truth, store = prepared
    import zarr

    root = zarr.open_group(str(store), mode="r")
    assert root.metadata.zarr_format == ZARR_FORMAT
    attrs = dict(root.attrs)
    assert attrs["slidewatch_store"] == "chips"
    assert attrs["channels"] == ["B02", "B03", "B04", "B08", "dem", "ndvi", "ndwi", "slope"]
    assert [c["name"] for c in attrs["chips"]] == sorted(truth)
    crs = {c["name"]: c["crs"] for c in attrs["chips"]}
    assert crs["hongya_a"] == "EPSG:32648" and crs["alps_b"] == "EPSG:32633"
    ds = xr.open_zarr(store, group="alps_a", decode_coords="all", consolidated=False)
    assert ds.rio.crs.to_epsg() == 32633 and ds.rio.resolution() == (20.0, -20.0)
    assert ds["B04"].dims == ("y", "x") and ds["ndvi"].attrs["units"] == "1"
    np.testing.assert_array_equal(ds["B04"].values, truth["alps_a"][0][2])
    with pytest.raises(InputDataError, match="chip store"):
        open_cube(store, ["B04"])


def test_store_lays_chips_side_by_side_with_nan_gutters(prepared):
    _, _, masks, truth, store = prepared
    s = open_store(store, ["B02", "B03", "B04", "B08"])
    assert s.chips is not None and s.chips.cell == 80 + CHIP_GUTTER and s.shape == (112, 4 * 112)
    y = label_store(s, masks, labels=parse_label_values("positive=2,negative=1,ignore=0"))
    for i, name in enumerate(s.chips.names):
        r0, r1, c0, c1 = s.chips.window(i)
        bands, mask = truth[name]
        np.testing.assert_array_equal(s.x[:, r0:r1, c0:c1], bands[:4])
        expect = np.select([mask == 2, mask == 1], [1, 0], IGNORE)
        np.testing.assert_array_equal(y[r0:r1, c0:c1], expect)
        assert np.isnan(s.x[:, r1:, c0:c1]).all() and np.isnan(s.x[:, :, c1 : c0 + s.chips.cell]).all()
    gutter = np.all(np.isnan(s.x), axis=0)
    assert (y[gutter] == IGNORE).all()


@pytest.mark.usefixtures("torch_threads")
def test_train_four_channel_model_from_the_chip_store(prepared):
    d, _, masks, truth, store = prepared
    out = d / "model"
    res = runner.invoke(app, ["train", "--cube", str(store), "--inventory", str(masks), "--out", str(out),
                              "--channels", "B02,B03,b4,NDVI", *LABELS, *TINY])
    assert res.exit_code == 0, res.output
    meta = read_metadata(out / "model.safetensors")
    assert meta.channels == ("B02", "B03", "B04", "ndvi")
    prov = meta.provenance
    assert prov["grid"]["kind"] == "chips" and prov["split"]["block_size"] == 112
    assert [c["name"] for c in prov["chips"]["chips"]] == sorted(truth)
    assert {c["crs"] for c in prov["chips"]["chips"]} == {"EPSG:32648", "EPSG:32633"}
    assert sum(prov["landslide_pixels"].values()) == sum(int((m == 2).sum()) for _, m in truth.values())
    assert prov["labels"]["kind"] == "mask folder"
    assert sorted(v for row in prov["split"]["assignment"] for v in row) == [0, 0, 1, 2]


def test_train_refuses_channels_the_store_lacks_before_any_work(prepared):
    d, _, masks, _, store = prepared
    res = runner.invoke(app, ["train", "--cube", str(store), "--inventory", str(masks), "--out", str(d / "no"),
                              "--channels", "B02,B11,ndbi", *LABELS, *TINY])
    assert res.exit_code == 2
    assert "lacks channel(s) B11, ndbi" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (d / "no").exists()
    # a chip without a mask is named, not silently unlabelled
    (masks / "alps_b.tif").rename(masks / "elsewhere.tif")
    try:
        res = runner.invoke(app, ["train", "--cube", str(store), "--inventory", str(masks), "--out", str(d / "no"),
                                  "--channels", "B02", *LABELS, *TINY])
        assert res.exit_code == 2 and "no mask" in res.output and "alps_b" in res.output
    finally:
        (masks / "elsewhere.tif").rename(masks / "alps_b.tif")


def test_prepare_with_bands_mapping_channels_and_polygon_inventory(tmp_path):
    """Chips without band descriptions need --bands; polygons are burnt per chip in its CRS."""
    import json

    import shapely
    from pyproj import Transformer

    chips, _, _ = write_chip_folder(tmp_path, seed=1, describe=False)
    res = runner.invoke(app, ["prepare", str(chips), "--out", str(tmp_path / "s.zarr")])
    assert res.exit_code == 2 and "--bands" in res.output
    res = runner.invoke(app, ["prepare", str(chips), "--out", str(tmp_path / "s.zarr"),
                              "--bands", ",".join(CHIP_BANDS), "--channels", "NDVI,NDWI,slope,dem"])
    assert res.exit_code == 0, res.output
    s = open_store(tmp_path / "s.zarr")
    assert s.channels == ("ndvi", "ndwi", "slope", "dem")
    res = runner.invoke(app, ["prepare", str(chips), "--out", str(tmp_path / "s.zarr"), "--bands", ",".join(CHIP_BANDS)])
    assert res.exit_code == 2 and "already exists" in res.output
    # one polygon over a known pixel block of chip hongya_a, in lon/lat
    g = s.chips.grids[s.chips.names.index("hongya_a")]
    x0, y0 = g.transform @ (10, 10)
    x1, y1 = g.transform @ (20, 20)
    tr = Transformer.from_crs(g.crs.to_string(), "EPSG:4326", always_xy=True)
    poly = shapely.transform(shapely.box(x0, y1, x1, y0), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    inv = tmp_path / "inv.geojson"
    inv.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": 1}, "geometry": shapely.geometry.mapping(poly)}]}))
    y = label_store(s, inv)
    i = s.chips.names.index("hongya_a")
    r0, r1, c0, c1 = s.chips.window(i)
    assert 90 <= np.count_nonzero(y[r0:r1, c0:c1] == 1) <= 110 and np.count_nonzero(y == 1) == np.count_nonzero(
        y[r0:r1, c0:c1] == 1)
    assert (y[r0:r1, c0:c1] != IGNORE).all()  # outside the polygon: negative (the default)
