"""Trainer settings: the post's recipe as defaults, overridable by flag, env var or TOML.

Every field is a flag (``--batch-size``), an env var (``ARTD_TRAIN_BATCH_SIZE``) and a TOML
key (``batch_size``) in a ``--config`` file; precedence is flag, env, file, default
(``core.config``, which also builds the flags). Unknown or ill-typed settings stop the
trainer before it touches data.

Under ``torchrun`` every process uses ``batch_size``: the global batch is
``batch_size x world size``. The learning rate is not rescaled for you; when you change the
global batch, scale ``lr`` yourself (linearly is the usual first guess for Adam at these sizes).

``objective`` picks what the network learns, one of the registered objectives
(``core.objectives``): ``reconstruct`` (the post's: the image itself), ``denoise`` (the clean
image from a noised one, ``core.diffusion.schedule``) or ``style`` (photo -> the collection's
manner, ``core.training.style``). The ``sample_*`` settings are the img2img sampler a denoise
checkpoint recommends (its ``meta.sampler``), also used for the run's sample grids. For style
the collection is ``data``, the photos ``content_data`` (default: the collection itself); the
``*_weight`` and ``style_target`` settings are its loss (docs/training.md). A setting one
objective owns (``Objective.own_settings``) is refused at anything but its default by the others,
when the command line builds the settings (``core.training.command``: the checks that ask the
registered objectives live above them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.config import check_device
from core.diffusion.sampler_settings import DEFAULT_SAMPLER_SETTINGS, MIN_WORKING
from core.images.decode import DEFAULT_MAX_PIXELS
from core.network.shapes import check_size


class TrainSettings(BaseSettings):
    """Everything one training run is told; saved in ``settings.json`` and every checkpoint."""

    model_config = SettingsConfigDict(env_prefix="ARTD_TRAIN_", extra="forbid")

    data: Path = Field(description="folder of training images (flat or class sub-folders)")
    objective: str = Field(
        "reconstruct",
        description="what the network learns: a registered objective (core.objectives)",
    )
    decoder: Literal["transpose", "upsample", "upsample-full"] = Field(
        "transpose",
        description="the network's 2x upsampling: the post's transposed convolutions, "
        "nearest upsampling + 3x3 convolution (no checkerboard, ~4x the decoder's cost), or "
        "upsample-full: upsample plus a full-resolution level (core/network/model.py)",
    )
    parameterisation: Literal["x0", "v"] = Field(
        "x0",
        description="denoise: what the network's output means: x0 (the clean image) or v "
        "(Salimans & Ho 2022: the photo is kept at low strength; needs perceptual_weight 0)",
    )
    low_noise_prior: Literal["none", "dead-leaves"] = Field(
        "none",
        description="denoise: images swapped in at low noise levels so that a low strength "
        "gives a photo back: none, or dead-leaves (core/synthetic/dead_leaves.py)",
    )
    guide_abstraction: Literal["luminance", "colour"] = Field(
        "luminance",
        description="guided: what the guide keeps of an image: its luminance or its colours "
        "(core/network/guide.py)",
    )
    guide_blur_min: float = Field(
        1.5, ge=0, description="guided: the guide's smallest Gaussian blur while training (px)"
    )
    guide_blur_max: float = Field(
        4.0, ge=0, description="guided: the guide's largest Gaussian blur while training (px)"
    )
    guide_serve_blur: float | None = Field(
        None,
        ge=0,
        description="guided: the blur served (px; default: guide_blur_min, the "
        "sharpest guide the network saw: it keeps faces best)",
    )
    guide_dropout: float = Field(
        0.0, ge=0, lt=1, description="guided: share of training images whose guide is withheld"
    )
    guidance_scale: float = Field(
        1.0, ge=1, description="guided: the guidance scale served (above 1: two passes per step)"
    )
    low_noise_below: float = Field(
        0.1, gt=0, le=1, description="denoise: the level below which the prior is swapped in"
    )
    low_noise_share: float = Field(
        0.8, ge=0, le=1, description="denoise: the share of those images swapped for the prior"
    )
    out: Path = Field(Path("checkpoints"), description="where run-<timestamp>/ folders go")
    epochs: int = Field(150, ge=1, description="epochs to train (total, also when resuming)")
    batch_size: int = Field(32, ge=1, description="images per step per process")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    lr_step: int = Field(30, ge=1, description="StepLR: epochs between learning-rate drops")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="StepLR: factor at each drop")
    image_size: int = Field(128, description="training size in pixels (multiple of 8)")
    resize: Literal["stretch", "crop"] = Field(
        "stretch", description="stretch to a square (the post) or crop a square (keeps aspect)"
    )
    perceptual_weight: float = Field(1.0, ge=0, description="weight of the VGG16 term; 0 = off")
    vgg_weights: Path | None = Field(None, description="VGG16 .pth file (else the hub cache)")
    content_data: Path | None = Field(
        None, description="style: folder of content photos (default: the collection, --data)"
    )
    content_weight: float = Field(1.0, ge=0, description="style: weight of the relu2_2 term")
    style_weight: float = Field(
        1e5, ge=0, description="style: weight of the Gram term (relu1_2, relu2_2, relu3_3)"
    )
    tv_weight: float = Field(1.0, ge=0, description="style: weight of total variation")
    style_target: Literal["mean", "sample"] = Field(
        "mean",
        description="style: Gram target per step: the collection's mean, or one style image "
        "drawn per step (validation always uses the mean)",
    )
    vgg_download: bool = Field(True, description="let torchvision download VGG16 if missing")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of images for validation")
    seed: int = Field(0, description="seed for weights, shuffling and everything random")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms(True)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA (fp16 + scaler without bf16), else fp32"
    )
    channels_last: bool = Field(True, description="channels_last memory layout on CUDA")
    compile: bool = Field(False, description="torch.compile the model")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    checkpoint_every: int = Field(10, ge=1, description="epochs between checkpoints")
    keep_last: int = Field(3, ge=1, description="epoch checkpoints kept (plus best)")
    sample_every: int = Field(10, ge=1, description="epochs between sample grids (and the end)")
    sample_count: int = Field(8, ge=1, description="validation images in each sample grid")
    log_every: int = Field(50, ge=1, description="steps between plain log lines")
    cache_dir: Path | None = Field(None, description="decode-once cache (default OUT/.cache)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images are rejected")
    resume: str | None = Field(None, description="'latest' or a run folder / last.pt to resume")
    promote: Path | None = Field(None, description="pointer to move on success, e.g. current")
    promote_tolerance: float = Field(
        0.02, ge=0, description="promote when new val loss <= served val loss x (1 + this)"
    )
    promote_across_objectives: bool = Field(
        False, description="let the gate replace a served model of another objective"
    )
    sample_strength: float = Field(
        DEFAULT_SAMPLER_SETTINGS.strength,
        ge=0,
        le=1,
        description="denoise: recommended img2img strength (meta.sampler)",
    )
    sample_steps: int = Field(
        DEFAULT_SAMPLER_SETTINGS.steps, ge=1, description="denoise: recommended sampling steps"
    )
    sample_eta: float = Field(
        DEFAULT_SAMPLER_SETTINGS.eta,
        ge=0,
        le=1,
        description="denoise: recommended eta (1 = DDPM noise, 0 = DDIM)",
    )
    sample_working_size: int | None = Field(
        None,
        ge=0,
        description="denoise, guided: recommended working size, the shorter side sampled at "
        "(0 = the output size; default: 0 for denoise, 2.5 x image_size for guided)",
    )
    sample_refine: float = Field(
        0.0, ge=0, le=1, description="denoise, guided: recommended refining strength (0 = none)"
    )
    recommend_colour: Literal["none", "collection", "keep"] = Field(
        "none",
        description="the output colour the checkpoints recommend (an artd colour = auto "
        "serves it): collection, keep (the photo's own), or none",
    )
    tensorboard: bool = Field(True, description="write TensorBoard scalars if it is installed")

    @field_validator("image_size")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        return check_size(value)

    @field_validator("guide_blur_max")
    @classmethod
    def _blur_range(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("guide_blur_min", 0.0)
        if value < low:
            raise ValueError(f"must be at least guide_blur_min ({low}), got {value}")
        return value

    @field_validator("sample_working_size")
    @classmethod
    def _servable_working_size(cls, value: int | None) -> int | None:
        if value is not None and 0 < value < MIN_WORKING:
            raise ValueError(f"must be 0 (the output size) or at least {MIN_WORKING}, got {value}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("perceptual_weight")
    @classmethod
    def _images_only(cls, value: float, info: ValidationInfo) -> float:
        if value != 0 and info.data.get("parameterisation", "x0") != "x0":
            raise ValueError(
                "must be 0 with parameterisation v: the network's output is v, not an image "
                "a perceptual loss could judge"
            )
        return value

    def resolved_cache_dir(self) -> Path:
        """Where the decode-once cache lives: ``cache_dir``, else ``OUT/.cache``."""
        return self.cache_dir if self.cache_dir is not None else self.out / ".cache"

    def as_json(self) -> dict:
        """The settings as plain JSON values (``settings.json``, checkpoints, resume state)."""
        return self.model_dump(mode="json")
