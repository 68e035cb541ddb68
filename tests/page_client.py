"""Helpers shared by the page's suites: real photos, a raw HTTP client, the JSON API."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

TOKEN = "page-token-for-tests-0123456789"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> Image.Image:
    """A real photograph from scikit-image (RGB)."""
    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3])


def drop_photo(inbox: Path, name: str, as_name: str | None = None) -> Path:
    """Write a photo as a JPEG via a dot-name and a rename, as a careful copier does."""
    target = inbox / (as_name or f"{name}.jpg")
    temp = inbox / f".{target.name}.part"
    photo(name).save(temp, "JPEG", quality=90)
    temp.rename(target)
    return target


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def fetch(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_retry(
    port: int, file: str, token: str | None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    body = json.dumps({"file": file}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/retry", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("X-Artd-Token", token)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """Send ``data`` as is; (status or None when closed without an answer, all bytes read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    answer = b"".join(chunks)
    if not answer.startswith(b"HTTP/"):
        return None, answer
    return int(answer.split(b" ", 2)[1]), answer
