"""Presets and per-job settings: defaults, then the folder's preset, then the sidecar.

What a preset or a sidecar may set is derived from ``RenderSettings`` (one validation model
for defaults, presets and sidecars): every render field except the daemon-wide engine ones
(:data:`ENGINE_KEYS`) is a key, so an output field added to ``RenderSettings`` is a preset
and sidecar key without more code. A preset may also name a ``checkpoint`` (a path, written
by the operator); a sidecar, written by anyone who can drop a file, may only name a model,
``model = "<preset name>"`` or ``"default"``, never a path, a folder or an output name.

The result of :meth:`Resolver.resolve` is fixed at claim time in the claim record ("job"),
so a restart, a hot reload or a changed preset never changes what a claimed file gets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from core.config import InitOnly
from core.outputs.encoding import OUTPUT_FORMATS
from daemon import sidecars
from daemon.settings import DaemonSettings, RenderSettings

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


def _validated(values: dict[str, Any], where: str) -> JobSettings:
    try:
        return JobSettings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        # A job's keys are flat: the first part names it (a union adds its member's name).
        key = str(error["loc"][0]) if error["loc"] else "?"
        raise JobError(f"{where}: key {key!r}: {error['msg']}", key) from None


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
            job = _validated(dict(values), f"preset {name!r}")
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


def _jsonable(job: JobSettings) -> dict[str, Any]:
    return json.loads(job.model_dump_json(include=set(JOB_KEYS)))


class Resolver:
    """Resolves a claimed file's settings from the daemon's settings (fixed at start)."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.default_checkpoint = str(settings.checkpoint)
        self.defaults = {k: getattr(settings, k) for k in JOB_KEYS}
        self.presets = settings.presets
        self.checkpoints = {DEFAULT_MODEL: self.default_checkpoint} | {
            name: values.get("checkpoint", self.default_checkpoint)
            for name, values in self.presets.items()
        }
        # Each preset resolved once, against the defaults (a bad combination fails here).
        self.resolved = {DEFAULT_MODEL: _jsonable(_validated(dict(self.defaults), "defaults"))}
        for name, values in self.presets.items():
            merged = self.defaults | {k: v for k, v in values.items() if k in JOB_KEYS}
            self.resolved[name] = _jsonable(_validated(merged, f"preset {name!r}"))

    def preset_of(self, rel: PurePosixPath) -> str | None:
        """The preset of ``inbox/<rel>``: its top folder's, if that names one."""
        if len(rel.parts) > 1 and rel.parts[0] in self.presets:
            return rel.parts[0]
        return None

    def describe(self) -> dict[str, Any]:
        """What ``artd check`` prints: every preset (and the defaults), resolved."""
        return {
            name: {
                "checkpoint": self.checkpoints[name],
                "folder": "" if name == DEFAULT_MODEL else f"inbox/{name}/",
                "settings": values,
            }
            for name, values in self.resolved.items()
        }

    def resolve(
        self, rel: PurePosixPath, sidecar: bytes | None, sidecar_rel: str | None = None
    ) -> dict[str, Any]:
        """The job of ``inbox/<rel>``: ``settings`` (every job key), ``checkpoint``,
        ``model``, ``preset``, ``sidecar`` and ``output_ext``. JobError names the key."""
        preset = self.preset_of(rel)
        base_name = preset or DEFAULT_MODEL
        settings = dict(self.resolved[base_name])
        model = base_name
        if sidecar is not None:
            where = f"sidecar {sidecar_rel or sidecars.sidecar_name(rel.name)}"
            try:
                values = sidecars.parse(sidecar)
            except sidecars.SidecarError as exc:
                raise JobError(f"{where}: {exc}") from None
            for key in values:
                if key == "checkpoint":
                    raise JobError(
                        f"{where}: key 'checkpoint': a sidecar names a model by 'model' "
                        f"(one of {sorted(self.checkpoints)}), never by path",
                        key,
                    )
                if key in PATH_KEYS:
                    raise JobError(f"{where}: key {key!r}: a sidecar never names a file", key)
                if key not in SIDECAR_KEYS:
                    raise JobError(
                        f"{where}: unknown key {str(key)[:80]!r} (known: "
                        f"{', '.join(sorted(SIDECAR_KEYS))})",
                        str(key)[:80],
                    )
            if "model" in values:
                model = values.pop("model")
                if not isinstance(model, str) or model not in self.checkpoints:
                    raise JobError(
                        f"{where}: key 'model': {str(model)[:80]!r} is not a configured model "
                        f"(one of {sorted(self.checkpoints)})",
                        "model",
                    )
            settings = _jsonable(_validated(settings | values, where))
        return {
            "settings": settings,
            "checkpoint": self.checkpoints[model],
            "model": model,
            "preset": preset,
            "sidecar": sidecar_rel if sidecar is not None else None,
            "output_ext": OUTPUT_FORMATS[settings["output_format"]],
        }


def resolved_checkpoints(settings: DaemonSettings) -> dict[str, Path]:
    """Model name -> checkpoint path: ``default`` and every preset's."""
    return {name: Path(path) for name, path in Resolver(settings).checkpoints.items()}
