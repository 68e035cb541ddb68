"""The model and the images it writes (``RenderSettings``): what the daemon, a job (preset or
sidecar) and ``artd process`` share, so that their names, defaults and checks cannot drift."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from core.network.shapes import check_output_size
from core.outputs.encoding import OUTPUT_FORMATS
from core.outputs.settings import OutputSettings
from daemon.settings.model import ModelSettings
from daemon.settings.output import OutputOptions


class RenderSettings(OutputOptions, ModelSettings):
    """The model and the images it writes from inputs: shared by the daemon and
    ``artd process``, so that their names, defaults and checks cannot drift apart."""

    size: int | Literal["input"] = Field(
        512,
        description="output's longer side (px), a multiple of 8; 'input': the input's own "
        "size (slow on CPU for big photos: docs/operations.md, 'Output size')",
    )
    resize: Literal["fit", "stretch"] = OutputSettings.resize
    # "same": the input's own format where it is an output format, PNG otherwise.
    output_format: Literal[(*OUTPUT_FORMATS, "same")] = OutputSettings.fmt  # type: ignore[valid-type]

    @field_validator("size")
    @classmethod
    def _size_multiple(cls, value: int | str) -> int | str:
        return check_output_size(value)

    @property
    def output_extension(self) -> str:
        """The outputs' extension; with "same" each file's own (OutputSettings.format_for),
        and ".png" here, the one for inputs that are not PNG, JPEG or WebP."""
        return OUTPUT_FORMATS.get(self.output_format, ".png")
