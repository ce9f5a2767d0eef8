"""A bounded local HTTP file server with injectable, seeded faults (for reliability tests).

Serves the files under ``root`` on ``http://127.0.0.1:<free port>/`` with HEAD and single
``Range: bytes=a-b`` GET support (206 + ``Content-Range``), HTTP/1.1 keep-alive, in a daemon
thread. Faults are decided per request *key* (method, path, range) by a seeded hash, so the
same plan injects the same faults whatever order the client's threads ask in:

* ``error_rate``: that share of keys answer ``error_status`` (5xx) for their first
  ``error_repeats`` attempts, then succeed;
* ``timeout_rate``: that share of keys stall ``stall_s`` seconds (beyond the client's
  timeout) on their first ``timeout_repeats`` attempts;
* ``truncate_rate``: that share of keys announce the full ``Content-Length`` but send only
  half the bytes and close the connection, on their first ``truncate_repeats`` attempts;
* tokens: when ``require_token`` is set, a request must carry ``?token=<current>``; any other
  token (an "expired" signature) gets ``403``. :meth:`FaultServer.rotate_token` expires
  the current one; :meth:`FaultServer.issue_token` is what a test signer calls to sign;
* ``always_fail``: paths (substrings) that always answer ``always_status``, for the methods
  in ``always_methods`` (``("GET",)`` lets GDAL's ``HEAD`` pass and fails the ranged ``GET``
  of the file's header, so GDAL's open reports no HTTP status);
* ``latency_s``: every request waits that long before it is answered (object storage's
  round trip, for benchmarks).

The server is bounded: it stops itself after ``max_requests`` requests or ``max_seconds``
seconds, whichever comes first, and every request is recorded in :attr:`FaultServer.log`.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class FaultPlan:
    """Which faults to inject (all off by default)."""

    seed: int = 0
    error_rate: float = 0.0
    error_status: int = 503
    error_repeats: int = 1
    timeout_rate: float = 0.0
    timeout_repeats: int = 1
    stall_s: float = 3.0
    truncate_rate: float = 0.0
    truncate_repeats: int = 1
    require_token: bool = False
    always_fail: tuple[str, ...] = ()
    always_status: int = 503
    always_methods: tuple[str, ...] = ("GET", "HEAD")
    latency_s: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    query: str
    range: str
    status: int
    fault: str


@dataclass
class FaultServer:
    """Context manager: ``with FaultServer(root, plan) as srv: srv.url(path)``."""

    root: Path
    plan: FaultPlan = field(default_factory=FaultPlan)
    max_requests: int = 20_000
    max_seconds: float = 120.0
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self._attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._token = 1
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- client side ----------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str | Path) -> str:
        """The URL serving local file ``path`` (which must lie under ``root``)."""
        rel = Path(path).resolve().relative_to(self.root)
        return f"{self.base}/{rel.as_posix()}"

    def issue_token(self) -> int:
        """The currently valid token (what a signer embeds as ``?token=N``)."""
        with self._lock:
            return self._token

    def rotate_token(self) -> None:
        """Expire the current token: requests still carrying it get 403 from now on."""
        with self._lock:
            self._token += 1

    def count(self, fault: str | None = None, status: int | None = None) -> int:
        """Number of logged requests with that fault label and/or status."""
        with self._lock:
            return sum(1 for r in self.log
                       if (fault is None or r.fault == fault) and (status is None or r.status == status))

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> FaultServer:
        server = self

        class Handler(_Handler):
            srv = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        t = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        w = threading.Thread(target=self._watchdog, daemon=True)
        w.start()
        self._threads = [t, w]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            self._httpd_closed = httpd
            httpd.shutdown()
            httpd.server_close()

    def _watchdog(self) -> None:
        if not self._stop.wait(self.max_seconds):
            threading.Thread(target=self.stop, daemon=True).start()

    # -- fault decisions --------------------------------------------------------------
    def _decide(self, method: str, path: str, rng: str, token: str | None) -> str:
        plan = self.plan
        key = f"{method} {path} {rng}"
        with self._lock:
            if len(self.log) >= self.max_requests:
                return "over_budget"
            for needle in plan.always_fail:
                if needle in path and method in plan.always_methods:
                    return "always"
            if plan.require_token and token != str(self._token):
                return "expired"
            for kind, rate, repeats in (("error", plan.error_rate, plan.error_repeats),
                                        ("timeout", plan.timeout_rate, plan.timeout_repeats),
                                        ("truncate", plan.truncate_rate, plan.truncate_repeats)):
                if rate > 0 and _unit(plan.seed, kind, key) < rate:
                    n = self._attempts.get((kind, key), 0)
                    if n < repeats:
                        self._attempts[(kind, key)] = n + 1
                        return kind
            return ""

    def _record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)
            full = len(self.log) >= self.max_requests
        if full:
            threading.Thread(target=self.stop, daemon=True).start()


class _QuietServer(ThreadingHTTPServer):
    """No traceback on stderr when a client drops a connection (GDAL and probes do)."""

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _unit(seed: int, salt: str, key: str) -> float:
    h = hashlib.sha256(f"{seed}|{salt}|{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    srv: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        srv = self.srv
        parts = urlsplit(self.path)
        rel = parts.path.lstrip("/")
        token = (parse_qs(parts.query).get("token") or [None])[0]
        rng = self.headers.get("Range", "")
        fault = srv._decide(self.command, rel, rng, token)
        if srv.plan.latency_s > 0:
            time.sleep(srv.plan.latency_s)
        status = 0
        try:
            if fault == "over_budget":
                status = 503
                self._plain(status, "fault server request budget exhausted")
                return
            if fault == "always":
                status = srv.plan.always_status
                self._plain(status, "injected permanent failure")
                return
            if fault == "expired":
                status = 403
                self._plain(status, "AuthenticationFailed: signature expired")
                return
            if fault == "error":
                status = srv.plan.error_status
                self._plain(status, "injected server error")
                return
            if fault == "timeout":
                deadline = time.monotonic() + srv.plan.stall_s
                while time.monotonic() < deadline and not srv._stop.is_set():
                    time.sleep(0.05)
                status = -1
                self.close_connection = True
                return
            path = (srv.root / rel).resolve()
            if not path.is_relative_to(srv.root) or not path.is_file():
                status = 404
                self._plain(status, "not found")
                return
            data = path.read_bytes()
            start, end = 0, len(data) - 1
            m = _RANGE.match(rng) if rng else None
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            else:
                status = 200
            chunk = data[start:end + 1]
            self.send_response(status)
            self.send_header("Content-Type", "image/tiff")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(chunk)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if fault == "truncate":
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            srv._record(Request(self.command, rel, parts.query, rng, status, fault))
