"""A real two-node Ray cluster on this machine, for the Ray tests and benches.

Two ``ray start --block`` processes, a head and a second node joined to it, each with its own
raylet, CPU only. Everything runs inside a private network namespace with only loopback up
(``unshare -n``, so root): on Linux Ray advertises the machine's primary address even when
told ``--node-ip-address=127.0.0.1``; in such a namespace there is nothing but 127.0.0.1, so
no test traffic can leave the machine, and no port a test picks can clash with another job.

Used by the Ray tests (tests/ray_kit.py: the fixtures) and the Ray benches and studies.

Every process is ended by its pid, never by ``ray stop`` or a name: the machine runs other
jobs. A process is known by its pid *and* its start time, so a pid the kernel has handed to
someone else since is never killed (pid_max is small on some machines).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.shared.common import ROOT

# `ray` is the console script beside the interpreter running the tests (the venv's).
RAY = str(Path(sys.executable).with_name("ray"))
# Ray's floor is 75 MiB; the default (30% of RAM) is far too much on a small shared machine.
OBJECT_STORE_BYTES = 100 * 1024 * 1024
CLONE_NEWNET = 0x40000000  # setns(2): a network namespace
# Printed by `ray start` once its node is up (then it blocks).
STARTED_LINE = "Ray runtime started."


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# --- processes by pid ------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process: its pid plus its start time (clock ticks since boot), which tells it apart
    from a later process that got the same pid."""

    pid: int
    start: int
    name: str

    def alive(self) -> bool:
        """Still running: the same process, and not a zombie waiting to be reaped."""
        stat = _stat(self.pid)
        return stat is not None and stat.start == self.start and stat.state != "Z"

    def kill(self) -> None:
        """SIGKILL, if it is still this process."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def title(self) -> str:
        """Its command line as it names itself now (Ray retitles a worker with the task it
        runs: ``ray::MapWorker(...).submit`` while an actor works, ``ray::MapWorker(...)``
        when idle); "" once gone."""
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return ""
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() if self.alive() else ""

    def rss(self) -> int:
        """Resident memory in bytes (0 once gone)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


@dataclass(frozen=True)
class _Stat:
    ppid: int
    state: str
    start: int
    name: str


def _stat(pid: int) -> _Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name is in parentheses and may hold spaces or parentheses itself.
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(ppid=int(fields[1]), state=fields[0], start=int(fields[19]), name=name)


def proc(pid: int) -> Proc | None:
    """The running process with this pid, or None."""
    stat = _stat(pid)
    return None if stat is None else Proc(pid, stat.start, stat.name)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(pid: int) -> list[Proc]:
    """Every living process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        stat = _stat(other)
        if stat is not None and stat.state != "Z":
            children.setdefault(stat.ppid, []).append(other)
    found: list[Proc] = []
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop()
        if (p := proc(current)) is not None:
            found.append(p)
        todo.extend(children.get(current, []))
    return found


# --- a private network namespace -------------------------------------------------------------


class NamespaceUnavailable(RuntimeError):
    """``unshare -n`` (or ``nsenter``/``ip``) is not possible here: not root, or no tools."""


_OPEN: list[NetNamespace] = []


class NetNamespace:
    """A network namespace with only loopback up, kept alive by a holder process
    (``unshare -n -- sleep infinity``); commands join it with ``nsenter -t HOLDER -n``."""

    def __init__(self) -> None:
        self.holder: subprocess.Popen[bytes] | None = None
        self.holder_proc: Proc | None = None

    def start(self, timeout: float = 10) -> NetNamespace:
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise NamespaceUnavailable(f"`{tool}` is not installed")
        if os.geteuid() != 0:
            raise NamespaceUnavailable("`unshare -n` needs root")
        ours = os.readlink("/proc/self/ns/net")
        self.holder = subprocess.Popen(
            ["unshare", "-n", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _OPEN.append(self)

        def unshared() -> bool:
            assert self.holder is not None
            if self.holder.poll() is not None:
                assert self.holder.stderr is not None
                error = self.holder.stderr.read().decode(errors="replace").strip()
                raise NamespaceUnavailable(f"`unshare -n` failed: {error}")
            try:
                return os.readlink(f"/proc/{self.holder.pid}/ns/net") != ours
            except OSError:
                return False

        try:
            wait_for(unshared, timeout, "the namespace holder to unshare")
            self.holder_proc = proc(self.holder.pid)
            self.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def inode(self) -> str:
        """The namespace's identity, e.g. ``net:[4026532239]``."""
        assert self.holder is not None
        return os.readlink(f"/proc/{self.holder.pid}/ns/net")

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace (nsenter execs it: same pid)."""
        assert self.holder is not None, "start() the namespace first"
        return ["nsenter", "-t", str(self.holder.pid), "-n", "--", *argv]

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace; the process is killed by ``close()``."""
        return subprocess.Popen(self.command(argv), env=env, cwd=cwd, **kwargs)

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace."""
        return subprocess.run(self.command(argv), env=env, cwd=cwd, **kwargs)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Put the calling thread inside the namespace for the block (``setns``, root): its
        sockets (``urllib`` to a daemon's port) and the processes it starts (``Popen``
        forks from this thread) are inside; the thread's own namespace comes back after."""
        assert self.holder is not None, "start() the namespace first"
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test namespace failed")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back failed")
        finally:
            os.close(own)
            os.close(target)

    def processes(self) -> list[Proc]:
        """Every living process in the namespace but the holder, whoever its parent is now
        (orphans of a killed raylet included)."""
        if self.holder_proc is None or not self.holder_proc.alive():
            return []  # without the holder the inode could name someone else's namespace
        inode = self.inode
        found = []
        for pid in _all_pids():
            if pid == self.holder_proc.pid:
                continue
            try:
                same = os.readlink(f"/proc/{pid}/ns/net") == inode
            except OSError:
                continue
            if same and (p := proc(pid)) is not None and p.alive():
                found.append(p)
        return found

    def close(self, timeout: float = 10) -> None:
        """Kill every process in the namespace by pid (until none is left), then the holder."""
        if self.holder is None:
            return
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            for p in left:
                p.kill()
            time.sleep(0.05)
        if self.holder_proc is not None:
            self.holder_proc.kill()
        self.holder.wait(timeout)
        if self.holder.stderr is not None:
            self.holder.stderr.close()
        if self in _OPEN:
            _OPEN.remove(self)
        if left:
            raise AssertionError(f"processes left in the namespace after {timeout}s: {left}")

    def __enter__(self) -> NetNamespace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_leftover_namespaces() -> None:
    # Last resort (a fixture's teardown already did this): never leave a cluster running.
    for namespace in list(_OPEN):
        with contextlib.suppress(AssertionError, OSError, subprocess.TimeoutExpired):
            namespace.close()


# --- the cluster -----------------------------------------------------------------------------


@dataclass
class RayNode:
    """One node: the ``ray start --block`` process, parent of all of its node's processes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    seen: set[Proc] = field(default_factory=set)

    def pids(self) -> list[Proc]:
        """The node's living processes: ``ray start`` itself, gcs_server and the dashboard
        (head only), raylet, log monitor, agents, workers. Each is remembered in ``seen``."""
        start = proc(self.process.pid)
        found = ([start] if start is not None and start.alive() else []) + descendants(
            self.process.pid
        )
        self.seen.update(found)
        return found

    def find(self, name: str) -> Proc:
        """The node's living process named ``name`` (``/proc/PID/comm``: raylet, gcs_server)."""
        matches = [p for p in self.pids() if p.name == name]
        assert len(matches) == 1, f"{self.name}: expected one {name}, found {matches}"
        return matches[0]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def started(self) -> bool:
        if STARTED_LINE in self.log:
            return True
        if self.process.poll() is not None:
            raise AssertionError(f"`ray start` ({self.name}) exited:\n{self.log[-4000:]}")
        return False


class RayCluster:
    """A head and a second node (resource ``node2``) joined to it, on 127.0.0.1 inside a private
    network namespace. ``with RayCluster() as cluster:`` or ``start()``/``stop()``."""

    def __init__(
        self,
        head_cpus: int = 1,
        node2_cpus: int = 1,
        port: int = 6379,
        object_store_bytes: int = OBJECT_STORE_BYTES,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.head_cpus = head_cpus
        self.node2_cpus = node2_cpus
        self.port = port  # any port: the namespace is ours alone
        self.object_store_bytes = object_store_bytes
        self.namespace = NetNamespace()
        self.head: RayNode | None = None
        self.node2: RayNode | None = None
        self.temp_dir: Path | None = None
        # Ray's NodeID of each node, by name ("head", "node2"), once started.
        self.node_ids: dict[str, str] = {}
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        self.env.update(
            {
                "RAY_USAGE_STATS_ENABLED": "0",
                # A token a local Ray saved in ~/.ray (Ray turns authentication on for local
                # clusters) must not turn it on for this one: its second node could not join.
                "RAY_AUTH_MODE": "disabled",
                "PATH": f"{Path(RAY).parent}{os.pathsep}{self.env.get('PATH', '')}",
                "PYTHONPATH": str(ROOT),
                # The GCS declares a silent node dead after period x threshold: ~3 s, not 15.
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_failure_threshold": "3",
                # How long a joining node retries the head's GCS (default ~20 s): a loaded CI
                # machine can take longer to bring the head up.
                "RAY_gcs_server_port_wait_time_s": "60",
            }
        )
        self.env.update(env or {})

    @property
    def address(self) -> str:
        """The head's GCS, for ``ray.init(address=...)`` from inside the namespace."""
        return f"127.0.0.1:{self.port}"

    @property
    def nodes(self) -> list[RayNode]:
        return [node for node in (self.head, self.node2) if node is not None]

    def start(self, timeout: float = 60) -> RayCluster:
        """Start both nodes and wait until the GCS lists both alive."""
        try:
            self.namespace.start()
            # Short on purpose: Ray's unix sockets live under it (108-byte path limit), and a
            # pytest tmp_path is too long for that.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
            common = [
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--object-store-memory={self.object_store_bytes}",
                "--disable-usage-stats",
            ]
            self.head = self._start_node(
                "head",
                # No dashboard, and no autoscaler monitor: a fixed cluster needs neither.
                ["--head", f"--port={self.port}", "--include-dashboard=false", "--no-monitor"],
                self.head_cpus,
                common,
            )
            # Started without waiting for the head: its `ray start` imports Ray meanwhile, then
            # retries the head's GCS once a second (up to RAY_gcs_server_port_wait_time_s).
            # That saves ~2.5 s of the ~8 a one-after-the-other start takes here.
            self.node2 = self._start_node(
                "node2",
                [f"--address={self.address}", "--resources=" + json.dumps({"node2": 1})],
                self.node2_cpus,
                common,
            )
            wait_for(self.head.started, timeout, "the Ray head to start")
            wait_for(self.node2.started, timeout, "the second Ray node to start")
            for node in self.wait_for_alive_nodes(2, timeout):
                resources = node["Resources"]
                name = "head" if "node:__internal_head__" in resources else "node2"
                assert name == "head" or "node2" in resources, node
                self.node_ids[name] = node["NodeID"]
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, name: str, role: list[str], cpus: int, common: list[str]) -> RayNode:
        assert self.temp_dir is not None
        log_path = self.temp_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = self.namespace.popen(
                [
                    RAY,
                    "start",
                    *role,
                    f"--num-cpus={cpus}",
                    *common,
                    f"--temp-dir={self.temp_dir / name}",
                ],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return RayNode(name, process, log_path)

    def python(self, code: str, timeout: float = 60) -> str:
        """Run ``python -c code`` inside the namespace (a Ray client: ``ray.init(address=...)``)
        and return its stdout; a failure raises with its stderr."""
        return self.run_python(["-c", code], timeout)

    def run_python(self, args: list[str], timeout: float = 60) -> str:
        """Run ``python ARGS`` (a script and its arguments, or ``-c CODE``) inside the
        namespace, as :meth:`python` does."""
        result = self.namespace.run(
            [sys.executable, *args],
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"client exited {result.returncode}:\n{result.stderr[-4000:]}\n{result.stdout}"
            )
        return result.stdout

    def wait_for_alive_nodes(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait (in one client) until ``ray.nodes()`` shows exactly ``count`` nodes alive;
        returns ``ray.nodes()`` then (``NodeID``, ``Alive``, ``Resources``, ...)."""
        code = f"""
import json, time, ray
ray.init(address={self.address!r}, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + {timeout}
while sum(n["Alive"] for n in ray.nodes()) != {count}:
    if time.monotonic() > deadline:
        raise SystemExit(f"not {count} alive: {{ray.nodes()}}")
    time.sleep(0.1)
print(json.dumps(ray.nodes(), default=str))
"""
        return json.loads(self.python(code, timeout + 30).strip().splitlines()[-1])

    def pids(self) -> dict[str, list[Proc]]:
        """Each node's living processes, by node name."""
        return {node.name: node.pids() for node in self.nodes}

    def seen(self) -> set[Proc]:
        """Every cluster process ever listed by ``pids()`` (``stop()`` lists them last)."""
        return set().union(*(node.seen for node in self.nodes))

    def rss(self) -> int:
        """Resident memory of every process in the namespace, in bytes (shared pages counted
        once per process, so an over-estimate)."""
        return sum(p.rss() for p in self.namespace.processes())

    def driver_logs(self) -> str:
        """What the drivers' core workers logged on the head (its session's
        ``python-core-driver-*.log``), written as it happens, unlike what Ray forwards to a
        driver's stderr. Read it before ``stop()``, which removes the session."""
        assert self.temp_dir is not None
        paths = sorted((self.temp_dir / "head").glob("session_*/logs/python-core-driver-*.log"))
        return "".join(p.read_text(errors="replace") for p in paths)

    def kill_node2_raylet(self) -> Proc:
        """``kill -9`` the second node's raylet; its ``ray start`` then ends the rest of its
        node. The GCS notices by its health checks (a few seconds)."""
        assert self.node2 is not None
        raylet = self.node2.find("raylet")
        raylet.kill()
        return raylet

    def kill_node2(self) -> list[Proc]:
        """A machine loss: ``kill -9`` every process of the second node at once (its
        ``ray start`` first, so nothing is cleaned up). Unlike ``kill_node2_raylet``, its
        workers cannot finish what they hold after the kill."""
        assert self.node2 is not None
        procs = self.node2.pids()
        for p in procs:
            p.kill()
        return procs

    def stop(self) -> None:
        """Kill every process of the cluster by pid: each ``ray start`` first (so it cannot
        clean up or report), then its descendants, then whatever is left in the namespace
        (orphans included), then the namespace's holder."""
        for node in self.nodes:
            # Listing them remembers them in `seen`, for the tests that check they are gone.
            below = [p for p in node.pids() if p.pid != node.process.pid]
            if node.process.poll() is None:
                node.process.kill()
            for p in below:
                p.kill()
        try:
            self.namespace.close()
        finally:
            for node in self.nodes:
                node.process.wait(10)
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
