"""A key given inside --stac-url (``?subscription-key=...``) is never stored or printed:
not in run.json, the stores' attributes, the saved items, nor in an error message."""

from __future__ import annotations

from datetime import date

import pystac
from typer.testing import CliRunner

from flows import stages
from flows.cli import app
from pipeline.core.config import CubeConfig, TimeWindow
from pipeline.core.layout import write_run_json
from pipeline.core.provenance import Rain
from tests.tinyregion import FakeSource, make_tiny_region, tiny_region

KEY = "SECRETKEY1234567"
WINDOW = TimeWindow(date(2024, 7, 1), date(2024, 8, 31))


def test_a_key_in_the_stac_url_reaches_no_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"http://fake.invalid/stac?subscription-key={KEY}&collections=x"
    items = make_tiny_region(tmp_path / "cogs")
    for its in items.values():  # items as a STAC API returns them: links back to the API, key included
        for it in its:
            it.add_link(pystac.Link("root", f"{url}&x=1", media_type="application/json"))
    result = stages.cube_stage(tiny_region("keyed"), WINDOW, url, tmp_path / "out", CubeConfig(), chunk=64,
                               source=FakeSource(items))
    rain = Rain(None, None, 1.0, "none")
    stages.lsi_stage(result, rain)
    write_run_json(result.run_dir, stages.run_record(tiny_region("keyed"), WINDOW, url, result, rain))
    leaks = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == []
    assert "collections=x" in (result.run_dir / "run.json").read_text()  # only the key is dropped


def test_a_key_in_the_stac_url_is_not_echoed_in_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:9/stac?subscription-key={KEY}"
    res = CliRunner().invoke(app, ["run", "--region", "demo", "--start", "2024-07-01", "--end", "2024-08-31",
                                   "--stac-url", url, "--out", str(tmp_path)], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "Could not reach" in res.output
    assert KEY not in res.output
