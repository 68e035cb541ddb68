"""What every output says about itself: AI-made, by which model, from which input.

The seed's ethics section asks that AI-made art be transparent about being AI-made; the
daemon and ``artd process`` both embed these fields in the files they write.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import core
from core.checkpoint import Checkpoint


def provenance(
    checkpoint: Checkpoint, input_sha256: str, settings: dict[str, object]
) -> dict[str, str]:
    """Text fields for the output's metadata (PNG text chunks, JPEG comment, WebP XMP)."""
    meta = checkpoint.meta
    return {
        "ai_generated": "true",
        "Software": f"artd {core.__version__}",
        "artd:model": checkpoint.version,
        "artd:model_sha256": checkpoint.sha256,
        "artd:model_epoch": "" if meta.epoch is None else str(meta.epoch),
        "artd:input_sha256": input_sha256,
        "artd:created": datetime.now(UTC).isoformat(timespec="seconds"),
        "artd:settings": json.dumps(settings, sort_keys=True),
    }
