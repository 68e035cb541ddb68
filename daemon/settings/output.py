"""How outputs are written beyond their size and format (``OutputOptions``): colour,
transparency, quality, labels and metadata, as an operator sets them.

A mixin of ``RenderSettings``, so the daemon and ``artd process`` share every field defined
here; docs/colour.md explains each choice. Each default is read from
core.outputs.settings.OutputSettings, the typed value these fields become
(``OutputSettings.from_settings``): the defaults are written there once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from core.config import FieldError
from core.images.colour import ColourIntent, Palette
from core.outputs.settings import DEFAULT_COLOUR, OutputSettings

# The dataclass's own defaults (class attributes of a dataclass field with a plain default).
_DEFAULT = OutputSettings


class OutputOptions(BaseSettings):
    """Output colour, quality and labelling settings, as flags, env vars and TOML keys."""

    jpeg_quality: int = Field(
        _DEFAULT.jpeg_quality, ge=1, le=100, description="JPEG outputs' quality, 1..100"
    )
    webp_quality: int = Field(
        _DEFAULT.webp_quality, ge=1, le=100, description="lossy WebP outputs' quality, 1..100"
    )
    webp_lossless: bool = Field(
        _DEFAULT.webp_lossless, description="WebP outputs lossless (webp_quality unused)"
    )
    colour_management: bool = Field(
        DEFAULT_COLOUR.manage,
        description="convert inputs by their ICC profile to sRGB (false: ignore profiles)",
    )
    colour_intent: ColourIntent = Field(
        DEFAULT_COLOUR.intent,
        description="rendering intent into and out of sRGB (relative: with BPC)",
    )
    cmyk_profile: Path | None = Field(
        None, description="ICC profile for CMYK inputs without one (unset: the standard one)"
    )
    output_profile: Literal["srgb", "input"] = Field(
        _DEFAULT.output_profile,
        description="outputs in sRGB, or converted back to the input's RGB profile",
    )
    colour: Palette = Field(
        _DEFAULT.palette,
        description="outputs in the model's colours (collection), the input's own (keep: the "
        "output's luminance under the input's chroma), or auto: what the model recommends "
        "(else collection)",
    )
    keep_alpha: bool = Field(
        _DEFAULT.keep_alpha,
        description="keep inputs' transparency in PNG/WebP outputs (JPEG: background)",
    )
    copy_metadata: bool = Field(
        _DEFAULT.copy_metadata, description="copy the input's date, author, copyright and keywords"
    )
    copy_gps: bool = Field(_DEFAULT.copy_gps, description="also copy the input's GPS position")
    c2pa_cert: Path | None = Field(
        None, description="Content Credentials: signing certificate chain (PEM)"
    )
    c2pa_key: Path | None = Field(None, description="Content Credentials: its private key (PEM)")

    @field_validator("cmyk_profile")
    @classmethod
    def _cmyk_profile(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        from core.images.colour import ColourError, load_profile, profile_space

        try:
            data = load_profile(value.expanduser())
        except (OSError, ColourError) as exc:
            raise ValueError(f"cmyk_profile {value}: {exc}") from None
        if profile_space(data) != "CMYK":
            raise ValueError(f"cmyk_profile {value} is not a CMYK profile")
        return value

    @model_validator(mode="after")
    def _output_options(self) -> OutputOptions:
        # Each check names the setting (FieldError), so a bad start says what to change.
        if self.copy_gps and not self.copy_metadata:
            raise FieldError(
                "copy_gps", "copy_gps needs copy_metadata: GPS is copied only with the rest"
            )
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            missing = "c2pa_key" if self.c2pa_key is None else "c2pa_cert"
            raise FieldError(
                missing,
                f"{missing} is needed too: Content Credentials need both c2pa_cert and c2pa_key",
            )
        if self.c2pa_cert is not None and self.c2pa_key is not None:
            from core.outputs.content_credentials import CredentialsError, load_credentials

            try:
                load_credentials(self.c2pa_cert.expanduser(), self.c2pa_key.expanduser())
            except CredentialsError as exc:
                raise FieldError("c2pa_key", f"c2pa_cert/c2pa_key: {exc}") from None
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        """The colour under transparent pixels: the default here; the daemon's setting
        (DaemonSettings.background) where it has one."""
        return _DEFAULT.background
