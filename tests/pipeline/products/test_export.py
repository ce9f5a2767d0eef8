"""Run exports: COGs of a risk zone and its STAC item (pipeline/products/cog.py, pipeline/products/stac_item.py);
the whole catalog (collection, model item, offline schema validation) is tested in test_stac_catalog.py.

Small synthetic risk zones (300 x 257 px at 10 m, EPSG:32648, NaN holes and 255 classes)
are built in each test; references are hand-written grids, numpy and pyproj.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate

import pipeline.products.cog as export
from pipeline.core.config import TimeWindow
from pipeline.core.errors import InputDataError, StoreError, TimeWindowError
from pipeline.products.cog import write_cogs
from pipeline.products.stac_item import InputRef, export_run, input_refs, write_item, zone_item

H, W, RES = 257, 300, 10.0
X0, Y1 = 320000.0, 3309440.0
SHA = "0123456789abcdef" * 4


def make_zone(
    *, epsg: int = 32648, x0: float = X0, y1: float = Y1, seed: int = 3, chunks: tuple[int, int] | None = (100, 90),
    class_as_float: bool = False,
) -> xr.Dataset:
    """A risk-mosaic zone group: probability with NaN holes, classes with 255 there."""
    rng = np.random.default_rng(seed)
    prob = rng.random((H, W)).astype(np.float32)
    prob[:37, :53] = np.nan  # a no-data corner
    prob[200:, 250:] = np.nan  # another, reaching the edges
    prob[rng.random((H, W)) < 0.02] = np.nan  # scattered holes
    prob[0, -1] = 0.0
    prob[-1, 0] = 1.0
    cls = np.digitize(prob, [1 / 3, 2 / 3]).astype(np.uint8)
    cls[np.isnan(prob)] = 255
    quality = np.where(np.isnan(prob), 64, 0).astype(np.uint8)
    cls_data = np.where(cls == 255, np.nan, cls).astype(np.float32) if class_as_float else cls
    ds = xr.Dataset(
        {
            "probability": (("y", "x"), prob, {"long_name": "landslide probability", "units": "1"}),
            "risk_class": (("y", "x"), cls_data, {"long_name": "landslide risk class", "units": "1",
                                                  "flag_values": [0, 1, 2], "flag_meanings": "low medium high"}),
            "lsi": (("y", "x"), np.nan_to_num(prob, nan=0.5), {"long_name": "landslide susceptibility index", "units": "1"}),
            "quality": (("y", "x"), quality, {"long_name": "pixel quality flags (bit field)", "units": "1"}),
        },
        coords={"x": x0 + (np.arange(W) + 0.5) * RES, "y": y1 - (np.arange(H) + 0.5) * RES},
        attrs={
            "region": "Test Valley", "time_window": "2024-07-01/2024-08-31",
            "input_items": {"sentinel-2-l2a": ["S2_0", "S2_1"], "cop-dem-glo-30": ["DEM_0"]},
            "checkpoint_sha256": SHA, "model": {"architecture": "enhanced-unet", "in_channels": 7},
            "rain_intensity_mm_h": 12.5, "rain_duration_days": 2.0, "rain_multiplier": 1.75,
            "slidewatch_version": "0.1.0", "slidewatch_complete": True,
        },
    )
    ds = ds.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(Affine(RES, 0, x0, 0, -RES, y1)).rio.write_coordinate_system()
    if chunks is not None:
        ds = ds.chunk({"y": chunks[0], "x": chunks[1]})
    return ds


def _class_ref(ds: xr.Dataset) -> np.ndarray:
    c = np.asarray(ds["risk_class"].values)
    return np.where(np.isnan(c), 255, c).astype(np.uint8) if c.dtype.kind == "f" else c


def _rio_validate(path: Path, *, subprocess_cli: bool) -> None:
    """``rio cogeo validate --strict``: the installed entry point in a subprocess (slow to start,
    so used once per COG kind), else the same click command in-process."""
    rio = Path(sys.executable).parent / "rio"
    if subprocess_cli and rio.exists():
        res = subprocess.run([str(rio), "cogeo", "validate", "--strict", str(path)], capture_output=True, text=True)
        out, code = res.stdout + res.stderr, res.returncode
    else:
        from click.testing import CliRunner
        from rio_cogeo.scripts.cli import cogeo

        res = CliRunner().invoke(cogeo, ["validate", "--strict", str(path)])
        out, code = res.output, res.exit_code
    assert code == 0, out
    assert "is a valid cloud optimized GeoTIFF" in out


def test_cogs_are_valid_and_round_trip(tmp_path):
    ds = make_zone()
    paths = write_cogs(ds, tmp_path / "exports", "utm48n", blocksize=64)
    assert {k: p.name for k, p in paths.items()} == {
        "probability": "risk_utm48n_probability.tif", "class": "risk_utm48n_class.tif",
        "lsi": "risk_utm48n_lsi.tif", "quality": "risk_utm48n_quality.tif",  # every layer of the zone
        "probability_style": "risk_utm48n_probability.qml", "class_style": "risk_utm48n_class.qml",
        "lsi_style": "risk_utm48n_lsi.qml"}
    assert all(p.parent == tmp_path / "exports" for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == sorted(p.name for p in paths.values())
    for kind, p in ((k, p) for k, p in paths.items() if p.suffix == ".tif"):
        valid, errors, warns = cog_validate(p, strict=True, quiet=True)
        assert valid and not errors and not warns, (errors, warns)
        _rio_validate(p, subprocess_cli=kind == "probability")

    prob_ref = ds["probability"].values
    with rasterio.open(paths["probability"]) as src:
        assert src.dtypes == ("float32",) and np.isnan(src.nodata)
        assert src.crs == rasterio.crs.CRS.from_epsg(32648)
        assert src.transform == Affine(10.0, 0.0, 320000.0, 0.0, -10.0, 3309440.0)
        assert (src.height, src.width) == (257, 300)
        assert (src.block_shapes[0]) == (64, 64)
        assert src.overviews(1) == [2, 4]  # 300x257 halved while >= one 64-px tile
        assert src.compression.name.lower() == "deflate"
        got = src.read(1)
        np.testing.assert_array_equal(got, prob_ref)  # NaN positions included
        assert np.array_equal(np.isnan(got), np.isnan(prob_ref)) and np.isnan(got).sum() > 2000
        assert "probability" in src.descriptions[0]
        tags = src.tags(1)
        ov = src.read(1, out_shape=(H // 4, W // 4))  # served from the overview
        assert np.isfinite(ov).any() and np.nanmax(ov) <= 1.0
    assert float(tags["STATISTICS_MINIMUM"]) == pytest.approx(float(np.nanmin(prob_ref)))
    assert float(tags["STATISTICS_MAXIMUM"]) == pytest.approx(float(np.nanmax(prob_ref)))
    assert float(tags["STATISTICS_MEAN"]) == pytest.approx(float(np.nanmean(prob_ref.astype(np.float64))), rel=1e-9)
    assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(float(np.nanstd(prob_ref.astype(np.float64))), rel=1e-6)
    assert float(tags["STATISTICS_VALID_PERCENT"]) == pytest.approx(100 * np.isfinite(prob_ref).mean())

    cls_ref = _class_ref(ds)
    with rasterio.open(paths["class"]) as src:
        assert src.dtypes == ("uint8",) and src.nodata == 255
        assert src.crs.to_epsg() == 32648 and src.transform == Affine(10.0, 0.0, 320000.0, 0.0, -10.0, 3309440.0)
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(1), cls_ref)
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        cmap = src.colormap(1)
        assert "risk class" in src.descriptions[0]
        counts = json.loads(src.tags(1)["SLIDEWATCH_CLASS_COUNTS"])
    low, med, high = cmap[0], cmap[1], cmap[2]
    assert low[1] > 120 and low[1] > low[0] and low[1] > low[2]  # green
    assert med[0] > 200 and 100 < med[1] < 200 and med[2] < 100  # orange
    assert high[0] > 200 and high[1] < 80 and high[2] < 80  # red
    assert cmap[255][3] == 0  # no data transparent
    assert counts == {str(v): int((cls_ref == v).sum()) for v in (0, 1, 2, 255)}


def test_cog_from_numpy_with_default_blocks_and_float_classes(tmp_path, monkeypatch):
    """In-memory arrays, classes decoded to float/NaN (a _FillValue of 255), the 512 default
    and cog_translate's on-disk path (what large rasters take)."""
    monkeypatch.setattr(export, "IN_MEMORY_MAX_PIXELS", 0)
    ds = make_zone(chunks=None, class_as_float=True, seed=11)
    paths = write_cogs(ds, tmp_path, "utm48n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    with rasterio.open(paths["class"]) as src:
        assert src.block_shapes[0] == (512, 512) and src.overviews(1) == []  # smaller than one tile
        np.testing.assert_array_equal(src.read(1), _class_ref(ds))
        assert (src.read(1) == 255).sum() == np.isnan(ds["probability"].values).sum()
    with rasterio.open(paths["probability"]) as src:
        np.testing.assert_array_equal(src.read(1), ds["probability"].values)
    for p in (p for p in paths.values() if p.suffix == ".tif"):
        assert cog_validate(p, quiet=True)[0]
        _rio_validate(p, subprocess_cli=False)


def test_validator_is_not_vacuous(tmp_path):
    """A striped, overview-less 1100 x 1100 GeoTIFF must fail the same check."""
    p = tmp_path / "plain.tif"
    with rasterio.open(p, "w", driver="GTiff", width=1100, height=1100, count=1, dtype="uint8",
                       crs="EPSG:32648", transform=Affine(10, 0, X0, 0, -10, Y1)) as dst:
        dst.write(np.zeros((1100, 1100), np.uint8), 1)
    assert cog_validate(p, quiet=True)[0] is False


def test_bad_inputs_are_named(tmp_path):
    ds = make_zone(chunks=None)
    with pytest.raises(InputDataError, match="probability.*outside 0..1"):
        write_cogs(ds.assign(probability=ds["probability"] * 3), tmp_path, "utm48n")
    with pytest.raises(InputDataError, match="values other than 0, 1, 2, 255"):
        write_cogs(ds.assign(risk_class=ds["risk_class"].where(ds["risk_class"] != 2, 7)), tmp_path, "utm48n")
    with pytest.raises(InputDataError, match="no variable 'risk_class'"):
        write_cogs(ds.drop_vars("risk_class"), tmp_path, "utm48n")
    with pytest.raises(InputDataError, match="no CRS"):
        write_cogs(ds.drop_vars("spatial_ref"), tmp_path, "utm48n")
    assert not list(tmp_path.glob("risk_*"))


def _failing(ds: xr.Dataset, var: str) -> xr.Dataset:
    """``ds`` whose ``var`` raises when its last chunk is computed (a read failure mid-stream)."""
    def boom(block, block_info=None):
        loc = block_info[0]["chunk-location"]
        if loc == (2, 3):
            raise OSError("simulated read failure")
        return block
    arr = ds[var].data.map_blocks(boom, dtype=ds[var].dtype)
    return ds.assign({var: (("y", "x"), arr, ds[var].attrs)})


def test_failed_write_leaves_no_partial_file(tmp_path):
    out = tmp_path / "exports"
    ds = make_zone()
    with pytest.raises(StoreError, match=r"risk_utm48n_probability\.tif.*simulated read failure.*Fix: check that"):
        write_cogs(_failing(ds, "probability"), out, "utm48n", blocksize=64)
    assert list(out.iterdir()) == []  # neither final name nor temporaries

    good = write_cogs(ds, out, "utm48n", blocksize=64)
    before = {k: p.read_bytes() for k, p in good.items()}
    other = make_zone(seed=99)
    with pytest.raises(StoreError, match="risk_utm48n_class"):
        write_cogs(_failing(other, "risk_class"), out, "utm48n", blocksize=64)
    # the pair is replaced together or not at all: both files of the earlier export are untouched
    assert {k: p.read_bytes() for k, p in good.items()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in good.values())


def test_temporaries_of_a_killed_export_are_removed_by_the_next(tmp_path):
    stale = [tmp_path / ".risk_utm48n_class.tif.0123456789ab.gtiff.tif",
             tmp_path / ".risk_utm48n_probability.tif.ba9876543210.cog.tif"]
    for p in stale:
        p.write_bytes(b"half a file")
    unrelated = tmp_path / ".risk_utm47n_class.tif.0123456789ab.gtiff.tif"  # another zone's: left alone
    unrelated.write_bytes(b"x")
    written = write_cogs(make_zone(chunks=None), tmp_path, "utm48n", blocksize=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([unrelated.name, *(p.name for p in written.values())])


def test_invalid_cog_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "cog_validate", lambda *a, **k: (False, ["The file is not tiled"], []))
    with pytest.raises(StoreError, match="does not validate: The file is not tiled"):
        write_cogs(make_zone(chunks=None), tmp_path, "utm48n")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_store_error(tmp_path):
    blocker = tmp_path / "exports"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StoreError, match="export folder"):
        write_cogs(make_zone(chunks=None), blocker / "sub", "utm48n")


def _save_items(run: Path, zone: str, features: dict[str, list[tuple[str, str | None]]]) -> None:
    for coll, pairs in features.items():
        feats = []
        for iid, href in pairs:
            links = [{"rel": "self", "href": href, "type": "application/geo+json"}] if href else []
            feats.append({"type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": coll,
                          "geometry": None, "properties": {"datetime": "2024-07-04T03:35:00Z"}, "links": links,
                          "assets": {}})
        path = run / "items" / zone / f"{coll}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def _corners_lonlat(epsg: int, x0: float, y1: float) -> np.ndarray:
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    xs = [x0, x0 + W * RES, x0, x0 + W * RES, x0 + W * RES / 2]
    ys = [y1, y1, y1 - H * RES, y1 - H * RES, y1 - H * RES]
    return np.array(tr.transform(xs, ys)).T


def test_stac_item_single_zone(tmp_path):
    from shapely.geometry import Point, shape
    from stac_pydantic import Item as PydanticItem

    from pipeline.products.quicklook import write_quicklook

    run = tmp_path / "test-valley" / "20240701_20240831"
    ds = make_zone()
    cogs = write_cogs(ds, run / "exports", "utm48n", blocksize=64)
    png = write_quicklook(ds["probability"], run / "exports" / "risk_utm48n.png", classes=ds["risk_class"], title="t")
    base = "https://planetarycomputer.microsoft.com/api/stac/v1/collections"
    _save_items(run, "utm48n", {
        "sentinel-2-l2a": [("S2_0", f"{base}/sentinel-2-l2a/items/S2_0"), ("S2_1", f"{base}/sentinel-2-l2a/items/S2_1")],
        "cop-dem-glo-30": [("DEM_0", f"{base}/cop-dem-glo-30/items/DEM_0"), ("NOLINK", None)],
    })
    item = zone_item(run, "utm48n", ds, cogs=cogs, quicklook=png,
                     run_info={"alert": {"region": "Test Valley", "intensity_mm_h": 12.5}})
    path = write_item(item, run / "exports" / "items" / f"{item.id}.json")
    assert item.id == "slidewatch-risk-test-valley-20240701_20240831-utm48n"
    assert [p.name for p in (run / "exports" / "items").glob(".*")] == []  # no temporaries left

    d = json.loads(path.read_text())
    PydanticItem.model_validate(d)  # offline core validation
    back = pystac.Item.from_file(str(path))

    # extensions
    for uri in ("https://stac-extensions.github.io/processing/v1.2.0/schema.json",
                "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"):
        assert uri in back.stac_extensions
    p = back.properties
    assert p["processing:software"] == {"slidewatch": "0.1.0"} and p["processing:level"] == "L4"
    assert "U-Net" in p["processing:lineage"]
    assert p["slidewatch:checkpoint_sha256"] == SHA
    assert p["slidewatch:model"] == {"architecture": "enhanced-unet", "in_channels": 7}
    assert (p["slidewatch:rain_intensity_mm_h"], p["slidewatch:rain_duration_days"], p["slidewatch:rain_multiplier"]) == (12.5, 2.0, 1.75)
    assert p["slidewatch:alert"] == {"region": "Test Valley", "intensity_mm_h": 12.5}
    assert p["slidewatch:input_items"] == {"sentinel-2-l2a": ["S2_0", "S2_1"], "cop-dem-glo-30": ["DEM_0"]}
    assert p["slidewatch:zone"] == "utm48n" and p["gsd"] == 10.0
    assert back.datetime is None
    assert back.common_metadata.start_datetime == datetime(2024, 7, 1, tzinfo=timezone.utc)
    assert back.common_metadata.end_datetime == datetime(2024, 8, 31, 23, 59, 59, tzinfo=timezone.utc)

    # derived_from links: every saved item with a self href, none invented
    links = sorted(ln.href for ln in back.links if ln.rel == "derived_from")
    assert links == sorted([f"{base}/sentinel-2-l2a/items/S2_0", f"{base}/sentinel-2-l2a/items/S2_1",
                            f"{base}/cop-dem-glo-30/items/DEM_0"])

    # projection fields against the hand-written grid
    grid = {"proj:code": "EPSG:32648", "proj:shape": [257, 300],
            "proj:transform": [10.0, 0.0, 320000.0, 0.0, -10.0, 3309440.0],
            "proj:bbox": [320000.0, 3309440.0 - 2570.0, 323000.0, 3309440.0]}
    for key in ("zarr", "probability", "class"):
        a = d["assets"][key]
        for k, v in grid.items():
            assert a[k] == pytest.approx(v) if k != "proj:code" else a[k] == v, (key, k)
    assert {k: p[k] for k in grid} == grid

    # assets: hrefs relative to the item, resolving to the files
    assert d["assets"]["probability"]["href"] == "../risk_utm48n_probability.tif"
    assert d["assets"]["zarr"]["href"] == "../../risk.zarr"
    assert Path(back.assets["class"].get_absolute_href()) == cogs["class"]
    assert Path(back.assets["quicklook"].get_absolute_href()) == png
    assert set(back.assets["quicklook"].roles) == {"overview", "thumbnail"}
    assert back.assets["probability"].media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert back.assets["zarr"].media_type == "application/vnd+zarr"
    assert d["assets"]["zarr"]["xarray:open_kwargs"]["group"] == "utm48n"
    variables = d["assets"]["zarr"]["cube:variables"]
    assert {k for k, v in variables.items() if v["type"] == "data"} == {"probability", "risk_class", "lsi", "quality"}
    assert variables["spatial_ref"] == {"dimensions": [], "type": "auxiliary",
                                        "description": "coordinate reference system (CF grid mapping)"}
    assert d["assets"]["zarr"]["cube:dimensions"]["x"]["extent"] == [320005.0, 322995.0]
    assert d["assets"]["zarr"]["cube:dimensions"]["y"]["extent"] == [3309440.0 - 2565.0, 3309435.0]

    # raster extension against numpy
    prob = ds["probability"].values.astype(np.float64)
    band = d["assets"]["probability"]["raster:bands"][0]
    assert band["data_type"] == "float32" and band["nodata"] == "nan"
    assert band["statistics"]["mean"] == pytest.approx(np.nanmean(prob))
    assert band["statistics"]["valid_percent"] == pytest.approx(100 * np.isfinite(prob).mean())
    cband = d["assets"]["class"]["raster:bands"][0]
    assert cband["data_type"] == "uint8" and cband["nodata"] == 255
    classes = {c["value"]: c for c in d["assets"]["class"]["classification:classes"]}
    cls = _class_ref(ds)
    assert {v: classes[v]["count"] for v in (0, 1, 2, 255)} == {v: int((cls == v).sum()) for v in (0, 1, 2, 255)}
    assert classes[255]["nodata"] is True

    # geometry and bbox in lon/lat contain the zone (corners transformed independently with pyproj)
    footprint = shape(back.geometry)
    w, s, e, n = back.bbox
    for lon, lat in _corners_lonlat(32648, X0, Y1):
        assert w - 1e-9 <= lon <= e + 1e-9 and s - 1e-9 <= lat <= n + 1e-9
        assert footprint.buffer(1e-9).contains(Point(lon, lat))
    assert 103.0 < w < e < 103.3 and 29.8 < s < n < 30.0  # UTM 48N around (103.15 E, 29.89 N)


def test_stac_items_of_two_zones_and_explicit_inputs(tmp_path):
    from shapely.geometry import shape
    from stac_pydantic import Item as PydanticItem

    run = tmp_path / "run"
    a = make_zone(epsg=32647, x0=800000.0, y1=Y1)  # east edge of zone 47
    b = make_zone(epsg=32648, x0=200000.0, y1=Y1)  # west edge of zone 48
    cogs = {"utm47n": write_cogs(a, run / "exports", "utm47n", blocksize=64),
            "utm48n": write_cogs(b, run / "exports", "utm48n", blocksize=64)}
    refs = [InputRef("sentinel-1-rtc", "S1_0", "https://example.test/items/S1_0"), InputRef(None, "X", None)]
    window = TimeWindow(datetime(2024, 7, 1).date(), datetime(2024, 7, 31).date())
    items = {z: zone_item(run, z, ds, cogs=cogs[z], inputs=refs, window=window) for z, ds in (("utm47n", a), ("utm48n", b))}
    for z, epsg, x0 in (("utm47n", 32647, 800000.0), ("utm48n", 32648, 200000.0)):
        item = items[z]
        d = item.to_dict()
        PydanticItem.model_validate(d)
        assert item.id == f"slidewatch-risk-test-valley-20240701_20240731-{z}"
        assert [ln.href for ln in item.links if ln.rel == "derived_from"] == ["https://example.test/items/S1_0"]
        assert d["properties"]["proj:code"] == d["assets"]["zarr"]["proj:code"] == f"EPSG:{epsg}"
        assert d["assets"]["zarr"]["xarray:open_kwargs"]["group"] == z
        assert d["assets"]["class"]["href"] == f"../risk_{z}_class.tif"
        assert d["properties"]["slidewatch:zone"] == z
        w, s, e, n = item.bbox
        for lon, lat in _corners_lonlat(epsg, x0, Y1):
            assert w - 1e-9 <= lon <= e + 1e-9 and s - 1e-9 <= lat <= n + 1e-9
        assert shape(item.geometry).area > 0
    bboxes = [it.bbox for it in items.values()]
    assert min(b[0] for b in bboxes) < 102.0 < max(b[2] for b in bboxes)  # together they span the boundary at 102 E


def test_item_refuses_incomplete_or_unlabelled_runs(tmp_path):
    ds = make_zone(chunks=None)
    ds.attrs["slidewatch_complete"] = False
    with pytest.raises(StoreError, match=r"\['utm48n'\].*not marked slidewatch_complete"):
        zone_item(tmp_path, "utm48n", ds)
    ds.attrs.pop("time_window")
    with pytest.raises(TimeWindowError, match="time_window"):
        zone_item(tmp_path, "utm48n", ds, require_complete=False)
    item = zone_item(tmp_path, "utm48n", ds, require_complete=False,
                     window=TimeWindow(datetime(2024, 8, 1).date(), datetime(2024, 8, 2).date()))
    assert item.properties["slidewatch:complete"] is False and not item.assets.keys() - {"zarr"}
    ds.attrs["time_window"] = ["2024-08-01", "2024-08-03"]
    assert zone_item(tmp_path, "utm48n", ds, require_complete=False).properties["end_datetime"] == "2024-08-03T23:59:59Z"
    ds.attrs["time_window"] = "2024-13-01/2024-08-03"
    with pytest.raises(TimeWindowError, match="Unreadable time_window"):
        zone_item(tmp_path, "utm48n", ds, require_complete=False)
    ds.attrs.pop("region")
    with pytest.raises(InputDataError, match="region"):
        zone_item(tmp_path, "utm48n", ds, require_complete=False)


def test_write_item_is_atomic(tmp_path):
    ds = make_zone(chunks=None)
    item = zone_item(tmp_path, "utm48n", ds, inputs=[])
    target = tmp_path / "exports" / "item.json"
    write_item(item, target)
    before = target.read_text()
    item.properties["slidewatch:rain_multiplier"] = float("nan")
    with pytest.raises(StoreError, match="NaN"):
        write_item(item, target)
    assert target.read_text() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["item.json"]


def test_export_run_from_a_zarr_store(tmp_path):
    run = tmp_path / "test-valley" / "20240701_20240831"
    ds = make_zone(chunks=(128, 128))
    enc = {"risk_class": {"_FillValue": 255}}  # CF fill: open_zarr decodes it to float + NaN
    ds.to_zarr(run / "risk.zarr", group="utm48n", zarr_format=3, consolidated=False, encoding=enc)
    _save_items(run, "utm48n", {"sentinel-2-l2a": [("S2_0", "https://example.test/S2_0")]})
    (run / "run.json").write_text(json.dumps({"alert": None}))
    reopened = xr.open_zarr(run / "risk.zarr", group="utm48n", decode_coords="all", consolidated=False)
    assert reopened["risk_class"].dtype.kind == "f"  # the NaN-decoded case is exercised
    path = export_run(run, blocksize=64)
    assert path == run / "exports" / "collection.json"
    coll = pystac.Collection.from_file(str(path))
    assert coll.id == "slidewatch-risk-test-valley-20240701_20240831"
    (item,) = coll.get_items()
    assert item.id == "slidewatch-risk-test-valley-20240701_20240831-utm48n"
    assert item.properties["slidewatch:alert"] is None
    assert [ln.href for ln in item.links if ln.rel == "derived_from"] == ["https://example.test/S2_0"]
    with rasterio.open(run / "exports" / "risk_utm48n_class.tif") as src:
        np.testing.assert_array_equal(src.read(1), _class_ref(ds))
    kwargs = dict(item.assets["zarr"].extra_fields["xarray:open_kwargs"])
    assert (kwargs.pop("engine"), kwargs["zarr_format"], kwargs["consolidated"]) == ("zarr", 3, False)
    opened = xr.open_zarr(Path(item.assets["zarr"].get_absolute_href()), **kwargs)
    assert opened.rio.crs.to_epsg() == 32648 and opened.sizes == {"y": 257, "x": 300}


def test_input_refs_reads_saved_items(tmp_path):
    _save_items(tmp_path, "utm48n", {"a": [("1", "h1"), ("2", None)]})
    _save_items(tmp_path, "utm47n", {"a": [("1", "h1")], "b": [("3", "h3")]})
    refs = input_refs(tmp_path / "items")
    assert sorted(refs, key=lambda r: r.id) == [InputRef("a", "1", "h1"), InputRef("a", "2", None), InputRef("b", "3", "h3")]
    assert input_refs(tmp_path / "nothing") == []
    (tmp_path / "items" / "utm48n" / "bad.json").write_text("{")
    with pytest.raises(InputDataError, match="bad.json"):
        input_refs(tmp_path / "items")
