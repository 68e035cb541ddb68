"""The trainer's command line: its flags, and the settings checks that ask the objectives.

``core.training.settings`` says what a run can be told and checks what needs no objective;
the checks here need the registry (``core.objectives``), which sits above the trainer's parts,
so they live one level up: the objective is a registered one, and a setting one objective
owns (``Objective.own_settings``) is refused at anything but its default by the others. The
settings are built as :class:`CheckedSettings`, a :class:`TrainSettings` whose validators
ask the registry, so their errors name the setting, its flag and its env var like any other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationInfo, field_validator, model_validator

from core.config import FieldError, add_settings_flags, settings_from_args
from core.objectives import UnknownObjective, get, names
from core.training.settings import TrainSettings

# The settings some registered objective owns (``Objective.own_settings``), checked by
# ``CheckedSettings._owned``; ``content_data`` (a path, None by default) has a check of its own.
OWNED = tuple(sorted(set().union(*(get(n).own_settings for n in names())) - {"content_data"}))


class CheckedSettings(TrainSettings):
    """:class:`TrainSettings` with the checks that ask the registered objectives."""

    @field_validator("objective")
    @classmethod
    def _registered(cls, value: str) -> str:
        get(value)  # UnknownObjective names the choices
        return value

    @field_validator(*OWNED)
    @classmethod
    def _owned(cls, value: object, info: ValidationInfo) -> object:
        """Anything but the field's default needs an objective that owns the field."""
        default = cls.model_fields[info.field_name].default
        if value != default and not owns(info.data.get("objective"), info.field_name):
            raise ValueError(
                f"{info.field_name} {value} is only for --objective {owners(info.field_name)}"
            )
        return value

    @model_validator(mode="after")
    def _content_data_owned(self) -> CheckedSettings:
        if self.content_data is not None and not owns(self.objective, "content_data"):
            raise FieldError(
                "content_data", f"content_data is only for --objective {owners('content_data')}"
            )
        return self


def owns(objective: str | None, setting: str) -> bool:
    """Whether ``objective`` (None: not a valid one) reads ``setting``."""
    try:
        return setting in get(objective or "").own_settings
    except UnknownObjective:
        return False


def owners(setting: str) -> str:
    """The objectives that read ``setting``, for an error message."""
    return " or ".join(n for n in names() if setting in get(n).own_settings)


def build_parser() -> argparse.ArgumentParser:
    """``--config`` plus one flag per setting (``core.config.add_settings_flags``); the
    ``--objective`` choices are the objectives registered now."""
    parser = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train the artd network (the post's recipe, done right).",
    )
    parser.add_argument("--config", type=Path, help="TOML file with settings (keys = field names)")
    add_settings_flags(parser, CheckedSettings)
    for action in parser._actions:
        if action.dest == "objective":
            action.choices, action.metavar = names(), None
            summaries = ", ".join(get(n).summary for n in names())
            action.help = f"{summaries} (default: reconstruct)"
    return parser


def parse_settings(argv: list[str] | None = None) -> TrainSettings:
    """Settings from the command line, env and ``--config``; raises core.config.SettingsError."""
    return settings_from_args(CheckedSettings, vars(build_parser().parse_args(argv)))
