"""Execute the notebooks in ``notebooks/`` against a small but complete run.

One run (``tests/notebooks/smallrun.py``: the real demo generator on 256 px, served by the
local STAC API, cube → rain → LSI → tiny U-Net → ``risk.zarr`` → ``run.json``) is built
per module; each notebook runs in a fresh ipykernel (the venv's own Python) with
environment variables pointing at it, cwd = the repository root. A cell error fails the
test with the cell's traceback; the checks compare what the notebooks print with values
read here from the stores, or recomputed by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("torch")  # the ml extra: training and the risk stage

from tests.notebooks.smallrun import CHUNK, SmallRun, build_small_run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "slidewatch-nbtest"
CELL_TIMEOUT = 300  # seconds per cell; the slowest (training, the cluster run) take ~10-30 s


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A kernelspec that runs this interpreter (the venv's Python), found through
    ``JUPYTER_PATH`` so that no user- or system-wide ``python3`` kernel is picked instead."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "slidewatch (tests)", "language": "python",
    }))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):  # type: ignore[no-untyped-def]
    run = build_small_run(tmp_path_factory.mktemp("nbrun"))
    yield run
    run.close()


def _execute(name: str, env: dict[str, str]) -> dict:
    """Run one notebook top to bottom in a fresh kernel; returns the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    kernel_env = {k: v for k, v in os.environ.items() if not k.startswith("SLIDEWATCH_") and k != "MPLBACKEND"}
    kernel_env.update(env)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute(env=kernel_env)
    return nb


def _stdout(nb: dict) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _images(nb: dict) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebooks_are_stored_without_outputs() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_explore_a_run.ipynb", "02_train_and_evaluate.ipynb", "03_dask_cluster.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert "os.environ.get(" in code[0].source, name  # every path/size comes from the environment


def test_explore_a_run(small_run: SmallRun, kernel_path: Path) -> None:
    import xarray as xr

    import xarray as xr

    from pipeline.factors.lsi import lsi_score

    nb = _execute("01_explore_a_run.ipynb", {"SLIDEWATCH_RUN": str(small_run.run_dir)})
    out = _stdout(nb)
    assert "CRS: EPSG:32648" in out
    assert "same grid as the LSI store: True" in out
    assert "checkpoint sha256 matches the file: True" in out
    assert _images(nb) >= 3  # maps, quality flags, contributions

    row, col = (int(v) for v in re.search(r"pixel row (\d+), col (\d+)", out).groups())
    printed = {m[0]: float(m[1]) for m in re.findall(r"contrib_(\w+)\s*= ([+-]\d+\.\d+)", out)}
    score = float(re.search(r"score = R_m \* S = ([+-]\d+\.\d+)", out).group(1))

    lsi = xr.open_zarr(small_run.lsi_path, consolidated=False)
    assert set(printed) == {"slope", "dem", "ndvi", "ndwi", "smi", "ndbi"}
    for name, value in printed.items():
        assert value == pytest.approx(float(lsi[f"contrib_{name}"].values[row, col]), abs=1e-6), name
    assert lsi.attrs["rain_multiplier"] is None  # the rain-free LSI (hazard_mode "decoupled")
    r_m = 1.0
    assert sum(printed.values()) * r_m == pytest.approx(float(lsi_score(xr.open_zarr(small_run.lsi_path)).values[row, col]), abs=1e-4)
    assert score == pytest.approx(sum(printed.values()) * r_m, abs=1e-5)
    # Hand-computed LSI from the documented formula: sigmoid(k (S - c)), k = 10, c = 0.30.
    assert 1 / (1 + math.exp(-10.0 * (score - 0.30))) == pytest.approx(float(lsi["lsi"].values[row, col]), abs=1e-4)

    # The pixel is the highest-risk one: highest LSI among the U-Net's high class, else the
    # LSI's high class, else everywhere.
    risk = xr.open_zarr(small_run.run_dir / "risk.zarr", group="utm48n", consolidated=False)
    values = lsi["lsi"].values
    for mask in (risk["risk_class"].values == 2, lsi["risk_class"].values == 2, np.isfinite(values)):
        if mask.any():
            break
    assert values[row, col] == np.nanmax(np.where(mask, values, np.nan))


def test_train_and_evaluate(small_run: SmallRun, kernel_path: Path, tmp_path: Path) -> None:
    from models.checkpoint import read_metadata
    from models.networks import DEFAULT_CHANNELS

    model_dir = tmp_path / "model"
    nb = _execute("02_train_and_evaluate.ipynb", {
        "SLIDEWATCH_RUN": str(small_run.run_dir), "SLIDEWATCH_ZONE": "utm48n",
        "SLIDEWATCH_INVENTORY": str(small_run.layout.truth_polygons),  # polygons, as a real inventory
        "SLIDEWATCH_MODEL_DIR": str(model_dir),
        "SLIDEWATCH_BASE_WIDTH": "4", "SLIDEWATCH_DEPTH": "2", "SLIDEWATCH_EPOCHS": "2",
        "SLIDEWATCH_CHIPS_PER_EPOCH": "32", "SLIDEWATCH_CHIP_SIZE": "64", "SLIDEWATCH_BLOCK_SIZE": "64",
        "SLIDEWATCH_TORCH_THREADS": "1",
    })
    out = _stdout(nb)
    ckpt = model_dir / "model.safetensors"
    assert ckpt.is_file()
    meta = read_metadata(ckpt)
    assert meta.channels == tuple(DEFAULT_CHANNELS)
    assert meta.provenance["config"]["base_width"] == 4 and meta.provenance["config"]["epochs"] == 2
    assert f"checkpoint sha256: {hashlib.sha256(ckpt.read_bytes()).hexdigest()}" in out
    assert _images(nb) >= 1

    # The table lists exactly the test blocks of the recorded split (code 2), then "overall".
    split = json.loads((model_dir / "training.json").read_text())["split"]
    assert split["block_size"] == 64 and split["shape"] == [256, 256]
    test_blocks = [f"r{r}c{c}" for r, line in enumerate(split["assignment"]) for c, code in enumerate(line) if code == 2]
    table = out.split("checkpoint sha256:")[1].splitlines()[2:]
    assert [line.split()[0] for line in table if line.strip()] == [*test_blocks, "overall"]
    assert len(test_blocks) == 3  # 20 % of 16 blocks


def test_dask_cluster(small_run: SmallRun, kernel_path: Path, tmp_path: Path) -> None:
    import xarray as xr

    out_root = tmp_path / "out"
    nb = _execute("03_dask_cluster.ipynb", {
        "SLIDEWATCH_STAC_URL": small_run.stac_url, "SLIDEWATCH_OUT": str(out_root),
        "SLIDEWATCH_DEMO_DATA": str(small_run.layout.root),
        "SLIDEWATCH_BBOX": ",".join(repr(v) for v in small_run.region.bbox),
        "SLIDEWATCH_REGION_NAME": "smalldemo-cluster", "SLIDEWATCH_CHUNK": str(CHUNK),
        "SLIDEWATCH_PRECIP": str(small_run.layout.precipitation),
    })
    out = _stdout(nb)
    assert int(re.search(r"tasks run on the cluster: (\d+)", out).group(1)) > 0
    # tile progress for both stages, counted up to the total
    for stage in ("utm48n", "utm48n LSI"):
        counts = re.findall(rf"\[{stage}\] tile \S+: (\d+)/(\d+)", out)
        assert counts and counts[-1][0] == counts[-1][1], (stage, counts)
    assert "closed" in out

    # Independent reference: the same stages run on the threaded scheduler by the fixture.
    lsi_path = out_root / "smalldemo-cluster" / "20240701_20240831" / "lsi_utm48n.zarr"
    got = xr.open_zarr(lsi_path, consolidated=False)
    ref = xr.open_zarr(small_run.lsi_path, consolidated=False)
    assert got.attrs["slidewatch_complete"] is True
    for name in ("lsi", "slope", "ndvi", "smi", "quality", "risk_class"):
        np.testing.assert_allclose(got[name].values, ref[name].values, atol=1e-6, equal_nan=True, err_msg=name)
    shares = {k: float(v) for k, v in re.findall(r"'(low|medium|high)': ([\d.]+)", out)}
    classes = ref["risk_class"].values
    for value, name in ((0, "low"), (1, "medium"), (2, "high")):
        assert shares[name] == pytest.approx((classes == value).mean(), abs=1e-4)
