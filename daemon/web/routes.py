"""The page's routes: its static files, the JSON API, full outputs, thumbnails and the
requeue POST (operations.md, "The page"), as handlers on daemon.web.exchange's types.

daemon.http serves them; nothing here knows the server. Files are opened only through
daemon.web.paths, and a POST's body is read only after daemon.web.guard's checks pass.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from functools import partial
from importlib import resources
from typing import Any

from loguru import logger

from daemon.web import guard
from daemon.web.api import PageData
from daemon.web.exchange import Exchange, Route
from daemon.web.paths import BadPath, open_inside, parse_rel
from daemon.web.requeue import RequeueError

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
MAX_LIST_SIZE = 200
MAX_LIST_PAGE = 1_000_000
BAD_BODY = 'send JSON {"file": "<path in the quarantine>"}'


def static_files() -> dict[str, bytes]:
    """The page's own files (``daemon/web/static/``), by name."""
    folder = resources.files("daemon.web") / "static"
    return {name: (folder / name).read_bytes() for name, _ in set(STATIC.values())}


class PageRoutes:
    """The page's handlers for one server: ``table()`` is what daemon.http routes on.

    ``port`` and ``hosts`` are what a POST's ``Host`` must name (daemon.web.guard).
    """

    def __init__(self, page: PageData, *, port: int, hosts: frozenset[str]) -> None:
        self.page = page
        self.port = port
        self.hosts = hosts
        self._static = static_files()

    def table(self) -> list[Route]:
        """Every route of the page, method and path (or path prefix) -> handler."""
        page = self.page
        routes = [
            Route("GET", path, partial(self._static_file, name, content_type))
            for path, (name, content_type) in STATIC.items()
        ]
        return [
            *routes,
            Route("GET", "/api/status", self._status),
            Route("GET", "/api/recent", partial(self._listing, page.recent)),
            Route("GET", "/api/quarantine", partial(self._listing, page.quarantined)),
            Route("GET", "/files/outbox/", self._output, prefix=True),
            Route("GET", "/thumbs/outbox/", partial(self._thumbnail, "outbox"), prefix=True),
            Route("GET", "/thumbs/archive/", partial(self._thumbnail, "archive"), prefix=True),
            # The page's "Retry" button: the API path keeps that word, the action is a requeue.
            Route("POST", "/api/retry", self._requeue),
        ]

    # --- GET ------------------------------------------------------------------------------

    def _static_file(self, name: str, content_type: str, ex: Exchange, _rest: str) -> None:
        extra = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
        ex.send(200, content_type, self._static[name], extra)

    def _status(self, ex: Exchange, _rest: str) -> None:
        ex.json(200, self.page.status())

    def _listing(
        self, fetch: Callable[[int, int], dict[str, Any]], ex: Exchange, _rest: str
    ) -> None:
        size = ex.query_int("size", self.page.settings.page_size, 1, MAX_LIST_SIZE)
        number = ex.query_int("page", 0, 0, MAX_LIST_PAGE)
        ex.json(200, fetch(number, size))

    def _output(self, ex: Exchange, raw: str) -> None:
        try:
            rel = parse_rel(raw)
            content_type = IMAGE_TYPES[os.path.splitext(rel.name)[1].lower()]
            fd = open_inside(self.page.outbox, rel, single_link=True)
        except (BadPath, KeyError, OSError):
            ex.refuse(404, "no such output")
            return
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(fd).st_size
            ex.start(200, content_type, size, {"Cache-Control": "private, max-age=60"})
            if not ex.head:
                shutil.copyfileobj(handle, ex.wfile, 1 << 16)

    def _thumbnail(self, area: str, ex: Exchange, raw: str) -> None:
        page = self.page
        base = page.outbox if area == "outbox" else page.archive
        try:
            rel = parse_rel(raw)
            fd = open_inside(base, rel)
        except (BadPath, OSError):
            ex.refuse(404, "no such image")
            return
        try:
            info = os.fstat(fd)
            key = page.thumbs.key(area, str(rel), info, page.settings.page_thumb_px)
            data = page.thumbs.get(key, fd)
        finally:
            os.close(fd)
        if data is None:
            ex.refuse(404, "no thumbnail: the file cannot be decoded")
            return
        ex.send(200, "image/jpeg", data, {"Cache-Control": "private, max-age=300"})

    # --- POST -----------------------------------------------------------------------------

    def _requeue(self, ex: Exchange, _rest: str) -> None:
        page = self.page
        refusal = guard.check_post(ex.headers, token=page.token, port=self.port, hosts=self.hosts)
        if refusal is not None:
            logger.info("page: POST refused ({}): {}", refusal.status, refusal.message)
            ex.refuse(refusal.status, refusal.message)
            return
        rel = _requested_file(ex.rfile.read(int(ex.headers["Content-Length"])))
        if rel is None:
            ex.refuse(400, BAD_BODY)
            return
        try:
            done = page.requeue.requeue(rel)
        except RequeueError as exc:
            ex.refuse(exc.status, str(exc))
            return
        except OSError as exc:  # the disk: the record lets the next requeue or start finish it
            logger.error("page: retry of {!r} failed: {}", rel, exc)
            ex.refuse(503, f"the disk refused the move: {exc.strerror}")
            return
        # The answer's field names are the API's contract (operations.md): "retried" stays.
        counts = {"interrupted": done.interrupted, "solo_crashes": done.solo_crashes}
        answer = {"retried": done.quarantine_rel, "inbox": done.inbox_rel, "reason": done.reason}
        ex.json(200, answer | {"crash_counts_reset": counts})


def _requested_file(body: bytes) -> str | None:
    """The ``file`` of a requeue POST's JSON body; None when the body is not that."""
    try:
        request = json.loads(body)
        rel = request["file"]
    except (ValueError, KeyError, TypeError):
        return None
    return rel if isinstance(rel, str) else None
