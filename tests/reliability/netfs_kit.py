"""Real network filesystems for the reliability suite: one export, served on this machine
over loopback and mounted twice, as two hosts would mount it (docs/network-shares.md).

``share(kind, base)`` is a context manager that yields a :class:`Share` and, whatever happens
in the test, unmounts both mounts and stops every server it started. It tries, in order:

- ``nfs``: the kernel server (``nfsd`` filesystem, ``rpcbind``, ``exportfs``, ``rpc.mountd``,
  ``rpc.statd``, ``rpc.nfsd``), mounted as NFSv4.2 and as NFSv3 (NLM locking); then
  nfs-ganesha (user space, NFSv4 on a free loopback port) mounted as NFSv4.2 and as
  NFSv4.1 with ``nosharecache``. Either way the two mounts are separate superblocks with
  their own attribute and lookup caches, as two hosts have.
- ``cifs``: ``smbd`` on a free loopback port, mounted twice through the kernel CIFS client
  (SMB 3.1.1, ``nosharesock``: two TCP connections and two sessions, so leases are broken
  between them as between two hosts; ``mfsymlinks``, see network-shares.md).
- ``bind`` (only with ``NETFS_SELFTEST=1``): two bind mounts of a local folder. Not a network
  filesystem: it only checks the tests' own logic where no share can be mounted.

Each step that fails is recorded with its exact error; when no way works, the test is skipped
with all of them. Servers' logs are kept in ``base`` for post-mortems.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_harness import free_port

KINDS = ("nfs", "cifs")
SELFTEST = os.environ.get("NETFS_SELFTEST") == "1"
STEP_TIMEOUT_S = 30


class Unavailable(Exception):
    """One way of serving or mounting the share cannot run here (the message says why)."""


@dataclass(frozen=True)
class Share:
    """One export and two mounts of it (``hosts[i]`` is what host ``i`` sees)."""

    kind: str
    how: str  # the server and client, in words
    export: Path  # the server's folder: the truth, bypassing every client cache
    hosts: tuple[Path, Path]
    options: tuple[str, str]  # mount options of each host

    def describe(self) -> str:
        return f"{self.how}; host 0: -o {self.options[0]}; host 1: -o {self.options[1]}"


# --- processes and commands ------------------------------------------------------------------


def _run(*args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"timed out after {timeout}s")


def _error(done: subprocess.CompletedProcess[str]) -> str:
    text = " ".join((done.stderr or done.stdout or "").split())
    return f"`{' '.join(done.args)}` exited {done.returncode}: {text or '(no message)'}"


def _must(*args: str, timeout: float = STEP_TIMEOUT_S) -> None:
    done = _run(*args, timeout=timeout)
    if done.returncode != 0:
        raise Unavailable(_error(done))


def _filesystems() -> set[str]:
    lines = Path("/proc/filesystems").read_text().splitlines()
    return {line.split()[-1] for line in lines if line.strip()}


def _need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"{name}: not installed")
    return path


def _spawn(stack: contextlib.ExitStack, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start a server in the foreground of its own process group; stopped on exit. Its
    stdin is a pipe kept open: smbd in the foreground exits when its stdin reaches EOF."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=out, stderr=out, start_new_session=True
        )
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (smbd forks one process per client), then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its children, whether or not it exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc.stdin is not None:
        proc.stdin.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " ".join(log.read_text(errors="replace").split()[-40:])
            raise Unavailable(f"{what} exited {proc.returncode}: {tail}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise Unavailable(f"{what} did not listen on 127.0.0.1:{port} in {STEP_TIMEOUT_S}s")


# --- mounts ----------------------------------------------------------------------------------


def _mount(stack: contextlib.ExitStack, fstype: str, source: str, path: Path, opts: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    args = ("mount", "-t", fstype, "-o", opts, source, str(path))
    done = _run(*args, timeout=60)
    if done.returncode != 0:
        if fstype.startswith("nfs") and "nfs" not in _filesystems():
            raise Unavailable(f"{_error(done)} (the kernel has no NFS client)")
        if fstype == "cifs" and "cifs" not in _filesystems():
            raise Unavailable(f"{_error(done)} (the kernel has no CIFS client)")
        raise Unavailable(_error(done))
    stack.callback(unmount, path)


def unmount(path: Path) -> None:
    """Unmount ``path``: politely for up to 5 s (a daemon may be closing files), then forced
    and lazy so that a dead server never leaves a mount behind."""
    for _ in range(50):
        done = _run("umount", str(path))
        if done.returncode == 0 or "not mounted" in done.stderr:
            return
        time.sleep(0.1)
    _run("umount", "-f", "-l", str(path))


def mounted_under(base: Path) -> list[str]:
    """Mount points under ``base`` still in the mount table (must be none after a share)."""
    prefix = str(base.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


# --- NFS: the kernel server ------------------------------------------------------------------


def _kernel_nfs(stack: contextlib.ExitStack, base: Path, export: Path) -> Share:
    for tool in ("rpc.nfsd", "exportfs", "rpc.mountd", "rpcbind", "rpc.statd"):
        _need_tool(tool)
    if "nfsd" not in _filesystems():
        if shutil.which("modprobe") is None:
            cause = "no modprobe to load it"
        else:
            done = _run("modprobe", "nfsd")
            cause = "" if done.returncode == 0 else _error(done)
        if "nfsd" not in _filesystems():
            raise Unavailable(f"'nfsd' is not in /proc/filesystems ({cause})")
    nfsd = Path("/proc/fs/nfsd")
    if not (nfsd / "threads").exists():
        nfsd.mkdir(parents=True, exist_ok=True)
        _must("mount", "-t", "nfsd", "nfsd", str(nfsd))
        stack.callback(unmount, nfsd)
    if _run("rpcinfo", "-p", "127.0.0.1").returncode != 0:  # nobody runs rpcbind: we do
        _spawn(stack, base / "rpcbind.log", "rpcbind", "-f", "-w")
        time.sleep(0.5)
    running = (nfsd / "threads").read_text().strip() not in ("", "0")
    # fsid: an export of a folder on an overlay or tmpfs needs one to be exportable.
    client = f"127.0.0.1:{export}"
    opts = f"rw,sync,no_root_squash,no_subtree_check,insecure,fsid={secrets.randbelow(1 << 30)}"
    _must("exportfs", "-o", opts, client)
    stack.callback(_run, "exportfs", "-u", client)
    if not running:  # a kernel server someone else runs is left as it is
        _spawn(stack, base / "statd.log", "rpc.statd", "--foreground", "--no-notify")
        _spawn(stack, base / "mountd.log", "rpc.mountd", "--foreground")
        _must("rpc.nfsd", "4")
        stack.callback(_run, "rpc.nfsd", "0")
    source = f"127.0.0.1:{export}"
    options = ("vers=4.2,hard", "vers=3,hard")  # v4 leases vs NLM locks, on one export
    for host, opt in zip(_host_paths(base), options, strict=True):
        _mount(stack, "nfs", source, host, opt)
    return Share("nfs", "kernel nfsd, kernel NFS client", export, _host_paths(base), options)


# --- NFS: nfs-ganesha in user space -----------------------------------------------------------

_GANESHA_CONF = """\
NFS_CORE_PARAM {{ NFS_Port = {port}; Protocols = 4; Bind_addr = 127.0.0.1;
  Enable_NLM = false; Enable_RQUOTA = false; }}
NFSV4 {{ Graceless = true; Lease_Lifetime = 15; }}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = /artd; Access_Type = RW;
  Squash = No_Root_Squash; SecType = sys; Protocols = 4; FSAL {{ Name = VFS; }} }}
"""


def _ganesha(stack: contextlib.ExitStack, base: Path, export: Path) -> Share:
    _need_tool("ganesha.nfsd")
    port = free_port()
    conf, log = base / "ganesha.conf", base / "ganesha.log"
    conf.write_text(_GANESHA_CONF.format(port=port, export=export))
    proc = _spawn(
        stack, base / "ganesha.out", "ganesha.nfsd", "-F", "-f", str(conf), "-L", str(log),
        "-p", str(base / "ganesha.pid"), "-N", "NIV_EVENT",
    )  # fmt: skip
    _wait_port(port, proc, log, "ganesha.nfsd")
    common = f"port={port},addr=127.0.0.1,clientaddr=127.0.0.1,hard"
    options = (f"vers=4.2,{common}", f"vers=4.1,nosharecache,{common}")
    for host, opt in zip(_host_paths(base), options, strict=True):
        try:
            _mount(stack, "nfs", "127.0.0.1:/artd", host, opt)
        except Unavailable as exc:
            raise Unavailable(f"server up on 127.0.0.1:{port}, but {exc}") from exc
    how = "nfs-ganesha (VFS FSAL, NFSv4 only), kernel NFS client"
    return Share("nfs", how, export, _host_paths(base), options)


# --- SMB: Samba and the kernel CIFS client ----------------------------------------------------

_SMB_CONF = """\
[global]
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  server role = standalone server
  server min protocol = SMB2_10
  passdb backend = tdbsam
{dirs}
  log file = {base}/smbd.log
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
[artd]
  path = {export}
  read only = no
  valid users = root
"""
_SMB_PASSWORD = "artd-test"


_SAMBA_DIRS = {
    "private dir": "private",
    "lock directory": "lock",
    "state directory": "state",
    "cache directory": "cache",
    "pid directory": "pid",
    "ncalrpc dir": "ncalrpc",
}


def _samba(stack: contextlib.ExitStack, base: Path, export: Path) -> Share:
    _need_tool("smbd")
    port = free_port()
    dirs = []
    for key, name in _SAMBA_DIRS.items():
        (base / "samba" / name).mkdir(parents=True, exist_ok=True)
        dirs.append(f"  {key} = {base / 'samba' / name}")
    conf = base / "smb.conf"
    conf.write_text(_SMB_CONF.format(port=port, dirs="\n".join(dirs), base=base, export=export))
    # A user of this server only (its passdb is in base): an NTLMSSP session that can sign.
    added = subprocess.run(
        ("smbpasswd", "-c", str(conf), "-s", "-a", "root"),
        input=f"{_SMB_PASSWORD}\n{_SMB_PASSWORD}\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode != 0:
        raise Unavailable(_error(added))
    proc = _spawn(
        stack, base / "smbd.out", "smbd", "--foreground", "--no-process-group",
        "--debug-stdout", "-s", str(conf),
    )  # fmt: skip
    _wait_port(port, proc, base / "smbd.out", "smbd")
    common = (
        f"port={port},vers=3.1.1,username=root,password={_SMB_PASSWORD},nosharesock,"
        "mfsymlinks,uid=0,gid=0,file_mode=0644,dir_mode=0755"
    )
    options = (f"{common},cache=strict", f"{common},cache=strict,actimeo=1")
    for host, opt in zip(_host_paths(base), options, strict=True):
        try:
            _mount(stack, "cifs", "//127.0.0.1/artd", host, opt)
        except Unavailable as exc:
            raise Unavailable(f"smbd up on 127.0.0.1:{port}, but {exc}") from exc
    how = "smbd (Samba), kernel CIFS client"
    return Share("cifs", how, export, _host_paths(base), options)


# --- the self-check: two bind mounts of a local folder -----------------------------------------


def _bind(stack: contextlib.ExitStack, base: Path, export: Path) -> Share:
    for host in _host_paths(base):
        _mount(stack, "none", str(export), host, "bind")
    how = "two bind mounts of a local folder (NOT a network filesystem: a self-check)"
    return Share("bind", how, export, _host_paths(base), ("bind", "bind"))


# --- the share -------------------------------------------------------------------------------

_WAYS: dict[str, list[tuple[str, Callable[..., Share]]]] = {
    "nfs": [("kernel NFS server", _kernel_nfs), ("nfs-ganesha", _ganesha)],
    "cifs": [("Samba + kernel CIFS", _samba)],
    "bind": [("bind mounts", _bind)],
}


def _host_paths(base: Path) -> tuple[Path, Path]:
    return (base / "host0", base / "host1")


@contextlib.contextmanager
def share(kind: str, base: Path) -> Iterator[Share]:
    """Serve and mount ``kind`` under ``base``; skip with every error where it cannot run.

    Everything is torn down on exit, a failing test included: mounts first, then servers."""
    if os.geteuid() != 0:
        pytest.skip(f"{kind}: serving and mounting a share needs root")
    failures = []
    for label, way in _WAYS[kind]:
        attempt = base / way.__name__.strip("_")
        export = attempt / "export"
        export.mkdir(parents=True)
        export.chmod(0o777)
        with contextlib.ExitStack() as stack:
            try:
                found = way(stack, attempt, export)
            except Unavailable as exc:
                failures.append(f"{label}: {exc}")
                continue
            yield found
            return
        # (the stack's exit has torn down whatever the failed way had started)
    pytest.skip(f"cannot serve and mount {kind} here: " + "; ".join(failures))
