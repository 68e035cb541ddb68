"""The Ray tests' fixtures over a real two-node Ray cluster on this machine
(bench.shared.ray_cluster: a head and a second node in a private network namespace, every
process ended by its pid).

Modules import the ``ray_cluster`` fixture (module scope) as ``ray_cluster_fixture``; a test
that breaks its cluster starts its own with ``started_cluster()`` and stops it itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench.shared.common import ROOT
from bench.shared.ray_cluster import (  # noqa: F401  (the tests' names for them)
    NamespaceUnavailable,
    NetNamespace,
    Proc,
    RayCluster,
    RayNode,
    descendants,
    proc,
)

# A second Ray, of another version than the venv's (`make other-ray`; CI installs it), for a
# cluster a client of the venv's Ray must refuse.
OTHER_RAY = ROOT / "build" / "ray-other"

# --- fixtures --------------------------------------------------------------------------------


def started_cluster(**kwargs: Any) -> RayCluster:
    """A started cluster, or a skip saying why one cannot run here."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'artd[ray]')")
    cluster = RayCluster(**kwargs)
    try:
        return cluster.start()
    except NamespaceUnavailable as exc:
        pytest.skip(f"no private network namespace for a Ray cluster: {exc}")


@pytest.fixture(name="ray_cluster", scope="module")
def ray_cluster_fixture() -> Iterator[RayCluster]:
    """A running two-node cluster shared by a module's tests, always torn down."""
    yield from stopped_after(started_cluster())


@pytest.fixture(name="other_ray_cluster", scope="module")
def other_ray_cluster_fixture() -> Iterator[RayCluster]:
    """Like ``ray_cluster``, its nodes running the Ray in ``OTHER_RAY``: a skip where it is
    not installed, a failure under CI (whose ``.ci/run`` installs it)."""
    if not (OTHER_RAY / "ray" / "__init__.py").exists():
        message = f"no second Ray in {OTHER_RAY} (make other-ray)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield from stopped_after(started_cluster(env={"PYTHONPATH": f"{OTHER_RAY}{os.pathsep}{ROOT}"}))


def stopped_after(cluster: RayCluster) -> Iterator[RayCluster]:
    """A fixture's body over a started ``cluster``: yields it, then stops it whatever the
    tests did (``yield from stopped_after(started_cluster(...))``)."""
    try:
        yield cluster
    finally:
        cluster.stop()
