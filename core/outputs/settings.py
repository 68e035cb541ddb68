"""What an output is made as (``OutputSettings``): the one place the output defaults live.

Two names, two meanings. ``OutputSettings`` (here) is the resolved, typed value an output is
encoded with, recorded in its provenance; core.runtime.img2img takes it. ``OutputOptions``
(daemon.settings.output) is the operator's side of the same thing: the fields an operator
sets by flag, ``ARTD_*`` env var or TOML key, whose defaults are read from this dataclass, so
the two cannot disagree. :meth:`OutputSettings.from_settings` turns the one into the other.

No torch here: the settings classes that take their defaults from this module build
commands' flags, which must stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from core.images.colour import ColourIntent, ColourPolicy, Palette
from core.outputs.encoding import DEFAULT_QUALITY, OUTPUT_FORMATS

if TYPE_CHECKING:
    from core.images.origin import Origin
    from core.images.pixels import ResizePolicy
    from core.outputs.content_credentials import ContentCredentials

__all__ = ["DEFAULT_COLOUR", "OutputSettings", "OutputSource"]

# format = "same": the input's own format where it is an output format, PNG otherwise.
_SAME_FORMAT = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
# The colour policy's defaults (manage, intent, CMYK profile), as the settings show them.
DEFAULT_COLOUR = ColourPolicy()


class OutputSource(Protocol):
    """What :meth:`OutputSettings.from_settings` reads: a RenderSettings (the daemon's, a
    job's or ``artd process``'s). ``background_rgb`` is the daemon's setting; other
    settings give :attr:`OutputSettings.background`."""

    @property
    def size(self) -> int | str: ...
    @property
    def resize(self) -> ResizePolicy: ...
    @property
    def output_format(self) -> str: ...
    @property
    def jpeg_quality(self) -> int: ...
    @property
    def webp_quality(self) -> int: ...
    @property
    def webp_lossless(self) -> bool: ...
    @property
    def colour_management(self) -> bool: ...
    @property
    def colour_intent(self) -> ColourIntent: ...
    @property
    def cmyk_profile(self) -> Path | None: ...
    @property
    def output_profile(self) -> Literal["srgb", "input"]: ...
    @property
    def colour(self) -> Palette: ...
    @property
    def keep_alpha(self) -> bool: ...
    @property
    def copy_metadata(self) -> bool: ...
    @property
    def copy_gps(self) -> bool: ...
    @property
    def c2pa_cert(self) -> Path | None: ...
    @property
    def c2pa_key(self) -> Path | None: ...
    @property
    def background_rgb(self) -> tuple[int, int, int]: ...


@dataclass(frozen=True)
class OutputSettings:
    """What the outputs are made as; recorded in each output's provenance.

    ``fmt`` may be ``"same"`` (:meth:`format_for`). ``label`` and ``embed_profile`` exist for
    the colour benchmark's baseline only: no setting turns the AI label off. Every default
    here is also the default of the setting of the same meaning (daemon.settings.output)."""

    size: int | str  # the longer side in px, or "input" (core.network.shapes.INPUT_SIZE)
    resize: ResizePolicy = "fit"
    fmt: str = "png"
    jpeg_quality: int = DEFAULT_QUALITY
    webp_quality: int = DEFAULT_QUALITY
    webp_lossless: bool = False
    colour: ColourPolicy = field(default_factory=ColourPolicy)
    output_profile: Literal["srgb", "input"] = "srgb"
    # The operator's ``colour`` setting: the model's colours, the input's kept (keep_colours), or
    # ``auto``: the checkpoint's recommendation (``resolved_palette``), else the model's.
    palette: Palette = "auto"
    keep_alpha: bool = True
    copy_metadata: bool = False
    copy_gps: bool = False
    background: tuple[int, int, int] = (255, 255, 255)
    credentials: ContentCredentials | None = field(default=None, compare=False)
    label: bool = True
    embed_profile: bool = True

    @classmethod
    def from_settings(cls, settings: OutputSource, **overrides: Any) -> OutputSettings:
        """From a RenderSettings (daemon, job or ``artd process``): every output field."""
        credentials = None
        if settings.c2pa_cert is not None and settings.c2pa_key is not None:
            from core.outputs.content_credentials import load_credentials

            credentials = load_credentials(settings.c2pa_cert, settings.c2pa_key)
        cmyk = settings.cmyk_profile
        values: dict[str, Any] = {
            "size": settings.size,
            "resize": settings.resize,
            "fmt": settings.output_format,
            "jpeg_quality": settings.jpeg_quality,
            "webp_quality": settings.webp_quality,
            "webp_lossless": settings.webp_lossless,
            "colour": ColourPolicy(
                manage=settings.colour_management,
                intent=settings.colour_intent,
                cmyk_profile=None if cmyk is None else str(cmyk),
            ),
            "output_profile": settings.output_profile,
            "palette": settings.colour,
            "keep_alpha": settings.keep_alpha,
            "copy_metadata": settings.copy_metadata,
            "copy_gps": settings.copy_gps,
            "background": settings.background_rgb,
            "credentials": credentials,
        }
        return cls(**(values | overrides))

    @property
    def intent(self) -> ColourIntent:
        return self.colour.intent

    def format_for(self, origin: Origin | None = None) -> str:
        """The output format for an input of ``origin`` (``fmt``, or "same" resolved)."""
        if self.fmt != "same":
            return self.fmt
        return _SAME_FORMAT.get((origin.format or "") if origin else "", "png")

    def resolved_palette(self, recommended: str | None) -> OutputSettings:
        """These settings with ``auto`` resolved: the checkpoint's ``recommended`` palette
        (``meta.colour``), else ``collection``."""
        if self.palette != "auto":
            return self
        return replace(self, palette=recommended or "collection")  # type: ignore[arg-type]

    @property
    def extension(self) -> str:
        """The extension of every output; ``fmt="same"`` has none (:meth:`format_for`)."""
        return OUTPUT_FORMATS[self.format_for()]

    def recorded(self) -> dict[str, object]:
        """The settings as the provenance and the quarantine sidecars carry them."""
        out: dict[str, object] = {"size": self.size, "resize": self.resize, "format": self.fmt}
        defaults = OutputSettings(self.size)
        # Only what differs from the defaults, so a default output's record never changes.
        for name in ("jpeg_quality", "webp_quality", "webp_lossless", "output_profile"):
            if getattr(self, name) != getattr(defaults, name):
                out[name] = getattr(self, name)
        if self.palette == "keep":  # absent: the model's colours (auto resolves before this)
            out["palette"] = "keep"
        if self.colour != defaults.colour:
            out["colour"] = {"manage": self.colour.manage, "intent": self.colour.intent}
        return out
