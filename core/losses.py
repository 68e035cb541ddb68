"""The training loss: pixel MSE plus a VGG16 perceptual term, with weights found offline.

Outputs and targets are both images in 0..1 (pixel space); VGG sees ImageNet-normalized
copies of both (``core.space.imagenet``), which is what its features were trained on (the
seed fed it the mismatched spaces, defect 1 in docs/seed.md).

VGG16 weights are looked up, in order: an explicit file, the torch hub cache
(``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``, where torchvision itself puts them),
then torchvision's download. If none works the caller gets a :class:`VGGWeightsError`
naming the path and the two ways out; training never silently goes on without it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from core.space import imagenet

VGG16_FILENAME = "vgg16-397923af.pth"
# features[:16] ends after relu3_3, the layer the seed (and most perceptual losses) use.
VGG_FEATURE_LAYERS = 16


class VGGWeightsError(RuntimeError):
    """VGG16 weights could not be found or loaded; the message says how to fix it."""


def hub_cache_path() -> Path:
    """Where torchvision caches the ImageNet VGG16 weights (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _empty_features() -> nn.Sequential:
    """The layers of ``vgg16().features[:16]`` without building (and initializing) the 120M
    parameter classifier, which costs seconds per process."""
    try:
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"], batch_norm=False)
    except (ImportError, KeyError):  # torchvision moved its internals: take the slow way
        from torchvision.models import vgg16

        features = vgg16(weights=None).features
    return features[:VGG_FEATURE_LAYERS]


def features_from_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> nn.Sequential:
    """Build ``vgg16().features[:16]`` from a full VGG16 state_dict or a features-only one
    (keys ``features.N.*`` or bare ``N.*``); extra layers in the file are ignored."""
    features = _empty_features()
    wanted = features.state_dict().keys()
    picked = {}
    for key, value in state_dict.items():
        bare = key.removeprefix("features.")
        if bare in wanted and (key.startswith("features.") or key == bare):
            picked[bare] = value
    missing = sorted(set(wanted) - picked.keys())
    if missing:
        raise VGGWeightsError(f"{source}: not a VGG16 weights file (missing {', '.join(missing)})")
    try:
        features.load_state_dict(picked, strict=True)
    except RuntimeError as exc:
        raise VGGWeightsError(f"{source}: VGG16 weights do not fit: {exc}") from exc
    return features


def load_vgg_file(path: Path) -> nn.Sequential:
    """VGG16 ``features[:16]`` from a ``.pth`` file, loaded with ``weights_only=True``."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and OS errors all mean "unusable file"
        raise VGGWeightsError(f"{path}: cannot load VGG16 weights: {exc}") from exc
    if not isinstance(state_dict, dict):
        raise VGGWeightsError(f"{path}: expected a state_dict, found {type(state_dict).__name__}")
    return features_from_state_dict(state_dict, str(path))


def _download() -> dict[str, torch.Tensor] | None:
    from torchvision.models import VGG16_Weights

    try:
        return VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # offline: URLError, timeouts, proxies; all mean "not available"
        logger.info("VGG16 download failed: {}", exc)
        return None


def resolve_vgg_features(
    explicit: Path | None = None, *, download: bool = True
) -> tuple[nn.Sequential, str]:
    """VGG16 ``features[:16]`` and where its weights came from (explicit file, hub cache,
    download), or VGGWeightsError saying how to fix it."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise VGGWeightsError(f"--vgg-weights {explicit}: no such file")
        return load_vgg_file(Path(explicit)), f"VGG16 weights from {explicit}"
    cached = hub_cache_path()
    if cached.is_file():
        return load_vgg_file(cached), f"VGG16 weights from the hub cache {cached}"
    if download:
        state_dict = _download()
        if state_dict is not None:
            features = features_from_state_dict(state_dict, "torchvision download")
            return features, f"VGG16 weights downloaded to {cached}"
    raise VGGWeightsError(
        "the perceptual loss needs ImageNet VGG16 weights and none were found: "
        f"expected {cached} (the torch hub cache; set TORCH_HOME to move it)"
        + ("" if download else ", download disabled")
        + ". Either copy vgg16-397923af.pth there or pass --vgg-weights FILE, "
        "or train without the perceptual term with --perceptual-weight 0."
    )


class PerceptualLoss(nn.Module):
    """MSE between frozen VGG16 ``features[:16]`` of output and target (both 0..1 pixels)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.normalize = imagenet()
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # VGG stays in eval mode whatever the trainer does with the surrounding modules.
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.features(self.normalize(target))
        output_features = self.features(self.normalize(output))
        return F.mse_loss(output_features.float(), target_features.float())


class TrainingLoss(nn.Module):
    """``mse + weight * perceptual`` in pixel space; returns (total, mse, perceptual)."""

    def __init__(self, perceptual: PerceptualLoss | None, weight: float) -> None:
        super().__init__()
        if weight > 0 and perceptual is None:
            raise ValueError("a positive perceptual weight needs a PerceptualLoss")
        self.perceptual = perceptual if weight > 0 else None
        self.weight = weight

    def forward(
        self, output: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mse = F.mse_loss(output.float(), target.float())
        if self.perceptual is None:
            return mse, mse, torch.zeros((), device=mse.device)
        perceptual = self.perceptual(output, target)
        return mse + self.weight * perceptual, mse, perceptual
