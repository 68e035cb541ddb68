"""The training losses: pixel MSE plus a VGG16 perceptual term, and the style-transfer loss
(Johnson et al. 2016), with VGG16 weights found offline.

Outputs and targets are both images in 0..1 (pixel space); VGG sees ImageNet-normalized
copies of both (``core.network.space.imagenet``), which is what its features were trained on (the
post fed it the mismatched spaces, defect 1 in docs/post.md).

VGG16 weights are looked up, in order: an explicit file, the torch hub cache
(``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``, where torchvision itself puts them),
then torchvision's download. If none works the caller gets a :class:`VGGWeightsError`
naming the path and the two ways out; training never silently goes on without it.

The style loss (:class:`StyleLoss`, ``--objective style``) reads the same ``features[:16]``
at three points: relu1_2, relu2_2 and relu3_3 (:data:`STYLE_LAYERS`). Its content term is
the MSE between relu2_2 of output and input photo, its style term the MSE between Gram
matrices (:func:`gram`, normalised by C x H x W as in pytorch/examples fast_neural_style)
of the output and a target, summed over the three layers, and a total-variation term keeps
neighbouring pixels close.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from core.network.space import imagenet

VGG16_FILENAME = "vgg16-397923af.pth"
# features[:16] ends after relu3_3, the layer the post (and most perceptual losses) use.
VGG_FEATURE_LAYERS = 16
# Where features[:16] is cut for the style loss: after relu1_2, relu2_2 and relu3_3.
STYLE_LAYERS = (("relu1_2", 4), ("relu2_2", 9), ("relu3_3", 16))
CONTENT_LAYER = "relu2_2"


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


# How to train without VGG16, by what needs it (the guidance's last sentence).
WITHOUT_VGG = "train without the perceptual term with --perceptual-weight 0"
WITHOUT_VGG_STYLE = (
    "style training cannot do without VGG16: train --objective denoise instead "
    "(it needs no VGG weights with --perceptual-weight 0)"
)


def resolve_vgg_features(
    explicit: Path | None = None, *, download: bool = True, without: str = WITHOUT_VGG
) -> tuple[nn.Sequential, str]:
    """VGG16 ``features[:16]`` and where its weights came from (explicit file, hub cache,
    download), or VGGWeightsError saying how to fix it; ``without`` is the way out that
    needs no VGG (:data:`WITHOUT_VGG`, :data:`WITHOUT_VGG_STYLE`)."""
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
        + f". Either copy vgg16-397923af.pth there or pass --vgg-weights FILE, or {without}."
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


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices of a (N, C, H, W) batch: (N, C, C), divided by C x H x W, in fp32 also
    under autocast (a Gram matrix sums H x W products: bf16 would lose the style term)."""
    n, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        flat = features.float().reshape(n, c, h * w)
        return flat.bmm(flat.transpose(1, 2)) / (c * h * w)


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between horizontally and vertically neighbouring pixels."""
    x = pixels.float()
    across = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    down = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    return across + down


class StyleFeatures(nn.Module):
    """Frozen VGG16 ``features[:16]`` cut at :data:`STYLE_LAYERS`: 0..1 pixels in (ImageNet-
    normalised inside), ``{layer name: activations}`` out."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.normalize = imagenet()
        starts = [0, *(end for _, end in STYLE_LAYERS[:-1])]
        self.stages = nn.ModuleList(
            features[start:end].eval() for start, (_, end) in zip(starts, STYLE_LAYERS, strict=True)
        )
        for p in self.stages.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> StyleFeatures:
        super().train(mode)
        self.stages.eval()  # VGG stays in eval mode, as in PerceptualLoss
        return self

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out, x = {}, self.normalize(pixels)
        for (name, _), stage in zip(STYLE_LAYERS, self.stages, strict=True):
            x = stage(x)
            out[name] = x
        return out

    @torch.no_grad()
    def grams(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each layer's Gram matrices of a batch of 0..1 pixels, (N, C, C) fp32."""
        return {name: gram(x) for name, x in self(pixels).items()}


class StyleLoss(nn.Module):
    """Johnson et al. (2016)'s loss for a photo -> stylised photo network.

    ``content_weight x MSE(relu2_2(output), relu2_2(photo)) + style_weight x sum over layers
    of MSE(gram(output), target gram) + tv_weight x total_variation(output)``, everything in
    fp32 on 0..1 pixels. ``target`` is one Gram matrix per layer, (1, C, C) (the collection's
    mean) or (N, C, C); :meth:`forward` takes another for one call (one style image per
    step). Returns (total, content, style, tv)."""

    def __init__(
        self,
        features: StyleFeatures,
        target: dict[str, torch.Tensor],
        *,
        content_weight: float,
        style_weight: float,
        tv_weight: float,
    ) -> None:
        super().__init__()
        self.features = features
        for name, _ in STYLE_LAYERS:
            self.register_buffer(f"target_{name}", target[name].float(), persistent=False)
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight

    def target(self) -> dict[str, torch.Tensor]:
        """The Gram target every call uses unless given another."""
        return {name: getattr(self, f"target_{name}") for name, _ in STYLE_LAYERS}

    def forward(
        self,
        output: torch.Tensor,
        photo: torch.Tensor,
        target: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        target = target if target is not None else self.target()
        with torch.no_grad():
            photo_content = self.features(photo)[CONTENT_LAYER].float()
        out = self.features(output)
        content = F.mse_loss(out[CONTENT_LAYER].float(), photo_content)
        style = sum(
            F.mse_loss(gram(out[name]), target[name].expand(output.shape[0], -1, -1))
            for name, _ in STYLE_LAYERS
        )
        tv = total_variation(output)
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return total, content, style, tv


# What a run's loss is: pixel MSE + perceptual (``TrainingLoss``) or the style loss; which one
# is the objective's choice (``core.objectives``).
RunLoss = TrainingLoss | StyleLoss
