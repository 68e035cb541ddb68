"""daemon.oneshot: `artd process` as a real subprocess (outputs, rejects, exit codes, post
parity), and its I/O threads' priority with real threads and the real scheduler settings."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from conftest import ROOT, textured_image, write_images
from PIL import Image
from test_engine import post_inference

from daemon.oneshot import IO_NICENESS, lower_thread_priority


def artd(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `artd` command in a subprocess, with no ARTD_* settings but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARTD_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *map(str, args)],
        cwd=ROOT,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_outputs_keep_relative_paths_and_bad_files_are_reported(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    write_images(inputs / "sub" / "deeper", 3)
    write_images(inputs, 2, fmt="PNG")
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "notes.jpg").write_text("not a picture")
    (inputs / ".hidden.jpg").write_bytes(b"")  # hidden files are not inputs
    out = tmp_path / "out"
    result = artd("process", inputs, "--out", out, "--checkpoint", pixel_checkpoint, "--size", "64")
    assert result.returncode == 2, result.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "img0000.png.png",
        "img0001.png.png",
        "sub/deeper/img0000.jpg.png",
        "sub/deeper/img0001.jpg.png",
        "sub/deeper/img0002.jpg.png",
    ]
    assert "empty.jpg: empty_file" in result.stderr
    assert "notes.jpg: not_an_image" in result.stderr
    with Image.open(out / "sub/deeper/img0000.jpg.png") as image:
        assert image.size == (64, 40)  # 96x64 fitted: longer side 64, multiples of 8
        assert image.text["ai_generated"] == "true"
        assert len(image.text["artd:input_sha256"]) == 64


def test_all_good_exits_zero_and_fatal_exits_one(pixel_checkpoint: Path, tmp_path: Path) -> None:
    [image] = write_images(tmp_path / "in", 1)
    ok = artd("process", image, "--out", tmp_path / "out", "--checkpoint", pixel_checkpoint)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "img0000.jpg.png").is_file()
    missing = artd("process", image, "--out", tmp_path / "o2", "--checkpoint", tmp_path / "nope.pt")
    assert missing.returncode == 1
    assert "nope.pt" in missing.stderr


def test_post_parity_through_the_cli(post_checkpoint: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    sizes = [(200, 150), (300, 200), (128, 128), (90, 170)]
    for i, size in enumerate(sizes):
        textured_image(*size, seed=10 + i).save(inputs / f"p{i}.png")
    textured_image(200, 150, seed=20).save(inputs / "j.jpg", quality=95)
    out = tmp_path / "out"
    result = artd(
        "process", inputs, "--out", out, "--checkpoint", post_checkpoint,
        "--resize", "stretch", "--size", "128", "--precision", "fp32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for source in sorted(inputs.iterdir()):
        ours = np.asarray(Image.open(out / (source.name + ".png"))).astype(int)
        expected = post_inference(post_checkpoint, source).astype(int)
        assert np.abs(ours - expected).max() <= 1, source.name


def test_io_threads_yield_to_the_engine_thread() -> None:
    """The I/O pool's threads lower their own priority, and only their own (Linux)."""
    if sys.platform != "linux":
        lower_thread_priority()  # a no-op elsewhere; must not raise
        return
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    def worker() -> None:
        lower_thread_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [min(19, base + IO_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the main thread is untouched


def test_size_input_keeps_the_inputs_own_size(pixel_checkpoint: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    textured_image(451, 300).save(inputs / "photo.png")
    textured_image(64, 96, seed=1).save(inputs / "small.png")
    result = artd(
        "process", inputs, "--out", out, "--checkpoint", pixel_checkpoint, "--size", "input"
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out / "photo.png.png") as image:
        assert image.size == (448, 296)  # each side rounded down to a multiple of 8
        assert '"size": "input"' in image.text["artd:settings"]
    with Image.open(out / "small.png.png") as image:
        assert image.size == (64, 96)
    refused = artd(
        "process", inputs, "--out", out, "--checkpoint", pixel_checkpoint, "--size", "huge"
    )
    assert refused.returncode != 0 and "size" in refused.stderr
