"""The daemon's HTTP server: ``/healthz``, ``/metrics``, the page and its JSON API, in
background threads (docs/operations.md, "The page").

The standard library's server is enough here and adds no dependency: the page is a static
file plus a few JSON documents for a handful of people and a Prometheus scraper. What it
lacks for a hostile network is added around it: a cap on connections served at once (more
are closed), a deadline for a request's head (a slow-loris client is cut off) and a read
timeout, 4xx (never 5xx) for malformed requests, no body ever read before the POST checks
of daemon.web.guard pass, and files served only through daemon.web.paths.

Requests are dispatched on a table of routes (daemon.web.exchange.Route: method and path
or path prefix -> handler): this module's ``/healthz`` and ``/metrics``, and the page's
(daemon.web.routes) when the service hands a page over.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterable, Mapping
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Health, Metrics
from daemon.web.api import PageData
from daemon.web.exchange import Exchange, Route, RouteHandler
from daemon.web.routes import PageRoutes

READ_TIMEOUT_S = 10.0  # one recv() waiting longer than this closes the connection
HEAD_DEADLINE_S = 15.0  # the request line and headers must be in within this
MAX_URL = 8192
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Router:
    """A route table: exact paths by lookup, then path prefixes in table order."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._exact: dict[tuple[str, str], RouteHandler] = {}
        self._prefixes: list[Route] = []
        for route in routes:
            key = (route.method, route.path)
            if route.prefix:
                self._prefixes.append(route)
            elif key in self._exact:
                raise ValueError(f"two routes for {route.method} {route.path}")
            else:
                self._exact[key] = route.handler

    def find(self, method: str, path: str) -> tuple[RouteHandler, str] | None:
        """The handler of ``method path`` and the rest of the path after its route's."""
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler, ""
        for route in self._prefixes:
            if route.method == method and path.startswith(route.path):
                return route.handler, path.removeprefix(route.path)
        return None


class Handler(BaseHTTPRequestHandler):
    """One connection: the hardening of the module docstring, then the server's routes.
    Implements daemon.web.exchange.Exchange for the handlers."""

    server: Server
    timeout = READ_TIMEOUT_S
    server_version = "artd"
    sys_version = ""
    head = False
    _head_timer: threading.Timer | None = None

    # --- connection handling ----------------------------------------------------------

    def handle_one_request(self) -> None:
        self.head = False
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

    # --- methods ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self.head = True
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self.refuse(405, "method not allowed")

    do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_PUT

    def _dispatch(self, method: str) -> None:
        raw = self.path
        if not raw.startswith("/") or raw.startswith("//") or len(raw) > MAX_URL:
            self.refuse(400, "bad request target")
            return
        found = self.server.router.find(method, raw.split("?", 1)[0])
        if found is None:
            self.refuse(404, self.server.not_found if method == "GET" else "not found")
            return
        handler, rest = found
        handler(self, rest)

    # --- answers (daemon.web.exchange.Exchange) -----------------------------------------

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        try:
            values = parse_qs(query, max_num_fields=8).get(name)
        except ValueError:
            return default
        if not values or not values[0].isdigit() or len(values[0]) > 9:
            return default
        return max(low, min(high, int(values[0])))

    def json(self, status: int, value: object) -> None:
        body = json.dumps(value, default=str, separators=(",", ":")).encode()
        self.send(status, "application/json", body, {"Cache-Control": "no-store"})

    def refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        body = json.dumps({"error": message}).encode()
        self.send(status, "application/json", body, {"Connection": "close"})

    def start(self, status: int, content_type: str, length: int, extra: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for key, value in (COMMON_HEADERS | dict(extra)).items():
            self.send_header(key, value)
        self.end_headers()

    def send(
        self, status: int, content_type: str, body: bytes, extra: Mapping[str, str] | None = None
    ) -> None:
        self.start(status, content_type, len(body), extra or {})
        if not self.head:
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer on a route table, with a bound on connections served at once."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        router: Router,
        *,
        max_connections: int,
        not_found: str = "not found",
    ) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.router = router
        self.not_found = not_found  # the answer to a GET no route takes
        super().__init__(address, Handler)

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

    def stop(self) -> None:
        """Stop serving and close the listening socket (the page is its owner's to close)."""
        self.shutdown()
        self.server_close()


def _healthz(health: Health, ex: Exchange, _rest: str) -> None:
    report = health.report()
    status = 200 if report["status"] == "ok" else 503
    ex.send(status, "application/json", json.dumps(report).encode())


def _metrics(metrics: Metrics, ex: Exchange, _rest: str) -> None:
    ex.send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))


def parse_hosts(text: str) -> frozenset[str]:
    """``ARTD_PAGE_HOSTS`` (comma-separated) as the set of names a POST may address."""
    return frozenset(h.strip().lower() for h in text.split(",") if h.strip())


def serve(
    host: str,
    port: int,
    metrics: Metrics,
    health: Health,
    *,
    page: PageData | None = None,
    hosts: frozenset[str] = frozenset(),
    max_connections: int = 64,
) -> Server:
    """Start serving; ``server.stop()`` stops it. Binds before returning (errors surface).
    Without ``page`` only /healthz and /metrics are served; with it, the page's routes too
    (the page stays the caller's: stopping the server does not close it)."""
    routes = [
        Route("GET", "/healthz", partial(_healthz, health)),
        Route("GET", "/metrics", partial(_metrics, metrics)),
    ]
    if page is not None:
        routes += PageRoutes(page, port=port, hosts=hosts).table()
    hint = "not found" if page is not None else "not found: try /healthz or /metrics"
    server = Server((host, port), Router(routes), max_connections=max_connections, not_found=hint)
    threading.Thread(target=server.serve_forever, name="artd-http", daemon=True).start()
    what = "the page, /api, /healthz and /metrics" if page else "/healthz and /metrics"
    logger.info("serving {} on http://{}:{}", what, host, server.server_port)
    return server
