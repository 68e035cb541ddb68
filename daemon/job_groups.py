"""Job groups: what claims must share to be batched together, and each group's settings.

A claim carries the settings fixed at its claim (``claim.job``: daemon.settings.jobs). Claims of
one model and one set of settings form a group; the hot path (daemon.pipeline) decodes,
batches, runs and encodes by group, and :class:`JobGroups` builds each group's decode and
output settings once, not per file. A claim without a job is the daemon's own group.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.diffusion.sampler_settings import SamplerRequest
from core.images.colour import ColourPolicy
from core.outputs.settings import OutputSettings
from daemon.decoders import DecodeSettings
from daemon.settings import DaemonSettings, JobSettings
from daemon.spool import Claim

MAX_GROUPS = 256  # (model, settings) groups whose settings are kept; beyond, rebuilt on demand
Group = tuple[str, str]  # (checkpoint, settings as sorted JSON): what a batch shares
T = TypeVar("T")


@dataclass(frozen=True)
class JobOutput(OutputSettings):
    """OutputSettings that also record the job's settings and where they came from."""

    job: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def recorded(self) -> dict[str, object]:
        if not self.job:
            return super().recorded()
        return super().recorded() | {
            "job": self.job.get("settings", {}),
            "model_name": self.job.get("model"),
            "preset": self.job.get("preset"),
            "sidecar": self.job.get("sidecar"),
        }


class JobView:
    """A job's settings (validated again, typed) over the daemon's for what a job does not
    set (``background``): what ``OutputSettings.from_settings`` reads."""

    def __init__(self, job: dict[str, Any], daemon: DaemonSettings) -> None:
        self._job = JobSettings(**job["settings"])
        self._keys = set(job["settings"])
        self._daemon = daemon

    def __getattr__(self, name: str) -> Any:
        if name in self._keys:
            return getattr(self._job, name)
        return getattr(self._daemon, name)


def job_output(job: dict[str, Any], daemon: DaemonSettings) -> JobOutput:
    """The OutputSettings of a job: every output field from its settings, through the one
    constructor core.runtime.img2img has for settings (new output fields need no code here)."""
    return JobOutput.from_settings(JobView(job, daemon), job=job)  # type: ignore[return-value]


def job_sampler_request(job: dict[str, Any]) -> SamplerRequest:
    """The sampler settings a job asked for (unset: its model's recommendation)."""
    s = job["settings"]
    working = s.get("working_size", "auto")
    return SamplerRequest(
        strength=s.get("strength"),
        steps=s.get("steps"),
        eta=s.get("eta"),
        seed=s.get("seed"),
        working_size=None if working == "auto" else working,
        refine=s.get("refine"),
    )


def decode_settings(settings: DaemonSettings | JobView) -> DecodeSettings:
    """How a file is decoded for the daemon's defaults or for one job's settings."""
    return DecodeSettings(
        size=settings.size,
        resize=settings.resize,
        max_pixels=settings.max_pixels,
        background=settings.background_rgb,
        colour=ColourPolicy(
            manage=settings.colour_management,
            intent=settings.colour_intent,
            cmyk_profile=None if settings.cmyk_profile is None else str(settings.cmyk_profile),
        ),
        keep_alpha=settings.keep_alpha,
    )


class JobGroups:
    """Each claim's group, and the group's decode and output settings, built once per group
    (at most :data:`MAX_GROUPS` kept). ``default_checkpoint`` is the daemon's own model."""

    def __init__(self, settings: DaemonSettings, default_checkpoint: str) -> None:
        self.settings = settings
        self.default_checkpoint = default_checkpoint
        self._outputs: dict[Group, JobOutput] = {}
        self._decodes: dict[Group, DecodeSettings] = {}

    def group(self, claim: Claim) -> Group:
        """What a claim's batch-mates must share: the model and every setting."""
        if claim.job is None:
            return (self.default_checkpoint, "")
        return (claim.job["checkpoint"], json.dumps(claim.job["settings"], sort_keys=True))

    def decode_settings(self, claim: Claim) -> DecodeSettings:
        """How a job's file is decoded (built once per group, like its output settings)."""

        def build() -> DecodeSettings:
            return decode_settings(JobView(claim.job, self.settings))

        return _once_per_group(self._decodes, self.group(claim), build)

    def output(self, claim: Claim) -> JobOutput:
        """The job's OutputSettings (built once per group), recording this claim's sources."""
        build = functools.partial(job_output, claim.job, self.settings)
        base = _once_per_group(self._outputs, self.group(claim), build)
        return dataclasses.replace(base, job=claim.job)

    def recorded(self, claim: Claim) -> dict[str, object]:
        """The job's settings as a quarantine records them; never raises."""
        try:
            return self.output(claim).recorded()
        except Exception as exc:  # a quarantine must not fail on its details
            return {"job": claim.job, "error": str(exc)}


def _once_per_group(cache: dict[Group, T], group: Group, build: Callable[[], T]) -> T:
    """``cache[group]``, built on first use; the cache is emptied when it holds
    :data:`MAX_GROUPS` groups (a flood of distinct sidecars must not grow it without bound)."""
    value = cache.get(group)
    if value is None:
        if len(cache) >= MAX_GROUPS:
            cache.clear()
        value = cache[group] = build()
    return value
