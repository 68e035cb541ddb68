"""A claimed file's job (``Resolver``): the defaults, then its folder's preset, then its sidecar.

The result of :meth:`Resolver.resolve` is fixed at claim time in the claim record ("job"),
so a restart, a hot reload or a changed preset never changes what a claimed file gets. What
each may set: daemon.settings.presets; reading a sidecar's bytes: daemon.sidecars.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from core.outputs.encoding import OUTPUT_FORMATS
from daemon import sidecars
from daemon.settings.daemon import DaemonSettings
from daemon.settings.presets import (
    DEFAULT_MODEL,
    JOB_KEYS,
    PATH_KEYS,
    SIDECAR_KEYS,
    JobError,
    JobSettings,
    validated,
)


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
        self.resolved = {DEFAULT_MODEL: _jsonable(validated(dict(self.defaults), "defaults"))}
        for name, values in self.presets.items():
            merged = self.defaults | {k: v for k, v in values.items() if k in JOB_KEYS}
            self.resolved[name] = _jsonable(validated(merged, f"preset {name!r}"))

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
            settings = _jsonable(validated(settings | values, where))
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
