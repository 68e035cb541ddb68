"""``/healthz`` and ``/metrics`` on a local port, in a background thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Health, Metrics

if TYPE_CHECKING:
    from daemon.service import Service


def start(service: Service) -> ThreadingHTTPServer:
    """Serve the daemon's HTTP endpoints on its configured host and port."""
    s = service.settings
    return serve(s.http_host, s.http_port, service.metrics, service.health)


def serve(host: str, port: int, metrics: Metrics, health: Health) -> ThreadingHTTPServer:
    """Start serving; ``server.shutdown()`` stops it. Binds before returning (errors surface)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                report = health.report()
                status = 200 if report["status"] == "ok" else 503
                self._send(status, "application/json", json.dumps(report).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            else:
                self._send(404, "text/plain", b"not found: try /healthz or /metrics\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.trace("http: {}", format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="artd-http", daemon=True).start()
    logger.info("serving /healthz and /metrics on http://{}:{}", host, server.server_port)
    return server
