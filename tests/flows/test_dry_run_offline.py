"""`slidewatch run --dry-run` shows the grid plan even when the STAC API cannot be reached."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from flows.cli import app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dry_run_without_the_stac_api_prints_the_grid_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{_closed_port()}/"
    res = CliRunner().invoke(app, ["run", "--region", "demo", "--start", "2024-07-01", "--end", "2024-08-31",
                                   "--stac-url", url, "--out", str(tmp_path), "--dry-run"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "zone utm48n (EPSG:32648)" in out and "grid: 2048×2048 px" in out
    assert "chunks: 4×4 = 16 of 512×512 px" in out and "write tiles: 4 of 2×2 chunks" in out
    assert "need the STAC API, which could not be reached" in out and "dask tasks of the LSI stage:" in out
    assert not any(tmp_path.iterdir())  # nothing written
