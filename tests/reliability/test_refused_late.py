"""Refused input that can only be noticed after the cube and LSI stages (a model whose
channels the LSI store lacks) changes nothing on disk: ``run.json`` still names the model
that made the outputs, and the finished mosaic stays finished (issue 15, item 8)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import pipeline.acquire.catalog
from flows.cli import app
from runkit import bbox_arg, snapshot
from tests.tinyregion import FakeSource, make_tiny_region

torch = pytest.importorskip("torch")
runner = CliRunner()


def _checkpoint(path, channels):  # type: ignore[no-untyped-def]
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import EnhancedUNet

    torch.manual_seed(0)
    n = len(channels)
    return save_checkpoint(path, EnhancedUNet(tuple(channels), base_width=4, depth=2),
                           NormStats((0.0,) * n, (1.0,) * n))


def test_model_refused_after_the_lsi_leaves_run_json_and_mosaic_unchanged(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from models.networks import DEFAULT_CHANNELS

    items = make_tiny_region(tmp_path / "cogs")
    monkeypatch.setenv("SLIDEWATCH_DASK_ADDRESS", "threads")
    monkeypatch.setattr(pipeline.acquire.catalog.StacApiSource, "open",
                        classmethod(lambda cls, url, timeout=30.0: FakeSource(items)))
    good = _checkpoint(tmp_path / "good.safetensors", DEFAULT_CHANNELS)
    # a valid checkpoint, but of a channel the LSI store does not hold
    odd = _checkpoint(tmp_path / "odd.safetensors", ("slope", "dem", "ndvi", "soil_moisture_index"))
    out = tmp_path / "out"
    args = ["run", "--region", bbox_arg(), "--start", "2024-07-01", "--end", "2024-08-31", "--out", str(out),
            "--chunk", "32", "--rain-intensity", "20", "--rain-duration", "2"]
    res = runner.invoke(app, [*args, "--checkpoint", str(good)])
    assert res.exit_code == 0, res.output
    (run_json,) = out.rglob("run.json")
    assert json.loads(run_json.read_text())["checkpoint"] == str(good)
    before = snapshot(out)

    res = runner.invoke(app, [*args, "--checkpoint", str(odd)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "soil_moisture_index" in text and "Fix:" in text, res.output
    assert "Traceback" not in res.output
    after = snapshot(out)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"refused input changed {changed}"
    assert json.loads(run_json.read_text())["checkpoint"] == str(good)
    assert not [p for p in after if p.endswith(".partial") or ".partial/" in p]
