"""Settings loading shared by the daemon, ``artd process`` and the trainer.

Precedence, highest first: CLI flags, ``ARTD_*`` environment variables, the TOML file
named by ``--config``, defaults. Errors name the setting the way the user wrote it (flag,
env var or TOML key), so a typo is found without reading a traceback. An error never shows
a secret setting's value (:func:`is_secret`) nor the whole input of a settings class: a
check across several settings raises :class:`FieldError`, which names the setting to blame.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import SecretBytes, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

S = TypeVar("S", bound=BaseSettings)
_DEVICE_SPEC = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(value: str) -> str:
    """A ``device`` setting's validator (daemon, ``artd process``, trainer): the spec's shape
    only; whether that device exists is core.runtime.devices.pick_device's question, at start."""
    if not _DEVICE_SPEC.fullmatch(value):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return value


class SettingsError(Exception):
    """Settings that cannot be used; the message names every bad setting."""


class FieldError(ValueError):
    """A validator's error that names the setting it is about: raise it from a check across
    several settings (a model validator), whose error pydantic ties to no field, so that
    :func:`describe_errors` names that setting's flag and env var all the same."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# A field's marker (``Field(..., json_schema_extra=SECRET)``): its value is never shown in an
# error. A ``SecretStr``/``SecretBytes`` field is secret without it.
SECRET: dict[str, Any] = {"secret": True}


def is_secret(cls: type[BaseSettings], name: str) -> bool:
    """Whether field ``name`` of ``cls`` holds a secret (a token, key material)."""
    field = cls.model_fields.get(name)
    if field is None:
        return False
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("secret"):
        return True
    secret_types = (SecretStr, SecretBytes)
    annotation = field.annotation
    return annotation in secret_types or any(arg in secret_types for arg in get_args(annotation))


class FlagNames:
    """Mixin for a settings class whose flags differ from its field names.

    ``cli_flags`` maps a field to its flag (``artd process`` says ``--format`` for the
    ``output_format`` it shares with the daemon's ``ARTD_OUTPUT_FORMAT``); others are
    ``--field-name``. Error messages use the same names.
    """

    cli_flags: ClassVar[dict[str, str]] = {}


class InitOnly(BaseSettings):
    """Mixin for a settings class read from the values given to it alone (a command's
    flags, a job's keys), never from env vars or files: without a prefix, env vars named
    SIZE or DEVICE would silently become settings. List it before the settings base."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def flag_for(cls: type[BaseSettings], name: str) -> str:
    """The command-line flag of field ``name`` of ``cls``."""
    overrides: dict[str, str] = getattr(cls, "cli_flags", {})
    return overrides.get(name, "--" + name.replace("_", "-"))


def add_settings_flags(
    parser: argparse.ArgumentParser, cls: type[BaseSettings], *, skip: Sequence[str] = ()
) -> None:
    """One ``--flag`` per field of ``cls`` (but ``skip``), generated so they never drift apart.

    Values stay strings (``None`` when not given): pydantic converts and validates them with
    the env vars' rules, so a flag and its ``ARTD_*`` twin accept exactly the same text.
    A ``Literal`` field's values become the flag's choices; a bool is ``--x/--no-x``.
    """
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        flag = flag_for(cls, name)
        # A computed default (the daemon's instance name) is the host's, not worth printing.
        shown = not field.is_required() and field.default_factory is None
        default = f" (default: {field.default})" if shown else ""
        help_text = (field.description or "") + default
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        # Choices show as {a,b,c}; anything else by its flag's name.
        metavar = None if choices else flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(
            flag, dest=name, default=None, choices=choices, metavar=metavar, help=help_text
        )


def settings_from_args(
    cls: type[S], args: dict[str, Any], *, other_prefixes: tuple[str, ...] = ()
) -> S:
    """:func:`load_settings` from a parser made with :func:`add_settings_flags` plus
    ``--config`` (popped from ``args``); other non-setting entries must be removed first."""
    given = dict(args)
    config_file = given.pop("config", None)
    return load_settings(cls, given, config_file, other_prefixes=other_prefixes)


def settings_from_flags(cls: type[S], args: dict[str, Any]) -> S:
    """``cls`` from flag values alone (``None``: not given), for a class that reads no
    environment (``artd process``); errors as :func:`load_settings` words them."""
    given = {key: value for key, value in args.items() if value is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, cls, None)) from None


def load_settings(
    cls: type[S],
    cli: dict[str, Any],
    config_file: Path | None = None,
    *,
    other_prefixes: tuple[str, ...] = (),
) -> S:
    """Build ``cls`` from CLI values (``None`` means "not given"), env vars and a TOML file.

    An env var with our prefix that names no setting is an error (a typo would otherwise be
    silently ignored); ``other_prefixes`` are longer prefixes owned by other programs.
    """
    toml_data: dict[str, Any] = {}
    if config_file is not None:
        try:
            toml_data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"--config: no such file: {config_file}") from exc
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"--config {config_file}: {exc}") from exc

    class _WithToml(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = _DictSource(settings_cls, toml_data)
            return (init_settings, env_settings, toml)

    _WithToml.__name__ = cls.__name__
    given = {key: value for key, value in cli.items() if value is not None}
    try:
        settings = _WithToml(**given)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, cls, config_file)) from None
    _refuse_unknown_env(cls, other_prefixes)
    return settings  # an instance of a subclass of ``cls``


def _refuse_unknown_env(cls: type[BaseSettings], other_prefixes: tuple[str, ...]) -> None:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    if not prefix:
        return
    known = {prefix + name.upper() for name in cls.model_fields}
    unknown = sorted(
        key
        for key in os.environ
        if key.upper().startswith(prefix)
        and key.upper() not in known
        and not key.upper().startswith(tuple(p.upper() for p in other_prefixes))
    )
    if unknown:
        raise SettingsError(
            f"unknown environment variable(s): {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


class _DictSource(TomlConfigSettingsSource):
    """A TOML source from already parsed data (so a missing file is our error, not silence)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        self.toml_data = data
        super(TomlConfigSettingsSource, self).__init__(settings_cls, data)


def describe_errors(exc: ValidationError, cls: type[BaseSettings], config_file: Path | None) -> str:
    """Every error of ``exc``, each naming its setting as flag, env var and TOML key; the
    value given is shown for a plain value of a setting that is not secret, never else."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    lines = []
    for error in exc.errors():
        field = _field_of(error, cls)
        if error["type"] == "extra_forbidden":
            lines.append(
                f"unknown setting {field!r}" + (f" in {config_file}" if config_file else "")
            )
            continue
        if field is None:  # a model-wide check that names no setting: say no more than it
            lines.append(f"settings: {error['msg']}")
            continue
        # A class without a prefix reads no environment: its env var is no name of it.
        names = [flag_for(cls, field)] + ([prefix + field.upper()] if prefix else [])
        if config_file:
            names.append(f"{config_file} key {field}")
        lines.append(f"{field} ({', '.join(names)}): {error['msg']}{_given(cls, field, error)}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _field_of(error: Any, cls: type[BaseSettings]) -> str | None:
    """The setting an error is about: its location, the FieldError's field, or else the
    setting that a model-wide check's message starts with (``"copy_gps needs ..."``)."""
    if error["loc"]:
        return str(error["loc"][0])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return cause.field
    words = str(cause or "").split(maxsplit=1)
    return words[0] if words and words[0] in cls.model_fields else None


_PLAIN = (str, int, float, bool, Path, type(None))


def _given(cls: type[BaseSettings], field: str, error: Any) -> str:
    """`` (got VALUE)`` for a plain, non-secret value; the input of a model-wide check is
    every setting given, of which only this field's value is shown."""
    if is_secret(cls, field):
        return ""
    value = error.get("input")
    if not error["loc"]:
        if not isinstance(value, dict) or field not in value:
            return ""
        value = value[field]
    if not isinstance(value, _PLAIN):
        return ""
    return f" (got {value!r})"
