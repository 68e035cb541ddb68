"""artd's own checkpoint format: a plain safetensors file with two metadata keys.

The header's ``__metadata__`` holds ``"artd"`` (the :class:`CheckpointMeta` as JSON) and
``"artd_data_sha256"`` (the SHA-256 of the tensor data region, so flipped bits in the weights
are caught, not served). Any safetensors reader opens the file; only artd checks the hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from core.checkpoint.meta import CheckpointError, CheckpointMeta, is_int

META_KEY = "artd"
DATA_SHA256_KEY = "artd_data_sha256"
# safetensors' own limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000


def looks_like_safetensors(data: bytes) -> bool:
    """A length prefix of a plausible size followed by the header's ``{`` (or nothing yet)."""
    # A cut right after the length prefix is still recognisably (truncated) safetensors.
    if len(data) >= 8 and data[8:9] in (b"{", b""):
        header_len = int.from_bytes(data[:8], "little")
        return 2 <= header_len <= MAX_HEADER_BYTES
    return False


def serialize(tensors: dict[str, torch.Tensor], meta_json: str, target: Path) -> bytes:
    """The file's bytes: ``tensors`` (contiguous CPU, no shared storage) and the metadata."""
    metadata = {"format": "pt", META_KEY: meta_json}
    # The data region does not depend on the header, so a first pass gives its checksum.
    draft = safetensors.torch.save(tensors, metadata=metadata)
    data_sha = hashlib.sha256(_data_region(draft)).hexdigest()
    blob = safetensors.torch.save(tensors, metadata={**metadata, DATA_SHA256_KEY: data_sha})
    if hashlib.sha256(_data_region(blob)).hexdigest() != data_sha:
        raise CheckpointError("safetensors laid out the tensor data differently twice", target)
    return blob


def _data_region(blob: bytes) -> bytes:
    header_len = int.from_bytes(blob[:8], "little")
    return blob[8 + header_len :]


def parse(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Tensors and metadata of a whole file; CheckpointError for a cut, edited or foreign one."""
    header_len = int.from_bytes(data[:8], "little")
    data_start = 8 + header_len
    header = _parse_header(data, label)
    needed = _data_bytes_needed(header)
    if needed is not None and len(data) - data_start < needed:
        raise CheckpointError(
            f"truncated safetensors file: header describes {needed} bytes of tensor data, "
            f"only {len(data) - data_start} present",
            label,
        )
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(META_KEY), str):
        raise CheckpointError(
            f"safetensors file without {META_KEY!r} metadata: not an artd checkpoint", label
        )
    try:
        meta = CheckpointMeta.from_dict(json.loads(metadata[META_KEY]))
    except ValueError as exc:
        raise CheckpointError(f"invalid artd metadata: {exc}", label) from exc
    recorded = metadata.get(DATA_SHA256_KEY)
    if not isinstance(recorded, str):
        raise CheckpointError(f"safetensors file lacks {DATA_SHA256_KEY!r}", label)
    try:
        state_dict = safetensors.torch.load(data)
    except Exception as exc:  # the Rust parser raises its own error types
        raise CheckpointError(f"corrupt safetensors file: {exc}", label) from exc
    if hashlib.sha256(data[data_start:]).hexdigest() != recorded:
        raise CheckpointError(
            "tensor data does not match its recorded SHA-256 (corrupted or edited file)", label
        )
    return state_dict, meta


def _parse_header(data: bytes, label: str) -> dict[str, Any]:
    header_len = int.from_bytes(data[:8], "little")
    data_start = 8 + header_len
    if len(data) < data_start:
        raise CheckpointError(
            f"truncated safetensors file: header claims {header_len} bytes, "
            f"only {len(data) - 8} follow",
            label,
        )
    try:
        header = json.loads(data[8:data_start])
    except ValueError as exc:
        raise CheckpointError(f"corrupt safetensors header (not valid JSON: {exc})", label) from exc
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not a JSON object)", label)
    return header


def _data_bytes_needed(header: dict[str, Any]) -> int | None:
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and is_int(offsets[1])):
            return None  # malformed: let safetensors' parser describe it
        ends.append(offsets[1])
    return max(ends, default=0)
