"""The real daemon for the benches: ``python -m daemon`` as a subprocess, drops, waits.

:class:`Daemon` starts it on a data root and stops it; :func:`drop_and_wait` renames files
into its inbox and times them until every output is committed; :func:`daemon_model` picks the
bench model or the shipped one with the settings each is measured at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.shared.common import ROOT, bench_checkpoints, child_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """``python -m daemon`` on ``root``; by default at the post's loop's 128 px stretch
    (``settings`` are ``ARTD_*`` overrides: ``size=512``), ``extra_env`` other variables.
    ``tree``: the source tree whose daemon runs (cwd and ``PYTHONPATH``; say an older rev
    extracted with ``git archive``), by default this checkout."""

    def __init__(
        self, root: Path, checkpoint: Path, device: str = "cpu", *, fresh: bool = True,
        extra_env: dict[str, str] | None = None, tree: Path = ROOT, **settings: object,
    ) -> None:  # fmt: skip
        self.root = root
        self.tree = Path(tree).resolve()
        self.fresh = fresh  # False: keep what is in root (a backlog placed before the start)
        self.port = free_port()
        # Absolute: the daemon may run in another tree (its cwd).
        root, checkpoint = Path(root).absolute(), Path(checkpoint).absolute()
        env = {"ARTD_ROOT": str(root), "ARTD_CHECKPOINT": str(checkpoint), "ARTD_INSTANCE": "bench"}
        env |= {"ARTD_HTTP_PORT": str(self.port), "ARTD_SIZE": "128", "ARTD_RESIZE": "stretch"}
        env |= {"ARTD_DEVICE": device}
        env |= {f"ARTD_{k.upper()}": str(v) for k, v in settings.items()}
        self.env = child_env(**env, **(extra_env or {}))
        if self.tree != ROOT:  # that tree's packages, not this checkout's
            inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
            kept = [p for p in inherited if p and Path(p).resolve() != ROOT]
            self.env["PYTHONPATH"] = os.pathsep.join([str(self.tree), *kept])
        self.log = root.parent / f"{root.name}-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        if self.fresh:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            command = [sys.executable, "-m", "daemon"]
            self.proc = subprocess.Popen(
                command, cwd=self.tree, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 120
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start; see {self.log}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """``kill -9`` the service (its workers notice their parent is gone) and reap it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document, also when it answers 503 (a problem is reported)."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def metrics(self) -> str:
        """The ``/metrics`` text (Prometheus exposition)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def status(self, key: str) -> int:
        """A line of /proc/PID/status in kB (VmHWM: peak resident memory, VmRSS: current)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def settled(self) -> int:
        """Outputs committed plus inputs quarantined (temporary names start with a dot)."""
        return count_files(self.root / "outbox") + count_files(self.root / "quarantine") // 2

    def reset(self) -> None:
        """Empty outbox and archive between repeats (not timed)."""
        for name in ("outbox", "archive"):
            for entry in os.scandir(self.root / name):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def count_files(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            total += count_files(Path(entry.path))
        elif not entry.name.startswith("."):
            total += 1
    return total


def wait_settled(daemon: Daemon, n: int, timeout_s: float, poll_s: float = 0.02) -> float:
    """Block until ``n`` files are settled; returns the time.perf_counter() it was seen."""
    deadline = time.monotonic() + timeout_s
    while daemon.settled() < n:
        if time.monotonic() > deadline or (daemon.proc and daemon.proc.poll() is not None):
            raise RuntimeError(f"only {daemon.settled()}/{n} settled; see {daemon.log}")
        time.sleep(poll_s)
    return time.perf_counter()


def drop_and_wait(
    daemon: Daemon, files: list[Path], staging: Path, keep_mtimes: bool = False
) -> float:
    """Copy into staging (untimed), rename all into the inbox, wait for every output.

    The copies are fresh files (``cp``, a scanner), so each image waits the daemon's
    ``sidecar_wait_seconds`` for a sidecar; ``keep_mtimes`` copies with the sources'
    modification times (``rsync -a``, ``cp -p``, Finder), which the daemon takes at once."""
    daemon.reset()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copy = shutil.copy2 if keep_mtimes else shutil.copyfile
    for path in files:
        copy(path, staging / path.name)
    started = time.perf_counter()
    for path in files:
        os.rename(staging / path.name, daemon.root / "inbox" / path.name)
    done = wait_settled(daemon, len(files), timeout_s=600)
    quarantined = count_files(daemon.root / "quarantine")
    if quarantined:
        raise RuntimeError(f"{quarantined} files quarantined; see {daemon.log}")
    return done - started


def shipped_settings() -> dict[str, object]:
    """The daemon's own size and resize defaults, for :class:`Daemon` (which pins the post's
    loop's 128 px stretch): what a user running the shipped model gets."""
    from daemon.settings import DaemonSettings

    defaults = DaemonSettings.model_fields
    return {"size": defaults["size"].default, "resize": defaults["resize"].default}


def daemon_model(out: Path, which: str) -> tuple[Path, dict[str, object]]:
    """(checkpoint, :class:`Daemon` settings) for ``which``: "bench", the seeded one-pass
    model at the post's loop's 128 px, or "shipped", the default model at the daemon's own
    defaults."""
    if which == "bench":
        return bench_checkpoints(out)[0], {}
    import core

    return core.DEFAULT_CHECKPOINT, shipped_settings()
