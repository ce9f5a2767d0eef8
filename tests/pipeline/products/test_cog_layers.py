"""COGs of every risk layer, the region mosaic over UTM zones and the QGIS styles
(pipeline/products/cog.py, pipeline/products/style.py).

Tiny synthetic zones (48 x 64 px at 10 m) made of 8 x 8 px patches of one value each, so a
point sampled anywhere inside a patch has that patch's value whatever the resampling.
References: the numpy arrays the zones are built from, pyproj for every coordinate,
rio-cogeo's validator, GDAL's ``gdallocationinfo`` (when installed) and the standard
library's XML parser.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate

from pipeline.core.classes import CLASS_CODES, CLASS_NAMES, CLASS_RGBA, NODATA_CLASS
from pipeline.core.errors import InputDataError
from pipeline.products.cog import write_cogs, write_region_mosaic

H, W, P, RES = 48, 64, 8, 10.0
Y1 = 3309440.0
QFILL = 200  # a declared quality fill that is not 0 ("ok")
FLOATS = ("hazard", "susceptibility", "uncertainty", "lsi")
CLASSES = {"class": "risk_class", "susceptibility_class": "susceptibility_class"}


def _patches(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    vals = rng.uniform(lo, hi, (H // P, W // P)).astype(np.float32)
    return np.kron(vals, np.ones((P, P), np.float32))


def make_zone(epsg: int, x0: float, seed: int) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """A zone group with every risk layer and the expected COG values of each layer."""
    rng = np.random.default_rng(seed)
    sus = _patches(rng)
    sus[:P, :P] = np.nan  # a no-data patch in the corner
    sus[3 * P:4 * P, 5 * P:6 * P] = np.nan
    haz = np.clip(sus * 1.3, 0, 1).astype(np.float32)
    unc = np.where(np.isnan(sus), np.nan, _patches(rng, 0.0, 0.5)).astype(np.float32)
    lsi = np.where(np.isnan(sus), np.nan, _patches(rng)).astype(np.float32)
    sus_cls = np.digitize(sus, [0.3, 0.6]).astype(np.uint8)
    sus_cls[np.isnan(sus)] = NODATA_CLASS
    haz_cls = np.digitize(haz, [0.3, 0.6]).astype(np.uint8)
    haz_cls[np.isnan(haz)] = NODATA_CLASS
    quality = np.where(np.isnan(sus), 64, 0).astype(np.uint8)
    quality[2 * P:3 * P, :P] = 1 | 2
    quality[-P:, -P:] = QFILL  # never computed: the store's fill
    ds = xr.Dataset(
        {
            "susceptibility": (("y", "x"), sus, {"long_name": "landslide susceptibility", "units": "1"}),
            "susceptibility_class": (("y", "x"), sus_cls, {"flag_values": [0, 1, 2], "flag_meanings": "low medium high"}),
            "hazard": (("y", "x"), haz, {"long_name": "landslide hazard", "units": "1"}),
            "risk_class": (("y", "x"), haz_cls, {"flag_values": [0, 1, 2], "flag_meanings": "low medium high"}),
            "uncertainty": (("y", "x"), unc, {"long_name": "spread", "units": "1"}),
            "lsi": (("y", "x"), lsi, {"long_name": "Landslide Susceptibility Index", "units": "1"}),
            "quality": (("y", "x"), quality, {"long_name": "quality flags", "flag_masks": [1, 2, 4, 8, 16, 32, 64, 128]}),
        },
        coords={"x": x0 + (np.arange(W) + 0.5) * RES, "y": Y1 - (np.arange(H) + 0.5) * RES},
        attrs={"region": "Border Valley", "time_window": "2024-07-01/2024-08-31", "slidewatch_complete": True,
               "class_thresholds": [0.3, 0.6]},
    )
    ds = ds.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(Affine(RES, 0, x0, 0, -RES, Y1)).rio.write_coordinate_system()
    expected = {"hazard": haz, "susceptibility": sus, "uncertainty": unc, "lsi": lsi,
                "class": haz_cls, "susceptibility_class": sus_cls, "quality": quality}
    return ds, expected


def stored_zone(tmp_path: Path, zone: str, epsg: int, x0: float, seed: int) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """The zone written to a Zarr group with CF fills and reopened as the pipeline does
    (integer layers come back as float with NaN where the fill was)."""
    ds, expected = make_zone(epsg, x0, seed)
    enc = {"risk_class": {"_FillValue": NODATA_CLASS}, "susceptibility_class": {"_FillValue": NODATA_CLASS},
           "quality": {"_FillValue": QFILL}}
    store = tmp_path / "risk.zarr"
    ds.chunk({"y": 16, "x": 32}).to_zarr(store, group=zone, zarr_format=3, consolidated=False, encoding=enc)
    opened = xr.open_zarr(store, group=zone, decode_coords="all", consolidated=False)
    assert opened["quality"].dtype.kind == "f" and opened["risk_class"].dtype.kind == "f"  # decoded case exercised
    return opened, expected


def _assert_equal(got: np.ndarray, want: np.ndarray, layer: str) -> None:
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=layer)
        np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-6, err_msg=layer)
    else:
        np.testing.assert_array_equal(got, want, err_msg=layer)


def test_every_layer_has_a_valid_cog_with_the_stores_values_and_nodata(tmp_path):
    ds, expected = stored_zone(tmp_path, "utm48n", 32648, 320000.0, seed=5)
    out = tmp_path / "exports"
    paths = write_cogs(ds, out, "utm48n", blocksize=16)
    cog_keys = {k for k in paths if not k.endswith("_style")}
    assert cog_keys == set(expected)
    assert {k: p.name for k, p in paths.items() if k in ("hazard", "class", "probability")} == {
        "hazard": "risk_utm48n_hazard.tif", "class": "risk_utm48n_class.tif"}  # today's names kept
    for layer in cog_keys:
        path = paths[layer]
        assert path.name == f"risk_utm48n_{layer}.tif"
        valid, errors, warns = cog_validate(path, strict=True, quiet=True)
        assert valid and not errors and not warns, (layer, errors, warns)
        with rasterio.open(path) as src:
            assert src.crs == rasterio.crs.CRS.from_epsg(32648), layer
            assert src.transform == Affine(10.0, 0.0, 320000.0, 0.0, -10.0, Y1), layer
            assert (src.height, src.width) == (H, W)
            got = src.read(1)
            if layer in FLOATS:
                assert src.dtypes[0] == "float32" and np.isnan(src.nodata), layer
            elif layer in CLASSES:
                assert src.dtypes[0] == "uint8" and src.nodata == NODATA_CLASS, layer
                assert src.colormap(1)[2] == CLASS_RGBA[2] and src.colormap(1)[NODATA_CLASS][3] == 0
            else:
                assert src.dtypes[0] == "uint8" and src.nodata == QFILL, layer
        _assert_equal(got, expected[layer], layer)
    with rasterio.open(paths["quality"]) as src:  # the masked pixels are exactly the fill's
        assert (src.read_masks(1) == 0).sum() == (expected["quality"] == QFILL).sum() == P * P


def test_quality_without_a_declared_fill_has_no_nodata(tmp_path):
    """0 means "ok": without a declared fill nothing in the quality layer is hidden."""
    ds, expected = make_zone(32648, 320000.0, seed=2)
    paths = write_cogs(ds.drop_vars(["lsi", "susceptibility_class"]), tmp_path, "utm48n", blocksize=16)
    assert "lsi" not in paths and "susceptibility_class" not in paths
    with rasterio.open(paths["quality"]) as src:
        assert src.nodata is None
        np.testing.assert_array_equal(src.read(1), expected["quality"])


def _lonlat_of_patch(epsg: int, x0: float, i: int, j: int) -> tuple[float, float]:
    """lon/lat of a point inside patch (i, j), a little off its centre."""
    x = x0 + (j * P + P / 2 - 0.8) * RES
    y = Y1 - (i * P + P / 2 + 0.6) * RES
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    return float(lon), float(lat)


ZONES = {"utm47n": (32647, 800000.0, 11), "utm48n": (32648, 200000.0, 12)}  # both sides of 102 E


def test_two_zone_region_mosaic_samples_each_zones_values(tmp_path):
    out = tmp_path / "exports"
    made = {z: stored_zone(tmp_path, z, epsg, x0, seed) for z, (epsg, x0, seed) in ZONES.items()}
    cogs = {z: write_cogs(ds, out, z, blocksize=16) for z, (ds, _) in made.items()}
    mosaic = write_region_mosaic(cogs, out)
    layers = {k for k in mosaic if not k.endswith("_style")}
    assert layers == set(made["utm47n"][1])
    to_3857 = Transformer.from_crs(4326, 3857, always_xy=True)
    patches = [(i, j) for i in range(H // P) for j in range(W // P)]
    for layer in layers:
        path = mosaic[layer]
        assert path.name == f"risk_region_{layer}.vrt"
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 3857, layer
            assert 11.0 < src.res[0] == src.res[1] < 12.0  # 10 m at ~30 N in Web Mercator
            if layer in FLOATS:
                assert np.isnan(src.nodata)
            else:
                assert src.nodata == (QFILL if layer == "quality" else NODATA_CLASS)
            if layer in CLASSES:
                assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
                assert all(src.colormap(1)[c] == CLASS_RGBA[c] for c in (*CLASS_CODES, NODATA_CLASS))
            for zone, (epsg, x0, _seed) in ZONES.items():
                want = made[zone][1][layer]
                pts = [_lonlat_of_patch(epsg, x0, i, j) for i, j in patches]
                xy = [to_3857.transform(lon, lat) for lon, lat in pts]
                got = np.array([v[0] for v in src.sample(xy, masked=False)])
                ref = np.array([want[i * P + P // 2, j * P + P // 2] for i, j in patches])
                _assert_equal(got, ref, f"{layer} {zone}")
            # between the two zones' footprints there is no data
            gap = to_3857.transform(102.0, 29.88)
            v = next(src.sample([gap], masked=False))[0]
            assert np.isnan(v) if layer in FLOATS else v == src.nodata
    # every file the mosaic needs sits in the export folder (relative paths)
    for p in mosaic.values():
        assert p.parent == out and p.exists()
    assert sorted(p.name for p in out.glob("risk_region_class*")) == [
        "risk_region_class.qml", "risk_region_class.utm47n.vrt", "risk_region_class.utm48n.vrt",
        "risk_region_class.vrt"]
    assert not list(out.glob(".*"))  # no temporaries left
    # the VRTs name their sources relative to themselves: the folder can be moved as a whole
    source = ET.parse(out / "risk_region_class.utm47n.vrt").getroot().find(".//SourceDataset")
    assert source is not None and source.get("relativeToVRT") == "1" and source.text == "risk_utm47n_class.tif"
    moved = shutil.copytree(out, tmp_path / "moved")
    shutil.rmtree(out)
    epsg, x0, _seed = ZONES["utm47n"]
    with rasterio.open(moved / "risk_region_class.vrt") as src:
        xy = to_3857.transform(*_lonlat_of_patch(epsg, x0, 4, 6))
        assert next(src.sample([xy]))[0] == made["utm47n"][1]["class"][4 * P + P // 2, 6 * P + P // 2]


@pytest.mark.skipif(shutil.which("gdallocationinfo") is None, reason="gdal-bin not installed")
def test_region_mosaic_read_by_gdal_command_line(tmp_path):
    """GDAL's own tool, given lon/lat (-wgs84), reads the zone's class from the mosaic."""
    out = tmp_path / "exports"
    made = {z: make_zone(epsg, x0, seed) for z, (epsg, x0, seed) in ZONES.items()}
    cogs = {z: write_cogs(ds, out, z, blocksize=16) for z, (ds, _) in made.items()}
    mosaic = write_region_mosaic(cogs, out)
    for zone, (epsg, x0, _seed) in ZONES.items():
        for i, j in ((1, 1), (4, 6), (5, 7)):
            lon, lat = _lonlat_of_patch(epsg, x0, i, j)
            res = subprocess.run(["gdallocationinfo", "-valonly", "-wgs84", str(mosaic["class"]), str(lon), str(lat)],
                                 capture_output=True, text=True, check=True)
            assert int(res.stdout.strip()) == made[zone][1]["class"][i * P + P // 2, j * P + P // 2]


def test_one_zone_region_and_refused_input(tmp_path):
    out = tmp_path / "exports"
    ds, expected = make_zone(32648, 320000.0, seed=4)
    cogs = write_cogs(ds, out, "utm48n", blocksize=16)
    before = sorted(p.name for p in out.iterdir())
    missing = {**cogs, "hazard": out / "nowhere.tif"}
    with pytest.raises(InputDataError, match="nowhere.tif.*does not exist"):
        write_region_mosaic({"utm48n": cogs, "utm47n": missing}, out)
    assert sorted(p.name for p in out.iterdir()) == before  # refused: nothing written
    with pytest.raises(InputDataError, match="No zone COGs"):
        write_region_mosaic({}, out)
    mosaic = write_region_mosaic({"utm48n": cogs}, out)
    with rasterio.open(mosaic["susceptibility_class"]) as src:
        lon, lat = _lonlat_of_patch(32648, 320000.0, 2, 3)
        xy = Transformer.from_crs(4326, 3857, always_xy=True).transform(lon, lat)
        assert next(src.sample([xy]))[0] == expected["susceptibility_class"][2 * P + P // 2, 3 * P + P // 2]


def _qml_root(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "qgis"
    return root


def test_qml_styles_list_the_class_palette_and_sit_beside_their_rasters(tmp_path):
    ds, _ = make_zone(32648, 320000.0, seed=1)
    ds.attrs["class_thresholds"] = [0.25, 0.7]  # calibrated thresholds: the ramps follow them
    paths = write_cogs(ds, tmp_path, "utm48n", blocksize=16)
    mosaic = write_region_mosaic({"utm48n": paths}, tmp_path)
    for result in (paths, mosaic):
        for layer in ("class", "susceptibility_class"):
            qml = result[f"{layer}_style"]
            # QGIS's default-style sidecar: same folder and stem as the raster, suffix .qml
            assert qml == result[layer].with_suffix(".qml")
            renderer = _qml_root(qml).find("pipe/rasterrenderer")
            assert renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
            entries = {int(e.get("value")): e.attrib for e in renderer.iter("paletteEntry")}
            assert sorted(entries) == list(CLASS_CODES)  # no entry for no data: left transparent
            for code, name in zip(CLASS_CODES, CLASS_NAMES):
                r, g, b, a = CLASS_RGBA[code]
                assert entries[code]["label"] == name
                assert entries[code]["color"].lower() == f"#{r:02x}{g:02x}{b:02x}"
                assert int(entries[code]["alpha"]) == a
        for layer in FLOATS:
            qml = result[f"{layer}_style"]
            assert qml == result[layer].with_suffix(".qml")
            shader = _qml_root(qml).find("pipe/rasterrenderer/rastershader/colorrampshader")
            values = [float(i.get("value")) for i in shader.iter("item")]
            assert values == sorted(values) and len(values) >= 2
            assert values[0] == 0.0 and values[-1] == (0.5 if layer == "uncertainty" else 1.0)
        assert "quality_style" not in result
    for qml in (paths["hazard_style"], mosaic["hazard_style"]):
        shader = _qml_root(qml).find("pipe/rasterrenderer/rastershader/colorrampshader")
        stops = {float(i.get("value")): i.get("color") for i in shader.iter("item")}
        for code, t in ((1, 0.25), (2, 0.7)):  # medium and high colours at the zone's thresholds
            r, g, b, _ = CLASS_RGBA[code]
            assert stops[t] == f"#{r:02x}{g:02x}{b:02x}", qml
