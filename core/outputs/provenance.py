"""What every output says about itself: AI-made, by which model, from which input, how.

The post's ethics section asks that AI-made art be transparent about being AI-made; the
daemon, ``artd process`` and ``artd generate`` all embed these fields in the files they
write. A denoise checkpoint's outputs also record the sampler settings that made them
(``artd:sampler``: strength, steps, eta and seed, where a null seed means the noise was
seeded from the input's content hash and the other settings, core.diffusion.schedule.image_seed).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import core
from core.checkpoint import Checkpoint, ModelIdentity
from core.diffusion.sampler_settings import SamplerSettings


def provenance(
    model: Checkpoint | ModelIdentity,
    input_sha256: str,
    settings: dict[str, object],
    *,
    sampler_settings: SamplerSettings | None = None,
    source: str | None = None,
) -> dict[str, str]:
    """Text fields for the output's metadata (PNG text chunks, JPEG comment, WebP XMP).

    ``model``: the checkpoint, or only its identity (what a model worker reports: the
    service labels results computed in another process);
    ``sampler_settings``: the effective settings of a denoise checkpoint (None for one pass);
    ``source``: what the output was made from when it is not an input file (generation
    from noise records its ``generate:<seed>:<index>`` label and an empty input hash)."""
    identity = model.identity if isinstance(model, Checkpoint) else model
    fields = {
        "ai_generated": "true",
        "Software": f"artd {core.__version__}",
        "artd:model": identity.version,
        "artd:model_sha256": identity.sha256,
        "artd:model_epoch": "" if identity.epoch is None else str(identity.epoch),
        "artd:objective": identity.objective,
        "artd:input_sha256": input_sha256,
        "artd:created": datetime.now(UTC).isoformat(timespec="seconds"),
        "artd:settings": json.dumps(settings, sort_keys=True),
    }
    if sampler_settings is not None:
        fields["artd:sampler"] = json.dumps(sampler_settings.to_dict(), sort_keys=True)
    if source is not None:
        fields["artd:source"] = source
    return fields
