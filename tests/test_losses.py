"""Perceptual loss and the offline VGG16 weight resolution (real files, real torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from core.training.losses import (
    VGG16_FILENAME,
    PerceptualLoss,
    TrainingLoss,
    VGGWeightsError,
    hub_cache_path,
    load_vgg_file,
    resolve_vgg_features,
)


def write_vgg_file(path: Path, *, full: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialized VGG16 weights file: features-only (small) or with a classifier
    stand-in, saved with torch.save the way torchvision's cache holds it."""
    torch.manual_seed(seed)
    features = make_layers(cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    if not full:
        state = {k: v for k, v in state.items() if int(k.split(".")[1]) < 16}
    else:
        state["classifier.0.weight"] = torch.zeros(4, 4)  # the loader must ignore extra keys
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_hub_cache_path_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert hub_cache_path() == tmp_path / "hub" / "checkpoints" / VGG16_FILENAME


@pytest.mark.parametrize("full", [False, True])
def test_load_full_or_features_only_file(tmp_path, full):
    state = write_vgg_file(tmp_path / "vgg.pth", full=full)
    features = load_vgg_file(tmp_path / "vgg.pth")
    assert len(features) == 16
    assert torch.equal(features[14].weight, state["features.14.weight"])
    assert torch.equal(features[0].bias, state["features.0.bias"])


def test_bad_files_are_refused_with_the_path(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(VGGWeightsError, match=r"junk\.pth"):
        load_vgg_file(junk)
    partial = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(VGGWeightsError, match="missing"):
        load_vgg_file(partial)


def test_resolution_order_explicit_then_hub_cache_then_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(VGGWeightsError) as info:
        resolve_vgg_features(None, download=False)
    message = str(info.value)
    assert str(hub_cache_path()) in message
    assert "--vgg-weights" in message and "--perceptual-weight 0" in message

    cached = write_vgg_file(hub_cache_path(), seed=1)
    features, source = resolve_vgg_features(None, download=False)
    assert torch.equal(features[0].weight, cached["features.0.weight"])
    assert "hub cache" in source

    explicit = write_vgg_file(tmp_path / "mine.pth", seed=2)
    got, _ = resolve_vgg_features(tmp_path / "mine.pth", download=False)
    assert torch.equal(got[0].weight, explicit["features.0.weight"])
    with pytest.raises(VGGWeightsError, match="no such file"):
        resolve_vgg_features(tmp_path / "missing.pth", download=False)


def test_perceptual_loss_is_frozen_and_compares_in_pixel_space(tmp_path):
    write_vgg_file(tmp_path / "vgg.pth")
    loss = PerceptualLoss(load_vgg_file(tmp_path / "vgg.pth"))
    loss.train()  # the trainer's .train() must not put VGG in training mode
    assert not loss.features.training
    assert not any(p.requires_grad for p in loss.parameters())

    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    assert loss(target, target).item() == 0.0
    output = torch.rand(2, 3, 32, 32, requires_grad=True)
    value = loss(output, target)
    value.backward()
    assert value.item() > 0 and output.grad is not None and output.grad.abs().sum() > 0


def test_training_loss_parts(tmp_path):
    write_vgg_file(tmp_path / "vgg.pth")
    perceptual = PerceptualLoss(load_vgg_file(tmp_path / "vgg.pth"))
    target, output = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    total, mse, p = TrainingLoss(perceptual, 0.5)(output, target)
    assert mse.item() == pytest.approx(((output - target) ** 2).mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(mse.item() + 0.5 * p.item(), rel=1e-6)
    total, mse, p = TrainingLoss(None, 0.0)(output, target)
    assert total.item() == mse.item() and p.item() == 0.0
    with pytest.raises(ValueError):
        TrainingLoss(None, 1.0)
