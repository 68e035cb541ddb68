"""What travels between the service and its child, and how a batch's answers are laid out.

**Control** travels over a duplex Pipe as small pickled tuples: ``("load", path, options)``
-> ``("loaded", info)`` | ``("refused", reason)``; ``("run", number, in segment, out segment,
out size, shape, sha256s, request, output)`` -> ``("done", number, answers, model seconds)``;
``("stop",)``.

**Answers**, one per image, in order: ``("error", reason, message)`` (the item's
InferenceError), ``("shm", offset, shape, composited offset, composited shape)`` (the pixels in
the ``out`` segment, daemon.workers.segments) or ``("inline", pixels, composited)`` (a result
that did not fit, pickled over the pipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from PIL import Image

from core.reasons import Reason
from core.runtime.errors import InferenceError
from daemon.workers.interface import ResultPixels, WorkerResult
from daemon.workers.segments import copy_out, put


def out_size(count: int, shape: tuple[int, ...]) -> int:
    """The ``out`` segment a batch needs."""
    # Outputs are the inputs' size: RGB, or RGBA with its composited RGB (3 + 4 bytes).
    return count * shape[0] * shape[1] * (3 if shape[2] == 3 else 7)


def pack(
    results: Sequence[Image.Image | InferenceError],
    out: shared_memory.SharedMemory,
    size: int,
) -> list[tuple[Any, ...]]:
    """The child's side: each result into ``out`` (``size`` bytes usable), its answer."""
    answers: list[tuple[Any, ...]] = []
    offset = 0
    for result in results:
        if isinstance(result, InferenceError):
            answers.append(("error", str(result.reason), result.message))
            continue
        pixels = np.asarray(result)
        comp_image = result.info.get("composited")
        composited = None if comp_image is None else np.asarray(comp_image)
        need = pixels.nbytes + (0 if composited is None else composited.nbytes)
        if offset + need > size:
            answers.append(("inline", pixels, composited))
            continue
        pixel_offset, offset = offset, put(out, offset, pixels)
        comp_offset, comp_shape = None, None
        if composited is not None:
            comp_offset, comp_shape = offset, composited.shape
            offset = put(out, offset, composited)
        answers.append(("shm", pixel_offset, pixels.shape, comp_offset, comp_shape))
    return answers


def unpack(
    answers: Sequence[tuple[Any, ...]], out: shared_memory.SharedMemory
) -> list[WorkerResult]:
    """The service's side: each answer's result, its pixels copied out of ``out``."""
    results: list[WorkerResult] = []
    for answer in answers:
        if answer[0] == "error":
            results.append(InferenceError(Reason(answer[1]), answer[2]))
        elif answer[0] == "inline":
            results.append(ResultPixels(answer[1], answer[2]))
        else:
            _, offset, pixel_shape, comp_offset, comp_shape = answer
            pixels = copy_out(out, offset, pixel_shape)  # the one copy out
            composited = None
            if comp_offset is not None:
                composited = copy_out(out, comp_offset, comp_shape)
            results.append(ResultPixels(pixels, composited))
    return results


def failed(number: int, count: int, exc: Exception) -> tuple[Any, ...]:
    """A batch the child could not run: every image answers with the exception."""
    error = ("error", str(Reason.MODEL_FAILED), f"{type(exc).__name__}: {exc}"[:300])
    return ("done", number, [error] * count, 0.0)
