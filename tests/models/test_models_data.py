"""Data: cube reading, inventory rasterisation, blocked split, chips, normalisation."""

from __future__ import annotations

import json
import sqlite3
import struct
import warnings

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from models.data import (
    IGNORE,
    ChipSampler,
    Grid,
    augment_batch,
    block_split,
    compute_norm_stats,
    normalise,
    open_cube,
    rasterize_inventory,
    read_polygons,
)
from models_testdata import CRS as UTM
from models_testdata import grid_transform, write_factor_cube, write_geojson
from pipeline.core.errors import InputDataError
from models_testdata import torch_threads  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_threads")

GRID = Grid(CRS.from_string(UTM), grid_transform(), (40, 50))


def _poly():
    t = GRID.transform
    # a lopsided polygon spanning pixel boundaries
    pts = [t @ (5.3, 4.2), t @ (30.7, 6.1), t @ (25.2, 31.9), t @ (8.4, 22.6)]
    return shapely.Polygon(pts)


def _reference(poly):
    return rasterio.features.rasterize(
        [(poly, 1)], out_shape=GRID.shape, transform=GRID.transform, dtype=np.uint8
    )


def test_geojson_in_wgs84_is_reprojected_and_matches_rasterio(tmp_path):
    poly = _poly()
    path = write_geojson(tmp_path / "inv.geojson", [poly], to_crs="EPSG:4326")
    got = rasterize_inventory(path, GRID)
    ref = _reference(poly)
    assert got.dtype == np.uint8 and got.shape == GRID.shape
    assert ref.sum() > 200
    # lon/lat round trip moves vertices by micrometres: allow a pixel or two on the edge
    assert np.sum(got != ref) <= 2


def test_geojson_in_grid_crs_matches_exactly_and_hand_count(tmp_path):
    t = GRID.transform
    square = shapely.box(*(t @ (10, 20)), *(t @ (20, 10)))  # 10 × 10 pixels exactly
    path = write_geojson(tmp_path / "inv.geojson", [square, _poly()], to_crs=UTM)
    got = rasterize_inventory(path, GRID)
    assert np.array_equal(got, np.maximum(_reference(square), _reference(_poly())))
    assert _reference(square).sum() == 100
    assert got[10:20, 10:20].all()


def _write_gpkg(path, polys, epsg):
    """A GeoPackage written by hand (spec 1.4 tables and blob header), not through GDAL."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA application_id = 1196444487")  # 'GPKG'
    con.execute("PRAGMA user_version = 10400")
    con.executescript(
        """
        CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY,
            organization TEXT, organization_coordsys_id INTEGER, definition TEXT, description TEXT);
        CREATE TABLE gpkg_contents (table_name TEXT PRIMARY KEY, data_type TEXT, identifier TEXT,
            description TEXT DEFAULT '', last_change DATETIME, min_x DOUBLE, min_y DOUBLE,
            max_x DOUBLE, max_y DOUBLE, srs_id INTEGER);
        CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT,
            geometry_type_name TEXT, srs_id INTEGER, z INTEGER, m INTEGER);
        CREATE TABLE slides (fid INTEGER PRIMARY KEY AUTOINCREMENT, geom BLOB, name TEXT);
        """
    )
    con.execute(
        "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, 'EPSG', ?, ?, '')",
        (f"EPSG:{epsg}", epsg, epsg, CRS.from_epsg(epsg).to_wkt()),
    )
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id) "
        "VALUES ('slides', 'features', 'slides', ?)",
        (epsg,),
    )
    con.execute("INSERT INTO gpkg_geometry_columns VALUES ('slides', 'geom', 'POLYGON', ?, 0, 0)", (epsg,))
    for i, p in enumerate(polys):
        blob = b"GP" + bytes([0, 0b00000011]) + struct.pack("<i", epsg)
        blob += struct.pack("<4d", *(p.bounds[0], p.bounds[2], p.bounds[1], p.bounds[3]))
        blob += shapely.to_wkb(p)
        con.execute("INSERT INTO slides (geom, name) VALUES (?, ?)", (blob, f"slide {i}"))
    con.commit()
    con.close()
    return path


def test_geopackage_polygons(tmp_path):
    from pyproj import Transformer

    poly = _poly()
    tr = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    ll = shapely.transform(poly, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    path = _write_gpkg(tmp_path / "inv.gpkg", [ll], 4326)
    got = rasterize_inventory(path, GRID)
    assert np.sum(got != _reference(poly)) <= 2


def test_geopackage_layers_crs_and_bad_files(tmp_path):
    t = GRID.transform
    square = shapely.box(*(t @ (10, 20)), *(t @ (20, 10)))
    path = _write_gpkg(tmp_path / "utm.gpkg", [square, shapely.Polygon()], 32633)
    con = sqlite3.connect(path)
    # an attribute-only table never counts as the inventory
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, txt TEXT)")
    con.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier) VALUES ('notes', 'attributes', 'notes')")
    con.commit()
    con.close()
    got = read_polygons(path, GRID.crs)  # same CRS: no reprojection; the empty polygon is dropped
    assert [label for label, _ in got] == ["feature fid=1 of layer 'slides'"]
    assert got[0][1].equals(square)
    assert np.array_equal(rasterize_inventory(path, GRID, layer="slides"), _reference(square))
    with pytest.raises(InputDataError, match=r"has no layer 'notes'.*Fix: pick one of its feature layers \['slides'\]"):
        read_polygons(path, layer="notes")
    con = sqlite3.connect(path)
    con.execute("INSERT INTO slides (geom, name) VALUES (NULL, 'lost')")
    con.commit()
    con.close()
    with pytest.raises(InputDataError, match=r"feature fid=3 of layer 'slides' in .*utm.gpkg has no geometry.*Fix:"):
        read_polygons(path)
    for srs_id in (0, -1, 777):  # the spec's undefined geographic / Cartesian SRS; a missing one
        bad = _write_gpkg(tmp_path / f"srs{srs_id}.gpkg", [square], 32633)
        con = sqlite3.connect(bad)
        con.execute("UPDATE gpkg_geometry_columns SET srs_id = ?", (srs_id,))
        if srs_id != 777:
            con.execute("INSERT INTO gpkg_spatial_ref_sys VALUES ('u', ?, 'NONE', ?, 'undefined', '')", (srs_id, srs_id))
        con.commit()
        con.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GDAL: "unable to read srs_id '777'"
            with pytest.raises(InputDataError, match=r"srs.*\.gpkg: layer 'slides' has no defined CRS.*Fix:"):
                read_polygons(bad)
    (tmp_path / "text.gpkg").write_text("not a database")
    with pytest.raises(InputDataError, match=r"text\.gpkg is not a GeoPackage.*Fix:"):
        rasterize_inventory(tmp_path / "text.gpkg", GRID)
    plain = sqlite3.connect(tmp_path / "plain.gpkg")
    plain.execute("CREATE TABLE a (x INTEGER)")
    plain.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # GDAL: "bad application_id"
        with pytest.raises(InputDataError, match=r"plain\.gpkg is not a GeoPackage"):
            read_polygons(tmp_path / "plain.gpkg")


def test_invalid_geometry_names_the_feature(tmp_path):
    t = GRID.transform
    bowtie = shapely.Polygon([t @ (0, 0), t @ (10, 10), t @ (10, 0), t @ (0, 10)])
    path = write_geojson(
        tmp_path / "bad.geojson", [_poly(), bowtie], to_crs=UTM, props=[{"id": "ok"}, {"id": "bow-tie"}]
    )
    with pytest.raises(InputDataError, match=r"feature #1 \(id='bow-tie'\).*invalid polygon.*Self-intersection"):
        rasterize_inventory(path, GRID)
    line = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "road"}, "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}
    (tmp_path / "line.geojson").write_text(json.dumps(line))
    with pytest.raises(InputDataError, match="name='road'.*LineString"):
        read_polygons(tmp_path / "line.geojson")
    with pytest.raises(InputDataError, match="unsupported inventory format"):
        (tmp_path / "inv.shp").write_text("")
        rasterize_inventory(tmp_path / "inv.shp", GRID)


def test_mask_geotiff_same_grid_and_shifted_grid(tmp_path):
    mask = np.zeros(GRID.shape, np.uint8)
    mask[5:15, 5:25] = 1
    mask[0, 0] = 9  # nodata
    profile = dict(driver="GTiff", width=50, height=40, count=1, dtype="uint8", crs=UTM,
                   transform=GRID.transform, nodata=9)
    with rasterio.open(tmp_path / "same.tif", "w", **profile) as dst:
        dst.write(mask, 1)
    got = rasterize_inventory(tmp_path / "same.tif", GRID)
    assert got[0, 0] == IGNORE and got[5:15, 5:25].all() and got.sum() == 200 + IGNORE
    # a mask on a grid shifted by 3 columns and 2 rows: nearest alignment, IGNORE outside
    shifted = rasterio.Affine.translation(30, -20) @ GRID.transform
    with rasterio.open(tmp_path / "shift.tif", "w", **{**profile, "transform": shifted}) as dst:
        dst.write(mask, 1)
    got = rasterize_inventory(tmp_path / "shift.tif", GRID)
    assert got[7:17, 8:28].all() and np.count_nonzero(got == 1) == 200
    assert (got[:2] == IGNORE).all() and (got[:, :3] == IGNORE).all()


def test_open_cube_and_errors(tmp_path):
    path, mask, _ = write_factor_cube(tmp_path / "c.zarr", size=32, n_landslides=2)
    x, grid, ch = open_cube(path)
    assert x.shape == (7, 32, 32) and x.dtype == np.float32
    assert grid.crs == CRS.from_string(UTM) and grid.transform == grid_transform()
    x2, _, ch2 = open_cube(path, ["lsi", "slope"])
    assert ch2 == ("lsi", "slope") and np.array_equal(x2[0], x[6])
    with pytest.raises(InputDataError, match=r"lacks variable\(s\) \['twi'\]"):
        open_cube(path, ["slope", "twi"])
    with pytest.raises(InputDataError, match="does not exist"):
        open_cube(tmp_path / "nope.zarr")


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    block=st.integers(8, 128),
    seed=st.integers(0, 2**31),
)
def test_blocked_split_never_shares_a_block_or_pixel(h, w, block, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((h, w)) < 0.01).astype(np.uint8)
    s = block_split((h, w), block, (0.6, 0.2, 0.2), seed, positives=labels)
    masks = {k: s.mask(k) for k in ("train", "val", "test")}
    assert not (masks["train"] & masks["test"]).any()
    assert not (masks["train"] & masks["val"]).any()
    assert not (masks["val"] & masks["test"]).any()
    assert (masks["train"] | masks["val"] | masks["test"]).all()
    n = s.grid_shape[0] * s.grid_shape[1]
    counts = [len(s.blocks(k)) for k in ("train", "val", "test")]
    assert sum(counts) == n
    if n >= 3:
        assert min(counts) >= 1
    assert s == type(s).from_json(json.loads(json.dumps(s.to_json())))
    assert block_split((h, w), block, seed=seed, positives=labels) == s  # seeded


def test_stratified_split_spreads_landslide_blocks():
    labels = np.zeros((400, 400), np.uint8)
    labels[::40, ::40] = 1  # every 40×40 block in the top-left 200×200 has a landslide
    labels[200:] = 0
    labels[:, 200:] = 0
    s = block_split(labels.shape, 40, (0.6, 0.2, 0.2), seed=3, positives=labels)
    with_ls = [np.any(labels[b.r0:b.r1, b.c0:b.c1] == 1) for b in s.blocks("test")]
    assert sum(with_ls) == 5  # 25 landslide blocks × 0.2


def test_chip_sampler_stays_in_training_blocks_and_oversamples():
    h = w = 96
    s = block_split((h, w), 32, (0.6, 0.2, 0.2), seed=1)
    code = np.zeros((h, w), np.float32)
    for k, name in enumerate(("train", "val", "test")):
        code[s.mask(name)] = 10 + k
    y = np.zeros((h, w), np.uint8)
    y[s.mask("train")] = (np.random.default_rng(0).random(np.count_nonzero(s.mask("train"))) < 0.002)
    y[s.mask("test")] = 1  # tempting, but must never be sampled
    sampler = ChipSampler(code[None], y, s, "train", chip_size=24, positive_fraction=0.7, seed=0)
    xb, yb = sampler.sample(200)
    assert set(np.unique(xb)) <= {0.0, 10.0}
    assert (yb[xb[:, 0] == 0] == IGNORE).all()
    frac_with = np.mean([(c == 1).any() for c in yb])
    assert frac_with > 0.6
    # bigger chips than blocks are padded, still inside their block
    big = ChipSampler(code[None], y, s, "train", chip_size=40, positive_fraction=0.5, seed=0)
    xb, yb = big.sample(30)
    assert set(np.unique(xb)) <= {0.0, 10.0}


def test_augment_is_a_joint_dihedral_transform():
    rng = np.random.default_rng(0)
    x = rng.random((8, 2, 6, 6)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.uint8)
    xa, ya = augment_batch(x, y, rng)
    assert np.array_equal((xa[:, 0] > 0.5).astype(np.uint8), ya)
    assert not np.array_equal(xa, x)


def test_normalisation_is_nan_aware():
    x = np.array([[[1.0, np.nan], [3.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]], np.float32)
    mask = np.array([[True, True], [True, False]])
    stats = compute_norm_stats(x, mask)
    assert stats.mean == pytest.approx((2.0, 2.0)) and stats.std == pytest.approx((1.0, 1.0))
    out = normalise(x, stats)
    assert out[0, 0, 1] == 0.0 and out[0, 1, 1] == pytest.approx(3.0)
    assert np.isfinite(out).all() and out.dtype == np.float32
