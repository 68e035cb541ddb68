"""Shared helpers of the reliability suite: the ledger it prints, tmpfs mounts, invariants.

The ledger is what the suite prints (docs/reliability.md): cases run, faults injected, files
in and out, lost / duplicated / escaped (each must stay 0). Each test adds its figures through the
``ledger`` fixture (modules import ``ledger_fixture``); the first use registers a small plugin
that prints the totals at the end of the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon_harness import Daemon, files_under

from core.reasons import Reason
from daemon.spool import SIDECAR_SUFFIX, TEMP_MARK
from daemon.spool.names import fit_name, numbered

# Quarantine reasons the daemon may give: every one core.reasons registers.
KNOWN_REASONS = frozenset(Reason)
FULL = os.environ.get("RELIABILITY_FULL") == "1"  # `make soak`: longer fuzzing, bigger loops


# --- the ledger ----------------------------------------------------------------------------


@dataclass
class Ledger:
    cases: int = 0
    faults: int = 0
    files_in: int = 0
    outputs: int = 0
    quarantined: int = 0
    lost: int = 0
    duplicated: int = 0
    escapes: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, **counts: int) -> None:
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + value)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def lines(self) -> list[str]:
        head = (
            f"cases {self.cases}, faults injected {self.faults}, files in {self.files_in}, "
            f"out {self.outputs} + quarantined {self.quarantined}; "
            f"lost {self.lost}, duplicated {self.duplicated}, escapes {self.escapes}"
        )
        return [head, *self.notes]


LEDGER = Ledger()


_PLUGIN_NAME = "artd-reliability-ledger"


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section("artd reliability summary")
        for line in LEDGER.lines():
            terminalreporter.write_line(line)


@pytest.fixture(name="ledger")
def ledger_fixture(request: pytest.FixtureRequest) -> Ledger:
    manager = request.config.pluginmanager
    if not manager.has_plugin(_PLUGIN_NAME):
        manager.register(_SummaryPlugin(), _PLUGIN_NAME)
    LEDGER.add(cases=1)
    return LEDGER


# --- invariants ----------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_files(root: Path) -> list[Path]:
    return [p for p in files_under(root) if TEMP_MARK in p.name]


def sidecar_reason(root: Path, rel: str) -> str:
    return json.loads((root / "quarantine" / f"{rel}{SIDECAR_SUFFIX}").read_text())["reason"]


def output_rel(rel: str, ext: str = ".png") -> str:
    """The spool's naming rule: same relative path plus the extension, cut to NAME_MAX."""
    parent, _, name = rel.rpartition("/")
    return f"{parent}/" * bool(parent) + fit_name(name, ext)


def quarantine_rel(rel: str, flat: bool = False) -> str:
    """Its quarantine name; ``flat``: the name used when a folder on the way was a symlink."""
    parent, _, name = rel.rpartition("/")
    if flat:
        return numbered(rel.replace("/", "__"), 1, reserve=len(SIDECAR_SUFFIX))
    return f"{parent}/" * bool(parent) + numbered(name, 1, reserve=len(SIDECAR_SUFFIX))


def settle_report(root: Path, inputs: list[str], ext: str = ".png") -> dict[str, list[str]]:
    """Where each input ended: ``{"out", "quarantined", "lost", "dup"}`` -> inputs.

    Inputs are relative paths as dropped; numbered names (``x (2).jpg``) count as duplicates.
    """
    out_names = {p.relative_to(root / "outbox").as_posix() for p in files_under(root / "outbox")}
    quarantine = root / "quarantine"
    held = {
        p.relative_to(quarantine).as_posix()
        for p in files_under(quarantine)
        if not p.name.endswith(SIDECAR_SUFFIX)
    }
    report: dict[str, list[str]] = {"out": [], "quarantined": [], "lost": [], "dup": []}
    for rel in inputs:
        done = output_rel(rel, ext) in out_names
        bad = quarantine_rel(rel) in held or quarantine_rel(rel, flat=True) in held
        if done and bad:
            report["dup"].append(rel)
        elif done:
            report["out"].append(rel)
        elif bad:
            report["quarantined"].append(rel)
        else:
            report["lost"].append(rel)
    expected = {output_rel(rel, ext) for rel in inputs} | {quarantine_rel(r) for r in inputs}
    expected |= {quarantine_rel(r, flat=True) for r in inputs}
    extra = sorted((out_names | held) - expected)
    report["dup"].extend(extra)  # anything else in outbox/quarantine is a second copy
    return report


def assert_each_exactly_once(
    root: Path, inputs: list[str], ledger: Ledger, ext: str = ".png"
) -> dict[str, list[str]]:
    """Every input: one output or one quarantine entry; no leftovers, no temp files."""
    report = settle_report(root, inputs, ext)
    ledger.add(
        files_in=len(inputs),
        outputs=len(report["out"]),
        quarantined=len(report["quarantined"]),
        lost=len(report["lost"]),
        duplicated=len(report["dup"]),
    )
    assert not report["lost"], f"lost: {report['lost'][:10]}"
    assert not report["dup"], f"duplicated: {report['dup'][:10]}"
    assert not temp_files(root), f"temp files left: {temp_files(root)[:5]}"
    assert not files_under(root / "inbox"), f"left in inbox: {files_under(root / 'inbox')[:5]}"
    work = root / ".artd" / "work"
    assert not files_under(work), f"claims left: {files_under(work)[:5]}"
    for rel in report["quarantined"]:
        name = quarantine_rel(rel)
        name = name if (root / "quarantine" / name).exists() else quarantine_rel(rel, flat=True)
        assert sidecar_reason(root, name) in KNOWN_REASONS, rel
    return report


def tree_snapshot(folder: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``folder``: kind and content hash (or link target); never follows."""
    snapshot = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                snapshot[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                snapshot[rel] = ("dir", oct(path.stat().st_mode))
            else:
                snapshot[rel] = ("file", sha(path.read_bytes()))
    return snapshot


# --- processes -----------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / Threads of a live process (kB for the Vm fields)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def model_worker_pids(daemon: Daemon) -> list[int]:
    """The daemon's model worker processes, as its /healthz reports them (the network, and
    its memory, lives there, not in the service)."""
    return [w["pid"] for w in daemon.health()[1]["workers"] if w.get("pid")]  # type: ignore[union-attr]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def metric(daemon: Daemon, name: str) -> float:
    """Sum of every sample of ``name`` in /metrics (all label sets)."""
    total = 0.0
    for match in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", daemon.metrics(), re.M):
        total += float(match.group(1))
    return total


def wait_until(condition: object, timeout: float, what: str, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon died ({daemon.proc.returncode}) waiting for {what}")
        time.sleep(0.1)
    log = "" if daemon is None else daemon.log[-4000:]
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log}")


# --- mounts --------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def _mounted(path: Path, what: str, *mount_args: str) -> Iterator[Path]:
    """``mount MOUNT_ARGS path``, unmounted afterwards; skips the test where it is refused."""
    done = _run("mount", *mount_args, str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount {what} here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        unmount(path)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A private tmpfs at ``path`` (root only); skips the test where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    args = ("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs")
    with _mounted(path, "a tmpfs (needs root/CAP_SYS_ADMIN)", *args) as mounted:
        yield mounted


@contextlib.contextmanager
def tmpfs_or_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs at ``path`` where we may mount one (fsync costs nothing there), else the
    plain folder ``path`` on the disk: for tests that need room or speed, not a mount."""
    try:
        with tmpfs(path, size) as folder:
            yield folder
    except BaseException as exc:
        if type(exc).__name__ != "Skipped":
            raise
        yield path


@contextlib.contextmanager
def loop_ext4(path: Path, image: Path, size_mb: int = 64) -> Iterator[Path]:
    """A fresh ext4 filesystem on a loop device at ``path``; skips where that is refused."""
    path.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size_mb << 20)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 unavailable: {made.stderr.strip()}")
    with _mounted(path, "a loop device", "-o", "loop", str(image)) as mounted:
        yield mounted


def unmount(path: Path) -> None:
    for _ in range(50):
        if _run("umount", str(path)).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "-l", str(path))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for every new write, even while files are open for writing there
    (a plain ``remount,ro`` is refused then): a read-only bind mount stacked on top of it."""
    done = _run("mount", "--bind", str(path), str(path))
    assert done.returncode == 0, done.stderr
    # The kernel refuses to make a mount read-only while a file is open for writing through
    # it (EBUSY, "mount point is busy"): the running daemon may be writing a record through
    # the fresh bind mount at that instant. Its writes are short, so try again for a while.
    for _ in range(100):
        done = _run("mount", "-o", "remount,bind,ro", str(path))
        if done.returncode == 0 or "busy" not in done.stderr:
            break
        time.sleep(0.05)
    if done.returncode != 0:
        unmount(path)  # do not leave the writable bind mount stacked there
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        unmount(path)


def fill_up(folder: Path, name: str = "ballast") -> Path:
    """Write zeros into ``folder/name`` until the filesystem says ENOSPC."""
    path = folder / name
    chunk = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(chunk)
    with open(path, "ab", buffering=0) as handle, contextlib.suppress(OSError):
        while True:  # the last partial chunk
            handle.write(b"\0" * 512)
    return path
