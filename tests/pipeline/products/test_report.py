"""pipeline.products.report: the offline HTML report of a run, checked against hand counts.

Each test builds a small synthetic run directory (a ``risk.zarr`` with one group per UTM
zone, georeferenced with rioxarray, plus ``run.json``) and reads the HTML back.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from PIL import Image

from pipeline.core.errors import InputDataError, SlidewatchError, StoreError
from pipeline.products.report import block_max_class, write_report

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
}
ALERT = {"intensity_mm_h": 12.5, "duration_days": 2.25, "threshold": "I = 2.20 D^-0.44 (Guzzetti 2008)",
         "time": "2024-08-30T06:00:00Z"}


def _classes(seed: int = 3, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cls = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), p=[0.5, 0.25, 0.15, 0.10], size=(h, w))
    cls[:40, :60] = 2  # a high-risk patch in the north-west cell
    cls[200:, 250:] = 255  # a no-data corner
    return cls


def _dataset(cls: np.ndarray, x0: float = X0, epsg: int = 32648, lsi_only: bool = False) -> xr.Dataset:
    h, w = cls.shape
    rng = np.random.default_rng(11)
    value = rng.random((h, w)).astype(np.float32)
    value[cls == 255] = np.nan
    quality = np.where(cls == 255, 64, 0).astype(np.uint8)
    quality[::7, ::5] |= 1
    coords = {"y": Y1 - (np.arange(h) + 0.5) * RES, "x": x0 + (np.arange(w) + 0.5) * RES}
    data = {"risk_class": (("y", "x"), cls), "quality": (("y", "x"), quality),
            "lsi": (("y", "x"), value if lsi_only else np.clip(value * 0.9, 0, 1))}
    if not lsi_only:
        data["probability"] = (("y", "x"), value)
    ds = xr.Dataset(data, coords=coords)
    ds = ds.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(Affine(RES, 0, x0, 0, -RES, Y1))
    ds = ds.rio.write_coordinate_system()
    for v in ds.data_vars:  # as pipeline.store.tiles.georeference does
        ds[v].attrs["grid_mapping"] = "spatial_ref"
        ds[v].encoding.pop("grid_mapping", None)
    ds["risk_class"].attrs.update(flag_values=[0, 1, 2], flag_meanings="low medium high")
    ds.attrs = dict(ATTRS)
    return ds.chunk({"y": 128, "x": 128})


def make_run(
    root: Path, *, alert: dict | None = ALERT, zones: tuple[str, ...] = ("utm48n",)
) -> tuple[Path, np.ndarray]:
    run = root / "sichuan" / "20240701_20240831"
    run.mkdir(parents=True)
    cls = _classes()
    for k, zone in enumerate(zones):
        ds = _dataset(cls if k == 0 else _classes(5, 64, 80), epsg=32648 + k, x0=X0 if k == 0 else 200000.0)
        ds.to_zarr(run / "risk.zarr", group=zone, mode="w" if k == 0 else "a", zarr_format=3, consolidated=False)
    (run / "run.json").write_text(json.dumps({"region": ATTRS["region"], "time_window": ATTRS["time_window"],
                                              "alert": alert, "slidewatch_version": "0.1.0-test"}))
    return run, cls


def _rows(page: str) -> dict[str, tuple[int, float, str]]:
    """data-class -> (pixels, km², the row's HTML) of the first class table."""
    out = {}
    for m in re.finditer(r'<tr class="cls" data-class="([^"]+)" data-px="(\d+)" data-km2="([^"]+)">(.*?)</tr>', page):
        out.setdefault(m.group(1), (int(m.group(2)), float(m.group(3)), m.group(4)))
    return out


def _png(page: str) -> np.ndarray:
    b64 = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _cfg(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="cfg-utm48n">(.*?)</script>', page, re.S).group(1))


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


def test_no_external_resources(report) -> None:  # type: ignore[no-untyped-def]
    page = report[1]
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", page, re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page, re.I)
    refs += re.findall(r"""@import\s+(?:url\()?\s*["']?([^"');\s]+)""", page, re.I)
    assert refs, "the map image should be referenced by src="
    external = [r for r in refs if re.match(r"(?:https?:)?//", r.strip(), re.I)]
    assert external == []
    assert all(r.startswith("data:") for r in refs)
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"@font-face", page, re.I)


def test_legend_scalebar_map_and_crs(report) -> None:  # type: ignore[no-untyped-def]
    page = report[1]
    legend = re.search(r'<ul class="legend">(.*?)</ul>', page, re.S).group(1)
    for name, colour in (("low", "#1a9850"), ("medium", "#fd8d3c"), ("high", "#d73027"), ("no data", "#9e9e9e")):
        assert re.search(rf'background:{colour}"></span>{name}</li>', legend), name
    assert 'class="scalebar"' in page and "<canvas" in page
    assert "WGS 84 / UTM zone 48N (EPSG:32648)" in page
    for control in ('data-act="in"', 'data-act="out"', 'data-act="reset"', '"wheel"', '"+"', '"-"'):
        assert control in page
    cfg = _cfg(page)
    assert cfg["factor"] == 1 and cfg["px_x"] == 10.0 and cfg["utm"] == [48, False]
    assert (cfg["iw"], cfg["ih"]) == (W, H)


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


def test_mean_probability_where_present(report) -> None:  # type: ignore[no-untyped-def]
    _, page, cls, run = report
    prob = xr.open_zarr(run / "risk.zarr", group="utm48n")["probability"].values.astype(np.float64)
    mean = np.nanmean(prob)
    assert f'data-mean-name="probability" data-mean="{mean:.4f}"' in page
    high_mean = prob[cls == 2].mean()
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
    cfg = json.loads(re.search(r'id="cfg-laea">(.*?)</script>', page, re.S).group(1))
    assert cfg["utm"] is None and len(cfg["nodes"]) == 9 and len(cfg["nodes"][0]) == 9
    tr = Transformer.from_crs(3035, 4326, always_xy=True)
    np.testing.assert_allclose(cfg["nodes"][0][0], tr.transform(x0, Y1), atol=1e-9)
    np.testing.assert_allclose(cfg["nodes"][8][8], tr.transform(x0 + W * RES, Y1 - H * RES), atol=1e-9)
    assert "cubic interpolation between 9 × 9 lon/lat nodes" in page and "(EPSG:3035)" in page
