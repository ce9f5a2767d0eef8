"""The CLI end to end on a tiny region served by a real local STAC API, plus bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from pyproj import Transformer
from typer.testing import CliRunner

from flows.cli import app
from pipeline.core.layout import zarr_metadata_file
from pipeline.demo.server import LocalStacServer
from tests.tinyregion import GRID, make_tiny_region

runner = CliRunner()


def _inner_bbox() -> str:
    tr = Transformer.from_crs(GRID.epsg, 4326, always_xy=True)
    minx, miny, maxx, maxy = GRID.bounds
    w, s = tr.transform(minx + 50, miny + 50)
    e, n = tr.transform(maxx - 50, maxy - 50)
    w2, n2 = tr.transform(minx + 50, maxy - 50)
    e2, s2 = tr.transform(maxx - 50, miny + 50)
    return f"{max(w, w2):.6f},{max(s, s2):.6f},{min(e, e2):.6f},{min(n, n2):.6f}"


@pytest.fixture(scope="module")
def tiny_api(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("tinyapi")
    items = make_tiny_region(root / "cogs")
    hrefs = []
    for cid, its in items.items():
        coll = {"type": "Collection", "stac_version": "1.0.0", "id": cid, "description": cid, "license": "CC0-1.0",
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}, "links": []}
        (root / f"{cid}.collection.json").write_text(json.dumps(coll))
        fc = {"type": "FeatureCollection", "features": [it.to_dict() for it in its]}
        (root / f"{cid}.items.json").write_text(json.dumps(fc))
        hrefs += [root / f"{cid}.collection.json", root / f"{cid}.items.json"]
    with LocalStacServer(hrefs) as url:
        yield url


def test_run_writes_a_georeferenced_cube_and_reuses_it(tiny_api, tmp_path):  # type: ignore[no-untyped-def]
    args = ["run", "--region", _inner_bbox(), "--start", "2024-07-01", "--end", "2024-08-31",
            "--stac-url", tiny_api, "--out", str(tmp_path), "--chunk", "64"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (path,) = list(tmp_path.glob("*/*/cube_utm48n.zarr"))
    ds = xr.open_zarr(path, decode_coords="all")
    assert ds.rio.crs.to_epsg() == 32648 and ds.sizes == {"y": 128, "x": 128}
    assert all("units" in v.attrs and "long_name" in v.attrs for v in ds.data_vars.values())
    assert sorted(ds.attrs["input_items"]["sentinel-2-l2a"]) == ["S2_0", "S2_1", "S2_2"]
    assert np.isfinite(ds["B04"].values).mean() > 0.5
    saved = json.loads((path.parent / "items" / "utm48n" / "sentinel-2-l2a.json").read_text())
    assert len(saved["features"]) == 3
    mtime = zarr_metadata_file(path).stat().st_mtime
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0 and "reusing" in res2.output
    assert zarr_metadata_file(path).stat().st_mtime == mtime


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_api, tmp_path):  # type: ignore[no-untyped-def]
    res = runner.invoke(app, ["run", "--region", _inner_bbox(), "--start", "2024-07-01", "--end", "2024-08-31",
                              "--stac-url", tiny_api, "--out", str(tmp_path), "--chunk", "64", "--dry-run"])
    assert res.exit_code == 0, res.output
    for needle in ("dry-run plan", "128×128", "items sentinel-2-l2a: 3", "dask tasks", "estimated bytes read"):
        assert needle in res.output
    # the graph a run submits (the busiest write tile's) is printed, and is part of the whole
    import re
    whole = int(re.search(r"dask tasks: ([\d,]+)", res.output).group(1).replace(",", ""))
    largest = int(re.search(r"largest submitted graph: ([\d,]+) tasks", res.output).group(1).replace(",", ""))
    assert 0 < largest <= whole
    assert not any(tmp_path.rglob("*.zarr"))


def test_all_clouds_fail_cleanly(tmp_path):  # type: ignore[no-untyped-def]
    items = make_tiny_region(tmp_path / "cogs", scl_override=9)
    hrefs = []
    for cid, its in items.items():
        coll = {"type": "Collection", "stac_version": "1.0.0", "id": cid, "description": cid, "license": "CC0-1.0",
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}, "links": []}
        (tmp_path / f"{cid}.c.json").write_text(json.dumps(coll))
        (tmp_path / f"{cid}.i.json").write_text(json.dumps({"type": "FeatureCollection", "features": [it.to_dict() for it in its]}))
        hrefs += [tmp_path / f"{cid}.c.json", tmp_path / f"{cid}.i.json"]
    with LocalStacServer(hrefs) as url:
        res = runner.invoke(app, ["run", "--region", _inner_bbox(), "--start", "2024-07-01", "--end", "2024-08-31",
                                  "--stac-url", url, "--out", str(tmp_path / "out"), "--chunk", "64"])
    assert res.exit_code == 2
    assert "No cloud-free Sentinel-2 pixel" in res.output
    assert not list((tmp_path / "out").rglob("*.zarr"))  # only a .partial, never a store that looks complete


@pytest.mark.parametrize("args,needle", [
    (["--region", "atlantis", "--start", "2024-01-01", "--end", "2024-02-01"], "Unknown region"),
    (["--region", "10,50,9,51", "--start", "2024-01-01", "--end", "2024-02-01"], "inverted"),
    (["--region", "demo", "--start", "2024-13-01", "--end", "2024-02-01"], "not a date"),
    (["--region", "demo", "--start", "2024-03-01", "--end", "2024-02-01"], "before --start"),
    (["--region", "demo", "--start", "2024-01-01", "--end", "2024-02-01", "--max-cloud", "0"], "--max-cloud"),
    (["--region", "demo", "--start", "2024-01-01", "--end", "2024-02-01", "--stac-url", "http://127.0.0.1:9/stac"], "Could not reach"),
    (["--region", "demo", "--start", "2024-01-01", "--end", "2024-02-01", "--calibration", "nope.json"], "does not exist"),
])
def test_bad_input_gives_one_line_and_exit_2(args, needle, tmp_path):  # type: ignore[no-untyped-def]
    res = runner.invoke(app, ["run", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Fix:" in res.output
    assert not any(tmp_path.rglob("*.zarr"))


def test_help_is_useful():
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0
    for opt in ("--region", "--start", "--end", "--stac-url", "--out", "--dry-run", "--device", "--batch-size"):
        assert opt in res.output

