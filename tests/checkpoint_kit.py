"""Shared by the tests/test_checkpoint_*.py modules: weights, metadata, file surgery.

Modules import the ``weights`` and ``saved`` fixtures as ``weights_fixture`` and
``saved_fixture``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from core.network.model import ConvDiffusionModel


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A model whose every entry, BatchNorm statistics included, differs from a fresh one."""
    torch.manual_seed(seed)
    model = ConvDiffusionModel()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(seed + 7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.copy_(torch.randn_like(tensor) * 0.05)
    return {k: v.clone() for k, v in model.state_dict().items()}


def sample_meta(**overrides: object) -> CheckpointMeta:
    values: dict[str, object] = {
        "image_space": "pixel",
        "train_size": 64,
        "resize": "fit",
        "epoch": 50,
        "metrics": {"val_loss": 0.125, "val_psnr": 21.5},
        "dataset_hash": "sha256:" + "ab" * 32,
        "settings": {"lr": 0.001, "batch_size": 4, "augment": ["hflip"], "note": "ünïcode"},
    }
    values.update(overrides)
    return CheckpointMeta(**values)  # type: ignore[arg-type]


def load_fails(path: Path, *fragments: str) -> CheckpointError:
    """Load ``path``; the CheckpointError must name the file and contain every fragment."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    return len(raw).to_bytes(8, "little") + raw + body


def rewrite_meta(path: Path, mutate: Callable[[dict], None]) -> None:
    """Edit the artd metadata JSON of a saved file, keeping the tensor data (and its checksum)."""
    header, body = split_safetensors(path.read_bytes())
    meta = json.loads(header["__metadata__"]["artd"])
    mutate(meta)
    header["__metadata__"]["artd"] = json.dumps(meta)
    path.write_bytes(join_safetensors(header, body))


def tensor_data_offset(path: Path, name: str) -> int:
    data = path.read_bytes()
    header, _ = split_safetensors(data)
    return 8 + int.from_bytes(data[:8], "little") + header[name]["data_offsets"][0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def model_output(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.rand(1, 3, 16, 16))


@pytest.fixture(name="weights", scope="module")
def weights_fixture() -> dict[str, torch.Tensor]:
    return random_state_dict(1)


@pytest.fixture(name="saved")
def saved_fixture(tmp_path: Path, weights: dict[str, torch.Tensor]) -> Path:
    return save_checkpoint(tmp_path / "epoch-050.safetensors", weights, sample_meta())
