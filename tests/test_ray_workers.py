"""Model workers on Ray (daemon.workers.ray_pool): a pool of real actors on a real two-node
cluster (tests/ray_kit.py), serving tiny real checkpoints.

Each test writes a driver (``DRIVER``) to its tmp_path and runs it inside the cluster's
private network namespace, where a Ray client must run; the driver prints one JSON line
and the test asserts on it. Results are compared by their pixels' SHA-256: equal digests are
pixel-exact results (CPU, fp32, one thread on both sides).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, seeded_model, textured_image
from ray_kit import (
    RayCluster,
    ray_cluster_fixture,  # noqa: F401  (the ray_cluster fixture)
    started_cluster,
)

from core.checkpoint import CheckpointMeta, save_checkpoint
from core.diffusion.schedule import Schedule

# The driver: one mode per test, its arguments as JSON in argv[1], one JSON line out.
DRIVER = r'''
import hashlib, json, sys, threading, time
from pathlib import Path

import numpy as np

from core.diffusion.sampler_settings import SamplerRequest
from core.outputs.settings import OutputSettings
from core.runtime.errors import InferenceError
from daemon.workers import EngineOptions, ModelWorker, WorkerDied, WorkerUnavailable
from daemon.workers.inprocess import InProcessWorker
from daemon.workers.ray_pool import RayWorkerPool

ARGS = json.loads(sys.argv[1])
REPORT = ARGS["report"]  # begins the report's line (Ray writes a dead raylet's log to stdout)
OPTIONS = EngineOptions(device="cpu", precision="fp32", max_batch=4, cpu_threads=1)
FEW = SamplerRequest(strength=0.5, steps=4)  # two network passes per image
SLOW = SamplerRequest(strength=1.0, steps=ARGS["slow_steps"])  # a batch of a second or more
OUTPUT = OutputSettings(64)
IMAGES = np.load(ARGS["images"])
RGB, RGBA, ODD = list(IMAGES["rgb"]), list(IMAGES["rgba"]), list(IMAGES["odd"])


def sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def digest(results):
    """Each result, comparable in JSON: its pixels' digest, or the InferenceError."""
    out = []
    for r in results:
        if isinstance(r, InferenceError):
            out.append(["error", str(r.reason), r.message])
        else:
            composited = None if r.composited is None else sha(r.composited)
            out.append(["pixels", list(r.pixels.shape), sha(r.pixels), composited])
    return out


def run(worker, batch, request=FEW):
    return digest(worker.run(batch, [sha(a) for a in batch], request, OUTPUT))


def expected(checkpoint, batches, request=FEW):
    reference = InProcessWorker()
    reference.start(Path(checkpoint), OPTIONS)
    return [run(reference, batch, request) for batch in batches]


def pool(**kwargs):
    settings = dict(address=ARGS["address"], actors=2, cpus_per_actor=0.5, batch_timeout_s=60)
    return RayWorkerPool("test", **(settings | kwargs))


def health(worker):
    h = worker.health()
    return {"alive": h.alive, "busy": h.busy, "actors": h.actors, "busy_actors": h.busy_actors,
            "lost": h.lost, "restarts": h.restarts, "version": h.model_version, "error": h.error}


def actors(worker):
    return [[a.number, a.state, a.node_id, a.model_version] for a in worker.actors()]


def in_threads(*calls):
    """Run each call on a thread of its own: [(result or exception, start, end)]."""
    out = [None] * len(calls)

    def target(i, call):
        began = time.monotonic()
        try:
            value = call()
        except Exception as exc:
            value = exc
        out[i] = (value, began, time.monotonic())

    threads = [threading.Thread(target=target, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, out


def outcome(value):
    if isinstance(value, WorkerDied):
        return {"died": value.kind, "cause": value.cause}
    if isinstance(value, Exception):
        return {"raised": f"{type(value).__name__}: {value}"}
    return {"ok": value}


def serve():
    """Two actors, one per node; six batches from two threads at once."""
    worker = pool()
    began = time.monotonic()
    info = worker.start(Path(ARGS["checkpoint"]), OPTIONS)
    start_s = time.monotonic() - began
    batches = [RGB[0:2], RGB[2:4], RGB[4:6], RGB[6:8], RGBA, ODD]
    busy = []

    def serve_part(part):
        return [(i, run(worker, batches[i], SLOW), worker.model.version) for i in part]

    threads, out = in_threads(*[lambda p=p: serve_part(p) for p in ((0, 2, 4), (1, 3, 5))])
    while any(t.is_alive() for t in threads):
        busy.append(worker.health().busy_actors)
        time.sleep(0.02)
    got = {}
    for value, _, _ in out:
        assert isinstance(value, list), value
        got.update({i: (digest_, version) for i, digest_, version in value})
    (_, a0, a1), (_, b0, b1) = out
    report = {
        "is_worker": isinstance(worker, ModelWorker),
        "version": info.version, "start_s": start_s, "concurrency": worker.concurrency,
        "actors": actors(worker), "health": health(worker), "max_busy": max(busy),
        "overlap_s": min(a1, b1) - max(a0, b0), "ran_s": max(a1, b1) - min(a0, b0),
        "got": [got[i][0] for i in range(len(batches))],
        "versions": sorted({got[i][1] for i in got}),
        "timing": [worker.last_timing.total_s, worker.last_timing.model_s],
    }
    worker.stop()
    report["expected"] = expected(ARGS["checkpoint"], batches, SLOW)
    report["after_stop"] = health(worker)
    return report


def reload():
    """A bad checkpoint refused with the old model serving on; a good one switches all."""
    worker = pool()
    worker.start(Path(ARGS["checkpoint"]), OPTIONS)
    report = {"before": actors(worker)}
    try:
        worker.start(Path(ARGS["bad"]), OPTIONS)
        report["bad"] = "accepted"
    except WorkerUnavailable as exc:
        report["bad"] = {"reason": exc.reason, "refused": exc.refused}
    report["after_bad"] = actors(worker)
    report["after_bad_health"] = health(worker)
    report["after_bad_got"] = run(worker, RGB[0:2])
    report["after_bad_model"] = worker.model.version
    began = time.monotonic()
    report["new"] = worker.start(Path(ARGS["other"]), OPTIONS).version
    report["switch_s"] = time.monotonic() - began
    report["after_new"] = actors(worker)
    report["after_new_health"] = health(worker)
    report["after_new_got"] = run(worker, RGB[0:2])
    report["after_new_model"] = worker.model.version
    worker.stop()
    report["expected_old"], = expected(ARGS["checkpoint"], [RGB[0:2]])
    report["expected_new"], = expected(ARGS["other"], [RGB[0:2]])
    return report


def errors():
    """Each bad setting: (message, refused, seconds)."""
    rows = []
    for kwargs in (
        {"address": "127.0.0.1:1", "actors": 1},  # nothing listens on port 1
        {"actors": 1, "gpus_per_actor": 1.0},  # a CPU-only cluster
        {"actors": 3, "cpus_per_actor": 1.0},  # 3 CPUs asked of 2
    ):
        began = time.monotonic()
        try:
            pool(**kwargs).start(Path(ARGS["checkpoint"]), OPTIONS)
            rows.append(["started", None, time.monotonic() - began])
        except WorkerUnavailable as exc:
            rows.append([exc.reason, exc.refused, time.monotonic() - began])
    return {"rows": rows}


def lose():
    """Two slow batches, one in each node's actor; the test kills node2 when told BUSY."""
    worker = pool()
    worker.start(Path(ARGS["checkpoint"]), OPTIONS)
    report = {"before": actors(worker)}
    began = time.monotonic()
    threads, out = in_threads(*[lambda i=i: run(worker, RGB[i : i + 1], SLOW) for i in (0, 1)])
    deadline = time.monotonic() + 30
    while worker.health().busy_actors != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # both batches in their actors, not just sent
    print("BUSY", flush=True)
    killed = float(sys.stdin.readline()) + time.monotonic() - time.time()  # the test's kill
    # How the pool looks once it has seen the loss, before its replacement is up (seconds).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        at_death = health(worker)
        if at_death["lost"] and at_death["restarts"]:
            break
        time.sleep(0.01)
    for t in threads:
        t.join(90)
    report["outcomes"] = [outcome(value) for value, _, _ in out]
    report["ran_s"] = [end - start for _, start, end in out]
    report["busy_at_s"] = killed - began
    report["died_after_s"] = [end - killed for value, _, end in out
                              if isinstance(value, WorkerDied)]
    report["health_at_death"] = at_death
    began = time.monotonic()
    while worker.health().actors != 2 and time.monotonic() < began + 60:
        time.sleep(0.05)
    report["replaced_s"] = time.monotonic() - began
    report["after"] = actors(worker)
    report["health"] = health(worker)
    report["next"] = [run(worker, RGB[2:4]), run(worker, RGB[4:6]), run(worker, RGB[6:8])]
    worker.stop()
    report["expected"] = expected(ARGS["checkpoint"], [RGB[2:4], RGB[4:6], RGB[6:8]])
    return report


print(REPORT + json.dumps(globals()[ARGS["mode"]]()), flush=True)
'''

# Sampler steps of a slow batch: batches that overlap in time (about a second each), and one
# still running in its actor when its node is killed: 300 steps (1.3 s on CI's machine) once
# ended before the kill landed on a loaded machine; 1200 (about 5 s) leave a margin.
SLOW_STEPS = {"serve": 60, "lose": 1200}
REPORT = "REPORT "


def denoise_meta() -> CheckpointMeta:
    half = {"mean": [0.5] * 3, "std": [0.5] * 3}
    return CheckpointMeta(
        objective="denoise", diffusion=Schedule().to_dict(), normalization=half, epoch=3
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two denoise checkpoints, a bad one, and the images, as the drivers' arguments."""
    folder = tmp_path_factory.mktemp("ray-workers")
    model = save_checkpoint(folder / "model.safetensors", seeded_model(0).state_dict(),
                            denoise_meta())  # fmt: skip
    other = save_checkpoint(folder / "other.safetensors", seeded_model(1).state_dict(),
                            denoise_meta())  # fmt: skip
    bad = folder / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    rgb = np.stack([np.asarray(textured_image(64, 48, seed=i)) for i in range(8)])
    ramp = np.linspace(0, 255, 48 * 64).astype(np.uint8).reshape(48, 64, 1)
    rgba = np.concatenate([rgb[:2], np.stack([ramp, ramp])], axis=3)
    odd = np.stack([np.asarray(textured_image(50, 30, seed=5))] * 2)  # a size the network refuses
    images = folder / "images.npz"
    np.savez(images, rgb=rgb, rgba=rgba, odd=odd)
    paths = {"checkpoint": model, "other": other, "bad": bad, "images": images}
    return {key: str(value) for key, value in paths.items()}


def driver_args(
    cluster: RayCluster, tmp_path: Path, mode: str, inputs: dict[str, str]
) -> list[str]:
    """The driver script (written to ``tmp_path``) and its arguments for ``mode``: the inputs,
    the cluster, its slow steps."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    args: dict[str, Any] = inputs | {"mode": mode, "address": cluster.address}
    args |= {"slow_steps": SLOW_STEPS.get(mode, 4), "report": REPORT}
    return [str(script), json.dumps(args)]


def driver(cluster: RayCluster, tmp_path: Path, mode: str, inputs: dict[str, str]) -> list[str]:
    """The command that runs the driver inside the cluster's namespace (for a test that talks
    to it while it runs)."""
    return cluster.namespace.command(
        [sys.executable, *driver_args(cluster, tmp_path, mode, inputs)]
    )


def drive(
    cluster: RayCluster, tmp_path: Path, mode: str, inputs: dict[str, str], timeout: float = 120
) -> dict[str, Any]:
    """Run the driver to its end; its JSON report."""
    return report(cluster.run_python(driver_args(cluster, tmp_path, mode, inputs), timeout))


def report(stdout: str) -> dict[str, Any]:
    """The driver's report, among what else went to its stdout."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(REPORT)]
    return json.loads(line.removeprefix(REPORT))


def test_two_actors_serve_batches_from_two_threads_as_in_process(
    ray_cluster: RayCluster, tmp_path: Path, inputs: dict[str, str]
) -> None:
    report = drive(ray_cluster, tmp_path, "serve", inputs)

    # One actor per node, both serving the model.
    nodes = {node for _, _, node, _ in report["actors"]}
    assert nodes == set(ray_cluster.node_ids.values()), report["actors"]
    assert {version for *_, version in report["actors"]} == {report["version"]}
    assert report["concurrency"] == 2 and report["is_worker"]
    # Pixel-exact results, RGBA's composited RGB and a refused size's errors included.
    assert report["got"] == report["expected"]
    assert report["got"][4][0][3] is not None  # RGBA: the composited RGB came back too
    assert report["got"][5][0][0] == "error"
    assert report["versions"] == [report["version"]]
    # The two threads' batches ran at the same time, in both actors.
    assert report["max_busy"] == 2
    assert report["overlap_s"] > 0.5 * report["ran_s"], report
    health = report["health"]
    assert health["alive"] and health["actors"] == 2 and health["busy_actors"] == 0
    assert (health["lost"], health["restarts"], health["error"]) == (0, 0, None)
    total_s, model_s = report["timing"]
    assert 0 < model_s <= total_s
    assert not report["after_stop"]["alive"] and report["after_stop"]["actors"] == 0


def test_a_hot_reload_switches_every_actor_or_none(
    ray_cluster: RayCluster, tmp_path: Path, inputs: dict[str, str]
) -> None:
    report = drive(ray_cluster, tmp_path, "reload", inputs)

    old = {version for *_, version in report["before"]}
    assert len(old) == 1 and len(report["before"]) == 2
    # The bad file is refused by the actors' loader, named as the service's file.
    assert report["bad"]["refused"] is True
    assert "bad.safetensors" in report["bad"]["reason"]
    assert "refused, still serving the old model" in report["bad"]["reason"]
    assert "artd-ray-model-" not in report["bad"]["reason"]  # not the actor's temporary copy
    # ... and the old model serves on, in the same actors.
    assert report["after_bad"] == report["before"]
    assert report["after_bad_got"] == report["expected_old"]
    assert {report["after_bad_model"]} == old
    assert report["after_bad_health"]["alive"] and "refused" in report["after_bad_health"]["error"]
    # A good one switches all of them (the same actors), and batches then use it.
    assert report["new"] not in old and report["new"].startswith("other.safetensors@")
    assert [a[:3] for a in report["after_new"]] == [a[:3] for a in report["before"]]
    assert {version for *_, version in report["after_new"]} == {report["new"]}
    assert report["after_new_got"] == report["expected_new"] != report["expected_old"]
    assert report["after_new_model"] == report["new"]
    assert report["after_new_health"]["error"] is None
    assert report["after_new_health"]["restarts"] == 0


def test_bad_settings_fail_fast_naming_the_setting(
    ray_cluster: RayCluster, tmp_path: Path, inputs: dict[str, str]
) -> None:
    unreachable, gpus, cpus = drive(ray_cluster, tmp_path, "errors", inputs)["rows"]

    assert unreachable[0].startswith("ray_address: cannot reach 127.0.0.1:1"), unreachable
    assert gpus[0].startswith("ray_gpus_per_actor: "), gpus
    assert "1 actor(s) x 1 GPUs" in gpus[0] and "has 0 GPUs" in gpus[0]
    assert cpus[0].startswith("ray_cpus_per_actor: "), cpus
    for message, refused, seconds in (unreachable, gpus, cpus):
        assert refused is False, message  # the cluster's problem, not the checkpoint's
        assert seconds < 10, (message, seconds)


def test_a_node_lost_mid_batch_is_a_death_and_its_actor_is_replaced(
    tmp_path: Path, inputs: dict[str, str]
) -> None:
    # Its own cluster: this one loses a node.
    cluster = started_cluster()
    try:
        stderr = tmp_path / "driver.err"
        with open(stderr, "w") as err:
            process = subprocess.Popen(
                driver(cluster, tmp_path, "lose", inputs),
                env=cluster.env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert process.stdout is not None and process.stdin is not None
        try:
            line = process.stdout.readline()
            assert line.strip() == "BUSY", line + stderr.read_text()[-6000:]
            cluster.kill_node2()  # a machine lost: no process of it finishes anything
            process.stdin.write(f"{time.time()}\n")
            process.stdin.flush()
            out, _ = process.communicate(timeout=150)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, stderr.read_text()[-6000:]
        got = report(out)
    finally:
        cluster.stop()

    head, node2 = cluster.node_ids["head"], cluster.node_ids["node2"]
    assert {node for _, _, node, _ in got["before"]} == {head, node2}
    # The batch in node2's actor died with it; the one on the head came back.
    died = [o for o in got["outcomes"] if "died" in o]
    assert len(died) == 1 and len([o for o in got["outcomes"] if "ok" in o]) == 1, got
    assert died[0]["died"] == "lost", died
    # Ray 2.60 says either, by whether the actor's socket closed before its node was dead.
    lost = ("was lost with the batch in it: ActorDiedError", "with the batch in it: ActorUnavail")
    assert any(text in died[0]["cause"] for text in lost), died
    assert got["died_after_s"][0] < 30
    at_death = got["health_at_death"]
    assert (at_death["lost"], at_death["restarts"]) == (1, 1)
    assert "lost: Actor" in at_death["error"]
    # A replacement came up on the head, and the next batches are served as in process.
    assert got["replaced_s"] < 60
    assert [a[2] for a in got["after"]] == [head, head], got["after"]
    assert {a[1] for a in got["after"]} == {"serving"}
    health = got["health"]
    assert health["alive"] and health["actors"] == 2
    assert (health["lost"], health["restarts"], health["error"]) == (1, 1, None)
    assert got["next"] == got["expected"]


def test_importing_the_pool_needs_no_ray() -> None:
    code = (
        "import sys, daemon.workers, daemon.workers.ray_pool, daemon.workers.ray_actor; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
