"""The daemon's settings, one module per role; every public name is importable from here.

- ``model``: ModelSettings, the model, device and sampler every command shares
- ``output``: OutputOptions, how outputs are written (colour, quality, labels)
- ``render``: RenderSettings, the model plus the images it writes (daemon, jobs, process)
- ``page``: PageSettings, the page and JSON API (the retry token, a secret)
- ``presets``: what a preset or a sidecar may set, and the ``presets`` setting's check
- ``daemon``: DaemonSettings, ``artd run`` and ``artd check`` (``ARTD_*``, TOML, flags)
- ``jobs``: Resolver, a claimed file's job from the defaults, its preset and its sidecar
- ``process``: ProcessSettings, ``artd process`` (flags only)
- ``generate``: GenerateSettings, ``artd generate`` (flags only)

Loading, flags and error messages are core.config's; reading a sidecar's bytes is
daemon.sidecars'. Submodules import each other directly, never this package.
"""

from __future__ import annotations

from daemon.logs import LogSettings
from daemon.settings.daemon import DaemonSettings
from daemon.settings.generate import MAX_GENERATE_COUNT, MAX_GENERATE_SIDE, GenerateSettings
from daemon.settings.jobs import Resolver, resolved_checkpoints
from daemon.settings.model import MAX_SEED, MAX_STEPS, ModelSettings
from daemon.settings.output import OutputOptions
from daemon.settings.page import LOOPBACK_NAMES, MIN_TOKEN_CHARS, PageSettings, is_loopback
from daemon.settings.presets import (
    DEFAULT_MODEL,
    ENGINE_KEYS,
    JOB_KEYS,
    PATH_KEYS,
    PRESET_KEYS,
    PRESET_NAME,
    SIDECAR_KEYS,
    JobError,
    JobSettings,
    check_presets,
)
from daemon.settings.process import ProcessSettings
from daemon.settings.render import RenderSettings

__all__ = [
    "DEFAULT_MODEL",
    "ENGINE_KEYS",
    "JOB_KEYS",
    "LOOPBACK_NAMES",
    "MAX_GENERATE_COUNT",
    "MAX_GENERATE_SIDE",
    "MAX_SEED",
    "MAX_STEPS",
    "MIN_TOKEN_CHARS",
    "PATH_KEYS",
    "PRESET_KEYS",
    "PRESET_NAME",
    "SIDECAR_KEYS",
    "DaemonSettings",
    "GenerateSettings",
    "JobError",
    "JobSettings",
    "LogSettings",
    "ModelSettings",
    "OutputOptions",
    "PageSettings",
    "ProcessSettings",
    "RenderSettings",
    "Resolver",
    "check_presets",
    "is_loopback",
    "resolved_checkpoints",
]
