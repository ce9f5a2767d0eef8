"""Start and stop a local STAC API (``rustac serve``) over the demo items, on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import requests

from pipeline.core.errors import CatalogError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rustac() -> str:
    exe = Path(sys.executable).with_name("rustac")
    if exe.exists():
        return str(exe)
    found = shutil.which("rustac")
    if not found:
        raise CatalogError("The `rustac` command was not found.", "pip install rustac (a slidewatch dependency).")
    return found


class LocalStacServer:
    """``with LocalStacServer(hrefs) as url:`` serves collections and items until exit."""

    def __init__(self, hrefs: list[Path], port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.hrefs = [str(h) for h in hrefs]
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        cmd = [_rustac(), "serve", "--addr", f"127.0.0.1:{self.port}", *self.hrefs]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode()[-400:]
                raise CatalogError(f"The local STAC server exited at start: {err}", "check the demo data; rerun `slidewatch demo --regenerate`.")
            try:
                if requests.get(self.url + "/collections", timeout=1).ok:
                    return self.url
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise CatalogError(f"The local STAC server did not answer on {self.url} within {self.startup_timeout:.0f} s.", "check that the port is free and retry.")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
