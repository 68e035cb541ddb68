"""What a preset or a job sidecar may set, and the check of the daemon's ``presets`` setting.

What a preset or a sidecar may set is derived from ``RenderSettings`` (one validation model
for defaults, presets and sidecars): every render field except the daemon-wide engine ones
(:data:`ENGINE_KEYS`) is a key, so an output field added to ``RenderSettings`` is a preset
and sidecar key without more code. A preset may also name a ``checkpoint`` (a path, written
by the operator); a sidecar, written by anyone who can drop a file, may only name a model,
``model = "<preset name>"`` or ``"default"``, never a path, a folder or an output name.
Resolving a claimed file's job from these: daemon.settings.jobs.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from core.config import FieldError, InitOnly
from daemon.settings.render import RenderSettings

# Daemon-wide: where and how models run, not what a job gets.
ENGINE_KEYS = frozenset({"device", "precision", "max_batch", "compile"})
JOB_KEYS = frozenset(RenderSettings.model_fields) - ENGINE_KEYS - {"checkpoint"}
# Keys that name files (ICC profiles, signing keys...): an operator's preset may set them, a
# sidecar never (it could make the daemon read any file it can reach).
PATH_KEYS = frozenset(
    k for k in JOB_KEYS if "Path" in str(RenderSettings.model_fields[k].annotation)
)
PRESET_KEYS = JOB_KEYS | {"checkpoint"}
SIDECAR_KEYS = (JOB_KEYS - PATH_KEYS) | {"model"}
DEFAULT_MODEL = "default"
PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class JobSettings(InitOnly, RenderSettings):
    """RenderSettings validated from given values only (no env vars, no files)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)


class JobError(ValueError):
    """Settings a job cannot run with; ``key`` is the offending key (None: the whole file)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def validated(values: dict[str, Any], where: str) -> JobSettings:
    """``values`` as JobSettings; JobError names ``where`` and the first bad key."""
    try:
        return JobSettings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        # A job's keys are flat: the first part names it (a union adds its member's name).
        key = str(error["loc"][0]) if error["loc"] else _blamed(error)
        raise JobError(f"{where}: key {key!r}: {error['msg']}", key) from None


def _blamed(error: Any) -> str:
    """The key a check across several keys blames (core.config.FieldError), else "?"."""
    cause = (error.get("ctx") or {}).get("error")
    return cause.field if isinstance(cause, FieldError) else "?"


def check_presets(presets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each preset's name, keys and values, checked alone (DaemonSettings' validator);
    the error names the preset and the key. Checkpoints become absolute and must exist."""
    checked: dict[str, dict[str, Any]] = {}
    for name, values in presets.items():
        if not PRESET_NAME.fullmatch(name) or name == DEFAULT_MODEL:
            raise ValueError(
                f"preset {name!r}: a name of lower-case letters, digits, '_' and '-' "
                f"(it is the inbox folder), not {DEFAULT_MODEL!r}"
            )
        if not isinstance(values, dict):
            raise ValueError(f"preset {name!r}: must be a table of settings")
        for key in values:
            if key not in PRESET_KEYS:
                known = ", ".join(sorted(PRESET_KEYS))
                raise ValueError(f"preset {name!r}: unknown key {key!r} (known: {known})")
        try:
            job = validated(dict(values), f"preset {name!r}")
        except JobError as exc:
            raise ValueError(str(exc)) from None
        values = dict(values)
        if "checkpoint" in values:
            if not job.checkpoint.exists():
                raise ValueError(
                    f"preset {name!r}: key 'checkpoint': {job.checkpoint} does not exist"
                )
            values["checkpoint"] = str(job.checkpoint)
        checked[name] = values
    return checked
