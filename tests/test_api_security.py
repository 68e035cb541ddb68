"""Hostile requests against a real daemon: traversal in every spelling, symlinks
and hard links planted in the served folders, bad Host/Origin/Sec-Fetch-Site on POSTs,
huge headers, a 1 GB body and slow-loris clients. Every answer is a 4xx or a closed
connection, no byte from outside the allowed folders ever comes back, and the daemon keeps
processing files throughout."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import daemon_harness
import pytest
from daemon_harness import Daemon, outputs, wait_for
from page_client import TOKEN, api, drop_photo, fetch, photo, raw_request
from PIL import PngImagePlugin

from daemon.http import HEAD_DEADLINE_S

pytestmark = pytest.mark.usefixtures("one_thread")

MARKER = b"TOP-SECRET-OUTSIDE-THE-ROOT-7f3a"
PASSWD = b"root:x:0:0"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def daemon(pixel_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("attack")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(MARKER)
    info = PngImagePlugin.PngInfo()
    info.add_text("secret", MARKER.decode())
    photo("chelsea").save(outside / "secret.png", "PNG", pnginfo=info)
    photo("chelsea").save(outside / "secret.jpg", "JPEG", comment=MARKER)
    root = base / "root"
    with Daemon(root, pixel_checkpoint, page_token=TOKEN) as running:
        # Shared by the module's tests: not one of the daemons each test's teardown kills
        # (this fixture's ``with`` stops it after the last test).
        daemon_harness._STARTED.remove(running.proc)
        drop_photo(root / "inbox", "astronaut")
        wait_for(lambda: len(outputs(root)) == 1, 60, "the first output")
        outbox, archive = root / "outbox", root / "archive"
        (outbox / "leak.png").symlink_to(outside / "secret.png")
        (outbox / "linkdir").symlink_to(outside)
        (outbox / "sub").mkdir()
        (outbox / "sub" / "up.png").symlink_to("../../../outside/secret.png")
        os.link(outside / "secret.png", outbox / "hard.png")
        (archive / "leak.jpg").symlink_to(outside / "secret.jpg")
        (archive / "linkdir").symlink_to(outside)
        running.outside = outside  # type: ignore[attr-defined]
        yield running


def get(path: str, headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n".encode()


def post(port: int, headers: dict[str, str], body: bytes = b'{"file": "x.jpg"}') -> bytes:
    base = {"Host": f"127.0.0.1:{port}", "X-Artd-Token": TOKEN, "Content-Length": str(len(body))}
    lines = "".join(f"{k}: {v}\r\n" for k, v in (base | headers).items() if v is not None)
    return f"POST /api/retry HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode() + body


TRAVERSALS = [
    "/files/outbox/../../outside/secret.png",
    "/files/outbox/%2e%2e/%2e%2e/outside/secret.png",
    "/files/outbox/%2e%2e%2f%2e%2e%2foutside%2fsecret.png",
    "/files/outbox/..%2f..%2foutside%2fsecret.png",
    "/files/outbox/%252e%252e%252f%252e%252e%252foutside%252fsecret.png",
    "/files/outbox/%25252e%25252e%25252fsecret.png",
    "/files/outbox/%2fetc%2fpasswd",
    "/files/outbox//etc/passwd",
    "//etc/passwd",
    "/files/outbox/leak.png",
    "/files/outbox/linkdir/secret.png",
    "/files/outbox/sub/up.png",
    "/files/outbox/hard.png",
    "/files/outbox/./leak.png",
    "/files/outbox/sub/../leak.png",
    "/files/outbox/..\\..\\outside\\secret.png",
    "/files/outbox/%5c..%5c..%5coutside%5csecret.png",
    "/files/outbox/%c0%ae%c0%ae/%c0%ae%c0%ae/outside/secret.png",
    "/files/outbox/%ff%fe.png",
    "/files/outbox/astronaut.jpg.png%00.png",
    "/files/outbox/%00",
    "/files/outbox/" + "a" * 300 + ".png",
    "/files/outbox/" + "a/" * 3000 + "x.png",
    "/files/outbox/.artd-tmp-x.png",
    "/files/outbox/file:///etc/passwd",
    "/files/archive/astronaut.jpg",
    "/files/quarantine/x.jpg",
    "/files/outbox/../quarantine/x.jpg",
    "/thumbs/archive/leak.jpg",
    "/thumbs/archive/linkdir/secret.jpg",
    "/thumbs/outbox/leak.png",
    "/thumbs/outbox/linkdir/secret.png",
    "/thumbs/outbox/%2e%2e%2f%2e%2e%2foutside%2fsecret.png",
    "/thumbs/quarantine/x.jpg",
    "/thumbs/../outside/secret.png",
    "/thumbs/%2e%2e/outside/secret.png",
    "/static/../../outside/secret.txt",
    "/static/app.js/../../outside/secret.txt",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/api/../outside/secret.txt",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
]


def assert_refused(status: int | None, answer: bytes, what: str) -> None:
    assert status is None or 400 <= status < 500, (what, status, answer[:300])
    assert MARKER not in answer and PASSWD not in answer, what
    # A thumbnail of an outside image would be a JPEG: none may come back.
    assert b"image/jpeg" not in answer and b"image/png" not in answer, what


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_and_planted_links_are_refused(daemon: Daemon, path: str) -> None:
    status, answer = raw_request(daemon.port, get(path))
    assert_refused(status, answer, path)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # overlong request line
        b"GET http://127.0.0.1/files/outbox/../../outside/secret.png HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /files/outbox/leak.png HTTP/2.0\r\n\r\n",
        b"GET /files/outbox/leak.png HTTP/9.9\r\n\r\n",
        b"FOO /files/outbox/leak.png HTTP/1.1\r\nHost: x\r\n\r\n",
        b"DELETE /files/outbox/astronaut.jpg.png HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /files/outbox/new.png HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        b"OPTIONS /api/retry HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n\r\n",
        b"GET /files/outbox/leak.png HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /files/outbox/leak.png HTTP/1.1\r\n" + b"X-H: v\r\n" * 150 + b"\r\n",
        b"GET /files/outbox/a\x00b.png HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
        b"GET /files/outbox/leak.png\r\n\r\n",  # HTTP/0.9
    ],
)
def test_malformed_requests_get_4xx(daemon: Daemon, request_bytes: bytes) -> None:
    status, answer = raw_request(daemon.port, request_bytes)
    assert_refused(status, answer, repr(request_bytes[:60]))


def test_bad_posts_are_refused_before_the_body(daemon: Daemon) -> None:
    port = daemon.port
    cases = {
        "no token": {"X-Artd-Token": None},
        "wrong token": {"X-Artd-Token": "z" * len(TOKEN)},
        "token prefix": {"X-Artd-Token": TOKEN[:-1]},
        "foreign Host": {"Host": f"evil.example:{port}"},
        "rebinding Host": {"Host": f"127.0.0.1.nip.io:{port}"},
        "wrong port": {"Host": "127.0.0.1:1"},
        "no Host": {"Host": None},
        "foreign Origin": {"Origin": "http://evil.example"},
        "null Origin": {"Origin": "null"},
        "Origin other port": {"Origin": "http://127.0.0.1:1"},
        "cross-site": {"Sec-Fetch-Site": "cross-site"},
        "same-site": {"Sec-Fetch-Site": "same-site"},
        "chunked": {"Transfer-Encoding": "chunked"},
        "no length": {"Content-Length": None},
        "negative length": {"Content-Length": "-1"},
        "huge length": {"Content-Length": str(1 << 40)},
        "NUL in token": {"X-Artd-Token": TOKEN[:4] + "\x00" + TOKEN[5:]},
    }
    for what, headers in cases.items():
        status, answer = raw_request(port, post(port, headers))
        assert_refused(status, answer, what)
    # Two Host headers.
    twice = post(port, {}).replace(b"Host:", b"Host: evil.example\r\nHost:", 1)
    assert_refused(*raw_request(port, twice), "two Hosts")
    # The token in the query string is not the token.
    query = post(port, {"X-Artd-Token": None}).replace(
        b"/api/retry", f"/api/retry?token={TOKEN}".encode()
    )
    assert_refused(*raw_request(port, query), "token in query")
    # The same POST passes the checks with everything right (404: no such file).
    status, _ = raw_request(port, post(port, {"Origin": f"http://127.0.0.1:{port}"}))
    assert status == 404


def test_a_1gb_body_is_refused_without_being_read(daemon: Daemon) -> None:
    assert daemon.proc is not None
    before = rss_kib(daemon.proc.pid)
    port = daemon.port
    head = post(port, {"Content-Length": str(1 << 30)}, body=b"")
    chunk = bytes(1 << 20)
    sent = 0
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = threading.Thread(target=lambda: _read_all(sock, answer), daemon=True)
        reader.start()
        try:
            sock.sendall(head)
            while sent < 1 << 30:
                sock.sendall(chunk)  # streamed: the test never holds more than 1 MiB
                sent += len(chunk)
        except OSError:
            pass  # the server closed the connection: what we want
        reader.join(10)
    assert sent < 1 << 30, "the server read the whole 1 GB body"
    assert answer.startswith(b"HTTP/1.0 413") or answer.startswith(b"HTTP/1.1 413") or not answer
    assert rss_kib(daemon.proc.pid) - before < 50_000


def _read_all(sock: socket.socket, into: bytearray) -> None:
    try:
        while chunk := sock.recv(65536):
            into.extend(chunk)
    except OSError:
        pass


def test_slow_loris_clients_are_cut_off_and_files_keep_flowing(daemon: Daemon) -> None:
    port, root = daemon.port, daemon.root
    clients = []
    for _ in range(24):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        clients.append(sock)
    drop_photo(root / "inbox", "coffee", "during-the-attack.jpg")
    started = time.monotonic()
    closed = [False] * len(clients)
    while not all(closed) and time.monotonic() - started < HEAD_DEADLINE_S + 15:
        for i, sock in enumerate(clients):
            if closed[i]:
                continue
            try:
                sock.sendall(b"X")  # one byte of a header, now and then
            except OSError:
                closed[i] = True
        # The page keeps answering while the slow clients hold their connections.
        assert api(port, "/api/status")["health"]["status"] == "ok"
        time.sleep(1.0)
    for sock in clients:
        sock.close()
    assert all(closed), f"{closed.count(False)} slow clients still connected"
    assert time.monotonic() - started < HEAD_DEADLINE_S + 15
    wait_for(
        lambda: "during-the-attack.jpg.png" in outputs(root), 60, "the file dropped mid-attack"
    )
    # And after all of it, the real output is still served.
    code, data = fetch(port, "/files/outbox/astronaut.jpg.png")
    assert code == 200 and data == (root / "outbox" / "astronaut.jpg.png").read_bytes()


def test_too_many_connections_are_closed_not_queued_forever(daemon: Daemon) -> None:
    port = daemon.port
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
    try:
        time.sleep(0.5)
        refused = 0
        for sock in held:
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    refused += 1
            except TimeoutError:
                pass
            except OSError:
                refused += 1
        assert refused >= 80 - 64
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: fetch(port, "/healthz")[0] == 200, HEAD_DEADLINE_S + 5, "healthz again")


def test_the_server_without_a_page_routes_only_healthz_and_metrics() -> None:
    """The route table of a server the page could not be built for (real server, real
    sockets): /healthz and /metrics, 404 for the rest, 405 for other methods, HEAD bodiless."""
    from daemon.http import serve
    from daemon.metrics import Health, Metrics

    server = serve("127.0.0.1", 0, Metrics(), Health())
    port = server.server_port
    try:

        def ask(method: str, path: str) -> tuple[int | None, bytes]:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            return raw_request(port, f"{head}Connection: close\r\n\r\n".encode())

        status, answer = ask("GET", "/healthz")
        assert status == 200 and answer.endswith(b"}"), answer
        assert b'"status": "ok"' in answer
        status, answer = ask("GET", "/metrics?x=1")
        assert status == 200 and b"artd_up" in answer
        status, answer = ask("HEAD", "/healthz")
        assert status == 200 and answer.endswith(b"\r\n\r\n"), answer  # headers only
        for path in ("/", "/api/status", "/healthz/x"):
            status, answer = ask("GET", path)
            assert status == 404 and b"try /healthz or /metrics" in answer, (path, answer)
        status, answer = ask("POST", "/api/retry")
        assert status == 404 and answer.endswith(b'{"error": "not found"}'), answer
        assert ask("PUT", "/healthz")[0] == 405
        assert ask("GET", "healthz")[0] == 400
    finally:
        server.stop()
