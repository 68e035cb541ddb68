"""Importing checkpoints written by the post's training script (docs/post.md).

They are bare ``state_dict`` files written by ``torch.save``, read here with
``torch.load(weights_only=True)`` and nothing else: a pickle that asks to import or call
anything beyond tensors and containers is refused, never run. Wrapped variants seen in the
wild are accepted: keys prefixed ``module.`` (DataParallel/DDP) or ``_orig_mod.``
(``torch.compile``) have the prefix stripped, and ``{"state_dict": sd}``, ``{"model_state_dict":
sd}`` or ``{"model": sd, "optimizer": ...}`` dicts have the nested state_dict taken out. The
post wrote no metadata; :func:`post_meta` gives the import what its script implies.
"""

from __future__ import annotations

import io
import pickle
import re
from datetime import UTC, datetime
from pathlib import Path

import torch
from loguru import logger

from core.checkpoint.meta import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMeta,
    imagenet_normalization,
)
from core.checkpoint.weights import few, strip_wrapper_prefixes
from core.network.model import ARCHITECTURE
from core.network.space import POST_IMAGE_SPACE

# The post's script trained on 128x128 stretched images.
POST_TRAIN_SIZE = 128
# The ``code_version`` an import records. Saved again in artd's format, it is on disk, so the
# value keeps the project's old word for the post.
POST_CODE_VERSION = "seed"
NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# torch's weights-only unpickler messages that mean "this pickle wants to run code".
_REFUSAL_MARKERS = (
    "was not an allowed global",
    "is blocked",
    "unrecognized function",
    "Can only create new object",
    "must be imported to load",
)


def looks_like_torch_file(data: bytes) -> bool:
    """A zip archive (torch >= 1.6) or a bare pickle (protocol 2+ starts with 0x80)."""
    return data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"


def load_post(
    data: bytes, real: Path, label: str
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The state_dict in a torch file's bytes and the post's metadata for it."""
    try:
        # weights_only=True, passed explicitly, is what keeps a pickle from running code;
        # there is deliberately no fallback to a full unpickle.
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if any(marker in text for marker in _REFUSAL_MARKERS):
            culprit = re.search(r"GLOBAL (\S+)", text)
            what = f" (it asks for {culprit.group(1)})" if culprit else ""
            raise CheckpointError(
                "refused: the torch file holds objects other than tensors, whose loading could "
                f"run code{what}; only plain state_dicts are accepted",
                label,
            ) from None
        raise CheckpointError(f"unreadable torch file: {_torch_reason(text)}", label) from None
    except Exception as exc:  # truncated zips, bad magic numbers, ...: torch raises many types
        raise CheckpointError(
            f"unreadable torch file: {type(exc).__name__}: {_torch_reason(str(exc))}", label
        ) from exc
    state_dict = _extract_state_dict(loaded, label)
    state_dict = strip_wrapper_prefixes(state_dict, label)
    state_dict = {k: v.detach() for k, v in state_dict.items()}
    return state_dict, post_meta(real)


def _torch_reason(text: str) -> str:
    """The useful part of torch's error text, without its advice boilerplate."""
    chunks = [c.strip() for c in text.split("\n\n") if c.strip()]
    useful = [
        c
        for c in chunks
        if not c.startswith(("Weights only load failed", "Check the documentation"))
    ]
    reason = useful[-1].splitlines()[0] if useful else "(no detail)"
    return reason if len(reason) <= 200 else reason[:200] + "..."


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _extract_state_dict(loaded: object, label: str) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(loaded):
        return dict(loaded)  # type: ignore[call-overload]
    if isinstance(loaded, dict):
        for key in NESTED_STATE_DICT_KEYS:
            if _is_tensor_dict(loaded.get(key)):
                logger.debug("{}: using the state_dict nested under {!r}", label, key)
                return dict(loaded[key])
        keys = few(sorted(repr(k) for k in loaded))
        raise CheckpointError(
            f"torch file holds a dict (keys {keys}) with no state_dict of tensors in it", label
        )
    raise CheckpointError(f"torch file holds a {type(loaded).__name__}, not a state_dict", label)


def post_meta(real: Path) -> CheckpointMeta:
    """The post's recipe as metadata: the post's image space, 128 stretched, ImageNet
    normalisation, and the epoch from a name like ``model_epoch_150.pth`` when present."""
    epoch_match = re.search(r"epoch[_-]?(\d+)", real.name)
    mtime = datetime.fromtimestamp(real.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return CheckpointMeta(
        architecture=ARCHITECTURE,
        image_space=POST_IMAGE_SPACE,
        train_size=POST_TRAIN_SIZE,
        resize="stretch",
        normalization=imagenet_normalization(),
        epoch=int(epoch_match.group(1)) if epoch_match else None,
        metrics={},
        dataset_hash=None,
        code_version=POST_CODE_VERSION,
        created=mtime,
        settings={},
        format_version=FORMAT_VERSION,
    )
