"""The types the HTTP server and the page's handlers share: a route, and the request being
answered as a handler sees it.

daemon.http implements :class:`Exchange` (its request handler) and dispatches on a table of
:class:`Route`; daemon.web.routes writes the page's handlers against these types only, so
the page never imports the server (the dependency goes service -> http -> web).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import BinaryIO, Protocol


class Exchange(Protocol):
    """One request and its answer (implemented by daemon.http.Handler)."""

    headers: Message
    rfile: BinaryIO
    wfile: BinaryIO
    head: bool  # a HEAD request: the headers of a GET, no body

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """The query argument ``name`` as an int within ``[low, high]``, else ``default``."""
        ...

    def json(self, status: int, value: object) -> None:
        """Answer ``value`` as JSON (never cached)."""
        ...

    def refuse(self, status: int, message: str) -> None:
        """Answer ``{"error": message}`` and close the connection."""
        ...

    def send(
        self, status: int, content_type: str, body: bytes, extra: Mapping[str, str] | None = None
    ) -> None:
        """Answer ``body`` (its headers only for a HEAD request)."""
        ...

    def start(self, status: int, content_type: str, length: int, extra: Mapping[str, str]) -> None:
        """Send the status line and headers of a body of ``length`` bytes the caller writes."""
        ...


# A route's handler: the exchange, and the request path after the route's own path (empty
# for an exact route; the rest of the path for a prefix route).
RouteHandler = Callable[[Exchange, str], None]


@dataclass(frozen=True)
class Route:
    """``method`` and ``path`` -> ``handler``. A GET route answers HEAD too. With ``prefix``
    the route takes every path that starts with ``path`` (which then ends with ``/``)."""

    method: str
    path: str
    handler: RouteHandler
    prefix: bool = False
