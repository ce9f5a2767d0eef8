"""Label conventions (issue 16): 0/1/2 masks, polygon classes, unlabelled areas, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models_testdata import (
    CRS,
    grid_transform,
    landslide_polygons,
    torch_threads,  # noqa: F401  (fixture)
    write_factor_cube,
    write_geojson,
    write_mask_tif,
)
from rasterio.crs import CRS as RioCRS
from typer.testing import CliRunner

from flows.cli import app
from models.checkpoint import read_metadata
from models.data import IGNORE, Grid, rasterize_inventory
from models.labels import (
    MASK_DEFAULT,
    LabelValues,
    labels_from_provenance,
    parse_label_values,
)
from models.training import TrainConfig, prepare_data
from pipeline.core.errors import InputDataError

runner = CliRunner()
TINY = ["--epochs", "1", "--width", "4", "--depth", "2", "--chip-size", "64", "--block-size", "64",
        "--batch-size", "8", "--chips-per-epoch", "16", "--device", "cpu", "--threads", "1", "--no-progress"]
GRID = Grid(RioCRS.from_user_input(CRS), grid_transform(), (40, 50))


def test_parse_label_values_round_trip_and_errors():
    lv = parse_label_values("positive=2,negative=1,ignore=0")
    assert lv == LabelValues(positive=(2,), negative=(1,), ignore=(0,))
    assert lv.code_of(2) == 1 and lv.code_of("2.0") == 1 and lv.code_of(1) == 0 and lv.code_of(0) == IGNORE
    assert lv.code_of(3) is None
    assert parse_label_values(lv.to_string()) == lv
    many = parse_label_values("positive=Landslide|debris flow, negative=stable, outside=ignore")
    assert many.code_of("landslide") == 1 and many.code_of("Debris Flow") == 1 and many.outside == "ignore"
    assert parse_label_values(None) == MASK_DEFAULT == LabelValues(("1",), ("0",), (), "negative")
    assert LabelValues.from_json(lv.to_json()) == lv
    with pytest.raises(InputDataError, match="both positive and negative"):
        parse_label_values("positive=1,negative=1")
    with pytest.raises(InputDataError, match="cannot read 'two'"):
        parse_label_values("positive=2,two")
    with pytest.raises(InputDataError, match="no positive"):
        parse_label_values("negative=1")
    with pytest.raises(InputDataError, match="outside"):
        parse_label_values("positive=1,outside=maybe")
    with pytest.raises(InputDataError, match="--outside says negative"):
        parse_label_values("positive=1,outside=ignore", outside="negative")


def _mask_012(size: int = 40) -> np.ndarray:
    m = np.zeros((size, 50), np.uint8)  # 0 unlabelled
    m[:, 10:] = 1  # mapped, not a landslide
    m[5:15, 20:30] = 2  # landslide
    return m


def test_mask_012_maps_by_convention_and_default_refuses_other_values(tmp_path):
    mask = _mask_012()
    path = write_mask_tif(tmp_path / "m.tif", mask, GRID.transform, CRS)
    got = rasterize_inventory(path, GRID, labels=parse_label_values("positive=2,negative=1,ignore=0"))
    assert (got[mask == 2] == 1).all() and (got[mask == 1] == 0).all() and (got[mask == 0] == IGNORE).all()
    # the default convention (0 negative, 1 positive) no longer turns 2 into a landslide silently
    with pytest.raises(InputDataError, match=r"label value\(s\) 2 .*--label-values") as err:
        rasterize_inventory(path, GRID)
    assert "\n" not in str(err.value)
    # a 0/1 mask with nodata keeps today's meaning under the default
    m01 = (mask == 2).astype(np.uint8)
    m01[0, 0] = 9
    got = rasterize_inventory(write_mask_tif(tmp_path / "m01.tif", m01, GRID.transform, CRS, nodata=9), GRID)
    assert got[0, 0] == IGNORE and (got[5:15, 20:30] == 1).all() and np.count_nonzero(got == 1) == 100
    with pytest.raises(InputDataError, match="--label-field class names a polygon attribute"):
        rasterize_inventory(path, GRID, label_field="class")


def test_polygon_class_attribute_and_unlabelled_outside(tmp_path):
    polys = landslide_polygons(40, n=3, seed=1)
    props = [{"id": 0, "class": "landslide"}, {"id": 1, "class": "stable"}, {"id": 2, "class": "uncertain"}]
    path = write_geojson(tmp_path / "inv.geojson", polys, to_crs=None, props=props)
    plain = rasterize_inventory(path, GRID)  # no field: every polygon a landslide, outside negative (as before)
    lv = parse_label_values("positive=landslide,negative=stable,ignore=uncertain,outside=ignore")
    got = rasterize_inventory(path, GRID, labels=lv, label_field="class")
    one = [rasterize_inventory(write_geojson(tmp_path / f"p{i}.geojson", [p], to_crs=None), GRID) == 1
           for i, p in enumerate(polys)]
    assert (got[one[0]] == 1).all()  # where polygons overlap, positive > ignore > negative
    assert (got[one[1] & ~one[0] & ~one[2]] == 0).all() and (one[1] & ~one[0] & ~one[2]).any()
    assert (got[one[2] & ~one[0]] == IGNORE).all()
    assert (got[~(one[0] | one[1] | one[2])] == IGNORE).all()  # outside = unlabelled
    assert np.count_nonzero(plain == 1) == np.count_nonzero(one[0] | one[1] | one[2])
    with pytest.raises(InputDataError, match=r"'uncertain'|uncertain.*--label-values"):
        rasterize_inventory(path, GRID, labels=parse_label_values("positive=landslide,negative=stable"),
                            label_field="class")
    with pytest.raises(InputDataError, match="no feature .* has the attribute 'kind'"):
        rasterize_inventory(path, GRID, labels=lv, label_field="kind")


@pytest.fixture(scope="module")
def cube_and_mask(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    cube, slides, _ = write_factor_cube(d / "cube.zarr", size=256, seed=3, n_landslides=24)
    mask = np.where(slides == 1, 2, 1).astype(np.uint8)
    mask[:, :40] = 0  # unlabelled strip
    path = write_mask_tif(d / "mask012.tif", mask, grid_transform(), CRS)
    return d, cube, path, mask


def test_prepare_data_feeds_2_as_positive_1_as_negative_0_as_ignore(cube_and_mask):
    _, cube, path, mask = cube_and_mask
    cfg = TrainConfig(label_values="positive=2,negative=1,ignore=0", block_size=64, chip_size=64)
    data = prepare_data(cube, path, cfg)
    assert (data.y[mask == 2] == 1).all()
    assert (data.y[mask == 1] == 0).all()
    assert (data.y[mask == 0] == IGNORE).all()
    assert data.provenance["labels"]["kind"] == "mask"
    assert data.provenance["labels"]["values"] == {"positive": ["2"], "negative": ["1"], "ignore": ["0"],
                                                   "outside": "negative"}
    with pytest.raises(InputDataError, match="label value"):
        prepare_data(cube, path, TrainConfig(block_size=64, chip_size=64))


@pytest.mark.usefixtures("torch_threads")
def test_train_cli_from_a_012_mask(cube_and_mask, monkeypatch):
    from models import training

    d, cube, path, mask = cube_and_mask
    seen: list[np.ndarray] = []
    original = training._to_torch

    def spy(xb, yb, device):
        seen.append(np.array(yb))
        return original(xb, yb, device)

    monkeypatch.setattr(training, "_to_torch", spy)
    res = runner.invoke(app, ["train", "--cube", str(cube), "--inventory", str(path), "--out", str(d / "m"),
                              "--label-values", "positive=2,negative=1,ignore=0", *TINY])
    assert res.exit_code == 0, res.output
    fed = np.concatenate([s.ravel() for s in seen])
    assert set(np.unique(fed)) <= {0, 1, IGNORE} and {0, 1, IGNORE} <= set(np.unique(fed))
    meta = read_metadata(d / "m" / "model.safetensors")
    assert sum(meta.provenance["landslide_pixels"].values()) == np.count_nonzero(mask == 2)
    lv, field = labels_from_provenance(meta.provenance["labels"])
    assert lv == parse_label_values("positive=2,negative=1,ignore=0") and field is None
    assert json.loads(json.dumps(meta.provenance["labels"]))["text"] == "positive=2,negative=1,ignore=0"
    # without the flag: one line naming the values and the flag, exit 2, nothing written
    res = runner.invoke(app, ["train", "--cube", str(cube), "--inventory", str(path), "--out", str(d / "m2"), *TINY])
    assert res.exit_code == 2 and "2" in res.output and "--label-values" in res.output
    assert not (d / "m2" / "model.safetensors").exists()


def test_geopackage_class_column(tmp_path):
    import pyogrio.raw
    import shapely

    polys = landslide_polygons(40, n=2, seed=2)
    path = tmp_path / "inv.gpkg"
    pyogrio.raw.write(path, np.array([shapely.to_wkb(p) for p in polys], dtype=object),
                      field_data=[np.array([2, 1], dtype=np.int32)], fields=["cls"], crs=CRS,
                      driver="GPKG", geometry_type="Polygon", layer="slides")
    lv = parse_label_values("positive=2,negative=1")
    got = rasterize_inventory(path, GRID, labels=lv, label_field="cls")
    first = rasterize_inventory(write_geojson(tmp_path / "p0.geojson", polys[:1], to_crs=None), GRID) == 1
    assert (got[first] == 1).all() and np.count_nonzero(got == 1) == np.count_nonzero(first)
    with pytest.raises(InputDataError, match="has no attribute 'class'; it has \\['cls'\\]"):
        rasterize_inventory(path, GRID, labels=lv, label_field="class")
    with pytest.raises(InputDataError, match=r"label value\(s\) 1 "):
        rasterize_inventory(path, GRID, labels=parse_label_values("positive=2"), label_field="cls")
