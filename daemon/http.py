"""The daemon's HTTP server: ``/healthz``, ``/metrics``, the page and its JSON API, in
background threads (docs/operations.md, "The page").

The standard library's server is enough here and adds no dependency: the page is a static
file plus a few JSON documents for a handful of people and a Prometheus scraper. What it
lacks for a hostile network is added around it: a cap on connections served at once (more
are closed), a deadline for a request's head (a slow-loris client is cut off) and a read
timeout, 4xx (never 5xx) for malformed requests, no body ever read before the POST checks
of daemon.web.guard pass, and files served only through daemon.web.paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Health, Metrics
from daemon.web import guard
from daemon.web.paths import BadPath, open_inside, parse_rel
from daemon.web.requeue import RetryError

if TYPE_CHECKING:
    from daemon.service import Service
    from daemon.web.api import PageData

READ_TIMEOUT_S = 10.0  # one recv() waiting longer than this closes the connection
HEAD_DEADLINE_S = 15.0  # the request line and headers must be in within this
MAX_URL = 8192
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _static_files() -> dict[str, bytes]:
    folder = resources.files("daemon.web") / "static"
    return {name: (folder / name).read_bytes() for name, _ in set(STATIC.values())}


def start(service: Service) -> ThreadingHTTPServer:
    """Serve the daemon's HTTP endpoints and its page on the configured host and port."""
    from daemon.web.api import PageData

    s = service.settings
    page: PageData | None
    try:
        page = PageData(service)
    except Exception:  # the page is optional: /healthz and /metrics must come up regardless
        logger.exception("page: cannot start the page; serving /healthz and /metrics only")
        page = None
    hosts = frozenset(h.strip().lower() for h in s.page_hosts.split(",") if h.strip())
    return serve(
        s.http_host,
        s.http_port,
        service.metrics,
        service.health,
        page=page,
        hosts=hosts,
        max_connections=s.page_max_connections,
    )


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on connections served at once."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.page: PageData | None = None
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed at once, nothing read
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def shutdown(self) -> None:
        super().shutdown()
        if self.page is not None:
            self.page.close()


def serve(
    host: str,
    port: int,
    metrics: Metrics,
    health: Health,
    *,
    page: PageData | None = None,
    hosts: frozenset[str] = frozenset(),
    max_connections: int = 64,
) -> ThreadingHTTPServer:
    """Start serving; ``server.shutdown()`` stops it. Binds before returning (errors surface).
    Without ``page`` only /healthz and /metrics are served."""
    static = _static_files() if page is not None else {}

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S
        server_version = "artd"
        sys_version = ""
        _head_timer: threading.Timer | None = None

        # --- connection handling ----------------------------------------------------

        def handle_one_request(self) -> None:
            timer = threading.Timer(HEAD_DEADLINE_S, self._cut_off)
            timer.daemon = True
            self._head_timer = timer
            timer.start()
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError, OSError):
                self.close_connection = True
            finally:
                timer.cancel()

        def _cut_off(self) -> None:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def parse_request(self) -> bool:
            ok = super().parse_request()
            if self._head_timer is not None:
                self._head_timer.cancel()
            if ok and (self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")):
                self.close_connection = True  # an unread body must not become a request
            return ok

        def send_error(self, code: int, message: str | None = None, explain: str | None = None):
            # Unknown methods (501), HTTP/2+ request lines (505): the client's fault, 4xx.
            code = 405 if code == 501 else (400 if code >= 500 else code)
            self.close_connection = True
            super().send_error(code, message, explain)

        def log_message(self, format: str, *args: object) -> None:
            logger.trace("http: {}", format % args)

        # --- methods -----------------------------------------------------------------

        def do_GET(self) -> None:
            self._get(head=False)

        def do_HEAD(self) -> None:
            self._get(head=True)

        def do_POST(self) -> None:
            path = self._path()
            if path is None:
                return
            if page is None or path != "/api/retry":
                self._refuse(404, "not found")
                return
            refusal = guard.check_post(self.headers, token=page.token, port=port, hosts=hosts)
            if refusal is not None:
                logger.info("page: POST refused ({}): {}", refusal.status, refusal.message)
                self._refuse(refusal.status, refusal.message)
                return
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            try:
                request = json.loads(body)
                rel = request["file"]
                if not isinstance(rel, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self._refuse(400, 'send JSON {"file": "<path in the quarantine>"}')
                return
            try:
                done = page.retry.retry(rel)
            except RetryError as exc:
                self._refuse(exc.status, str(exc))
                return
            except OSError as exc:  # the disk: the record lets the next retry or start finish it
                logger.error("page: retry of {!r} failed: {}", rel, exc)
                self._refuse(503, f"the disk refused the move: {exc.strerror}")
                return
            self._json(
                200,
                {
                    "retried": done.quarantine_rel,
                    "inbox": done.inbox_rel,
                    "reason": done.reason,
                    "crash_counts_reset": {
                        "interrupted": done.interrupted,
                        "solo_crashes": done.solo_crashes,
                    },
                },
            )

        def do_PUT(self) -> None:
            self._refuse(405, "method not allowed")

        do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_PUT

        # --- GET ---------------------------------------------------------------------

        def _path(self) -> str | None:
            raw = self.path
            if not raw.startswith("/") or raw.startswith("//") or len(raw) > MAX_URL:
                self._refuse(400, "bad request target")
                return None
            return raw.split("?", 1)[0]

        def _query(self) -> dict[str, list[str]]:
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            try:
                return parse_qs(query, max_num_fields=8)
            except ValueError:
                return {}

        def _int_arg(self, name: str, default: int, low: int, high: int) -> int:
            values = self._query().get(name)
            if not values or not values[0].isdigit() or len(values[0]) > 9:
                return default
            return max(low, min(high, int(values[0])))

        def _get(self, head: bool) -> None:
            self._head = head
            path = self._path()
            if path is None:
                return
            if path == "/healthz":
                report = health.report()
                status = 200 if report["status"] == "ok" else 503
                self._send(status, "application/json", json.dumps(report).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            elif page is None:
                self._refuse(404, "not found: try /healthz or /metrics")
            elif path in STATIC:
                name, content_type = STATIC[path]
                extra = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
                self._send(200, content_type, static[name], extra)
            elif path == "/api/status":
                self._json(200, page.status())
            elif path in ("/api/recent", "/api/quarantine"):
                size = self._int_arg("size", page.settings.page_size, 1, 200)
                number = self._int_arg("page", 0, 0, 1_000_000)
                fetch = page.recent if path == "/api/recent" else page.quarantined
                self._json(200, fetch(number, size))
            elif path.startswith("/files/outbox/"):
                self._file(path.removeprefix("/files/outbox/"))
            elif path.startswith(("/thumbs/outbox/", "/thumbs/archive/")):
                area, _, rest = path.removeprefix("/thumbs/").partition("/")
                self._thumb(area, rest)
            else:
                self._refuse(404, "not found")

        def _file(self, raw: str) -> None:
            assert page is not None
            try:
                rel = parse_rel(raw)
                content_type = IMAGE_TYPES[os.path.splitext(rel.name)[1].lower()]
                fd = open_inside(page.outbox, rel, single_link=True)
            except (BadPath, KeyError, OSError):
                self._refuse(404, "no such output")
                return
            with os.fdopen(fd, "rb") as handle:
                size = os.fstat(fd).st_size
                self._start(200, content_type, size, {"Cache-Control": "private, max-age=60"})
                if not self._head:
                    shutil.copyfileobj(handle, self.wfile, 1 << 16)

        def _thumb(self, area: str, raw: str) -> None:
            assert page is not None
            base = page.outbox if area == "outbox" else page.archive
            try:
                rel = parse_rel(raw)
                fd = open_inside(base, rel)
            except (BadPath, OSError):
                self._refuse(404, "no such image")
                return
            try:
                info = os.fstat(fd)
                key = page.thumbs.key(area, str(rel), info, page.settings.page_thumb_px)
                data = page.thumbs.get(key, fd)
            finally:
                os.close(fd)
            if data is None:
                self._refuse(404, "no thumbnail: the file cannot be decoded")
                return
            self._send(200, "image/jpeg", data, {"Cache-Control": "private, max-age=300"})

        # --- answers -----------------------------------------------------------------

        def _json(self, status: int, value: object) -> None:
            body = json.dumps(value, default=str, separators=(",", ":")).encode()
            self._send(status, "application/json", body, {"Cache-Control": "no-store"})

        def _refuse(self, status: int, message: str) -> None:
            self.close_connection = True
            body = json.dumps({"error": message}).encode()
            self._send(status, "application/json", body, {"Connection": "close"})

        def _start(self, status: int, content_type: str, length: int, extra: dict) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            for key, value in (COMMON_HEADERS | extra).items():
                self.send_header(key, value)
            self.end_headers()

        def _send(
            self, status: int, content_type: str, body: bytes, extra: dict | None = None
        ) -> None:
            self._start(status, content_type, len(body), extra or {})
            if not getattr(self, "_head", False):
                self.wfile.write(body)

    server = _Server((host, port), Handler, max_connections)
    server.page = page
    threading.Thread(target=server.serve_forever, name="artd-http", daemon=True).start()
    what = "the page, /api, /healthz and /metrics" if page else "/healthz and /metrics"
    logger.info("serving {} on http://{}:{}", what, host, server.server_port)
    return server
