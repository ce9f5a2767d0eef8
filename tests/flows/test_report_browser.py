"""The HTML report rendered by a real headless Chromium: Leaflet draws the layers over the
hillshade, the layer control switches them, the legend lists the classes.

Also exercises ``flows.report_command.report`` through typer. Skips (with the reason)
where no ``chromium``/``chromium-browser`` binary is installed; on Debian/Ubuntu:
``apt-get install -y chromium`` (``.ci/run`` does this). The browser runs with every host
name unresolvable, so the page can only work offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import typer
import xarray as xr
from affine import Affine
from PIL import Image
from pyproj import Transformer
from typer.testing import CliRunner

from flows.report_command import report

# rioxarray/rasterio internals warn about Affine "*" (not ours).
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

H, W, RES, X0, Y1, EPSG = 260, 300, 10.0, 320000.0, 3309440.0, 32648
# vertical stripes: 40 % low, 30 % medium, 20 % high, 10 % no data (by area)
STRIPES = ((0, 120, 0), (120, 210, 1), (210, 270, 2), (270, 300, 255))
RGB = {0: (0x1A, 0x98, 0x50), 1: (0xFD, 0x8D, 0x3C), 2: (0xD7, 0x30, 0x27), 255: (0x9E, 0x9E, 0x9E)}
#: The DEM: a plane rising 0.2 m per metre to the east, so its slope faces the western light.
SLOPE_EAST = 0.2
#: Its hillshade by hand (azimuth 315°, altitude 45°): normal (−p, 0, 1)/√(1+p²), sun
#: (−1/2, 1/2, √2/2), so (p/2 + √2/2)/√(1+p²) = 0.79144 for p = 0.2.
SHADE = (SLOPE_EAST / 2 + np.sqrt(2) / 2) / np.sqrt(1 + SLOPE_EAST**2)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless browser test needs Chromium: no `chromium` or `chromium-browser` on PATH "
                "(install Debian's package: apt-get install -y chromium)")


def _georef(ds: xr.Dataset) -> xr.Dataset:
    return ds.rio.write_crs(f"EPSG:{EPSG}").rio.write_transform(Affine(RES, 0, X0, 0, -RES, Y1))


def _run_dir(root: Path) -> Path:
    run = root / "demo" / "20240701_20240831"
    cls = np.empty((H, W), dtype=np.uint8)
    for c0, c1, k in STRIPES:
        cls[:, c0:c1] = k
    coords = {"y": Y1 - (np.arange(H) + 0.5) * RES, "x": X0 + (np.arange(W) + 0.5) * RES}
    # hazard rises from 1e-4 in the west to 1 in the east (every colour of its log ramp)
    hazard = np.broadcast_to(10.0 ** np.linspace(-4, 0, W), (H, W)).astype(np.float32)
    hazard = np.where(cls == 255, np.nan, hazard).astype(np.float32)
    ds = xr.Dataset({"risk_class": (("y", "x"), cls), "hazard": (("y", "x"), hazard),
                     "susceptibility": (("y", "x"), hazard), "uncertainty": (("y", "x"), hazard * 0.1)}, coords=coords)
    ds.attrs = {"region": "demo", "time_window": ["2024-07-01", "2024-08-31"], "slidewatch_complete": True,
                "class_thresholds": [0.01, 0.1], "class_thresholds_source": "checkpoint calibration: val blocks"}
    run.mkdir(parents=True)
    _georef(ds).to_zarr(run / "risk.zarr", group="utm48n", zarr_format=3, consolidated=False)
    dem = (500 + SLOPE_EAST * (coords["x"] - X0))[None, :].repeat(H, axis=0).astype(np.float32)
    _georef(xr.Dataset({"dem": (("y", "x"), dem)}, coords=coords)).to_zarr(
        run / "lsi_utm48n.zarr", zarr_format=3, consolidated=False)
    (run / "run.json").write_text(json.dumps({"alert": {"intensity_mm_h": 9.0, "duration_days": 1.5}}))
    return run


def _browser(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           "--force-color-profile=srgb", "--force-device-scale-factor=1", f"--user-data-dir={tmp / 'profile'}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", "--window-size=1200,900", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):  # type: ignore[no-untyped-def]
    binary = _chromium()
    tmp = tmp_path_factory.mktemp("browser")
    run = _run_dir(tmp)
    app = typer.Typer()
    app.command()(report)
    # --max-pixels 150: the 300-px grid is drawn from 2x block-reduced images (150 x 130)
    res = CliRunner().invoke(app, [str(run), "--out", str(run / "exports" / "report.html"), "--max-pixels", "150"])
    assert res.exit_code == 0, res.output
    page = run / "exports" / "report.html"
    assert str(page) in res.output.replace("\n", "")
    out = {}
    for name, hash_ in (("class", ""), ("hazard", "#layer=hazard")):
        shot = tmp / f"shot-{name}.png"
        proc = _browser(binary, tmp, f"--screenshot={shot}", page.as_uri() + hash_)
        assert shot.is_file(), proc.stderr[-2000:]
        dom = _browser(binary, tmp, "--dump-dom", page.as_uri() + hash_)
        assert dom.returncode == 0, dom.stderr[-2000:]
        out[name] = (np.asarray(Image.open(shot).convert("RGB")), dom.stdout)
    return out


def _blend(rgb: tuple[int, int, int], alpha: float = 0.7) -> np.ndarray:
    """A class colour drawn at ``alpha`` over the hillshade's grey."""
    return alpha * np.array(rgb) + (1 - alpha) * 255 * SHADE


def _mask(img: np.ndarray, rgb: np.ndarray, tol: float = 4) -> np.ndarray:
    return np.all(np.abs(img.astype(float) - rgb) <= tol, axis=2)


def _attr(dom: str, name: str) -> str:
    return html.unescape(re.search(rf'{name}="([^"]*)"', dom).group(1))


def _overlays(dom: str) -> dict[str, tuple[str, str]]:
    """Layer key -> (decoded size recorded by the page, src) of every image overlay in the map."""
    out = {}
    for m in re.finditer(r'<img class="leaflet-image-layer[^"]*sw-layer-([a-z]+)"([^>]*)>', dom):
        src = re.search(r'src="([^"]+)"', m.group(2)).group(1)
        natural = re.search(r'data-natural="([^"]+)"', m.group(2))
        out[m.group(1)] = (natural.group(1) if natural else "", src)
    return out


def test_class_layer_is_drawn_over_the_hillshade_in_its_proportions(rendered) -> None:  # type: ignore[no-untyped-def]
    img, dom = rendered["class"]
    assert img.shape == (900, 1200, 3)
    assert _attr(dom, "data-layer") == "class" and _attr(dom, "data-hillshade") == "1"
    # the blend of each class colour (opacity 0.7 from the map's configuration) over the grey
    # of the hand-computed hillshade is what the screen shows: both layers are drawn, aligned
    cfg = json.loads(re.search(r'id="cfg-utm48n"[^>]*>(.*?)</script>', dom, re.S).group(1))
    assert {spec["opacity"] for spec in cfg["layers"]} == {0.7}
    counts = {k: int(_mask(img, _blend(rgb)).sum()) for k, rgb in RGB.items()}
    assert counts[0] > 20000, counts
    share = {k: v / sum(counts.values()) for k, v in counts.items()}
    for k, want in ((0, 0.4), (1, 0.3), (2, 0.2), (255, 0.1)):
        assert share[k] == pytest.approx(want, abs=0.02), share
    # the stripes run west to east: low left of medium left of high
    row = img[img.shape[0] // 2][None]
    first = {k: int(np.argmax(_mask(row, _blend(RGB[k]))[0])) for k in (0, 1, 2)}
    assert first[0] < first[1] < first[2]
    # without the hillshade the same pixels would be the colour over white
    assert int(_mask(img, 0.7 * np.array(RGB[0]) + 0.3 * 255).sum()) < 100


def test_overlays_are_loaded_and_the_legend_lists_the_classes(rendered) -> None:  # type: ignore[no-untyped-def]
    _, dom = rendered["class"]
    assert re.search(r'<html[^>]*data-sw-ready="1"', dom)
    over = _overlays(dom)
    assert sorted(over) == ["class", "hillshade"]  # one data layer at a time, over the hillshade
    assert over["class"][0] == over["hillshade"][0] == "150x130"
    assert over["class"][1].startswith("data:image/png;base64,")
    legend = re.search(r'<div class="sw-legend" data-zone="utm48n">(.*?)</aside>', dom, re.S).group(1)
    assert re.findall(r'<li data-class="([^"]+)">', legend) == ["low", "medium", "high", "no data"]
    assert "F1-best threshold on validation data" in legend
    assert re.search(r'<div class="ramp" data-layer="hazard" hidden="">', legend)  # no ramp for the class layer
    assert 'class="leaflet-control-layers' in dom
    labels = re.findall(r'<span> ([a-z ]+)</span>', dom)
    assert labels[:5] == ["risk class", "susceptibility", "hazard", "uncertainty", "hillshade"]


def test_switching_the_layer_changes_the_visible_overlay(rendered) -> None:  # type: ignore[no-untyped-def]
    img, dom = rendered["hazard"]
    before = rendered["class"][0]
    assert re.search(r'<html[^>]*data-sw-ready="1"', dom) and _attr(dom, "data-layer") == "hazard"
    over = _overlays(dom)
    assert sorted(over) == ["hazard", "hillshade"] and over["hazard"][0] == "150x130"
    # the overlay the browser shows: transparent exactly where the hazard has no value
    png = Image.open(io.BytesIO(base64.b64decode(over["hazard"][1].split(",", 1)[1])))
    alpha = np.asarray(png.convert("RGBA"))[..., 3]
    assert int((alpha > 0).sum()) == 130 * 135 and (alpha[:, 135:] == 0).all()  # 15 no-data columns of 150
    # the screen changed: the class colours are gone, the hazard ramp rises west to east
    assert int(_mask(img, _blend(RGB[0])).sum()) < 50  # no green in magma
    assert sum(_mask(img, _blend(rgb)).sum() for rgb in RGB.values()) < 0.02 * sum(
        _mask(before, _blend(rgb)).sum() for rgb in RGB.values())
    assert int(np.abs(img.astype(int) - before.astype(int)).max(axis=2).astype(bool).sum()) > 100000
    row = img[img.shape[0] // 2].astype(float)
    on_map = np.flatnonzero(_mask(before[img.shape[0] // 2][None], _blend(RGB[0]))[0] |
                            _mask(before[img.shape[0] // 2][None], _blend(RGB[2]))[0])
    west, east = row[on_map[0]:on_map[0] + 30].mean(), row[on_map[-1] - 30:on_map[-1]].mean()
    assert east > west + 60  # magma: dark at 1e-4, bright at 1
    legend = re.search(r'<div class="sw-legend" data-zone="utm48n">(.*?)</aside>', dom, re.S).group(1)
    assert re.search(r'<div class="ramp" data-layer="hazard">', legend)  # its ramp is shown now
    assert re.search(r'<div class="ramp" data-layer="uncertainty" hidden="">', legend)


def test_lonlat_readout_matches_proj(rendered) -> None:  # type: ignore[no-untyped-def]
    _, dom = rendered["class"]
    js = np.array(json.loads(_attr(dom, "data-corners-js")))
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    xs = [X0, X0 + W * RES, X0 + W * RES, X0]
    ys = [Y1, Y1, Y1 - H * RES, Y1 - H * RES]
    ref = np.array(tr.transform(xs, ys)).T
    np.testing.assert_allclose(js, ref, atol=1e-7)  # 1e-7° ≈ 1 cm
    # the readout starts at the view centre = the grid centre, a medium-class pixel
    assert _attr(dom, "data-probe") == "1"
    assert "1 map pixel = 2 × 2 grid pixels" in dom
    text = re.search(r'<div class="readout" id="sw-readout"[^>]*>(.*?)</div>', dom).group(1)
    m = re.fullmatch(r"view centre: ([\d.]+)° N, ([\d.]+)° E \| E (\d+) N (\d+) \| (\w+)", text)
    assert m, text
    cx, cy = X0 + W * RES / 2, Y1 - H * RES / 2
    assert abs(int(m.group(3)) - cx) <= 10 and abs(int(m.group(4)) - cy) <= 10 and m.group(5) == "medium"
    lon, lat = tr.transform(float(m.group(3)), float(m.group(4)))
    assert float(m.group(1)) == pytest.approx(lat, abs=2e-5) and float(m.group(2)) == pytest.approx(lon, abs=2e-5)


def test_scale_bar_matches_the_drawn_map(rendered) -> None:  # type: ignore[no-untyped-def]
    img, dom = rendered["class"]
    m = re.search(r'<div class="leaflet-control-scale-line" style="width: ([\d.]+)px;">([\d.]+) (k?m)</div>', dom)
    assert m, re.findall(r'leaflet-control-scale[^>]*>[^<]*', dom)
    bar_px, metres = float(m.group(1)), float(m.group(2)) * (1000 if m.group(3) == "km" else 1)
    # independent scale from the screenshot: the low stripe starts the grid, the high one
    # ends 2700 m east of it
    row = img[img.shape[0] // 2][None]
    low, high = np.flatnonzero(_mask(row, _blend(RGB[0]))[0]), np.flatnonzero(_mask(row, _blend(RGB[2]))[0])
    m_per_px = STRIPES[2][1] * RES / (high[-1] - low[0] + 1)
    assert metres / bar_px == pytest.approx(m_per_px, rel=0.03)


def test_zone_switch_shows_the_other_zone_in_its_own_frame(tmp_path: Path) -> None:
    binary = _chromium()
    run = _run_dir(tmp_path)
    # a second zone, 80 x 64 pixels in UTM 49N, without a DEM
    cls = np.zeros((64, 80), dtype=np.uint8)
    coords = {"y": Y1 - (np.arange(64) + 0.5) * RES, "x": 200000.0 + (np.arange(80) + 0.5) * RES}
    ds = xr.Dataset({"risk_class": (("y", "x"), cls), "uncertainty": (("y", "x"), np.full((64, 80), 0.1, np.float32))},
                    coords=coords)
    ds = ds.rio.write_crs("EPSG:32649").rio.write_transform(Affine(RES, 0, 200000.0, 0, -RES, Y1))
    ds.to_zarr(run / "risk.zarr", group="utm49n", mode="a", zarr_format=3, consolidated=False)
    app = typer.Typer()
    app.command()(report)
    res = CliRunner().invoke(app, [str(run)])
    assert res.exit_code == 0, res.output
    assert "note: zone utm49n: no hillshade under the map (no dem variable in risk.zarr, lsi_utm49n.zarr or " \
           "cube_utm49n.zarr)" in res.output
    dom = _browser(binary, tmp_path, "--dump-dom", (run / "report.html").as_uri() + "#zone=utm49n&layer=uncertainty")
    assert dom.returncode == 0, dom.stderr[-2000:]
    dom = dom.stdout
    assert re.search(r'<html[^>]*data-sw-ready="1"', dom)
    assert _attr(dom, "data-zone") == "utm49n" and _attr(dom, "data-layer") == "uncertainty"
    assert _attr(dom, "data-hillshade") == "0"
    over = _overlays(dom)
    assert sorted(over) == ["uncertainty"] and over["uncertainty"][0] == "80x64"
    assert re.search(r'<strong id="sw-crs">WGS 84 / UTM zone 49N \(EPSG:32649\)</strong>', dom)
    assert re.search(r'<div class="sw-legend" data-zone="utm48n" hidden="">', dom)
    assert re.search(r'<div class="sw-legend" data-zone="utm49n">', dom)
    labels = re.findall(r'<span> ([a-z ]+)</span>', dom)
    assert labels[:2] == ["risk class", "uncertainty"]  # this zone's layers only, and no hillshade
    js = np.array(json.loads(_attr(dom, "data-corners-js")))
    ref = Transformer.from_crs(32649, 4326, always_xy=True).transform(200000.0, Y1)
    np.testing.assert_allclose(js[0], ref, atol=1e-7)


def test_report_command_fails_cleanly_without_a_store(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(report)
    res = CliRunner().invoke(app, [str(tmp_path)])
    assert res.exit_code == 2
    assert "no risk.zarr and no lsi_<zone>.zarr" in res.output and "Fix:" in res.output
    assert not (tmp_path / "report.html").exists()
