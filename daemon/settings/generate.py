"""The settings of ``artd generate`` (``GenerateSettings``): images from noise, flags only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from core.config import FlagNames, InitOnly
from core.network.shapes import check_size
from core.outputs.encoding import OUTPUT_FORMATS
from daemon.settings.model import MAX_SEED, ModelSettings

_WXH = re.compile(r"(\d{1,5})x(\d{1,5})")
MAX_GENERATE_SIDE = 4096
MAX_GENERATE_COUNT = 10_000


class GenerateSettings(InitOnly, FlagNames, ModelSettings):
    """``artd generate``'s settings: flags only, as ``artd process``. ``seed`` is the run's:
    image ``i`` is made from ``generate:<seed>:<i>`` (core.diffusion.generate), so a run repeats;
    ``strength`` is accepted and ignored (generation is always strength 1)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)
    cli_flags: ClassVar[dict[str, str]] = {"output_format": "--format", "max_batch": "--batch"}

    count: int = Field(1, ge=1, le=MAX_GENERATE_COUNT, description="images to make")
    size: str = Field("256x256", description="WIDTHxHEIGHT, each a multiple of 8 (px)")
    output_format: Literal[tuple(OUTPUT_FORMATS)] = "png"  # type: ignore[valid-type]
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="the run's seed (unset: a random one, logged)"
    )
    strength: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, description="ignored: generation is strength 1"
    )
    guide: Path | None = Field(
        None,
        description="guided models: an image whose layout every image follows "
        "(unset: none, the guide withheld)",
    )

    @field_validator("size")
    @classmethod
    def _wxh(cls, value: str) -> str:
        match = _WXH.fullmatch(value.strip().lower())
        if match is None:
            raise ValueError("must be WIDTHxHEIGHT in pixels, e.g. 256x192")
        for side in map(int, match.groups()):
            check_size(side)
            if side > MAX_GENERATE_SIDE:
                raise ValueError(f"each side must be at most {MAX_GENERATE_SIDE}")
        return "x".join(match.groups())

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])

    @property
    def output_extension(self) -> str:
        return OUTPUT_FORMATS[self.output_format]
