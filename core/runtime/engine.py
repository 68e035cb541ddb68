"""The engine: a checkpoint's network on a device, in a precision, run on batches of images.

The engine owns device, precision and memory layout choices so callers only hand it
decoded images; what the checkpoint does to an image (normalisation, the network's passes,
post-processing) is its sampler's business (core.runtime.samplers). Reduced precision is taken
only where the hardware does it natively and a probe image shows the output stays within
tolerance of fp32; otherwise it runs fp32. A denoise checkpoint's probe runs its whole
sampler at the recommended settings, so the tolerance holds for what is served; a guided
checkpoint's probe is one network call (``GuidedSampler.probe``), the sampler's effect on the
picture being the art benchmark's to judge.

Three ways in, by what the caller holds and wants back:

- :meth:`Engine.run`: a stacked batch of one size (uint8 NHWC or float NCHW) -> one image or
  :class:`InferenceError` per item, with the out-of-memory back-off and the fp32 retry of a
  non-finite item. What the daemon, ``artd process`` and ``artd generate`` call.
- :meth:`Engine.run_images`: PIL images of any sizes -> the same, grouped into batches.
- :meth:`Engine.infer`: float NCHW -> float NCHW, one sampler call, no back-off or retry
  (probes and benches).

A denoise checkpoint also needs one noise seed per image and sampler settings: callers
pass both (``run(pixels, seeds, request)``), or the engine seeds each image from its own
bytes (core.runtime.samplers.content_seeds) and serves the checkpoint's recommendation. Both
travel with the batch through the out-of-memory halving and the per-item fp32 retry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from PIL import Image

from core.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint
from core.diffusion.sampler_settings import SamplerRequest, SamplerSettings
from core.images.pixels import from_tensor
from core.network.folded import FoldedModel, stage_dtypes
from core.network.model import SIZE_MULTIPLE
from core.network.space import uint8_to_pixels
from core.objectives import sampler_for
from core.reasons import Reason
from core.runtime.batcher import map_by_shape
from core.runtime.devices import native_reduced_dtype, pick_device
from core.runtime.errors import InferenceError
from core.runtime.samplers import DiffusionSampler, content_seeds

__all__ = ["Engine", "images_to_batch", "pick_device"]

# Outputs must stay within 2/255 of fp32; the probe demands a margin below that.
REDUCED_PRECISION_TOLERANCE = 1.5 / 255
# On CPU small groups stay in cache (batches of 16-32 were slower per image in the bench).
DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 32, "mps": 16}


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
        # The post's module is kept for reference; inference runs a BatchNorm-folded copy
        # per precision (about 1.5x faster on CPU, equal to rounding; see core.network.folded).
        self.model = build_model(checkpoint).to(self.device)
        self._folded_models: dict[str, torch.nn.Module] = {}
        try:
            self.sampler = sampler_for(checkpoint.meta).to(self.device)  # the objective's choice
        except ValueError as exc:  # metadata its objective cannot serve: name the file
            raise CheckpointError(str(exc), checkpoint.path) from exc
        self.objective = self.sampler.objective
        self._said_ignored = False  # a reconstruct checkpoint's one "settings ignored" line
        self._compiled: torch.nn.Module | None = None  # the precision probe runs eager
        self.precision = self._choose_precision(precision)
        # The probe built a folded copy per candidate: keep the chosen one and fp32 (the
        # NaN retry's), not the rejected ones.
        self._folded_models = {
            p: m for p, m in self._folded_models.items() if p in (self.precision, "fp32")
        }
        if compile:
            # Inductor fuses the remaining element-wise passes too, at the price of 10-15 s
            # of compiling for each new input shape: opt-in. It traces plain ATen ops, so the
            # compiled copy does not use the hand-fused oneDNN calls.
            portable = FoldedModel(
                self.model, self.precision, channels_last=self.channels_last, fused=False
            )
            self._compiled = torch.compile(portable, dynamic=True)
        logger.info(
            "engine ready: model {} ({}) on {} ({}, channels_last={}, max_batch={}, compiled={})",
            self.version,
            self.objective,
            self.device,
            self.precision,
            self.channels_last,
            self.max_batch,
            compile,
        )

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: object) -> Engine:
        return cls(load_checkpoint(Path(path)), **kwargs)  # type: ignore[arg-type]

    def sampler_settings(self, request: SamplerRequest | None = None) -> SamplerSettings | None:
        """The effective sampler settings: ``request``'s given fields over the checkpoint's
        recommendation. None for a one-pass checkpoint, which ignores them and says so in
        one log line per engine."""
        if isinstance(self.sampler, DiffusionSampler):
            return (request or SamplerRequest()).resolve(self.sampler.recommended)
        if request is not None and request.is_set and not self._said_ignored:
            self._said_ignored = True
            logger.warning(
                "model {} is a {} checkpoint (one pass, no sampler): ignoring the sampler "
                "settings {}",
                self.version,
                self.objective,
                request.given(),
            )
        return None

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        pixels: torch.Tensor,
        seeds: Sequence[int] | None = None,
        request: SamplerRequest | None = None,
    ) -> list[Image.Image | InferenceError]:
        """One image or InferenceError per item of a stacked uint8 NHWC or float NCHW batch
        of one size, in order. ``seeds``: one noise seed per image for a denoise checkpoint
        (default: from each item's bytes), ignored by a one-pass one, as ``request`` is. An
        out-of-memory batch is halved down to single items; a non-finite item is retried
        alone in fp32."""
        settings, seeds = self._settings_and_seeds(pixels, seeds, request)
        batch = uint8_to_pixels(pixels)
        _check_shape(batch)
        batch = batch.to(self.device, non_blocking=True)
        outputs = self._with_oom_backoff(batch, seeds, settings)
        results: list[Image.Image | InferenceError] = []
        for index, output in enumerate(outputs):
            if isinstance(output, InferenceError):
                results.append(output)
                continue
            if not torch.isfinite(output).all():
                output = self._fp32_retry(batch[index : index + 1], _part(seeds, index), settings)
            results.append(output if isinstance(output, InferenceError) else from_tensor(output))
        return results

    def run_images(
        self, images: Sequence[Image.Image], request: SamplerRequest | None = None
    ) -> list[Image.Image | InferenceError]:
        """:meth:`run` for PIL images of any sizes: one result per input, in order; images of
        one size share batches. A denoise checkpoint seeds each image from its pixels
        (:func:`content_seeds`)."""

        def run_group(group: list[Image.Image]) -> list[Image.Image | InferenceError]:
            return self.run(images_to_batch(group), request=request)

        return map_by_shape(images, lambda image: image.size, self.max_batch, run_group)

    def infer(
        self,
        pixels: torch.Tensor,
        seeds: Sequence[int] | None = None,
        request: SamplerRequest | None = None,
    ) -> torch.Tensor:
        """Float NCHW 0..1 in, float NCHW 0..1 out, on the engine's device and precision:
        one sampler call, no out-of-memory back-off, no non-finite check."""
        _check_shape(pixels)
        settings, seeds = self._settings_and_seeds(pixels, seeds, request)
        pixels = pixels.to(self.device, non_blocking=True)
        return self._sample(pixels, self.precision, seeds, settings)

    # -- precision -------------------------------------------------------------------------

    def _choose_precision(self, precision: str) -> str:
        if precision != "auto":
            stage_dtypes(precision)  # raises ValueError naming the choices
            return precision
        reduced = native_reduced_dtype(self.device)
        if reduced is None:
            return "fp32"
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[reduced]
        # Fastest first: all stages reduced, then only the inner ones (see core.network.folded).
        for candidate in (name, f"{name}-mixed"):
            error = self._probe_error(candidate)
            tolerance = self.sampler.probe_tolerance or REDUCED_PRECISION_TOLERANCE
            if error <= tolerance:  # NaN counts as failing
                return candidate
            logger.info("{} differs from fp32 by {:.2f}/255 on the probe", candidate, error * 255)
        return "fp32"

    def _probe_error(self, precision: str) -> float:
        """Max abs difference to fp32 on a textured probe batch (a smooth one hides errors)."""
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, 64, 64, generator=generator).to(self.device)
        settings = self.sampler_settings()
        seeds = None if settings is None else [0, 1]
        reference = self._sample(probe, "fp32", seeds, settings, probe=True)
        reduced = self._sample(probe, precision, seeds, settings, probe=True)
        return float((reference - reduced).abs().max())

    # -- the sampler and the network -------------------------------------------------------

    def _sample(
        self,
        pixels: torch.Tensor,
        precision: str,
        seeds: Sequence[int] | None = None,
        settings: SamplerSettings | None = None,
        probe: bool = False,
    ) -> torch.Tensor:
        """The sampler on pixels 0..1 (N, 3, H, W) on the device, its network passes in
        ``precision``: the image 0..1. A denoise checkpoint's sampler needs ``seeds`` (one
        per image) and ``settings``. ``probe``: what the precision probe compares
        (``Sampler.probe``: one network call of a sampling checkpoint)."""
        with torch.inference_mode():

            def network(x: torch.Tensor) -> torch.Tensor:
                return self._network_pass(x, precision)

            run = self.sampler.probe if probe else self.sampler
            return run(pixels, network, seeds, settings)

    def _folded(self, precision: str) -> torch.nn.Module:
        """The BatchNorm-folded network in ``precision``, built on first use."""
        if precision not in self._folded_models:
            self._folded_models[precision] = FoldedModel(
                self.model, precision, channels_last=self.channels_last
            )
        return self._folded_models[precision]

    def _network_pass(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        """One pass of the network on a normalised batch (what the sampler calls)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is not None and precision == self.precision:
            try:
                return self._compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # no compiler, unsupported op...: eager still works
                logger.warning("torch.compile failed ({}); running the model uncompiled", exc)
                self._compiled = None
        return self._folded(precision)(x)

    # -- what run() wraps around the sampler -----------------------------------------------

    def _settings_and_seeds(
        self,
        batch: torch.Tensor,
        seeds: Sequence[int] | None,
        request: SamplerRequest | None,
    ) -> tuple[SamplerSettings | None, list[int] | None]:
        """The effective settings and one seed per item (None and None for one pass)."""
        settings = self.sampler_settings(request)
        if settings is None:
            return None, None
        if seeds is None:
            return settings, content_seeds(batch, settings)
        if len(seeds) != len(batch):
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {len(batch)}")
        return settings, [int(seed) for seed in seeds]

    def _fp32_retry(
        self,
        pixels: torch.Tensor,
        seeds: Sequence[int] | None,
        settings: SamplerSettings | None,
    ) -> torch.Tensor | InferenceError:
        """One item again in fp32; still non-finite, it is an InferenceError."""
        output = self._sample(pixels, "fp32", seeds, settings)[0]
        if torch.isfinite(output).all():
            return output
        return InferenceError(Reason.NON_FINITE_OUTPUT, "the model produced NaN or Inf values")

    def _with_oom_backoff(
        self,
        pixels: torch.Tensor,
        seeds: Sequence[int] | None = None,
        settings: SamplerSettings | None = None,
    ) -> list[torch.Tensor | InferenceError]:
        """The batch in the engine's precision; on out-of-memory (or a model error) split it
        in half and retry, down to single items, which fail alone."""
        try:
            return list(self._sample(pixels, self.precision, seeds, settings))
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(pixels) == 1:
                message = f"image too large for {self.device}: {exc}"
                return [InferenceError(Reason.OUT_OF_MEMORY, message)]
            logger.warning("out of memory on a batch of {}; splitting it", len(pixels))
            return self._in_halves(pixels, seeds, settings)
        except RuntimeError as exc:
            if len(pixels) == 1:
                return [InferenceError(Reason.MODEL_FAILED, str(exc).splitlines()[0][:300])]
            # Find the item that breaks the model instead of failing all of them.
            return self._in_halves(pixels, seeds, settings)

    def _in_halves(
        self,
        pixels: torch.Tensor,
        seeds: Sequence[int] | None,
        settings: SamplerSettings | None,
    ) -> list[torch.Tensor | InferenceError]:
        """:meth:`_with_oom_backoff` on each half of the batch, each image with its seed."""
        half = len(pixels) // 2
        first = None if seeds is None else seeds[:half]
        rest = None if seeds is None else seeds[half:]
        head = self._with_oom_backoff(pixels[:half], first, settings)
        return head + self._with_oom_backoff(pixels[half:], rest, settings)


def _part(seeds: Sequence[int] | None, index: int) -> Sequence[int] | None:
    """Item ``index``'s seed as a one-item list (None stays None)."""
    return None if seeds is None else seeds[index : index + 1]


def _check_shape(pixels: torch.Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) batch, got {tuple(pixels.shape)}")
    height, width = pixels.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(f"height and width must be multiples of {SIZE_MULTIPLE}: {height}x{width}")


def images_to_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack same-size RGB images into one uint8 NHWC tensor (no float copy yet)."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images]))
