"""A Prefect API for ``slidewatch serve``: the one named by ``PREFECT_API_URL``, or a local
Prefect server (API and scheduler, SQLite database under the output folder) started on
127.0.0.1 for as long as the command runs.

A schedule needs a Prefect server whose scheduler service creates the flow runs; Prefect's
temporary in-process server (what a flow gets without ``PREFECT_API_URL``) runs none, so
a served deployment never fires there. Wiring only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import SlidewatchError

__all__ = ["SERVER_START_TIMEOUT_S", "prefect_api"]

#: Seconds a local server has to answer ``/api/health`` (it migrates its database first).
SERVER_START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_api(home: Path, *, timeout_s: float = SERVER_START_TIMEOUT_S) -> Iterator[tuple[str, bool]]:
    """Yield ``(api_url, started_here)``.

    With ``PREFECT_API_URL`` set, that server is used as it is. Otherwise ``prefect server
    start`` runs on 127.0.0.1 (a free port, no UI) with ``PREFECT_HOME=home`` (its SQLite
    database and ``server.log`` there), the body runs with ``PREFECT_API_URL`` pointing at
    it, and the server is stopped when the body ends, however it ends.

    Raises:
        SlidewatchError: the local server did not answer within ``timeout_s`` seconds.
    """
    existing = os.environ.get("PREFECT_API_URL", "").strip()
    if existing:
        yield existing, False
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SlidewatchError(
                        f"The local Prefect server did not start (see {log_path}).",
                        "start one yourself (`prefect server start`) and set PREFECT_API_URL to its /api URL.",
                    )
                time.sleep(1.0)
            with temporary_settings({PREFECT_API_URL: url}):
                yield url, True
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
