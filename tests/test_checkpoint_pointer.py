"""core.checkpoint.promote and the `current` pointer: atomic moves, refusals, dangling links."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_kit import (
    leftovers,
    load_fails,
    random_state_dict,
    sample_meta,
    weights_fixture,  # noqa: F401  (the weights fixture)
)

from core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    promote,
    resolve_current,
    save_checkpoint,
)

# --- the current pointer -------------------------------------------------------------------------


@pytest.fixture
def two_runs(tmp_path: Path, weights: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    run = tmp_path / "checkpoints" / "run-1"
    run.mkdir(parents=True)
    first = save_checkpoint(run / "epoch-010.safetensors", random_state_dict(3), sample_meta())
    second = save_checkpoint(run / "epoch-020.safetensors", weights, sample_meta(epoch=20))
    return first, second


def test_promote_switches_pointer_and_load_follows(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    current = first.parent.parent / "current"

    promote(current, first)
    assert os.readlink(current) == "run-1/epoch-010.safetensors"
    assert load_checkpoint(current).version == load_checkpoint(first).version

    promote(current, second)
    ckpt = load_checkpoint(current)
    assert ckpt.path == second.resolve()
    assert ckpt.meta.epoch == 20
    assert ckpt.version.startswith("epoch-020.safetensors@")
    assert resolve_current(current) == second.resolve()
    assert leftovers(current.parent) == []


def test_promote_is_atomic_for_concurrent_readers(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    current = first.parent.parent / "current"
    promote(current, first)
    stop = current.parent / "stop-reading"
    # A separate process, so the reader really runs between the writer's system calls.
    reader_script = (
        "import os, sys\n"
        "current, stop = sys.argv[1], sys.argv[2]\n"
        "seen, failures, reads = set(), 0, 0\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(stop):\n"
        "    try:\n"
        "        seen.add(os.path.basename(os.path.realpath(current, strict=True)))\n"
        "        reads += 1\n"
        "    except OSError:\n"
        "        failures += 1\n"
        "print(reads, failures, ','.join(sorted(seen)), flush=True)\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", reader_script, str(current), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        for i in range(20):
            promote(current, second if i % 2 == 0 else first)
    finally:
        stop.touch()
        output, _ = reader.communicate(timeout=30)
    reads, failures, seen = output.split()
    assert int(failures) == 0
    assert int(reads) > 0
    assert set(seen.split(",")) == {first.name, second.name}


def test_promote_replaces_a_copied_regular_file(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    current = first.parent.parent / "current"
    current.write_bytes(first.read_bytes())  # an operator copied a file over the pointer

    promote(current, second)

    assert current.is_symlink()
    assert load_checkpoint(current).meta.epoch == 20


def test_promote_outside_the_tree_uses_an_absolute_link(
    tmp_path: Path, two_runs: tuple[Path, Path]
) -> None:
    _, second = two_runs
    elsewhere = tmp_path / "pointers"
    elsewhere.mkdir()
    promote(elsewhere / "current", second)
    assert os.readlink(elsewhere / "current") == str(second.resolve())


def test_promote_refuses_bad_targets_and_keeps_pointer(
    tmp_path: Path, two_runs: tuple[Path, Path]
) -> None:
    first, _ = two_runs
    current = first.parent.parent / "current"
    promote(current, first)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights")

    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        promote(current, garbage)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors"):
        promote(current, tmp_path / "missing.safetensors")
    folder_pointer = first.parent.parent / "as-dir"
    folder_pointer.mkdir()
    with pytest.raises(CheckpointError, match="as-dir"):
        promote(folder_pointer, first)

    assert os.readlink(current) == "run-1/epoch-010.safetensors"
    assert leftovers(current.parent) == []


def test_dangling_pointer_is_a_clear_error(two_runs: tuple[Path, Path]) -> None:
    first, _ = two_runs
    current = first.parent.parent / "current"
    promote(current, first)
    first.unlink()
    load_fails(current, "epoch-010.safetensors", "does not exist")
