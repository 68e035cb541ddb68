"""The real daemon as a subprocess on real folders, for the end-to-end suites."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# Every daemon a test started: a test that fails mid-way never reaches its stop(), and a
# leaked daemon keeps working on a folder (and a CPU) long after the test is gone.
_STARTED: list[subprocess.Popen[bytes]] = []


def kill_leftovers() -> None:
    """Kill the daemons a test left running (a passing test stops its own first)."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Daemon:
    """``python -m daemon`` with test-friendly settings; logs go to a file for post-mortems."""

    def __init__(self, root: Path, checkpoint: Path, instance: str = "test", **settings: object):
        self.root = root
        self.port = free_port()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ARTD_") and key != "NOTIFY_SOCKET"
        }
        self.env.update(
            {
                "ARTD_ROOT": str(root),
                "ARTD_CHECKPOINT": str(checkpoint),
                "ARTD_INSTANCE": instance,
                "ARTD_HTTP_PORT": str(self.port),
                "ARTD_SETTLE_SECONDS": "0.5",
                "ARTD_RESCAN_SECONDS": "1",
                "ARTD_SIZE": "64",
                "ARTD_DEVICE": "cpu",
                "ARTD_RELOAD_SECONDS": "0.5",
                "OMP_NUM_THREADS": "1",
            }
        )
        self.env.update({f"ARTD_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = root.parent / f"daemon-{instance}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Daemon:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon"], cwd=ROOT, env=self.env, stdout=log, stderr=log
        )
        _STARTED.append(self.proc)
        log.close()
        if wait:
            wait_for(self.ready, 60, f"daemon ready (log: {self.log})")
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log}")
        try:
            self.health()
        except (OSError, ValueError):
            return False
        return True

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def outputs(root: Path) -> list[str]:
    return sorted(p.relative_to(root / "outbox").as_posix() for p in files_under(root / "outbox"))


def quarantined(root: Path) -> list[str]:
    folder = root / "quarantine"
    return sorted(
        p.relative_to(folder).as_posix()
        for p in files_under(folder)
        if not p.name.endswith(".error.json")
    )


def settled_count(root: Path) -> int:
    return len(outputs(root)) + len(quarantined(root))
