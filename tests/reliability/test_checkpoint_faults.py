"""Checkpoint faults under a serving daemon: the trainer killed mid-write or mid-promotion, a
half-copied file at the watched path, NaN weights, a pickle that runs code. The daemon keeps
serving the last good model through all of them, says why in /healthz, and takes the next
good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import safetensors.torch
import torch
from conftest import seeded_model, textured_image
from daemon_harness import Daemon, outputs
from PIL import Image
from reliability_kit import (
    Ledger,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    wait_until,
)

from core.checkpoint import DATA_SHA256_KEY, META_KEY, CheckpointMeta, promote, save_checkpoint


class CodeRunner:
    """Unpickling this runs a shell command: what a hostile ``.pth`` carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def nan_checkpoint(path: Path) -> None:
    """Valid format, metadata and checksum, NaN weights: what save_checkpoint refuses to
    write, written by hand as a buggy or hostile trainer would."""
    tensors = {k: v.clone().contiguous() for k, v in seeded_model(7).state_dict().items()}
    first_float = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first_float].fill_(float("nan"))
    meta = {"format": "pt", META_KEY: json.dumps(CheckpointMeta(epoch=9).to_dict())}
    draft = safetensors.torch.save(tensors, metadata=meta)
    header = int.from_bytes(draft[:8], "little")
    meta[DATA_SHA256_KEY] = hashlib.sha256(draft[8 + header :]).hexdigest()
    path.write_bytes(safetensors.torch.save(tensors, metadata=meta))


def point(current: Path, target: Path) -> None:
    """``ln -sfn`` as an operator would (promote() refuses bad checkpoints itself)."""
    temp = current.with_name(".current.tmp-test")
    temp.unlink(missing_ok=True)
    temp.symlink_to(target.name)
    os.replace(temp, current)


def test_daemon_keeps_serving_the_last_good_model(tmp_path: Path, ledger: Ledger) -> None:
    models = tmp_path / "models"
    models.mkdir()
    good_a, good_b = models / "a.safetensors", models / "b.safetensors"
    save_checkpoint(good_a, seeded_model(0).state_dict(), CheckpointMeta(epoch=1))
    staged_b = tmp_path / "b.safetensors"
    save_checkpoint(staged_b, seeded_model(5).state_dict(), CheckpointMeta(epoch=2))
    b_bytes = staged_b.read_bytes()
    current = models / "current"
    promote(current, good_a)
    root = tmp_path / "root"
    daemon = Daemon(root, current, settle_seconds=0.2).start()
    serial = 0

    def model_of_next_output() -> str:
        nonlocal serial
        serial += 1
        name = f"probe{serial}.jpg"
        textured_image(40, 32, seed=serial).save(root / "inbox" / name, "JPEG")
        wait_until(lambda: f"{name}.png" in outputs(root), 30, f"output {name}", daemon)
        with Image.open(root / "outbox" / f"{name}.png") as image:
            return image.text["artd:model"]

    def serving() -> str:
        status, report = daemon.health()
        assert status == 200, report
        return str(report["model"])

    assert model_of_next_output().startswith("a.safetensors")

    # 1. The trainer killed while writing (a partial temp file beside `current`) and while
    #    promoting (a dangling temporary link): nothing the daemon watches changed.
    (models / ".b.safetensors.tmp-4711").write_bytes(b_bytes[: len(b_bytes) // 2])
    (models / ".current.tmp-4711").symlink_to("b.safetensors")  # b is not there yet
    time.sleep(1.5)
    assert serving().startswith("a.safetensors")
    assert daemon.health()[1]["model_reload_error"] is None

    # 2. A half-copied checkpoint at the watched path: refused, then the finished copy taken.
    with open(good_a, "r+b") as handle:  # `cp b a` caught halfway
        handle.truncate(0)
        handle.write(b_bytes[: len(b_bytes) // 2])
    wait_until(lambda: daemon.health()[1]["model_reload_error"], 20, "half copy refused", daemon)
    assert "truncated" in str(daemon.health()[1]["model_reload_error"])
    assert model_of_next_output().startswith("a.safetensors")
    with open(good_a, "ab") as handle:
        handle.write(b_bytes[len(b_bytes) // 2 :])
    wait_until(lambda: daemon.health()[1]["model_reload_error"] is None, 20, "copy done", daemon)
    assert model_of_next_output().endswith(hashlib.sha256(b_bytes).hexdigest()[:12])
    os.replace(good_a, good_b)  # tidy: b's bytes under b's name
    point(current, good_b)
    wait_until(lambda: serving().startswith("b.safetensors"), 20, "serving b", daemon)

    # 3. NaN weights, promoted by hand.
    nan_checkpoint(models / "nan.safetensors")
    point(current, models / "nan.safetensors")
    wait_until(lambda: "nan.safetensors" in str(daemon.health()[1]["model_reload_error"]), 20,
               "NaN refused", daemon)  # fmt: skip
    assert "non-finite" in str(daemon.health()[1]["model_reload_error"])
    assert model_of_next_output().startswith("b.safetensors")

    # 4. A pickle that runs code, swapped in as `current`.
    marker = tmp_path / "pwned"
    torch.save({"state_dict": seeded_model(0).state_dict(), "x": CodeRunner(marker)},
               models / "evil.pth")  # fmt: skip
    point(current, models / "evil.pth")
    wait_until(lambda: "evil.pth" in str(daemon.health()[1]["model_reload_error"]), 20,
               "pickle refused", daemon)  # fmt: skip
    assert not marker.exists(), "the checkpoint loader ran code from a pickle"
    assert model_of_next_output().startswith("b.safetensors")
    assert serving().startswith("b.safetensors")
    assert daemon.stop() == 0
    ledger.add(faults=5, files_in=serial, outputs=serial)
    ledger.note(
        "checkpoints: partial temp, dangling link, half copy, NaN, pickle: served the last good"
    )
