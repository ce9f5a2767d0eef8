"""pipeline.products.report: the offline HTML report of a run, checked against hand counts.

Each test builds a small synthetic run directory (a ``risk.zarr`` with one group per UTM
zone, georeferenced with rioxarray, an ``lsi_<zone>.zarr`` holding the DEM, plus
``run.json``) and reads the HTML back. The hillshade is checked against a hand-computed
value on a tilted plane and against ``gdaldem hillshade`` on a real DEM.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from PIL import Image

from pipeline.core.errors import InputDataError, SlidewatchError, StoreError
from pipeline.products.report import block_max_class, hillshade, write_report

# rioxarray/rasterio internals warn about Affine "*" (not ours).
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

H, W, RES = 260, 300, 10.0
X0, Y1 = 320000.0, 3309440.0
COLOURS = {0: (0x1A, 0x98, 0x50), 1: (0xFD, 0x8D, 0x3C), 2: (0xD7, 0x30, 0x27), 255: (0x9E, 0x9E, 0x9E)}
ITEMS = {
    "sentinel-2-l2a": ["S2A_MSIL2A_20240704T033539_R104_T48RTU", "S2B_MSIL2A_20240719T033539_R104_T48RTU"],
    "sentinel-1-rtc": ["S1A_IW_GRDH_1SDV_20240705T111502_rtc"],
    "cop-dem-glo-30": ["Copernicus_DSM_COG_10_N29_80_00_E103_10_00_DEM"],
}
SHA = "3f" * 32
ATTRS = {
    "region": "Sichuan <Wenchuan> & co",
    "time_window": ["2024-07-01", "2024-08-31"],
    "input_items": ITEMS,
    "checkpoint_sha256": SHA,
    "model": {"architecture": "EnhancedUNet", "channels": ["slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi"]},
    "rain_intensity_mm_h": 12.5,
    "rain_duration_days": 2.25,
    "rain_multiplier": 3.75,
    "slidewatch_version": "0.1.0-test",
    "slidewatch_complete": True,
    "class_thresholds": [0.2, 0.5],
    "class_thresholds_source": "checkpoint calibration: val blocks: high = the F1-best threshold, medium = the "
                               "highest threshold with recall >= max(0.9, half-way from high's recall to 1)",
}
#: sha256 of dist/leaflet.js in npm's leaflet-1.9.4.tgz (shasum 23fae724e282fa25745aff82ca4d394748db7d8d).
LEAFLET_JS_SHA256 = "db49d009c841f5ca34a888c96511ae936fd9f5533e90d8b2c4d57596f4e5641a"
TEMPLATES = Path(__file__).resolve().parents[3] / "pipeline" / "products" / "report" / "templates"
ALERT = {"intensity_mm_h": 12.5, "duration_days": 2.25, "threshold": "I = 2.20 D^-0.44 (Guzzetti 2008)",
         "time": "2024-08-30T06:00:00Z"}


def _classes(seed: int = 3, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cls = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), p=[0.5, 0.25, 0.15, 0.10], size=(h, w))
    cls[:40, :60] = 2  # a high-risk patch in the north-west cell
    cls[200:, 250:] = 255  # a no-data corner
    return cls


def _dataset(cls: np.ndarray, x0: float = X0, epsg: int = 32648, lsi_only: bool = False,
             older: bool = False) -> xr.Dataset:
    """A zone group as the risk stage writes it (``older``: a mosaic with ``probability``
    instead of susceptibility/hazard/uncertainty; ``lsi_only``: an LSI store)."""
    h, w = cls.shape
    rng = np.random.default_rng(11)
    value = rng.random((h, w)).astype(np.float32)
    value[cls == 255] = np.nan
    quality = np.where(cls == 255, 64, 0).astype(np.uint8)
    quality[::7, ::5] |= 1
    coords = {"y": Y1 - (np.arange(h) + 0.5) * RES, "x": x0 + (np.arange(w) + 0.5) * RES}
    data = {"risk_class": (("y", "x"), cls), "quality": (("y", "x"), quality),
            "lsi": (("y", "x"), value if lsi_only else np.clip(value * 0.9, 0, 1))}
    if older:
        data["probability"] = (("y", "x"), value)
    elif not lsi_only:
        data["susceptibility"] = (("y", "x"), np.sqrt(value))
        data["hazard"] = (("y", "x"), value)
        data["uncertainty"] = (("y", "x"), (value * 0.1).astype(np.float32))
    ds = xr.Dataset(data, coords=coords)
    ds = ds.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(Affine(RES, 0, x0, 0, -RES, Y1))
    ds = ds.rio.write_coordinate_system()
    for v in ds.data_vars:  # as pipeline.store.tiles.georeference does
        ds[v].attrs["grid_mapping"] = "spatial_ref"
        ds[v].encoding.pop("grid_mapping", None)
    ds["risk_class"].attrs.update(flag_values=[0, 1, 2], flag_meanings="low medium high")
    if not lsi_only:
        ds["risk_class"].attrs["comment"] = f"from {'probability' if older else 'hazard'}: low < 0.2 <= medium < 0.5 <= high"
    ds.attrs = dict(ATTRS)
    return ds.chunk({"y": 128, "x": 128})


def _dem(h: int = H, w: int = W, x0: float = X0, y1: float = Y1, pad: int = 0) -> xr.Dataset:
    """An ``lsi_<zone>.zarr``-like store holding only ``dem``: a tilted plane with hills,
    ``pad`` pixels wider than the zone on every side."""
    y = y1 - (np.arange(-pad, h + pad) + 0.5) * RES
    x = x0 + (np.arange(-pad, w + pad) + 0.5) * RES
    xx, yy = np.meshgrid(x - x0, y1 - y)
    z = (500 + 0.3 * xx - 0.2 * yy + 40 * np.sin(xx / 400) * np.cos(yy / 300)).astype(np.float32)
    ds = xr.Dataset({"dem": (("y", "x"), z)}, coords={"y": y, "x": x})
    ds = ds.rio.write_crs("EPSG:32648").rio.write_transform(Affine(RES, 0, x0 - pad * RES, 0, -RES, y1 + pad * RES))
    ds["dem"].attrs["units"] = "m"
    return ds.chunk({"y": 128, "x": 128})


def make_run(
    root: Path, *, alert: dict | None = ALERT, zones: tuple[str, ...] = ("utm48n",), dem: bool = True
) -> tuple[Path, np.ndarray]:
    run = root / "sichuan" / "20240701_20240831"
    run.mkdir(parents=True)
    cls = _classes()
    for k, zone in enumerate(zones):
        ds = _dataset(cls if k == 0 else _classes(5, 64, 80), epsg=32648 + k, x0=X0 if k == 0 else 200000.0)
        ds.to_zarr(run / "risk.zarr", group=zone, mode="w" if k == 0 else "a", zarr_format=3, consolidated=False)
    if dem:  # the first zone's DEM, in its LSI store (as the LSI stage writes it)
        _dem().to_zarr(run / f"lsi_{zones[0]}.zarr", zarr_format=3, consolidated=False)
    (run / "run.json").write_text(json.dumps({"region": ATTRS["region"], "time_window": ATTRS["time_window"],
                                              "alert": alert, "slidewatch_version": "0.1.0-test"}))
    return run, cls


def _rows(page: str) -> dict[str, tuple[int, float, str]]:
    """data-class -> (pixels, km², the row's HTML) of the first class table."""
    out = {}
    for m in re.finditer(r'<tr class="cls" data-class="([^"]+)" data-px="(\d+)" data-km2="([^"]+)">(.*?)</tr>', page):
        out.setdefault(m.group(1), (int(m.group(2)), float(m.group(3)), m.group(4)))
    return out


def _cfg(page: str, zid: str = "utm48n") -> dict:
    return json.loads(re.search(rf'<script type="application/json" id="cfg-{zid}"[^>]*>(.*?)</script>', page, re.S).group(1))


def _image(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _layer(page: str, key: str) -> Image.Image:
    return _image(next(spec["uri"] for spec in _cfg(page)["layers"] if spec["key"] == key))


def _png(page: str) -> np.ndarray:
    """The class layer as RGB."""
    return np.asarray(_layer(page, "class").convert("RGB"))


def _legend(page: str, zid: str = "utm48n") -> str:
    return re.search(rf'<div class="sw-legend" data-zone="{zid}"[^>]*>(.*?)</div>\s*(?:<div class="sw-legend"|</aside>)',
                     page, re.S).group(1)


def _hand_hillshade(p: float, q: float) -> float:
    """Lambert's cosine for a plane z = p·E + q·N lit from azimuth 315°, altitude 45°, by
    hand: normal (−p, −q, 1)/√(1+p²+q²), sun (sin 315° cos 45°, cos 315° cos 45°, sin 45°)
    = (−1/2, 1/2, √2/2), so the cosine is (p/2 − q/2 + √2/2)/√(1+p²+q²)."""
    return (p / 2 - q / 2 + np.sqrt(2) / 2) / np.sqrt(1 + p * p + q * q)


@pytest.fixture(scope="module")
def report(tmp_path_factory):  # type: ignore[no-untyped-def]
    run, cls = make_run(tmp_path_factory.mktemp("report"))
    path = write_report(run, cell_px=100)
    return path, path.read_text(encoding="utf-8"), cls, run


def test_default_path_and_no_temporary_files_left(report) -> None:  # type: ignore[no-untyped-def]
    path, page, _, run = report
    assert path == run / "report.html"
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def _without_leaflet(page: str) -> str:
    """The page with the inlined Leaflet script taken out, checked to be npm's build byte for byte."""
    vendored = (TEMPLATES / "leaflet.js").read_text(encoding="utf-8")
    assert hashlib.sha256(vendored.encode("utf-8")).hexdigest() == LEAFLET_JS_SHA256
    assert vendored.startswith("/* @preserve\n * Leaflet 1.9.4,")
    assert page.count(vendored) == 1
    return page.replace(vendored, "")


def test_no_external_resources(report) -> None:  # type: ignore[no-untyped-def]
    page = _without_leaflet(report[1])
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", page, re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page, re.I)
    refs += re.findall(r"""@import\s+(?:url\()?\s*["']?([^"');\s]+)""", page, re.I)
    assert refs, "Leaflet's icons should be referenced by url()"
    external = [r for r in refs if re.match(r"(?:https?:)?//", r.strip(), re.I)]
    assert external == []
    # data URIs, or fragments: in-page links and Leaflet's old-IE behaviour url(#default#VML)
    assert all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    assert "url(images/" not in page  # Leaflet's icons are inlined
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"@font-face", page, re.I)
    # the map's layers are data URIs in its configuration
    assert all(spec["uri"].startswith("data:image/png;base64,") for spec in _cfg(page)["layers"])


def test_leaflet_is_vendored_with_its_licence(report) -> None:  # type: ignore[no-untyped-def]
    page = _without_leaflet(report[1])  # inlined byte for byte, once
    licence = (TEMPLATES / "leaflet-LICENSE.txt").read_text()
    assert licence.startswith("BSD 2-Clause License") and "Volodymyr Agafonkin" in licence
    assert "Leaflet 1.9.4, BSD-2-Clause" in page
    assert ".leaflet-control-layers-toggle" in page  # its stylesheet, inlined too
    assert "<canvas" not in page and "sw-src" not in page  # the hand-written viewer is gone


def test_map_layers_legend_and_crs(report) -> None:  # type: ignore[no-untyped-def]
    page = report[1]
    cfg = _cfg(page)
    assert [spec["key"] for spec in cfg["layers"]] == ["class", "susceptibility", "hazard", "uncertainty"]
    assert [spec["label"] for spec in cfg["layers"]] == ["risk class", "susceptibility", "hazard", "uncertainty"]
    assert cfg["default"] == "class" and cfg["hillshade"].startswith("data:image/png;base64,")
    assert cfg["factor"] == 1 and cfg["px_x"] == 10.0 and cfg["utm"] == [48, False]
    assert (cfg["iw"], cfg["ih"]) == (W, H)
    # the frame: grid metres from the north-west corner; images and grid on the same bounds
    assert cfg["bounds"] == [[-H * RES, 0.0], [0.0, W * RES]] == cfg["grid_bounds"]
    assert "WGS 84 / UTM zone 48N (EPSG:32648)" in page
    legend = _legend(page)
    rows = re.findall(r'<li data-class="([^"]+)"><span class="sw" style="background:(#[0-9a-f]{6})"></span>'
                      r'<span><strong>\1</strong> <span class="rule">([^<]+)</span>: ([^<]+)</span></li>', legend)
    assert [(n, c) for n, c, _, _ in rows] == [("low", "#1a9850"), ("medium", "#fd8d3c"), ("high", "#d73027"),
                                               ("no data", "#9e9e9e")]
    rules = {n: r for n, _, r, _ in rows}
    assert rules == {"low": "hazard &lt; 0.2", "medium": "0.2 ≤ hazard &lt; 0.5", "high": "hazard ≥ 0.5",
                     "no data": "255"}
    meaning = {n: m for n, _, _, m in rows}
    assert "F1-best threshold on validation data" in meaning["high"]
    assert "at least 90 % of them" in meaning["medium"] and "one in ten" in meaning["low"]
    assert "calibrated on the model&#39;s validation data" in legend
    # one colour ramp per float layer, hidden until its layer is shown; class thresholds marked
    ramps = dict(re.findall(r'<div class="ramp" data-layer="([^"]+)" hidden>(.*?)(?=<div class="ramp"|<h3>)', legend, re.S))
    assert sorted(ramps) == ["hazard", "susceptibility", "uncertainty"]
    assert "medium from 0.2, high from 0.5" in ramps["hazard"] and "Marks" not in ramps["uncertainty"]
    assert "DEM from lsi_utm48n.zarr (dem)" in legend and "No hillshade" not in page


def test_float_layers_are_block_means_in_their_ramp(tmp_path: Path) -> None:
    from matplotlib import colormaps

    run, cls = make_run(tmp_path)
    page = write_report(run, max_pixels=100).read_text()  # factor 3: 100 x 87 map pixels
    cfg = _cfg(page)
    assert cfg["factor"] == 3 and (cfg["iw"], cfg["ih"]) == (100, 87)
    hazard = xr.open_zarr(run / "risk.zarr", group="utm48n", consolidated=False)["hazard"].values.astype(np.float64)
    pad = np.full((87 * 3, 300), np.nan)
    pad[:H] = hazard
    blocks = pad.reshape(87, 3, 100, 3).transpose(0, 2, 1, 3).reshape(87, 100, 9)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        mean = np.nanmean(blocks, axis=2)  # reference: numpy's NaN-aware mean per block
    im = _layer(page, "hazard")
    assert im.mode == "P" and im.size == (100, 87) and im.info["transparency"] == 255
    idx = np.asarray(im)
    np.testing.assert_array_equal(idx == 255, np.isnan(mean))  # no value: transparent
    order = np.argsort(mean[np.isfinite(mean)], kind="stable")
    assert np.all(np.diff(idx[np.isfinite(mean)][order].astype(int)) >= 0)  # colour rises with the value
    # susceptibility (√hazard here, so higher) shares the stretch: together they span the whole ramp
    sus = np.asarray(_layer(page, "susceptibility"))
    assert idx[np.isfinite(mean)].min() == 0 and idx[np.isfinite(mean)].max() < sus[sus < 255].max() == 253
    pal = np.array(im.getpalette()[:254 * 3]).reshape(254, 3)
    magma = np.round(colormaps["magma"]([0.0, 1.0])[:, :3] * 255)
    np.testing.assert_array_equal(pal[[0, 253]], magma)


def test_hillshade_of_a_tilted_plane_by_hand() -> None:
    e = np.arange(12) * 30.0
    n = (np.arange(9) * 30.0)[::-1]  # row 0 north
    ee, nn = np.meshgrid(e, n)
    for p, q in ((0.0, 0.0), (0.2, 0.0), (0.0, 0.5), (-0.7, 0.3), (1.0, -1.0)):
        got = hillshade(100 + p * ee + q * nn, 30.0, 30.0)
        assert got.dtype == np.float32 and got.shape == (9, 12)
        np.testing.assert_allclose(got[1:-1, 1:-1], _hand_hillshade(p, q), atol=1e-6)
    # by hand for p = 1, q = 0 (rising to the east, so the slope faces the western light):
    # (1/2 + √2/2)/√2 = 0.853553...
    assert float(hillshade(100 + ee, 30.0, 30.0)[4, 5]) == pytest.approx(0.8535534, abs=1e-6)
    # flat ground under a 45° sun: sin 45°; a slope facing away from the sun: 0
    assert float(hillshade(np.zeros((5, 5)), 10.0, 10.0)[2, 2]) == pytest.approx(np.sqrt(0.5), abs=1e-6)
    assert float(hillshade(-5 * ee, 30.0, 30.0)[4, 5]) == 0.0
    # edges are shaded too (one-sided), a NaN spreads to its 3 x 3 window
    z = 100 + 0.2 * ee
    z[4, 5] = np.nan
    got = hillshade(z, 30.0, 30.0)
    assert np.isfinite(got[0]).all() and np.isnan(got[3:6, 4:7]).all() and np.isfinite(got).sum() == 9 * 12 - 9


def test_hillshade_matches_gdaldem_on_a_real_dem(tmp_path: Path) -> None:
    from rasterio.enums import Resampling
    from tests.factors_testdata import fixture_path

    exe = shutil.which("gdaldem")
    if exe is None:
        pytest.skip("gdaldem (gdal-bin) is not installed")
    src = fixture_path("rasters", "dem-rmnp", "rmnp-dem.tif")
    dem = rioxarray.open_rasterio(src, masked=True).squeeze("band", drop=True)
    proj = dem.rio.reproject(dem.rio.estimate_utm_crs(), resolution=200.0, resampling=Resampling.bilinear)
    proj = proj.astype("float32").rio.write_nodata(np.nan, encoded=False)
    proj.rio.to_raster(tmp_path / "dem.tif")
    subprocess.run([exe, "hillshade", str(tmp_path / "dem.tif"), str(tmp_path / "hs.tif"), "-q"], check=True)
    ref = rioxarray.open_rasterio(tmp_path / "hs.tif").squeeze("band", drop=True).values.astype(np.float64)
    ours = hillshade(proj.values, 200.0, 200.0)
    both = (ref != 0) & np.isfinite(ours)  # gdaldem: 0 = no data (edges, next to no data), else 1 + 254·cos
    assert both.sum() > 30000
    assert np.abs(1 + 254 * ours[both] - ref[both]).max() <= 1.0
    assert not np.isnan(ours[1:-1, 1:-1][ref[1:-1, 1:-1] != 0]).any()


def test_hillshade_lies_under_the_layers_pixel_for_pixel(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, dem=False)
    # the DEM of the cube store covers 5 pixels more on every side: it is cut to the zone's grid
    _dem(pad=5).to_zarr(run / "cube_utm48n.zarr", zarr_format=3, consolidated=False)
    page = write_report(run, max_pixels=150).read_text()  # factor 2
    cfg = _cfg(page)
    assert cfg["factor"] == 2 and (cfg["iw"], cfg["ih"]) == (150, 130)
    z = _dem().dem.values.astype(np.float64).reshape(130, 2, 150, 2).mean(axis=(1, 3)).astype(np.float32)
    expected = np.round(hillshade(z, 20.0, 20.0) * 253)
    im = _image(cfg["hillshade"])
    assert im.size == _layer(page, "class").size == _layer(page, "hazard").size == (150, 130)
    diff = np.abs(np.asarray(im).astype(int) - expected)
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 5  # equal but for a float rounding at .5
    grey = np.array(im.getpalette()[:254 * 3]).reshape(254, 3)
    assert (grey[:, 0] == grey[:, 1]).all() and grey[0, 0] == 0 and grey[253, 0] == 255
    assert "DEM from cube_utm48n.zarr (dem)" in _legend(page)


def test_missing_dem_is_announced_and_the_map_has_no_hillshade(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, dem=False)
    notes: list[str] = []
    page = write_report(run, on_note=notes.append).read_text()
    assert notes == ["zone utm48n: no hillshade under the map (no dem variable in risk.zarr, lsi_utm48n.zarr or "
                     "cube_utm48n.zarr)"]
    assert _cfg(page)["hillshade"] is None
    warn = re.search(r'<p class="warn" id="no-dem-utm48n">(.*?)</p>', page, re.S).group(1)
    assert "No DEM for zone utm48n" in warn and "lsi_utm48n.zarr" in warn and "no hillshade" in warn
    assert 'data-hillshade="none">No hillshade' in _legend(page)
    assert [spec["key"] for spec in _cfg(page)["layers"]][0] == "class"  # the layers are still there


def test_figures_are_embedded_captioned_and_linked(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    pngs = {}
    for name, colour in (("alert.png", "red"), ("rain_series.png", "blue")):
        buf = io.BytesIO()
        Image.new("RGB", (12, 8), colour).save(buf, format="PNG")
        pngs[name] = buf.getvalue()
        (run / "plots").mkdir(exist_ok=True)
        (run / "plots" / name).write_bytes(pngs[name])
    (run / "plots" / "broken.png").write_bytes(b"not a png")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    for name in ("training_curves.png", "pr_curve.png"):  # no reliability.png: not shown
        buf = io.BytesIO()
        Image.new("L", (10, 10), 128).save(buf, format="PNG")
        pngs[name] = buf.getvalue()
        (model / name).write_bytes(pngs[name])
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "checkpoint": str(model / "model.safetensors")}))
    page = write_report(run).read_text()
    figs = re.findall(r'<figure id="([^"]+)" data-where="([^"]+)"><img src="data:image/png;base64,([^"]+)" alt="[^"]*">'
                      r'<figcaption>(.*?) <span class="note">\(([^)]+)\)</span></figcaption></figure>', page)
    assert [(f[0], f[1], f[4]) for f in figs] == [
        ("fig-alert", "alert", "alert.png"), ("fig-plot-rain-series", "run", "rain_series.png"),
        ("fig-model-training-curves", "model", "training_curves.png"), ("fig-model-pr-curve", "model", "pr_curve.png")]
    for fid, _, b64, _, name in figs:
        assert base64.b64decode(b64) == pngs[name], fid
    captions = {f[4]: f[3] for f in figs}
    assert "triggered this run" in captions["alert.png"] and "Precision–recall" in captions["pr_curve.png"]
    assert "broken.png left out: not a PNG file." in page and "reliability" not in page.lower().split("<footer>")[0]
    alert = re.search(r'<section class="alert" id="alert".*?</section>', page, re.S).group(0)
    assert '<a href="#fig-alert">' in alert
    prov = re.search(r'<tr data-key="checkpoint_sha256">.*?</tr>', page, re.S).group(0)
    assert '<a href="#fig-model-training-curves">' in prov and '<a href="#fig-model-pr-curve">' in prov


def test_no_figures_no_section(report) -> None:  # type: ignore[no-untyped-def]
    assert 'id="figures"' not in report[1] and "#fig-" not in report[1]


def test_zarr_v2_stores_with_class_fill_255(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cls = _classes()
    # the format the stores may be written in, 255 the class layer's fill value: read back as no data
    _dataset(cls).to_zarr(run / "risk.zarr", group="utm48n", zarr_format=2, consolidated=True,
                          encoding={"risk_class": {"_FillValue": 255}})
    _dem().to_zarr(run / "lsi_utm48n.zarr", zarr_format=2, consolidated=True)
    page = write_report(run).read_text()
    rows = _rows(page)
    assert rows["no data"][0] == int(np.count_nonzero(cls == 255)) and rows["high"][0] == int(np.count_nonzero(cls == 2))
    np.testing.assert_array_equal(_png(page)[cls == 255], np.broadcast_to(COLOURS[255], ((cls == 255).sum(), 3)))
    assert _cfg(page)["hillshade"] is not None and "DEM from lsi_utm48n.zarr (dem)" in _legend(page)


def test_older_mosaic_shows_its_probability_layer(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _dataset(_classes(), older=True).to_zarr(run / "risk.zarr", group="utm48n", zarr_format=3, consolidated=False)
    page = write_report(run).read_text()
    assert [spec["key"] for spec in _cfg(page)["layers"]] == ["class", "probability"]
    assert "Not in this store: susceptibility, hazard, uncertainty." in page
    assert 'data-mean-name="probability"' in page and "probability ≥ 0.5" in _legend(page)


def test_embedded_map_has_one_pixel_per_cell_in_class_colours(report) -> None:  # type: ignore[no-untyped-def]
    _, page, cls, _ = report
    img = _png(page)
    assert img.shape == (H, W, 3)
    expected = np.zeros((H, W, 3), dtype=np.uint8)
    for k, rgb in COLOURS.items():
        expected[cls == k] = rgb
    np.testing.assert_array_equal(img, expected)


def test_class_areas_equal_hand_count(report) -> None:  # type: ignore[no-untyped-def]
    _, page, cls, _ = report
    rows = _rows(page)
    total = H * W
    for name, k in (("low", 0), ("medium", 1), ("high", 2), ("no data", 255)):
        px = int(np.count_nonzero(cls == k))
        km2 = px * 100 / 1e6  # 10 m × 10 m = 100 m² per pixel
        got_px, got_km2, row = rows[name]
        assert got_px == px
        assert got_km2 == pytest.approx(km2, rel=1e-12)
        assert f"<td>{km2:.4f}</td>" in row  # shown in km², 4 decimals for a grid under 10 km²
        assert f"<td>{100 * px / total:.1f} %</td>" in row
    valid = int(np.count_nonzero(cls != 255))
    assert f"<td>{100 * np.count_nonzero(cls == 2) / valid:.1f} %</td>" in rows["high"][2]
    assert re.search(rf'<tr class="total" data-px="{total}" data-km2="{total * 100 / 1e6!r}">', page)


def test_mean_hazard_where_present(report) -> None:  # type: ignore[no-untyped-def]
    _, page, cls, run = report
    haz = xr.open_zarr(run / "risk.zarr", group="utm48n", consolidated=False)["hazard"].values.astype(np.float64)
    mean = np.nanmean(haz)
    assert f'data-mean-name="hazard" data-mean="{mean:.4f}"' in page
    high_mean = haz[cls == 2].mean()
    assert f"<td>{high_mean:.3f}</td></tr>" in _rows(page)["high"][2] + "</tr>"


def test_quality_flag_areas(report) -> None:  # type: ignore[no-untyped-def]
    _, page, cls, _ = report
    no_model = int(np.count_nonzero(cls == 255))
    assert f'data-bit="64" data-px="{no_model}"' in page
    no_s2 = len(range(0, H, 7)) * len(range(0, W, 5))
    assert f'data-bit="1" data-px="{no_s2}"' in page
    assert "no_model" in page and "no_s2" in page


def test_per_cell_table_and_heatmap(report) -> None:  # type: ignore[no-untyped-def]
    _, page, cls, _ = report
    assert "(1 km × 1 km, 100 px; 3 × 3 cells)" in page
    assert page.count("<rect ") == 9
    hand = {(r, c): int(np.count_nonzero(cls[r * 100:(r + 1) * 100, c * 100:(c + 1) * 100] == 2))
            for r in range(3) for c in range(3)}
    rows = re.findall(r'<tr data-cell="(\d+),(\d+)" data-high-px="(\d+)">', page)
    assert len(rows) == 9  # every cell has some high risk; top 10 shows all
    got = [((int(r), int(c)), int(n)) for r, c, n in rows]
    assert all(hand[rc] == n for rc, n in got)
    assert [n for _, n in got] == sorted(hand.values(), reverse=True)
    assert got[0][0] == (0, 0)  # the high patch


def test_provenance_values_and_escaping(report) -> None:  # type: ignore[no-untyped-def]
    page = report[1]
    assert "Sichuan &lt;Wenchuan&gt; &amp; co" in page
    assert "<Wenchuan>" not in page
    assert "2024-07-01, 2024-08-31" in page
    for collection, ids in ITEMS.items():
        assert f"<strong>{collection}</strong> ({len(ids)} item{'' if len(ids) == 1 else 's'})" in page
        for i in ids:
            assert f"<code>{i}</code>" in page
    assert SHA in page
    assert "EnhancedUNet" in page and "slope, dem, ndvi, ndwi, smi, ndbi, lsi" in page
    prov = re.search(r'<table class="kv" id="prov-table">(.*?)</table>\s*<h3>', page, re.S).group(1)
    for key, text in (("rain_intensity_mm_h", "12.5"), ("rain_duration_days", "2.25"),
                      ("rain_multiplier", "3.75"), ("slidewatch_version", "0.1.0-test")):
        assert re.search(rf'<tr data-key="{key}"><th>{key}</th><td>{re.escape(text)}</td></tr>', prov), key


def test_alert_is_shown(report) -> None:  # type: ignore[no-untyped-def]
    page = report[1]
    alert = re.search(r'<section class="alert" id="alert" data-alert="yes">(.*?)</section>', page, re.S).group(1)
    assert "intensity 12.5 mm/h" in alert and "over 2.25 days" in alert
    assert "I = 2.20 D^-0.44 (Guzzetti 2008)" in alert and "at 2024-08-30T06:00:00Z" in alert
    assert "manual run" not in page.lower()


def test_manual_run_without_alert(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, alert=None)
    page = write_report(run).read_text()
    assert 'data-alert="none"' in page and "manual run" in page
    assert 'data-alert="yes"' not in page


def test_downsampled_map_is_block_max_of_classes(tmp_path: Path) -> None:
    run, cls = make_run(tmp_path)
    out = write_report(run, tmp_path / "exports" / "small.html", max_pixels=64)
    page = out.read_text()
    f = 5  # ceil(300 / 64)
    cfg = _cfg(page)
    assert (cfg["factor"], cfg["px_x"], cfg["iw"], cfg["ih"]) == (f, 50.0, 60, 52)
    img = _png(page)
    assert img.shape == (52, 60, 3)
    for i in range(52):  # reference: a plain loop over the blocks
        for j in range(60):
            block = cls[i * f:(i + 1) * f, j * f:(j + 1) * f]
            valid = block[block != 255]
            k = int(valid.max()) if valid.size else 255
            assert tuple(img[i, j]) == COLOURS[k], (i, j)
    # statistics stay exact at full resolution
    assert _rows(page)["high"][0] == int(np.count_nonzero(cls == 2))
    assert "1 map pixel = 5 × 5 grid pixels" in page


def test_block_max_class_by_hand() -> None:
    a = np.array([[0, 0, 1, 255, 2],
                  [0, 255, 255, 255, 0],
                  [255, 255, 1, 0, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(block_max_class(a, 2), np.array([[0, 1, 2], [255, 1, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(block_max_class(a, 1), np.where(a > 2, 255, a))
    np.testing.assert_array_equal(block_max_class(a, 5), np.array([[2]], dtype=np.uint8))
    decoded = np.array([[np.nan, 1.0], [-1.0, np.nan]])  # risk_class read back as float with NaN
    np.testing.assert_array_equal(block_max_class(decoded, 1), np.array([[255, 1], [255, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(block_max_class(decoded, 2), np.array([[1]], dtype=np.uint8))


def test_two_zones_get_two_maps_and_a_total(tmp_path: Path) -> None:
    run, cls = make_run(tmp_path, zones=("utm48n", "utm49n"))
    page = write_report(run).read_text()
    assert 'id="zone-utm48n"' in page and 'id="zone-utm49n"' in page
    assert "WGS 84 / UTM zone 49N (EPSG:32649)" in page
    # one map, a zone switch and a legend per zone; each zone in its own frame
    assert page.count('<div id="sw-map"') == 1
    assert re.findall(r'<option value="([^"]+)">', page) == ["utm48n", "utm49n"]
    assert _cfg(page, "utm49n")["bounds"] == [[-64 * RES, 0.0], [0.0, 80 * RES]]
    assert 'class="sw-legend" data-zone="utm49n" hidden>' in page and "data-show-zone=\"utm49n\"" in page
    assert "No DEM for zone utm49n" in page and "No DEM for zone utm48n" not in page
    second = _classes(5, 64, 80)
    overall = re.search(r'<section id="overall">(.*?)</section>', page, re.S).group(1)
    high = int(np.count_nonzero(cls == 2) + np.count_nonzero(second == 2))
    assert re.search(rf'<tr data-class="high"><td>high</td><td>{high:,}</td>', overall)


def test_falls_back_to_lsi_zarr_and_says_so(tmp_path: Path) -> None:
    run = tmp_path / "r" / "20240701_20240831"
    run.mkdir(parents=True)
    cls = _classes(9)
    ds = _dataset(cls, lsi_only=True)
    ds.to_zarr(run / "lsi_utm48n.zarr", zarr_format=3, consolidated=False)
    page = write_report(run).read_text()
    assert 'id="fallback"' in page and "No risk.zarr in this run" in page
    assert _rows(page)["medium"][0] == int(np.count_nonzero(cls == 1))
    lsi = ds["lsi"].values.astype(np.float64)
    assert f'data-mean-name="lsi" data-mean="{np.nanmean(lsi):.4f}"' in page
    assert "manual run" in page  # no run.json at all
    assert [spec["key"] for spec in _cfg(page)["layers"]] == ["class", "lsi"]
    assert [spec["label"] for spec in _cfg(page)["layers"]] == ["LSI class", "LSI"]
    legend = _legend(page)
    assert "LSI class (no model in this store)" in legend and "equal thirds" in legend and "LSI ≥ 0.667" in legend
    assert "<title>slidewatch risk report: Sichuan &lt;Wenchuan&gt; &amp; co, 2024-07-01 to 2024-08-31</title>" in page


def test_empty_run_dir_raises_store_error_with_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no risk\.zarr and no lsi_<zone>\.zarr.*Fix: pass the run directory") as ei:
        write_report(tmp_path)
    assert isinstance(ei.value, SlidewatchError)
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(StoreError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_zone_group_without_risk_class_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ds = _dataset(_classes()).drop_vars("risk_class")
    ds.to_zarr(run / "risk.zarr", group="utm48n", zarr_format=3, consolidated=False)
    with pytest.raises(InputDataError, match=r"risk\.zarr/utm48n has no risk_class variable.*Fix:"):
        write_report(run)


def test_item_ids_from_run_json_zone_record(tmp_path: Path) -> None:
    import zarr

    run, _ = make_run(tmp_path, alert=None)
    page = write_report(run).read_text()
    assert "<code>S1A_IW_GRDH_1SDV_20240705T111502_rtc</code>" in page  # from the group attrs
    group = zarr.open_group(str(run / "risk.zarr"), path="utm48n", mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k != "input_items"})
    record = json.loads((run / "run.json").read_text())
    record["zones"] = {"utm48n": {"input_items": {"sentinel-2-l2a": ["ONLY_IN_RUN_JSON"]}}}
    (run / "run.json").write_text(json.dumps(record))
    page = write_report(run).read_text()
    assert "<strong>sentinel-2-l2a</strong> (1 item)" in page and "<code>ONLY_IN_RUN_JSON</code>" in page
    assert "S1A_IW_GRDH_1SDV_20240705T111502_rtc" not in page


def test_non_utm_grid_gets_precomputed_lonlat_nodes(tmp_path: Path) -> None:
    from pyproj import Transformer

    run = tmp_path / "run"
    x0 = 4321000.0  # EPSG:3035 (ETRS89 / LAEA Europe) metres
    ds = _dataset(_classes(), x0=x0, epsg=3035)
    ds.to_zarr(run / "risk.zarr", group="laea", zarr_format=3, consolidated=False)
    page = write_report(run).read_text()
    cfg = _cfg(page, "laea")
    assert cfg["utm"] is None and len(cfg["nodes"]) == 9 and len(cfg["nodes"][0]) == 9
    tr = Transformer.from_crs(3035, 4326, always_xy=True)
    np.testing.assert_allclose(cfg["nodes"][0][0], tr.transform(x0, Y1), atol=1e-9)
    np.testing.assert_allclose(cfg["nodes"][8][8], tr.transform(x0 + W * RES, Y1 - H * RES), atol=1e-9)
    assert "cubic interpolation between 9 × 9 lon/lat nodes" in page and "(EPSG:3035)" in page
