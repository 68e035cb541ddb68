"""``artd process --ray``: the one-shot job as a Ray Data pipeline on a real two-node cluster
(tests/ray_kit.py), run as ``artd`` itself inside the cluster's network namespace.

Every input ends as exactly one output or one reason record (``<output>.error.json``), the
outputs are the pixels a plain ``artd process`` writes, a rerun writes nothing, a node
``kill -9``ed mid-run costs nothing, and a cluster that cannot serve the job is refused
before anything is written, naming the setting to change."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_images
from daemon_harness import wait_for
from PIL import Image
from ray_kit import (
    NetNamespace,
    RayCluster,
    ray_cluster_fixture,  # noqa: F401  (the ray_cluster fixture)
    started_cluster,
)
from test_oneshot import artd

from daemon.decoders import SEGFAULT_MARKER
from daemon.workers import POISON_ENV

pytest.importorskip("ray", reason="Ray is not installed (pip install 'artd[ray]')")

RECORD = ".error.json"
BROKEN = {"empty.jpg": "empty_file", "notes.jpg": "not_an_image", "cut.jpg": "truncated"}
# The model on the CPU in fp32, so the plain run and the cluster's compute the same pixels;
# small outputs (the inputs are 96x64), so it is quick.
MODEL = ("--device", "cpu", "--precision", "fp32", "--size", "64")


def process_in(
    cluster: RayCluster | NetNamespace,
    *args: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """``artd process ARGS`` inside the cluster's network namespace, no ARTD_* settings."""
    namespace = cluster if isinstance(cluster, NetNamespace) else cluster.namespace
    return namespace.run(
        [sys.executable, "-m", "daemon.cli", "process", *map(str, args)],
        env=_env(cluster) | (env or {}),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(cluster: RayCluster | NetNamespace) -> dict[str, str]:
    base = cluster.env if isinstance(cluster, RayCluster) else dict(os.environ)
    return {k: v for k, v in base.items() if not k.startswith(("ARTD_", "RAY_ADDRESS"))} | {
        "PYTHONPATH": str(ROOT)
    }


def make_inputs(folder: Path, count: int, size: tuple[int, int] = (96, 64)) -> list[Path]:
    """``count`` good JPEGs and the broken files of :data:`BROKEN`."""
    good = write_images(folder, count, size=size)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    whole = good[0].read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return sorted(folder.iterdir())


def settled(inputs: list[Path], out: Path) -> dict[str, str]:
    """Each input's name -> "output" or its record's reason; fails unless each input has
    exactly one of the two and ``out`` holds nothing else (hidden temp files aside)."""
    found: dict[str, str] = {}
    for source in inputs:
        output = out / (source.name + ".png")
        record = out / (source.name + ".png" + RECORD)
        assert output.exists() != record.exists(), f"{source.name}: output and record both/none"
        found[source.name] = (
            "output" if output.exists() else json.loads(record.read_text())["reason"]
        )
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    expected = {s.name + ".png" + ("" if found[s.name] == "output" else RECORD) for s in inputs}
    assert visible == expected
    return found


def snapshot(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


# --- one job, its rerun, and the plain run it must match -----------------------------------


@pytest.fixture(scope="module")
def job(
    ray_cluster: RayCluster, pixel_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    root = tmp_path_factory.mktemp("ray-process")
    inputs = make_inputs(root / "in", 60)
    started = time.monotonic()
    result = process_in(
        ray_cluster, root / "in", "--out", root / "out", "--checkpoint", pixel_checkpoint,
        *MODEL, "--ray", ray_cluster.address,
    )  # fmt: skip
    took = time.monotonic() - started
    return {"root": root, "inputs": inputs, "result": result, "took": took}


def test_each_input_is_one_output_or_one_reason_record(job: dict) -> None:
    result, out = job["result"], job["root"] / "out"
    assert result.returncode == 2, result.stderr[-4000:]
    found = settled(job["inputs"], out)
    assert {name: reason for name, reason in found.items() if reason != "output"} == BROKEN
    record = json.loads((out / "notes.jpg.png.error.json").read_text())
    assert record["input_path"] == str(job["root"] / "in" / "notes.jpg")
    assert len(record["sha256"]) == 64 and record["message"]
    assert "60 written, 3 rejected, 0 skipped" in result.stderr
    assert "rejected by reason: empty_file 1, not_an_image 1, truncated 1" in result.stderr
    with Image.open(out / "img0000.jpg.png") as image:
        assert image.size == (64, 40)
        assert image.text["ai_generated"] == "true"


def test_outputs_are_the_pixels_of_a_plain_run(job: dict, pixel_checkpoint: Path) -> None:
    root = job["root"]
    plain = artd("process", root / "in", "--out", root / "plain", "--checkpoint",
                 pixel_checkpoint, *MODEL)  # fmt: skip
    assert plain.returncode == 2, plain.stderr[-4000:]
    outputs = sorted((root / "plain").glob("*.png"))
    assert len(outputs) == 60
    for expected in outputs:
        ours = np.asarray(Image.open(root / "out" / expected.name))
        assert np.array_equal(ours, np.asarray(Image.open(expected))), expected.name


def test_a_rerun_writes_nothing(ray_cluster: RayCluster, job: dict, pixel_checkpoint: Path) -> None:
    out = job["root"] / "out"
    before = snapshot(out)
    again = process_in(
        ray_cluster, job["root"] / "in", "--out", out, "--checkpoint", pixel_checkpoint, *MODEL,
        "--ray", ray_cluster.address,
    )  # fmt: skip
    assert again.returncode == 2, again.stderr[-4000:]  # the reason records are still there
    assert snapshot(out) == before
    assert "0 written, 0 rejected, 63 skipped (already done: 60 output(s), 3 reason" in (
        again.stderr
    )


def test_no_address_is_a_local_ray(pixel_checkpoint: Path, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in", 4)
    # A new local Ray turns token authentication on and saves a token in ~/.ray, which other
    # clusters started on this machine would then ask for: a home of its own keeps it there.
    home = tmp_path / "home"
    home.mkdir()
    with NetNamespace() as namespace:  # its ports and its address are private to the test
        result = process_in(
            namespace, tmp_path / "in", "--out", tmp_path / "out", "--checkpoint",
            pixel_checkpoint, *MODEL, "--ray", env={"HOME": str(home)},
        )  # fmt: skip
    assert result.returncode == 2, result.stderr[-4000:]
    assert "connected to the Ray cluster at local" in result.stderr
    assert len([v for v in settled(inputs, tmp_path / "out").values() if v == "output"]) == 4


# --- a cluster that cannot serve the job ---------------------------------------------------


def test_an_unreachable_address_is_refused_at_once(
    ray_cluster: RayCluster, pixel_checkpoint: Path, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 2)
    started = time.monotonic()
    result = process_in(
        ray_cluster, tmp_path / "in", "--out", tmp_path / "out", "--checkpoint",
        pixel_checkpoint, "--ray", "127.0.0.1:1",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-4000:]
    assert time.monotonic() - started < 30
    assert "ray_address: cannot reach 127.0.0.1:1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_resources_the_cluster_lacks_are_refused(
    ray_cluster: RayCluster, pixel_checkpoint: Path, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 2)
    result = process_in(
        ray_cluster, tmp_path / "in", "--out", tmp_path / "out", "--checkpoint",
        pixel_checkpoint, "--ray", ray_cluster.address, "--ray-gpus-per-actor", "1",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-4000:]
    assert "ray_gpus_per_actor: 1 actor(s) x 1 GPUs = 1, but the cluster has 0 GPUs" in (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_a_model_that_does_not_load_fails_the_job_and_records_nothing(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    make_inputs(tmp_path / "in", 2)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint" * 100)
    result = process_in(
        ray_cluster, tmp_path / "in", "--out", tmp_path / "out", "--checkpoint", junk, *MODEL,
        "--ray", ray_cluster.address,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-4000:]
    assert "cannot load the model" in result.stderr
    assert count(tmp_path / "out") == 0  # not even the broken files' records: a rerun does all


# --- a node lost mid-run -------------------------------------------------------------------


def test_a_node_killed_mid_run_costs_nothing(pixel_checkpoint: Path, tmp_path: Path) -> None:
    """...and an input that kills the model costs that input (the crash rule), not the job."""
    inputs = make_inputs(tmp_path / "in", 120, size=(192, 128))
    poison = tmp_path / "in" / "img0007.jpg"
    # And one that crashes its decoder (a real SIGSEGV: daemon.decoders' test hook).
    crash = tmp_path / "in" / "crash.jpg"
    crash.write_bytes(SEGFAULT_MARKER + poison.read_bytes())
    inputs.append(crash)
    out, log_path = tmp_path / "out", tmp_path / "artd.log"
    # Two actors of a CPU each, spread one on each node, and room on the head for the one
    # node2 loses: an actor restarts only where its resources are. Every model worker of the
    # cluster kills itself on a batch holding the poison.
    sha = hashlib.sha256(poison.read_bytes()).hexdigest()
    cluster = started_cluster(
        head_cpus=3, node2_cpus=2, env={POISON_ENV: sha, "_ARTD_TEST_SEGFAULT": "1"}
    )
    try:
        assert cluster.node2 is not None
        with open(log_path, "w") as log:
            job = cluster.namespace.popen(
                [sys.executable, "-m", "daemon.cli", "process", str(tmp_path / "in"), "--out",
                 str(out), "--checkpoint", str(pixel_checkpoint), *MODEL, "--size", "128",
                 "--ray", cluster.address, "--ray-actors", "2"],
                env=_env(cluster), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

        def node2_busy() -> bool:
            # Its actor inside a batch (Ray titles it ``...submit`` while it runs one).
            assert cluster.node2 is not None
            titles = [
                p.title() for p in cluster.node2.pids() if p.name.startswith("ray::MapWorker")
            ]
            return any(t.endswith(".submit") for t in titles)

        # Mid-run, with node2's actor holding a batch: a node whose actor is still starting, or
        # idle, loses nothing when it dies (so the kill would prove nothing).
        wait_for(
            lambda: (count(out) >= 20 and node2_busy()) or job.poll() is not None,
            180,
            "20 files settled and node2's actor inside a batch",
        )
        at_kill = count(out)
        assert job.poll() is None and at_kill < len(inputs) - 30, "the job ended before the kill"
        cluster.kill_node2_raylet()
        job.wait(timeout=300)
        # Ray redid what was lost. Its driver logs each resubmission as it makes it; the
        # "will be retried" warning it forwards to stderr can be lost when the job ends first.
        resubmitted = cluster.driver_logs().count("Will resubmit task")
    finally:
        cluster.stop()
    stderr = log_path.read_text()
    assert job.returncode == 2, stderr[-4000:]
    found = settled(inputs, out)
    rejected = {name: reason for name, reason in found.items() if reason != "output"}
    assert rejected == BROKEN | {poison.name: "crashed_repeatedly", crash.name: "decoder_crashed"}
    assert "119 written, 5 rejected" in stderr
    assert resubmitted > 0, "no task was resubmitted after the node's loss"


def count(out: Path) -> int:
    """Outputs and records in ``out`` so far (temp files aside)."""
    return sum(1 for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else 0


# --- the command line ------------------------------------------------------------------------


def test_ray_flag_takes_an_optional_address() -> None:
    from daemon.cli import process_parser

    parse = process_parser().parse_args
    assert vars(parse(["a", "--out", "o", "--ray"]))["ray_address"] == "local"
    assert vars(parse(["a", "--out", "o", "--ray", "10.0.0.1:6379"]))["ray_address"] == (
        "10.0.0.1:6379"
    )
    assert vars(parse(["a", "--out", "o"]))["ray_address"] is None
    assert vars(parse(["a", "--out", "o", "--ray-actors", "3"]))["ray_actors"] == "3"


def test_without_ray_nothing_of_ray_is_imported(pixel_checkpoint: Path, tmp_path: Path) -> None:
    [image] = write_images(tmp_path / "in", 1)
    code = (
        "import sys\nfrom daemon.cli import main\n"
        f"code = main(['process', {str(image)!r}, '--out', {str(tmp_path / 'out')!r}, "
        f"'--checkpoint', {str(pixel_checkpoint)!r}])\n"
        "print(code, 'ray' in sys.modules, 'daemon.cluster' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["0", "False", "False"], done.stderr[-4000:]
