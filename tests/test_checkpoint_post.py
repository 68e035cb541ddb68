"""core.checkpoint importing the post script's torch files: variants, hostile pickles, cuts."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from checkpoint_kit import (
    load_fails,
    model_output,
    weights_fixture,  # noqa: F401  (the weights fixture)
)

from core.checkpoint import build_model, load_checkpoint, save_checkpoint
from core.network.model import ARCHITECTURE, ConvDiffusionModel
from core.network.space import POST_IMAGE_SPACE

# --- imports of the post's checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_post_state_dict_imports_and_strict_loads(
    tmp_path: Path, weights: dict[str, torch.Tensor], zip_format: bool
) -> None:
    original = ConvDiffusionModel()
    original.load_state_dict(weights)
    path = tmp_path / "model_epoch_150.pth"
    # Exactly what the post's training script does.
    torch.save(original.state_dict(), path, _use_new_zipfile_serialization=zip_format)

    ckpt = load_checkpoint(path)

    # The on-disk value keeps the project's old word for the post: old checkpoints keep loading.
    assert ckpt.meta.image_space == POST_IMAGE_SPACE == "seed"
    assert (ckpt.meta.train_size, ckpt.meta.resize, ckpt.meta.epoch) == (128, "stretch", 150)
    assert ckpt.meta.architecture == ARCHITECTURE
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in weights.items())
    assert ckpt.version.startswith("model_epoch_150.pth@")
    model = build_model(ckpt)
    assert torch.equal(model_output(model), model_output(original.eval()))


def test_post_round_trips_through_our_format(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    post = tmp_path / "model_epoch_10.pth"
    torch.save(weights, post)
    imported = load_checkpoint(post)

    converted = save_checkpoint(tmp_path / "post.safetensors", imported.state_dict, imported.meta)

    again = load_checkpoint(converted)
    assert again.meta == imported.meta
    assert all(torch.equal(again.state_dict[k], v) for k, v in weights.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 30},
        lambda sd: {"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        lambda sd: {"model_state_dict": sd, "epoch": 3, "loss": 0.5},
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    ],
    ids=["ddp", "nested-ddp", "state_dict-key", "model_state_dict-key", "torch-compile"],
)
def test_wrapped_post_variants_load(
    tmp_path: Path, weights: dict[str, torch.Tensor], wrap: Callable[[dict], object]
) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(weights), path)

    ckpt = load_checkpoint(path)

    assert set(ckpt.state_dict) == set(weights)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in weights.items())
    build_model(ckpt)


def test_dict_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "training-log.pth"
    torch.save({"epoch": 3, "losses": [0.5, 0.25], "model": {"not": "tensors"}}, path)
    load_fails(path, "no state_dict")


def test_tensor_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    load_fails(path, "not a state_dict")


# --- hostile and broken torch files --------------------------------------------------------------


class RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


class OpensFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model_epoch_150.pth"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(RunsShellCommand(marker), protocol=2))
    else:
        torch.save({"enc1.0.weight": OpensFile(marker)}, path)

    load_fails(path, "refused")
    assert not marker.exists()

    # Control: an ordinary unpickle of the same file does run the payload.
    unpickle = (
        "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
        if writer == "pickle"
        else "import torch, sys; torch.load(sys.argv[1], weights_only=False)"
    )
    subprocess.run([sys.executable, "-c", unpickle, str(path)], check=False, timeout=60)
    assert marker.exists()


def test_plain_zip_archive_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")
    load_fails(path, "unreadable torch file")


def test_random_bytes_after_torch_magic_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle-noise.pth"
    path.write_bytes(b"\x80" + bytes(range(256)) * 4)
    load_fails(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_torch_files_always_raise_checkpoint_error(
    tmp_path: Path, weights: dict[str, torch.Tensor], zip_format: bool
) -> None:
    buffer = io.BytesIO()
    torch.save(weights, buffer, _use_new_zipfile_serialization=zip_format)
    data = buffer.getvalue()
    path = tmp_path / "model_epoch_10.pth"
    for cut in [1, 2, 10, 100, 1000, len(data) // 2, len(data) - 100, len(data) - 1]:
        path.write_bytes(data[:cut])
        try:
            load_fails(path)
        except BaseException as exc:
            raise AssertionError(f"cut at {cut}") from exc
