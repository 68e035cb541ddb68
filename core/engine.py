"""Batched inference: the one API the daemon and ``artd process`` use to run the network.

The engine owns device, precision and memory layout choices so callers only hand it
decoded images. Reduced precision is taken only where the hardware does it natively and a
probe image shows the output stays within tolerance of fp32; otherwise it runs fp32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from PIL import Image

from core.checkpoint import Checkpoint, build_model, load_checkpoint
from core.devices import native_reduced_dtype, pick_device
from core.folded import FoldedModel, stage_dtypes
from core.imaging import from_tensor
from core.model import IMAGENET_MEAN, IMAGENET_STD, SIZE_MULTIPLE

# Outputs must stay within 2/255 of fp32; the probe demands a margin below that.
REDUCED_PRECISION_TOLERANCE = 1.5 / 255
# On CPU small groups stay in cache (batches of 16-32 were slower per image in the bench).
DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 32, "mps": 16}


class InferenceError(Exception):
    """One item could not be run through the model; the rest of its batch is unaffected."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Engine:
    """A loaded checkpoint on a device, ready to turn batches of images into images."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        device: str = "auto",
        precision: str = "auto",
        max_batch: int | None = None,
        cpu_threads: int | None = None,
        compile: bool = False,
    ) -> None:
        self.checkpoint = checkpoint
        self.version = checkpoint.version
        self.device = pick_device(device)
        if self.device.type == "cpu":
            # Half the cores for the model, the rest for decoding and encoding around it:
            # torch's default (all cores) fights the I/O threads and slows both under load.
            torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 2) // 2))
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(self.device.type, 8)
        # channels_last helps convolutions on CPU (oneDNN) and on tensor-core GPUs.
        self.channels_last = self.device.type in ("cpu", "cuda")
        # The seed's module is kept for reference; inference runs a BatchNorm-folded copy
        # per precision (about 1.5x faster on CPU, equal to rounding; see core.folded).
        self.model = build_model(checkpoint).to(self.device)
        self._runners: dict[str, torch.nn.Module] = {}
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(shape)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(shape)
        self._seed_space = checkpoint.meta.image_space == "seed"
        self._compiled: torch.nn.Module | None = None  # the precision probe runs eager
        self.precision = self._choose_precision(precision)
        # The probe built a folded copy per candidate: keep the chosen one and fp32 (the
        # NaN retry's), not the rejected ones.
        self._runners = {p: r for p, r in self._runners.items() if p in (self.precision, "fp32")}
        if compile:
            # Inductor fuses the remaining element-wise passes too, at the price of 10-15 s
            # of compiling for each new input shape: opt-in. It traces plain ATen ops, so the
            # compiled copy does not use the hand-fused oneDNN calls.
            portable = FoldedModel(
                self.model, self.precision, channels_last=self.channels_last, fused=False
            )
            self._compiled = torch.compile(portable, dynamic=True)
        logger.info(
            "engine ready: model {} on {} ({}, channels_last={}, max_batch={}, compiled={})",
            self.version,
            self.device,
            self.precision,
            self.channels_last,
            self.max_batch,
            compile,
        )

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: object) -> Engine:
        return cls(load_checkpoint(Path(path)), **kwargs)  # type: ignore[arg-type]

    # -- precision -------------------------------------------------------------------------

    def _choose_precision(self, precision: str) -> str:
        if precision != "auto":
            stage_dtypes(precision)  # raises ValueError naming the choices
            return precision
        reduced = native_reduced_dtype(self.device)
        if reduced is None:
            return "fp32"
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[reduced]
        # Fastest first: all stages reduced, then only the inner ones (see core.folded).
        for candidate in (name, f"{name}-mixed"):
            error = self._probe_error(candidate)
            if error <= REDUCED_PRECISION_TOLERANCE:  # NaN counts as failing
                return candidate
            logger.info("{} differs from fp32 by {:.2f}/255 on the probe", candidate, error * 255)
        return "fp32"

    def _probe_error(self, precision: str) -> float:
        """Max abs difference to fp32 on a textured probe batch (a smooth one hides errors)."""
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, 64, 64, generator=generator).to(self.device)
        reference = self._forward(probe, "fp32")
        reduced = self._forward(probe, precision)
        return float((reference - reduced).abs().max())

    # -- inference -------------------------------------------------------------------------

    def _forward(self, pixels: torch.Tensor, precision: str) -> torch.Tensor:
        """Pixels 0..1 (N, 3, H, W) in, image 0..1 out, computed in ``precision``."""
        with torch.inference_mode():
            x = (pixels - self._mean) / self._std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = self._run_model(x, precision)
            if self._seed_space:
                # The seed trained against normalized targets and "denormalized" the Sigmoid;
                # its checkpoints only look right with exactly that post-processing.
                y = (y * self._std + self._mean).clamp_(0, 1)
        return y

    def _runner(self, precision: str) -> torch.nn.Module:
        if precision not in self._runners:
            self._runners[precision] = FoldedModel(
                self.model, precision, channels_last=self.channels_last
            )
        return self._runners[precision]

    def _run_model(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        if self._compiled is not None and precision == self.precision:
            try:
                return self._compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # no compiler, unsupported op...: eager still works
                logger.warning("torch.compile failed ({}); running the model uncompiled", exc)
                self._compiled = None
        return self._runner(precision)(x)

    def infer(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float NCHW 0..1 in, float NCHW 0..1 out, on the engine's device and precision."""
        _check_shape(pixels)
        return self._forward(pixels.to(self.device, non_blocking=True), self.precision)

    def run(self, images: Sequence[Image.Image]) -> list[Image.Image | InferenceError]:
        """One result per input, in order; images of one size share micro-batches."""
        results: list[Image.Image | InferenceError | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                batch = images_to_batch([images[i] for i in chunk])
                for i, result in zip(chunk, self.run_batch(batch), strict=True):
                    results[i] = result
        return results  # type: ignore[return-value]

    def run_batch(self, batch: torch.Tensor) -> list[Image.Image | InferenceError]:
        """Like ``run`` for an already stacked uint8 NHWC or float NCHW batch of one size."""
        pixels = _to_pixels(batch).to(self.device, non_blocking=True)
        outputs = self._forward_with_backoff(pixels)
        results: list[Image.Image | InferenceError] = []
        for index, output in enumerate(outputs):
            if isinstance(output, InferenceError):
                results.append(output)
                continue
            if not torch.isfinite(output).all():
                output = self._retry_fp32(pixels[index : index + 1])
            results.append(output if isinstance(output, InferenceError) else from_tensor(output))
        return results

    def _retry_fp32(self, pixels: torch.Tensor) -> torch.Tensor | InferenceError:
        output = self._forward(pixels, "fp32")[0]
        if torch.isfinite(output).all():
            return output
        return InferenceError("non_finite_output", "the model produced NaN or Inf values")

    def _forward_with_backoff(self, pixels: torch.Tensor) -> list[torch.Tensor | InferenceError]:
        """Run the batch; on out-of-memory split it in half and retry, down to single items."""
        try:
            return list(self._forward(pixels, self.precision))
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(pixels) == 1:
                return [
                    InferenceError("out_of_memory", f"image too large for {self.device}: {exc}")
                ]
            half = len(pixels) // 2
            logger.warning("out of memory on a batch of {}; splitting it", len(pixels))
            return self._forward_with_backoff(pixels[:half]) + self._forward_with_backoff(
                pixels[half:]
            )
        except RuntimeError as exc:
            if len(pixels) == 1:
                return [InferenceError("model_failed", str(exc).splitlines()[0][:300])]
            # Find the item that breaks the model instead of failing all of them.
            half = len(pixels) // 2
            return self._forward_with_backoff(pixels[:half]) + self._forward_with_backoff(
                pixels[half:]
            )


def _check_shape(pixels: torch.Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) batch, got {tuple(pixels.shape)}")
    height, width = pixels.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(f"height and width must be multiples of {SIZE_MULTIPLE}: {height}x{width}")


def images_to_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack same-size RGB images into one uint8 NHWC tensor (no float copy yet)."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images]))


def _to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW 0..1 (the permute leaves it channels_last in memory)."""
    if batch.dtype == torch.uint8:
        pixels = batch.permute(0, 3, 1, 2).float().div_(255)
    else:
        pixels = batch.float()
    _check_shape(pixels)
    return pixels
