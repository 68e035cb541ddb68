"""A cluster of another Ray version (docs/operations.md, "Beyond one machine: Ray"): its nodes
run a second Ray install (``make other-ray``), the client the venv's. ``artd process --ray``
and the daemon both refuse it by the setting's name with both versions in the message; the
job writes nothing and the daemon stays up, takes no file and leaves the inbox untouched.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

from conftest import write_images
from daemon_harness import files_under, wait_for
from ray_kit import (
    OTHER_RAY,
    RayCluster,
    other_ray_cluster_fixture,  # noqa: F401  (the other_ray_cluster fixture)
)
from test_ray_daemon import ray_daemon
from test_ray_process import process_in
from test_worker_wiring import drop, png

REFUSAL = "ray_address: the cluster runs another Ray or Python version"


def versions() -> tuple[str, str]:
    """The cluster's Ray version and the client's."""
    [dist] = list(importlib.metadata.distributions(path=[str(OTHER_RAY)], name="ray"))
    return dist.version, importlib.metadata.version("ray")


def test_the_cluster_really_runs_another_ray(other_ray_cluster: RayCluster) -> None:
    theirs, ours = versions()
    assert theirs != ours
    # A client of the cluster's own Ray (the kit's environment) connects, and a task on the
    # cluster's workers reports the version it runs.
    code = (
        f"import ray\nray.init(address={other_ray_cluster.address!r})\n"
        "print(ray.__version__, ray.get(ray.remote(lambda: ray.__version__).remote()))"
    )
    assert other_ray_cluster.python(code).split()[-2:] == [theirs, theirs]


def test_process_refuses_it_naming_the_setting_and_writes_nothing(
    other_ray_cluster: RayCluster, pixel_checkpoint: Path, tmp_path: Path
) -> None:
    inputs = write_images(tmp_path / "in", 2)
    before = {p: p.read_bytes() for p in inputs}
    started = time.monotonic()
    result = process_in(
        other_ray_cluster, tmp_path / "in", "--out", tmp_path / "out", "--checkpoint",
        pixel_checkpoint, "--ray", other_ray_cluster.address,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-4000:]
    assert time.monotonic() - started < 60
    theirs, ours = versions()
    assert REFUSAL in result.stderr, result.stderr[-4000:]
    assert f"Ray: {theirs}" in result.stderr and f"Ray: {ours}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in inputs} == before


def test_the_daemon_stays_up_says_why_and_takes_no_file(
    other_ray_cluster: RayCluster, pixel_checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    drop(root / "inbox", {"waits.png": png(1)})
    theirs, _ = versions()
    with other_ray_cluster.namespace.entered():
        daemon = ray_daemon(root, pixel_checkpoint, other_ray_cluster)
        with daemon:
            wait_for(lambda: REFUSAL in str(daemon.health()[1]["problems"]), 60, daemon.log)
            status, health = daemon.health()
            assert status == 503 and f"Ray: {theirs}" in str(health["problems"]), health
            assert REFUSAL in daemon.log
            time.sleep(1.5)  # settled and rescanned: still not taken
            assert files_under(root / "inbox") == [root / "inbox" / "waits.png"]
            assert files_under(root / "outbox") == [] and files_under(root / "quarantine") == []
            assert daemon.stop() == 0
