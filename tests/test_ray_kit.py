"""The Ray test kit itself: a real two-node cluster in a private network namespace,
work placed on either node, a node killed by pid, and a teardown that leaves nothing behind."""

from __future__ import annotations

import json
import time

from daemon_harness import wait_for
from ray_kit import (
    RayCluster,
    ray_cluster_fixture,  # noqa: F401  (the ray_cluster fixture)
    started_cluster,
)

# A client's task: the node it ran on, and the raylet that started its worker process.
WHERE = """
import json, os, ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)

@ray.remote
def where():
    return ray.get_runtime_context().get_node_id(), os.getppid()

placed = {{
{placements}
}}
print(json.dumps({{name: ray.get(ref, timeout=60) for name, ref in placed.items()}}))
"""


def run_where(cluster: RayCluster, **placements: str) -> dict[str, tuple[str, int]]:
    """Run ``where`` once per placement (``name="options"`` for ``.options(...)``) in a client
    inside the namespace: ``{name: (node id, raylet pid)}``."""
    lines = "\n".join(
        f"    {name!r}: where.options({opts}).remote()," for name, opts in placements.items()
    )
    out = cluster.python(WHERE.format(address=cluster.address, placements=lines))
    return {name: (node, ppid) for name, (node, ppid) in json.loads(out.splitlines()[-1]).items()}


def assert_all_gone(cluster: RayCluster) -> None:
    """Every process the cluster ever listed, and the namespace's holder, are gone."""
    seen = cluster.seen()
    assert {p.name for p in seen} >= {"ray", "raylet", "gcs_server"}, seen
    assert [p for p in seen if p.alive()] == []
    assert cluster.namespace.holder_proc is not None
    assert not cluster.namespace.holder_proc.alive()
    assert cluster.namespace.holder is not None
    assert cluster.namespace.holder.returncode is not None
    assert cluster.temp_dir is not None and not cluster.temp_dir.exists()


def test_tasks_run_on_the_node_they_are_placed_on(ray_cluster: RayCluster) -> None:
    assert ray_cluster.node_ids.keys() == {"head", "node2"}
    assert ray_cluster.node_ids["head"] != ray_cluster.node_ids["node2"]

    ran = run_where(
        ray_cluster,
        node2='resources={"node2": 0.01}',
        head='resources={"node:__internal_head__": 0.01}',
    )

    assert ran["node2"][0] == ray_cluster.node_ids["node2"]
    assert ran["head"][0] == ray_cluster.node_ids["head"]
    # The worker processes are children of the raylets this kit started, one per node.
    assert ray_cluster.node2 is not None and ray_cluster.head is not None
    assert ran["node2"][1] == ray_cluster.node2.find("raylet").pid
    assert ran["head"][1] == ray_cluster.head.find("raylet").pid


def test_both_nodes_advertise_loopback_only(ray_cluster: RayCluster) -> None:
    nodes = ray_cluster.wait_for_alive_nodes(2)
    assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}
    links = ray_cluster.namespace.run(["ip", "-o", "link"], capture_output=True, text=True)
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]


def test_a_killed_node_is_declared_dead_and_the_head_goes_on() -> None:
    cluster = started_cluster()
    try:
        assert cluster.node2 is not None and cluster.head is not None
        node2_procs = cluster.node2.pids()
        head_procs = cluster.head.pids()

        killed = cluster.kill_node2_raylet()
        start = time.monotonic()
        nodes = cluster.wait_for_alive_nodes(1, timeout=20)
        took = time.monotonic() - start

        alive = {node["NodeID"]: node["Alive"] for node in nodes}
        assert alive == {cluster.node_ids["head"]: True, cluster.node_ids["node2"]: False}
        assert took < 20
        assert not killed.alive()
        # Its `ray start --block` ends the rest of its node and exits; the head is untouched.
        wait_for(lambda: not any(p.alive() for p in node2_procs), 15, "node2's processes to end")
        assert cluster.node2.process.wait(5) == 1
        assert all(p.alive() for p in head_procs if not p.name.startswith("ray::"))
        ran = run_where(cluster, anywhere="", head='resources={"node:__internal_head__": 0.01}')
        assert {node for node, _ in ran.values()} == {cluster.node_ids["head"]}
    finally:
        cluster.stop()
    assert_all_gone(cluster)


def test_teardown_leaves_no_process_behind() -> None:
    cluster = started_cluster()
    try:
        pids = cluster.pids()
        assert {p.name for p in pids["head"]} >= {"ray", "gcs_server", "raylet"}
        assert {p.name for p in pids["node2"]} >= {"ray", "raylet"}
        assert "gcs_server" not in {p.name for p in pids["node2"]}
        assert {p for ps in pids.values() for p in ps} <= set(cluster.namespace.processes())
    finally:
        start = time.monotonic()
        cluster.stop()
        took = time.monotonic() - start
    assert_all_gone(cluster)
    assert took < 15
