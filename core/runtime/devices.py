"""Device choice and what each device computes natively: shared by inference and training."""

from __future__ import annotations

import torch


def pick_device(spec: str = "auto", index: int | None = None) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU; anything else is taken as given.

    ``index`` picks the GPU when the spec names none (torchrun's LOCAL_RANK).
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", index or 0)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", index or 0)
    return device


def native_reduced_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision this device computes natively, if any."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            # True on CPUs with AVX512-BF16 / AMX; emulated bf16 elsewhere is slower than fp32.
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):
            return None
    return None
