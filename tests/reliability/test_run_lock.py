"""Two runs on one run folder: the second is refused up front, naming the first, and changes
nothing (it would otherwise rebuild an LSI store the first is still reading)."""

from __future__ import annotations

import os
from datetime import date

import pytest
from typer.testing import CliRunner

from flows import stages
from flows.cli import app
from pipeline.core.config import TimeWindow
from pipeline.core.errors import StoreError
from runkit import bbox_arg
from pipeline.plan.regions import parse_region

WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def test_a_second_run_on_the_same_folder_is_refused_up_front(tmp_path) -> None:  # type: ignore[no-untyped-def]
    region = parse_region(bbox_arg())
    with stages.run_lock(tmp_path, region, WINDOW):
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"), stages.run_lock(tmp_path, region, WINDOW):
            pass
        res = CliRunner().invoke(app, ["run", "--region", bbox_arg(), "--start", "2024-07-01", "--end", "2024-08-31",
                                       "--out", str(tmp_path), "--rain-intensity", "9", "--rain-duration", "1"],
                                 env={"COLUMNS": "250"})
        assert res.exit_code == 2 and "is being written by another slidewatch run" in res.output
        assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["20240701_20240831.lock"]
    with stages.run_lock(tmp_path, region, WINDOW):  # free once the first run ends
        pass
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
