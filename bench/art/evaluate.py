"""The art benchmark's measurement: every figure for two checkpoints on the photos, judged on
the picture a person gets.

:func:`evaluate` brings each photo to the daemon's default output size as the daemon does
and runs it through both models on the product's path at their recommended settings
(``bench.art.inference``), at each strength. Per strength it measures, for each model:

- with the style signature d (``bench.art.style_signature``), movement toward each
  collection and specificity. Photos, outputs and the collection are all *viewed* the same
  way first, their shorter side brought to ``VIEW_SIZE`` (128 px): a 512 px output is judged
  as a whole picture, where its marks are what a person sees, not as 64 px squares nobody
  looks at. The collection it is compared with is each collection's held-out split drawn at
  the models' working size (160 px for the 64 px models; ``bench.art.recipe.held_out``), the
  scale at which the sampler paints before it brings the picture up to the output size: so a
  512 px output should show the collection's strokes as that 160 px drawing shows them, and
  both, seen at 128 px, are compared at one scale;
- blurred-luminance SSIM to the photo, over all photos and over the portraits alone;
- levels (mean abs difference to the photo, 0..255), and the same for the outputs with the
  photo's colours kept (``colour = keep``, ``core.images.colour.keep_colours``, as
  ``Inference`` applies it), with their mean CIE Lab chroma difference to the photo;
- seconds per image and network passes per image.

Then the floor at low strength (``bench.art.denoise_floor``), made the way the outputs are:
at the working size, brought back to the output size, the photo's chroma kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.art import denoise_floor
from bench.art.checks import NEAR_ZERO
from bench.art.inference import OUTPUT_SIZE, Model, Outputs, at_output_size
from bench.art.metrics import blurred_ssim, chroma_difference, content_hash, mean_levels
from bench.art.recipe import Recipe, held_out, load_folder
from bench.art.style_signature import (
    VIEW_SIZE,
    Signature,
    distance,
    set_signature,
    term_distances,
)
from bench.shared.photos import PHOTOS, PORTRAITS, QUICK_PHOTOS, photo
from core.diffusion.schedule import step_count
from core.images.colour import keep_colours

STRENGTHS = (0.0, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
QUICK_STRENGTHS = (0.0, 0.05, 0.5, 1.0)


@dataclass(frozen=True)
class Config:
    model_a: Path
    model_b: Path
    recipe: Recipe  # its styles, seeds and collection options give the held-out collections
    collections_root: Path
    out: Path
    strengths: tuple[float, ...] = STRENGTHS
    photos: tuple[str, ...] = PHOTOS
    size: int = OUTPUT_SIZE
    precision: str = "auto"  # the engine's (auto: what it serves); a reduced one is judged here


def kept(outputs: Sequence[np.ndarray], photos: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The outputs with ``colour = keep``: each one's luminance under its photo's chroma."""
    return [
        np.asarray(keep_colours(Image.fromarray(o), p))
        for o, p in zip(outputs, photos, strict=True)
    ]


def _mean(measure: Any, outputs: Sequence[np.ndarray], photos: Sequence[np.ndarray]) -> float:
    return float(np.mean([measure(o, p) for o, p in zip(outputs, photos, strict=True)]))


def model_figures(
    run: Outputs,
    keep: Sequence[np.ndarray],
    photos: Sequence[np.ndarray],
    portraits: Sequence[int],
) -> dict[str, float]:
    """One model's figures at one strength against the photos: ``run``'s outputs, ``keep``
    the same with the photos' colours kept; ``portraits``: their indices."""
    outputs = run.images
    return {
        "ssim": _mean(blurred_ssim, outputs, photos),
        "ssim_portraits": _mean(
            blurred_ssim, [outputs[i] for i in portraits], [photos[i] for i in portraits]
        ),
        "levels": _mean(mean_levels, outputs, photos),
        "levels_keep": _mean(mean_levels, keep, photos),
        "chroma": _mean(chroma_difference, outputs, photos),
        "chroma_keep": _mean(chroma_difference, keep, photos),
        "seconds": run.seconds,
        "passes": run.passes,
    }


def within(images: Sequence[np.ndarray]) -> float:
    """d between the two halves of a collection's split: how near two draws of it are."""
    half = len(images) // 2
    return distance(set_signature(images[:half]), set_signature(images[half:]))


def working_size(models: dict[str, Model]) -> int:
    """The models' one recommended working size (the held-out collections' scale)."""
    sizes = {m.recommended.working_size for m in models.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            "the art bench compares models that recommend one working size, got "
            + ", ".join(f"{m.path.name}: {m.recommended.working_size}" for m in models.values())
        )
    return sizes.pop()


def evaluate(config: Config) -> dict[str, Any]:
    """Every figure of the benchmark, plus the pictures for the gallery."""
    started = time.perf_counter()
    models = {"a": Model(config.model_a, config.precision),
              "b": Model(config.model_b, config.precision)}  # fmt: skip
    working = working_size(models)
    strengths = sorted({*config.strengths, *(m.recommended.strength for m in models.values())})
    photos = [at_output_size(photo(name), config.size) for name in config.photos]
    hashes = [content_hash(p) for p in photos]
    portraits = [i for i, name in enumerate(config.photos) if name in PORTRAITS]
    held = {w: load_folder(held_out(config.recipe, w, working, config.collections_root))
            for w in "ab"}  # fmt: skip
    held_sig = {w: set_signature(held[w]) for w in "ab"}
    photo_sig = set_signature(photos)
    for m in models.values():  # oneDNN picks its kernels for each shape on the first calls
        m.run(photos, hashes, min(s for s in strengths if s > 0))

    outputs: dict[str, dict[float, list[np.ndarray]]] = {w: {} for w in "ab"}
    keep: dict[str, dict[float, list[np.ndarray]]] = {w: {} for w in "ab"}
    rows = []
    for s in strengths:
        sig: dict[str, Signature] = {}
        row: dict[str, Any] = {"strength": s}
        for w, model in models.items():
            run = model.run(photos, hashes, s)
            outputs[w][s], keep[w][s] = run.images, kept(run.images, photos)
            sig[w] = set_signature(run.images)
            figures = model_figures(run, keep[w][s], photos, portraits)
            row |= {f"{k}_{w}": v for k, v in figures.items()}
        for w, other in (("a", "b"), ("b", "a")):
            own, theirs = distance(sig[w], held_sig[w]), distance(sig[other], held_sig[w])
            row[f"d_{w}_own"], row[f"d_{w}_other"] = own, theirs
            row[f"movement_{w}"] = own / distance(photo_sig, held_sig[w])
            row[f"specific_{w}"] = own < theirs
            row[f"terms_{w}"] = term_distances(sig[w], held_sig[w])  # which term moved
        rows.append(row)

    # Where a step is taken: below that the sampler returns the photo itself.
    steps = models["a"].recommended.steps
    near_zero = [s for s in strengths if 0.0 < s <= NEAR_ZERO and step_count(s, steps) > 0]
    floor = denoise_floor.floor(photos, near_zero, models["a"].schedule, working, keep=True)
    return {
        "models": {w: str(m.path) for w, m in models.items()},
        "objectives": {w: m.objective for w, m in models.items()},
        "styles": {"a": config.recipe.style_a, "b": config.recipe.style_b},
        "recommended": {w: m.recommended.to_dict() for w, m in models.items()},
        "output_size": config.size, "working_size": working, "view_size": VIEW_SIZE,
        "threads": torch.get_num_threads(), "precision": models["a"].engine.precision,
        "photos": list(config.photos), "portraits": [config.photos[i] for i in portraits],
        "photo_sizes": [list(p.shape[1::-1]) for p in photos],
        "strengths": strengths, "rows": rows,
        "signature": {
            "a_within": within(held["a"]), "b_within": within(held["b"]),
            "a_held_vs_b_held": distance(held_sig["a"], held_sig["b"]),
            "photos_vs_a": distance(photo_sig, held_sig["a"]),
            "photos_vs_b": distance(photo_sig, held_sig["b"]),
            "photo_terms": {w: term_distances(photo_sig, held_sig[w]) for w in "ab"},
        },
        "floor": {f"{s:g}": v for s, v in floor.items()},
        "seconds": time.perf_counter() - started,
        "_pictures": {"photos": photos, "outputs": outputs, "keep": keep},
    }  # fmt: skip


def quick_config(config: Config) -> Config:
    return dataclasses.replace(config, strengths=QUICK_STRENGTHS, photos=QUICK_PHOTOS)
