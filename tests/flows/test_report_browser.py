"""The HTML report rendered by a real headless Chromium: the map is drawn, the script runs.

Also exercises ``flows.report_command.report`` through typer. Skips (with the reason)
where no ``chromium``/``chromium-browser`` binary is installed; on Debian/Ubuntu:
``apt-get install -y chromium`` (``.ci/run`` does this).
"""

from __future__ import annotations

import html
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

H, W, RES, X0, Y1, EPSG = 260, 300, 10.0, 320000.0, 3309440.0, 32648
# vertical stripes: 40 % low, 30 % medium, 20 % high, 10 % no data (by area)
STRIPES = ((0, 120, 0), (120, 210, 1), (210, 270, 2), (270, 300, 255))
RGB = {0: (0x1A, 0x98, 0x50), 1: (0xFD, 0x8D, 0x3C), 2: (0xD7, 0x30, 0x27), 255: (0x9E, 0x9E, 0x9E)}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless browser test needs Chromium: no `chromium` or `chromium-browser` on PATH "
                "(install Debian's package: apt-get install -y chromium)")


def _run_dir(root: Path) -> Path:
    run = root / "demo" / "20240701_20240831"
    cls = np.empty((H, W), dtype=np.uint8)
    for c0, c1, k in STRIPES:
        cls[:, c0:c1] = k
    coords = {"y": Y1 - (np.arange(H) + 0.5) * RES, "x": X0 + (np.arange(W) + 0.5) * RES}
    prob = np.where(cls == 255, np.nan, cls / 2.0).astype(np.float32)
    ds = xr.Dataset({"risk_class": (("y", "x"), cls), "probability": (("y", "x"), prob)}, coords=coords)
    ds = ds.rio.write_crs(f"EPSG:{EPSG}").rio.write_transform(Affine(RES, 0, X0, 0, -RES, Y1))
    ds.attrs = {"region": "demo", "time_window": ["2024-07-01", "2024-08-31"], "slidewatch_complete": True}
    run.mkdir(parents=True)
    ds.to_zarr(run / "risk.zarr", group="utm48n", zarr_format=3, consolidated=False)
    (run / "run.json").write_text(json.dumps({"alert": {"intensity_mm_h": 9.0, "duration_days": 1.5}}))
    return run


def _browser(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           "--force-color-profile=srgb", "--force-device-scale-factor=1", f"--user-data-dir={tmp / 'profile'}",
           "--virtual-time-budget=5000", "--window-size=1200,900", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):  # type: ignore[no-untyped-def]
    binary = _chromium()
    tmp = tmp_path_factory.mktemp("browser")
    run = _run_dir(tmp)
    app = typer.Typer()
    app.command()(report)
    # --max-pixels 150: the 300-px grid is drawn from a 2x block-reduced image (150 x 130)
    res = CliRunner().invoke(app, [str(run), "--out", str(run / "exports" / "report.html"), "--max-pixels", "150"])
    assert res.exit_code == 0, res.output
    page = run / "exports" / "report.html"
    assert str(page) in res.output.replace("\n", "")
    shot = tmp / "shot.png"
    proc = _browser(binary, tmp, f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    dom = _browser(binary, tmp, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    zoomed = _browser(binary, tmp, "--dump-dom", page.as_uri() + "#zoom=4")
    return np.asarray(Image.open(shot).convert("RGB")), dom.stdout, zoomed.stdout


def _count(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 2) -> int:
    return int(np.count_nonzero(np.all(np.abs(img.astype(int) - rgb) <= tol, axis=2)))


def test_screenshot_shows_the_classes_in_their_proportions(rendered) -> None:  # type: ignore[no-untyped-def]
    img = rendered[0]
    assert img.shape == (900, 1200, 3)
    packed = (img[..., 0].astype(np.uint32) << 16) | (img[..., 1].astype(np.uint32) << 8) | img[..., 2]
    assert len(np.unique(packed)) > 20  # not blank: map, text, header and legend
    counts = {k: _count(img, rgb) for k, rgb in RGB.items()}
    assert counts[0] > 20000, counts  # the map is drawn, not only the legend swatches
    share = {k: v / sum(counts.values()) for k, v in counts.items()}
    for k, want in ((0, 0.4), (1, 0.3), (2, 0.2), (255, 0.1)):
        assert share[k] == pytest.approx(want, abs=0.02), share
    # the stripes run west to east: low left of medium left of high
    rows = img[img.shape[0] // 2]
    first = {k: int(np.argmax(np.all(np.abs(rows.astype(int) - RGB[k]) <= 2, axis=1))) for k in (0, 1, 2)}
    assert first[0] < first[1] < first[2]


def _attr(dom: str, name: str) -> str:
    return html.unescape(re.search(rf'{name}="([^"]*)"', dom).group(1))


def _scalebar(dom: str) -> tuple[float, float]:
    m = re.search(r'<div class="scalebar" data-metres="([^"]+)" data-px="([^"]+)"', dom)
    return float(m.group(1)), float(m.group(2))


def test_script_ran_and_lonlat_matches_proj(rendered) -> None:  # type: ignore[no-untyped-def]
    dom = rendered[1]
    assert re.search(r'<html[^>]*data-sw-ready="1"', dom)
    assert 'data-ready="1"' in dom and not re.search(r'<div[^>]*data-error=', dom)
    js = np.array(json.loads(_attr(dom, "data-corners-js")))
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    xs = [X0, X0 + W * RES, X0 + W * RES, X0]
    ys = [Y1, Y1, Y1 - H * RES, Y1 - H * RES]
    ref = np.array(tr.transform(xs, ys)).T
    np.testing.assert_allclose(js, ref, atol=1e-7)  # 1e-7° ≈ 1 cm
    # the cursor readout starts at the view centre = the grid centre, a medium-class pixel
    assert _attr(dom, "data-probe") == "1"
    assert "1 map pixel = 2 × 2 grid pixels" in dom
    text = re.search(r'<div class="readout"[^>]*>(.*?)</div>', dom).group(1)
    m = re.fullmatch(r"view centre: ([\d.]+)° N, ([\d.]+)° E \| E (\d+) N (\d+) \| (\w+)", text)
    assert m, text
    cx, cy = X0 + W * RES / 2, Y1 - H * RES / 2
    lon, lat = tr.transform(cx, cy)
    assert float(m.group(1)) == pytest.approx(lat, abs=2e-5) and float(m.group(2)) == pytest.approx(lon, abs=2e-5)
    assert (int(m.group(3)), int(m.group(4)), m.group(5)) == (cx, cy, "medium")


def _longest_dark_run(img: np.ndarray) -> int:
    dark = np.all(img <= 0x50, axis=2)
    best = 0
    for row in dark:
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        if edges.size:
            best = max(best, int((edges[1::2] - edges[::2]).max()))
    return best


def test_scale_bar_matches_the_drawn_map_and_follows_zoom(rendered) -> None:  # type: ignore[no-untyped-def]
    img, dom, zoomed = rendered
    metres, px = _scalebar(dom)
    assert metres / 10 ** np.floor(np.log10(metres)) in (1.0, 2.0, 5.0) and 48 <= px <= 120
    # independent scale from the screenshot: the drawn map spans the grid's 3000 m
    row = img[img.shape[0] // 2]
    on_map = np.zeros(row.shape[0], dtype=bool)
    for rgb in RGB.values():
        on_map |= np.all(np.abs(row.astype(int) - rgb) <= 2, axis=1)
    cols = np.flatnonzero(on_map)
    m_per_px = W * RES / (cols[-1] - cols[0] + 1)
    col = img[:, cols[0] + 2].astype(int)
    map_rows = np.flatnonzero(np.all(np.abs(col - RGB[0]) <= 2, axis=1))
    # the scale bar sits bottom-left inside the map frame, beside the image (fit leaves margins)
    left = img[map_rows[0]:map_rows[-1] + 1, : cols[0]]
    bar_metres = _longest_dark_run(left) * m_per_px
    nice = 10 ** np.floor(np.log10(bar_metres)) * np.array([1, 2, 5, 10])
    assert np.min(np.abs(nice - bar_metres) / nice) < 0.03, bar_metres
    # the bar follows the zoom: #zoom=4 gives 4x fewer metres per screen pixel
    zm, zp = _scalebar(zoomed)
    assert _attr(zoomed, "data-zoom") == "4.0000"
    assert (zm / zp) == pytest.approx((metres / px) / 4, rel=1e-3)


def test_report_command_fails_cleanly_without_a_store(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(report)
    res = CliRunner().invoke(app, [str(tmp_path)])
    assert res.exit_code == 2
    assert "no risk.zarr and no lsi_<zone>.zarr" in res.output and "Fix:" in res.output
    assert not (tmp_path / "report.html").exists()
