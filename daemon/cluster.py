"""Connecting to a Ray cluster: the one place that calls ``ray.init``, with errors that name
the setting (``ray_address``, ``ray_gpus_per_actor``, ...) instead of Ray's own.

- an address that does not answer fails within seconds (a TCP probe before ``ray.init``,
  whose own retries take a minute);
- Ray not installed, or another Ray or Python version than the cluster's: the install to
  make (``pip install 'artd[ray]'``) or the versions that differ;
- a cluster without the CPUs or GPUs the actors ask for: what it has and what was asked.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from loguru import logger

NAMESPACE = "artd"  # every actor and job of artd lives in it
PROBE_TIMEOUT_S = 5.0


class ClusterError(RuntimeError):
    """The cluster cannot be used as configured; ``setting`` names the one to change."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


def import_ray() -> Any:
    """The ``ray`` module, or a ClusterError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(
            "ray_address", f"Ray is not installed ({exc}); install artd with its extra: "
            "pip install 'artd[ray]'"
        ) from exc  # fmt: skip
    return ray


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A TCP connection to ``HOST:PORT`` (or ``ray://HOST:PORT``), or a ClusterError."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError("ray_address", f"{address!r} is not HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError("ray_address", f"cannot reach {hostport} ({reason})") from exc


def connect(address: str, *, log_to_driver: bool = False) -> Any:
    """``ray.init`` on ``address`` ('local': a Ray of this process's own; 'auto': Ray's own
    discovery), in artd's namespace; the ``ray`` module. Idempotent within a process."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address not in ("auto", "local"):
        probe(address)
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": log_to_driver}
    if address != "local":
        kwargs["address"] = address
    try:
        with _own_signal_handlers():
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        text = str(exc)
        if "version" in text.lower():
            raise ClusterError(
                "ray_address", f"the cluster runs another Ray or Python version: {text}"
            ) from exc
        raise ClusterError("ray_address", f"cannot connect to {address}: {text}") from exc
    resources = ray.cluster_resources()
    logger.info(
        "connected to the Ray cluster at {} (Ray {}): {:g} CPUs, {:g} GPUs, {} node(s)",
        address,
        ray.__version__,
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        sum(1 for node in ray.nodes() if node.get("Alive")),
    )
    return ray


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """Keep this process's SIGTERM and SIGINT handlers through ``ray.init``, which installs
    its own (a ``sys.exit``, behind a native handler that aborts the process 3 s after a
    SIGTERM): the daemon's drain, not Ray's, must answer a stop. Only the main thread can
    set handlers; elsewhere Ray's stay, and a warning says so."""
    signals = (signal.SIGTERM, signal.SIGINT)
    saved = {number: signal.getsignal(number) for number in signals}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, handler in saved.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        else:
            logger.warning("Ray was started outside the main thread: its signal handlers stay")


def require(ray: Any, *, actors: int, cpus: float, gpus: float, prefix: str = "ray") -> None:
    """A ClusterError unless the cluster has room for ``actors`` actors of ``cpus`` CPUs and
    ``gpus`` GPUs each (in total, and on one node for a single actor)."""
    total = ray.cluster_resources()
    for kind, each, setting in (("GPU", gpus, "gpus"), ("CPU", cpus, "cpus")):
        have = total.get(kind, 0.0)
        if each * actors > have + 1e-9:
            raise ClusterError(
                f"{prefix}_{setting}_per_actor",
                f"{actors} actor(s) x {each:g} {kind}s = {each * actors:g}, but the cluster "
                f"has {have:g} {kind}s (lower {prefix}_actors or {prefix}_{setting}_per_actor)",
            )
