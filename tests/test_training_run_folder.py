"""The run folder on its own: rank 0 writes, the other ranks' stand-in writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.checkpoint import CheckpointMeta, load_checkpoint
from core.network.model import ConvDiffusionModel
from core.network.space import imagenet
from core.training.evaluate import batch_to_device
from core.training.run_folder import RunFolder
from core.training.state import LAST_STATE, load_training_state

ROW = {"epoch": 1, "loss": 0.5, "mse": 0.25, "perceptual": 0.25, "val_loss": 0.4}


def exercise(run: RunFolder, weights: dict[str, torch.Tensor]) -> None:
    """Every write the trainer makes in one epoch."""
    with run:
        run.write_json("settings.json", {"epochs": 1})
        run.log_metrics(ROW)
        run.plot_losses()
        run.save_samples(1, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
        run.save_best(weights, CheckpointMeta(train_size=32, epoch=1))
        run.save_epoch(weights, CheckpointMeta(train_size=32, epoch=1), keep_last=1)
        run.save_state({"epoch": 1})


def test_rank_zero_writes_the_files_other_ranks_write_nothing(tmp_path: Path) -> None:
    weights = ConvDiffusionModel().state_dict()
    elsewhere = RunFolder.start(tmp_path / "other", resume_state=None, main=False, tensorboard=True)
    exercise(elsewhere, weights)
    assert elsewhere.path is None and elsewhere.best is None
    assert elsewhere.read_metrics() == [] and not (tmp_path / "other").exists()

    run = RunFolder.start(tmp_path / "out", resume_state=None, main=True, tensorboard=False)
    exercise(run, weights)
    assert run.path is not None and run.path.parent == tmp_path / "out"
    names = {p.relative_to(run.path).as_posix() for p in run.path.rglob("*") if p.is_file()}
    assert names == {
        "settings.json", "metrics.jsonl", "loss.png", "samples/epoch-001.png", "train.log",
        "checkpoints/best.safetensors", "checkpoints/epoch-001.safetensors", LAST_STATE,
    }  # fmt: skip
    assert run.read_metrics() == [ROW]
    assert load_checkpoint(run.best).meta.epoch == 1
    assert load_training_state(run.path / LAST_STATE) == {"epoch": 1}
    assert json.loads((run.path / "settings.json").read_text()) == {"epochs": 1}

    resumed = RunFolder.start(tmp_path / "out", resume_state=run.path / LAST_STATE, main=True,
                              tensorboard=False)  # fmt: skip
    assert resumed.path == run.path
    resumed.truncate_metrics(0)
    assert resumed.read_metrics() == []


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_to_device_normalises_the_input_and_keeps_the_pixels(channels_last: bool) -> None:
    batch = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    inputs, target = batch_to_device(batch, torch.device("cpu"), imagenet(), channels_last)
    assert torch.equal(target, batch.permute(0, 3, 1, 2).float() / 255)
    assert target.is_contiguous() != channels_last
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(inputs, (target - mean) / std)
