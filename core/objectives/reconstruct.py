"""The ``reconstruct`` objective, the post's: the network re-renders its input image.

The input is the image, normalised with ImageNet's statistics; the target is the image; the
loss is MSE plus the VGG16 perceptual term; served in one pass (``SinglePass``). Checkpoints
written before objectives existed are this one. Everything it does is the one-pass default
of :class:`core.objectives.base.Objective`.
"""

from __future__ import annotations

from core.objectives.base import Objective


class Reconstruct(Objective):
    """The image in, the image out (the post's recipe)."""

    name = "reconstruct"
    summary = "reconstruct (the post's recipe)"
