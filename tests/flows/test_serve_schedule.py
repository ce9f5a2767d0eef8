"""`slidewatch serve` out of the box: without PREFECT_API_URL it starts a local Prefect
server (API and scheduler), a short interval schedule really fires the watch, and the
server is stopped when the command ends (issue 17)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.demo.storm import make_synthetic_storm, write_precipitation_zarr

REPO = Path(__file__).resolve().parents[2]
BOX = (103.0, 29.7, 103.3, 30.0)
WAIT_S = 240  # server start, the first scheduled run and the run itself, on a busy 2-core machine


def _post(url: str, doc: dict) -> list:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3):  # noqa: S310 - loopback
            return True
    except OSError:
        return False


def test_serve_starts_a_server_whose_schedule_fires_and_stops_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    ds = make_synthetic_storm(BOX, str(now - timedelta(days=2)), str(now + timedelta(hours=2)), seed=1,
                              peak_mm_h=0.0, resolution=0.1)
    store = write_precipitation_zarr(ds, tmp_path / "imerg.zarr")
    (tmp_path / "w.yaml").write_text("regions:\n  - name: calm\n    region: 103.10,29.80,103.20,29.90\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), SLIDEWATCH_DASK_ADDRESS="threads", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from flows.cli import main; main()", "serve", "--watchlist", str(tmp_path / "w.yaml"),
         "--out", str(tmp_path / "out"), "--precip", str(store), "--forecast", "none", "--hours", "24",
         "--interval", "5"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = None
    try:
        deadline = time.monotonic() + WAIT_S
        runs: list = []
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(3)
            text = Path(log.name).read_text()
            if url is None:
                m = re.search(r"Prefect API: (http://127\.0\.0\.1:\d+/api) \(a local Prefect server started here", text)
                url = m.group(1) if m else None
                continue
            runs = _post(f"{url}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
            if any(r.get("auto_scheduled") and r.get("deployment_id") for r in runs):
                break
        output = Path(log.name).read_text()
        assert url is not None, output[-3000:]
        assert any(r.get("auto_scheduled") and r.get("deployment_id") for r in runs), \
            f"no scheduled run completed in {WAIT_S} s:\n{output[-3000:]}"
        assert (tmp_path / "out" / ".prefect" / "server.log").is_file()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
    deadline = time.monotonic() + 30
    while url is not None and _alive(url) and time.monotonic() < deadline:
        time.sleep(1)
    assert url is None or not _alive(url), "the local Prefect server outlived `slidewatch serve`"
