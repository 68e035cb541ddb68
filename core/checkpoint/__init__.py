"""Checkpoints: what weights are, how they are stored, imported, validated and served.

- ``meta``: :class:`CheckpointMeta` (the metadata every checkpoint records, its
  ``normalization`` and ``image_space`` read by ``core.network.space``), :class:`Checkpoint`,
  :class:`ModelIdentity` (which weights, without them: what provenance records),
  :class:`CheckpointError`.
- ``weights``: :func:`validate_state_dict` against ConvDiffusionModel, wrapper prefixes,
  :func:`build_model`.
- ``safetensors_format``: artd's own format, a safetensors file with the metadata and a
  checksum of the tensor data in its header.
- ``post``: importing the post script's ``.pth`` files with ``torch.load(weights_only=True)``.
- ``files``: :func:`save_checkpoint` (atomic, through ``core.durable``), :func:`load_checkpoint`
  (decides the kind by content, never by extension), :func:`resolve_current`.
- ``pointer``: :func:`promote`, which moves the ``current`` symlink atomically.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from core.checkpoint.meta import (
    FORMAT_VERSION,
    IMAGE_SPACES,
    RESIZE_POLICIES,
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    ModelIdentity,
)

if TYPE_CHECKING:
    from core.checkpoint.files import load_checkpoint, resolve_current, save_checkpoint
    from core.checkpoint.pointer import promote
    from core.checkpoint.safetensors_format import DATA_SHA256_KEY, META_KEY
    from core.checkpoint.weights import build_model, validate_state_dict

# The names whose modules import torch, imported on first use: the daemon's service reads
# metadata (``meta``) and must not load torch, which only its model workers need.
_LAZY = {
    "load_checkpoint": "files",
    "resolve_current": "files",
    "save_checkpoint": "files",
    "promote": "pointer",
    "DATA_SHA256_KEY": "safetensors_format",
    "META_KEY": "safetensors_format",
    "build_model": "weights",
    "validate_state_dict": "weights",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DATA_SHA256_KEY",
    "FORMAT_VERSION",
    "IMAGE_SPACES",
    "META_KEY",
    "RESIZE_POLICIES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMeta",
    "ModelIdentity",
    "build_model",
    "load_checkpoint",
    "promote",
    "resolve_current",
    "save_checkpoint",
    "validate_state_dict",
]
