"""Resize policies and pixel conversions: target sizes, the post's resize, tensors, arrays.

Torch is imported inside the tensor functions only, so decoder processes never pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from core.network.shapes import INPUT_SIZE

if TYPE_CHECKING:
    import torch

ResizePolicy = Literal["fit", "stretch"]


def target_size(
    width: int, height: int, size: int | str, policy: ResizePolicy = "fit"
) -> tuple[int, int]:
    """The (w, h) a ``width`` x ``height`` image is resized to under ``policy``; ``size``
    ``"input"`` keeps the image's own size, each side rounded down to a multiple of 8."""
    if size == INPUT_SIZE:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        return max(8, width // 8 * 8), max(8, height // 8 * 8)
    if not isinstance(size, int) or size <= 0 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {size!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if policy == "stretch":
        return size, size
    if policy != "fit":
        raise ValueError(f"unknown resize policy {policy!r} (expected 'fit' or 'stretch')")
    longest = max(width, height)
    # Exact integer round-half-up of side * size / longest to a multiple of 8.
    w, h = (max(8, (2 * n * size + 8 * longest) // (16 * longest) * 8) for n in (width, height))
    return w, h


def resize(img: Image.Image, size: int | str, policy: ResizePolicy = "fit") -> Image.Image:
    """Bilinear (antialiased) resize, identical to torchvision's ``Resize`` on a PIL image.

    No ``reducing_gap``: it would change pixels and break parity with the post.
    Returns ``img`` itself when it already has the target size.
    """
    new_size = target_size(img.width, img.height, size, policy)
    if new_size == img.size:
        return img
    return img.resize(new_size, Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """float32 CHW in 0..1, the same values as torchvision's ``ToTensor``."""
    import torch  # here, not at the top: decoder processes never pay torch's import

    arr = to_uint8_array(img)
    out = torch.empty((3, arr.shape[0], arr.shape[1]), dtype=torch.float32)
    out.numpy()[...] = arr.transpose(2, 0, 1)  # cast and transpose in one pass
    return out.div_(255)


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """HWC uint8 RGB; read-only when ``img`` is already RGB (no copy is made)."""
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def from_tensor(t: torch.Tensor) -> Image.Image:
    """An RGB image from CHW (or 1xCHW) 0..1, rounded exactly as torchvision's ``save_image``."""
    import torch

    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected a CHW tensor with 1 or 3 channels, got {tuple(t.shape)}")
    t = t.detach().float().mul(255).add_(0.5).clamp_(0, 255)
    arr = t.permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
