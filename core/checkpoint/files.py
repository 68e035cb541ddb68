"""Saving and loading checkpoint files: content sniffing, validation, atomic writes.

The kind of file is decided by its content, never by its extension: artd's safetensors
format (``safetensors_format``) or a torch file from the post's script (``post``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import torch
from loguru import logger

from core.checkpoint import post, safetensors_format
from core.checkpoint.meta import Checkpoint, CheckpointError, CheckpointMeta
from core.checkpoint.weights import strip_wrapper_prefixes, validate_state_dict
from core.durable import open_regular, write_atomic
from core.network.model import ARCHITECTURE

# ConvDiffusionModel weighs about 5 MB; anything near this is not one of ours.
MAX_CHECKPOINT_BYTES = 1 << 30


def save_checkpoint(
    path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: CheckpointMeta
) -> Path:
    """Validate and write weights + metadata as one safetensors file, atomically.

    Refuses (CheckpointError) anything :func:`load_checkpoint` would refuse: bad keys, shapes,
    NaN weights, invalid metadata, non-finite metrics. The parent folder must exist.
    ``settings`` values that JSON cannot hold (paths, ...) are stored as strings.
    """
    target = Path(path)
    tensors = strip_wrapper_prefixes(dict(state_dict), target)
    meta_dict = meta.to_dict()
    try:
        checked = CheckpointMeta.from_dict(meta_dict)
        meta_json = json.dumps(meta_dict, sort_keys=True, allow_nan=False, default=str)
    except ValueError as exc:
        raise CheckpointError(f"invalid metadata: {exc}", target) from exc
    if checked.architecture != ARCHITECTURE:
        raise CheckpointError(
            f"metadata says architecture {checked.architecture!r}, weights are {ARCHITECTURE}",
            target,
        )
    validate_state_dict(tensors, target, checked.decoder, checked.guide_channels)
    # Clones: contiguous CPU tensors that share no storage, which safetensors requires.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    blob = safetensors_format.serialize(tensors, meta_json, target)
    try:
        write_atomic(target, blob)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint: {exc}", target) from exc
    logger.info("saved checkpoint {} ({} bytes, epoch {})", target, len(blob), meta.epoch)
    return target


def resolve_current(path: str | os.PathLike[str]) -> Path:
    """The real file behind a pointer such as ``checkpoints/current`` (all links followed)."""
    given = Path(path)
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError as exc:
        target = os.readlink(given) if given.is_symlink() else None
        detail = f"points to {target}, which does not exist" if target else "does not exist"
        raise CheckpointError(detail, given) from exc
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise CheckpointError(f"cannot resolve path: {exc}", given) from exc
    return real


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load and validate weights onto the CPU. Follows symlinks; sniffs the content.

    Our safetensors files give their own metadata; torch files (zip or legacy) are the post's
    checkpoints, imported with ``image_space="seed"`` (the post's image space),
    ``train_size=128``, ``resize="stretch"`` and the epoch taken from a name like
    ``model_epoch_150.pth`` when present.
    """
    given = Path(path)
    real = resolve_current(given)
    label = str(given) if real == given.absolute() else f"{given} -> {real}"
    data = _read_checkpoint_bytes(real, label)
    if not data:
        raise CheckpointError("empty file, not a checkpoint", label)
    # safetensors first: its length prefix may well start with 0x80 (a header of 384 bytes).
    if safetensors_format.looks_like_safetensors(data):
        state_dict, meta = safetensors_format.parse(data, label)
    elif post.looks_like_torch_file(data):
        state_dict, meta = post.load_post(data, real, label)
    else:
        raise CheckpointError(
            f"not a checkpoint (content is neither safetensors nor a torch file; "
            f"starts with {data[:8]!r})",
            label,
        )
    if meta.architecture != ARCHITECTURE:
        raise CheckpointError(
            f"checkpoint is for architecture {meta.architecture!r}, this artd runs {ARCHITECTURE}",
            label,
        )
    validate_state_dict(state_dict, label, meta.decoder, meta.guide_channels)
    checkpoint = Checkpoint(
        path=real, state_dict=state_dict, meta=meta, sha256=hashlib.sha256(data).hexdigest()
    )
    logger.debug("loaded checkpoint {} ({}, {})", label, checkpoint.version, meta.image_space)
    return checkpoint


def _read_checkpoint_bytes(real: Path, label: str) -> bytes:
    try:
        # Regular files only: opening a FIFO or a device would block or stream forever.
        with open_regular(real) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(
                    f"{size} bytes is far too large for a {ARCHITECTURE} checkpoint", label
                )
            return handle.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # open_regular's "not a regular file"
            raise CheckpointError("not a regular file", label) from exc
        raise CheckpointError(f"cannot read: {exc}", label) from exc
