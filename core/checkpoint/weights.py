"""The weights themselves: checking a state_dict against ConvDiffusionModel, undoing the
wrappers training tools add to its keys, and building the model from a loaded checkpoint.

Both formats (safetensors and the post's torch files) go through these, on save and on load.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from loguru import logger

from core.checkpoint.meta import Checkpoint, CheckpointError
from core.network.model import ARCHITECTURE, ConvDiffusionModel, expected_shapes

# Wrapper prefixes stripped from every key when all keys carry them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_LIST_LIMIT = 5


def few(items: list[str]) -> str:
    """The first few items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"{shown} (and {more} more)" if more > 0 else shown


def validate_state_dict(
    state_dict: dict[str, Any],
    source: str | os.PathLike[str],
    decoder: str = "transpose",
    guide_channels: int = 0,
) -> None:
    """Check keys, shapes, dtypes and finiteness against
    ConvDiffusionModel(decoder, guide_channels).

    Raises CheckpointError naming ``source`` and every kind of problem found (a few examples
    of each).
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"expected a state_dict, got {type(state_dict).__name__}", source)
    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"entries that are not tensors: {few(not_tensors)}", source)
    expected = expected_shapes(decoder, guide_channels)
    problems: list[str] = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(str(k) for k in set(state_dict) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    problems += _tensor_problems(state_dict, expected)
    first = state_dict.get("enc1.0.weight")
    if problems and isinstance(first, torch.Tensor) and first.dim() == 4:
        extra = first.shape[1] - 3
        if extra > 0 and extra != guide_channels:
            problems.append(
                f"the weights take {extra} guide channels where the metadata's guide gives "
                f"{guide_channels}: a guided network whose metadata lacks or misstates its guide"
            )
    if problems:
        parts = [] if decoder == "transpose" else [f"{decoder} decoder"]
        parts += [f"{guide_channels} guide channels"] if guide_channels else []
        variant = f" ({', '.join(parts)})" if parts else ""
        raise CheckpointError(
            f"not valid {ARCHITECTURE}{variant} weights: " + "; ".join(problems), source
        )


def _tensor_problems(
    state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]
) -> list[str]:
    """Shape, dtype and finiteness problems of the entries the model expects."""
    mismatched: list[str] = []
    wrong_dtype: list[str] = []
    non_finite: list[str] = []
    for key in sorted(set(expected) & set(state_dict)):
        tensor = state_dict[key]
        if tuple(tensor.shape) != expected[key]:
            mismatched.append(f"{key} expected {expected[key]} got {tuple(tensor.shape)}")
            continue
        if _is_float_key(key) and not tensor.is_floating_point():
            wrong_dtype.append(f"{key} is {tensor.dtype}")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            non_finite.append(key)
    problems: list[str] = []
    if mismatched:
        problems.append(f"shape mismatch: {few(mismatched)}")
    if wrong_dtype:
        problems.append(f"not floating point: {few(wrong_dtype)}")
    if non_finite:
        problems.append(f"non-finite values (NaN/inf) in: {few(non_finite)}")
    return problems


def _is_float_key(key: str) -> bool:
    # BatchNorm's step counter is the model's only integer entry.
    return not key.endswith("num_batches_tracked")


def strip_wrapper_prefixes(state_dict: dict[str, Any], source: object) -> dict[str, Any]:
    """Drop ``module.`` / ``_orig_mod.`` when every key carries it (DDP, torch.compile)."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                logger.debug("{}: stripped key prefix {!r}", source, prefix)
                changed = True
    return state_dict


def build_model(ckpt: Checkpoint) -> ConvDiffusionModel:
    """A ConvDiffusionModel on the CPU, in eval mode, loaded with ``strict=True``."""
    if ckpt.meta.architecture != ARCHITECTURE:
        raise CheckpointError(
            f"checkpoint is for architecture {ckpt.meta.architecture!r}, not {ARCHITECTURE}",
            ckpt.path,
        )
    model = ConvDiffusionModel(ckpt.meta.decoder, ckpt.meta.guide_channels)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model: {exc}", ckpt.path) from exc
    return model.eval()
