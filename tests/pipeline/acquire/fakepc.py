"""A local stand-in for Planetary Computer: its STAC API and its SAS token endpoint, serving
real recorded responses from ``../shared/fixtures/planetary-computer`` on 127.0.0.1.

* ``GET /`` and ``GET /collections/<id>``: the recorded landing page and collection
  documents (``sentinel-1-rtc`` carries ``msft:requires_account: true``), hrefs rewritten
  to this server.
* ``POST /search``: the recorded items of the requested collection, ``page_size`` per page
  (or the request's ``limit`` when smaller), with a POST ``next`` link carrying a token,
  as Planetary Computer pages. Filters other than the collection are ignored.
* ``GET /api/sas/v1/token/<account>/<container>``: a SAS token, or ``token_status`` (401,
  403, ...) for the storage account of ``sentinel-1-rtc`` (anonymous users are refused there).
* ``search_faults``: statuses answered, in order, by the next ``POST /search`` requests
  (``200``: no fault; ``"stall"``: no answer for ``stall_s`` seconds, beyond the client's timeout).

Every request is logged in :attr:`FakePC.log` as ``(method, path, body, status)``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PC = "https://planetarycomputer.microsoft.com/api/stac/v1"
RTC_ACCOUNT = "sentinel1euwestrtc"
TOKEN_PATH = "/api/sas/v1/token"


def recorded_items(fixtures: Path) -> dict[str, list[dict]]:
    """The recorded Planetary Computer items per collection."""
    pc = fixtures / "planetary-computer"
    rec = pc / "pystac-client-recordings"
    items4 = pc / "stac-geoparquet-items" / "items4"
    cassette = pc / "stac-geoparquet-items" / "cassette-items"

    def features(path: Path) -> list[dict]:
        doc = json.loads(path.read_text())
        return doc["features"] if isinstance(doc, dict) else doc

    return {
        "sentinel-2-l2a": features(rec / "signing" / "s2search_07_FeatureCollection.json")
        + features(rec / "datetime" / "s2dt_00_FeatureCollection.json"),
        "sentinel-1-rtc": features(items4 / "sentinel-1-rtc-pc.json")
        + features(cassette / "sentinel-1-rtc_00_FeatureCollection.json"),
        "sentinel-1-grd": features(cassette / "sentinel-1-grd_00_FeatureCollection.json"),
        "cop-dem-glo-30": features(items4 / "cop-dem-glo-30-pc.json"),
    }


@dataclass
class FakePC:
    """Context manager: ``with FakePC(fixtures) as pc: pc.url, pc.sas_url``."""

    fixtures: Path
    page_size: int = 100
    token_status: int = 200
    search_faults: list[int | str] = field(default_factory=list)
    stall_s: float = 1.5
    log: list[tuple[str, str, dict, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.items = recorded_items(self.fixtures)

    @property
    def base(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """The STAC API's landing page."""
        return f"{self.base}/api/stac/v1"

    @property
    def sas_url(self) -> str:
        """What ``PC_SDK_SAS_URL`` is set to."""
        return f"{self.base}{TOKEN_PATH}"

    def requests(self, method: str | None = None, prefix: str = "") -> list[tuple[str, str, dict, int]]:
        with self._lock:
            return [r for r in self.log if (method is None or r[0] == method) and r[1].startswith(prefix)]

    def searched(self) -> list[str]:
        """The collections of the answered searches (first pages only), in order."""
        return [c for m, p, body, s in self.requests("POST", "/api/stac/v1/search") if s == 200 and "token" not in body
                for c in body.get("collections", [])]

    def _doc(self, path: Path) -> bytes:
        return path.read_text().replace(PC, self.url).encode()

    def __enter__(self) -> FakePC:  # noqa: PYI034
        fake = self

        class Handler(_Handler):
            pc = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        rec = self.fixtures / "planetary-computer" / "pystac-client-recordings"
        self.routes = {"/api/stac/v1": self._doc(rec / "planetary-computer-root.json")}
        for cid in self.items:
            self.routes[f"/api/stac/v1/collections/{cid}"] = self._doc(rec / "collections" / f"{cid}.json")
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def next_fault(self) -> int | str | None:
        with self._lock:
            return self.search_faults.pop(0) if self.search_faults else None

    def record(self, method: str, path: str, body: dict, status: int) -> None:
        with self._lock:
            self.log.append((method, path, body, status))


class _Handler(BaseHTTPRequestHandler):
    pc: FakePC

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, doc: bytes | dict, headers: dict[str, str] | None = None) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        pc = self.pc
        path = self.path.split("?")[0].rstrip("/")
        if path.startswith(TOKEN_PATH + "/"):
            account = path[len(TOKEN_PATH) + 1:].split("/")[0]
            status = pc.token_status if account == RTC_ACCOUNT else 200
            pc.record("GET", path, {"key": self.headers.get("Ocp-Apim-Subscription-Key")}, status)
            if status == 200:
                self._send(200, {"msft:expiry": "2099-01-01T00:00:00Z",
                                 "token": "st=2024-05-17T00%3A00%3A00Z&se=2099-01-01T00%3A00%3A00Z&sp=rl&sv=2021-06-08&sr=c&sig=fake"})
            else:
                self._send(status, {"detail": "Access to this collection requires an account."})
            return
        body = pc.routes.get(path)
        pc.record("GET", path, {}, 200 if body is not None else 404)
        self._send(200 if body is not None else 404, body if body is not None else {"code": "NotFoundError"})

    def do_POST(self) -> None:
        pc = self.pc
        path = self.path.split("?")[0].rstrip("/")
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        fault = pc.next_fault()
        if fault == "stall":
            pc.record("POST", path, payload, -1)
            time.sleep(pc.stall_s)
            self.close_connection = True
            return
        if isinstance(fault, int) and fault != 200:
            pc.record("POST", path, payload, fault)
            self._send(fault, {"code": "Fault", "description": f"injected {fault}"},
                       {"Retry-After": "0"} if fault == 429 else None)
            return
        if path != "/api/stac/v1/search":
            pc.record("POST", path, payload, 404)
            self._send(404, {"code": "NotFoundError"})
            return
        collection = (payload.get("collections") or [""])[0]
        items = pc.items.get(collection, [])
        size = min(pc.page_size, int(payload.get("limit") or pc.page_size))
        offset = int(str(payload.get("token", "next:0")).split(":")[-1])
        page = items[offset:offset + size]
        links = []
        if offset + size < len(items):
            links.append({"rel": "next", "type": "application/geo+json", "method": "POST", "merge": True,
                          "href": f"{pc.url}/search", "body": {"token": f"next:{offset + size}"}})
        pc.record("POST", path, payload, 200)
        self._send(200, {"type": "FeatureCollection", "features": page, "links": links})
