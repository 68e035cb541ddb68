"""The checks a state-changing request (POST) passes before anything is read from it.

- **The token** (``X-Artd-Token``), compared in constant time; no token configured: every
  POST is refused (the page is read-only).
- **Cross-site requests**: a browser's ``Sec-Fetch-Site`` must say ``same-origin`` (or
  ``none``: typed by the user), and an ``Origin`` must be this server's own
  (``http://<Host>``). A custom header cannot be sent cross-site without a CORS preflight,
  which this server never grants.
- **Host**: an IP literal, a loopback name or one of ``page_hosts``, with this server's
  port, so a DNS-rebinding page cannot make its origin look like ours.
- **The body**: a ``Content-Length`` of at most ``MAX_BODY`` and no ``Transfer-Encoding``;
  anything else is answered before a byte of it is read.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from email.message import Message

from daemon.settings import LOOPBACK_NAMES

MAX_BODY = 4096
TOKEN_HEADER = "X-Artd-Token"


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


def _host_ok(host: str, port: int, extra: frozenset[str]) -> bool:
    """``name:port`` or ``[v6]:port`` with our port and a name no rebinding can fake."""
    name, sep, host_port = host.rpartition(":")
    if not sep or host_port.endswith("]"):  # no port: browsers leave out the default one
        name, host_port = host, "80"
    if not host_port.isdigit() or int(host_port) != port:
        return False
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    elif ":" in name:
        return False
    name = name.lower()
    if name in LOOPBACK_NAMES or name in extra:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_post(
    headers: Message, *, token: str | None, port: int, hosts: frozenset[str] = frozenset()
) -> Refusal | None:
    """None when the POST may be read and acted on; else why it is refused."""
    if token is None:
        return Refusal(403, "retry is off: no page token is set (ARTD_PAGE_TOKEN)")
    host = headers.get("Host", "")
    if len(headers.get_all("Host") or []) != 1 or not _host_ok(host, port, hosts):
        return Refusal(421, "unexpected Host header")
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return Refusal(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = headers.get("Origin")
    if origin is not None and origin != f"http://{host}":
        return Refusal(403, "cross-origin request refused (Origin)")
    if headers.get("Transfer-Encoding") is not None:
        return Refusal(411, "send a Content-Length, not a Transfer-Encoding")
    length = headers.get("Content-Length", "")
    if not length.isdigit():
        return Refusal(411, "Content-Length required")
    if int(length) > MAX_BODY:
        return Refusal(413, f"body larger than {MAX_BODY} bytes")
    given = headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return Refusal(403, f"wrong or missing {TOKEN_HEADER}")
    return None
