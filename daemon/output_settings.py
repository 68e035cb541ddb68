"""How outputs are written beyond their size and format: colour, transparency, quality,
labels and metadata (issue 15). A mixin of ``RenderSettings``, so the daemon and
``artd process`` share every field defined here; docs/colour.md explains each choice."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings


class OutputOptions(BaseSettings):
    """Output colour, quality and labelling settings (fields added by issue 15)."""

    jpeg_quality: int = Field(92, ge=1, le=100, description="JPEG outputs' quality, 1..100")
    webp_quality: int = Field(92, ge=1, le=100, description="lossy WebP outputs' quality, 1..100")
    webp_lossless: bool = Field(False, description="WebP outputs lossless (webp_quality unused)")
    colour_management: bool = Field(
        True, description="convert inputs by their ICC profile to sRGB (false: ignore profiles)"
    )
    colour_intent: Literal["relative", "perceptual"] = Field(
        "relative", description="rendering intent into and out of sRGB (relative: with BPC)"
    )
    cmyk_profile: Path | None = Field(
        None, description="ICC profile for CMYK inputs without one (unset: the standard one)"
    )
    output_profile: Literal["srgb", "input"] = Field(
        "srgb", description="outputs in sRGB, or converted back to the input's RGB profile"
    )
    keep_alpha: bool = Field(
        True, description="keep inputs' transparency in PNG/WebP outputs (JPEG: background)"
    )
    copy_metadata: bool = Field(
        False, description="copy the input's date, author, copyright and keywords"
    )
    copy_gps: bool = Field(False, description="also copy the input's GPS position")
    c2pa_cert: Path | None = Field(
        None, description="Content Credentials: signing certificate chain (PEM)"
    )
    c2pa_key: Path | None = Field(None, description="Content Credentials: its private key (PEM)")

    @model_validator(mode="after")
    def _output_options(self) -> OutputOptions:
        # Each check names the setting, so a bad start says what to change.
        if self.copy_gps and not self.copy_metadata:
            raise ValueError("copy_gps needs copy_metadata: GPS is copied only with the rest")
        if self.cmyk_profile is not None:
            from core.images.colour import ColourError, load_profile, profile_space

            try:
                data = load_profile(self.cmyk_profile.expanduser())
            except (OSError, ColourError) as exc:
                raise ValueError(f"cmyk_profile {self.cmyk_profile}: {exc}") from None
            if profile_space(data) != "CMYK":
                raise ValueError(f"cmyk_profile {self.cmyk_profile} is not a CMYK profile")
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            missing = "c2pa_key" if self.c2pa_key is None else "c2pa_cert"
            raise ValueError(
                f"{missing} is needed too: Content Credentials need both c2pa_cert and c2pa_key"
            )
        if self.c2pa_cert is not None and self.c2pa_key is not None:
            from core.outputs.content_credentials import CredentialsError, load_credentials

            try:
                load_credentials(self.c2pa_cert.expanduser(), self.c2pa_key.expanduser())
            except CredentialsError as exc:
                raise ValueError(f"c2pa_cert/c2pa_key: {exc}") from None
        return self
