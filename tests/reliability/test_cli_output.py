"""What a user sees on stderr: the real ``slidewatch run`` in a subprocess, against a real
local STAC API whose assets are served by the fault server and signed with a planted token.

A failed default run prints its one-line error and at most a few lines above it (no Dask
tracebacks); a good one prints no Dask log lines; with ``-v`` Dask's logs are back; and no
run, failed or good, quiet or verbose, prints the token or the subscription key.
"""

from __future__ import annotations

import pytest

from faultserver import FaultPlan, FaultServer
from pipeline.demo.server import LocalStacServer
from runkit import bbox_arg, http_items, run_cli, stac_api_files

TOKEN = "PLANTED-TOKEN-7f3a"
KEY = "sk-PLANTED-KEY-51c9"
#: Short GDAL and tile retries, a small retry time bound: a failing run ends in seconds.
FAST = {
    "SLIDEWATCH_GDAL_HTTP_TIMEOUT": "1",
    "SLIDEWATCH_GDAL_HTTP_RETRY_DELAY": "0.1",
    "SLIDEWATCH_GDAL_HTTP_MAX_RETRY": "2",
    "SLIDEWATCH_READ_RETRY_SECONDS": "3",
    "PC_SDK_SUBSCRIPTION_KEY": KEY,
}
#: The most lines a failed default run may print: search (2), progress (1), retry warnings
#: (one per retry, 3 at most) and the error.
MAX_FAILED_LINES = 8


@pytest.fixture(scope="module")
def api(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    """(fault server, STAC API URL): the tiny region's items served by a real STAC API, their
    assets by one fault server whose plan each test sets."""
    root = tmp_path_factory.mktemp("cliapi")
    with FaultServer(tiny.cogs, FaultPlan(), max_seconds=600) as srv:
        with LocalStacServer(stac_api_files(http_items(tiny.items, srv), root)) as url:
            yield srv, url


def _run(api, out, *, plan: FaultPlan, before: tuple[str, ...] = (), after: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """``slidewatch [before] run ... [after]`` on the tiny region with ``plan`` on the server."""
    srv, url = api
    srv.plan = plan
    return run_cli([*before, "run", "--region", bbox_arg(), "--start", "2024-07-01", "--end", "2024-08-31",
                    "--stac-url", url, "--out", str(out), "--chunk", "32", *after], token=TOKEN, env=FAST)


def _no_secret(proc) -> None:  # type: ignore[no-untyped-def]
    for text in (proc.stdout, proc.stderr):
        assert TOKEN not in text and KEY not in text and "token=" not in text


def test_failed_default_run_prints_the_error_and_a_few_lines(api, tmp_path):  # type: ignore[no-untyped-def]
    proc = _run(api, tmp_path, plan=FaultPlan(always_fail=("s2/1/B04.tif",), always_status=503))
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and "503" in lines[-1] and "s2/1/B04.tif" in lines[-1]
    assert len(lines) <= MAX_FAILED_LINES, f"{len(lines)} lines on stderr:\n" + "\n".join(lines[:40])
    assert "Traceback" not in proc.stderr and "distributed" not in proc.stderr
    _no_secret(proc)


def test_good_default_run_prints_no_dask_logs(api, tmp_path):  # type: ignore[no-untyped-def]
    proc = _run(api, tmp_path, plan=FaultPlan())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed" not in proc.stderr and "INFO" not in proc.stderr and "dashboard" not in proc.stderr
    assert len(proc.stderr.splitlines()) <= 12, proc.stderr
    _no_secret(proc)


def test_verbose_failed_run_logs_dask_without_secrets_and_dashboard_on_loopback(api, tmp_path):  # type: ignore[no-untyped-def]
    proc = _run(api, tmp_path, plan=FaultPlan(always_fail=("s2/1/B04.tif",), always_status=503),
                before=("-v",), after=("--dashboard",))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "INFO distributed" in proc.stderr  # -v keeps Dask's logs ...
    assert "Compute Failed" in proc.stderr  # ... the failing tasks' records included ...
    _no_secret(proc)  # ... and they carry no token
    dash = [ln for ln in proc.stderr.splitlines() if ln.startswith("dashboard: ")]
    assert dash and dash[0].startswith("dashboard: http://127.0.0.1:"), dash
