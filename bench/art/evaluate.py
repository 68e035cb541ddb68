"""The art benchmark's measurement: every figure for two checkpoints on the photos.

:func:`evaluate` runs the photos through both models at each strength and measures, with
the style signature d against the collections' held-out splits, movement toward each
collection, specificity, content kept (blurred SSIM) and levels; then samples from noise,
the per-step cost against the model-alone floor, and the denoising floor at low strength.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.art import denoise_floor
from bench.art.checks import NEAR_ZERO
from bench.art.inference import Model, step_cost
from bench.art.metrics import blurred_ssim, content_hash, mean_levels
from bench.art.recipe import Recipe, collections, load_folder
from bench.art.style_signature import Signature, distance, set_signature, term_distances
from bench.shared.photos import PHOTOS, QUICK_PHOTOS, photo, square
from core.diffusion.schedule import step_count

STRENGTHS = (0.0, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
QUICK_STRENGTHS = (0.0, 0.05, 0.5, 1.0)


@dataclass(frozen=True)
class Config:
    model_a: Path
    model_b: Path
    recipe: Recipe  # its styles and seeds give the held-out collections
    collections_root: Path
    out: Path
    strengths: tuple[float, ...] = STRENGTHS
    photos: tuple[str, ...] = PHOTOS
    repeats: int = 7
    noise_samples: int = 8


def evaluate(config: Config) -> dict[str, Any]:
    """Every figure of the benchmark, plus the pictures for the gallery."""
    started = time.perf_counter()
    models = {"a": Model(config.model_a), "b": Model(config.model_b)}
    size = models["a"].size
    if models["b"].size != size:
        raise ValueError(f"the models' training sizes differ: {size} and {models['b'].size}")
    strengths = sorted({*config.strengths, *(m.recommended.strength for m in models.values())})
    photos = [square(photo(name), size) for name in config.photos]
    hashes = [content_hash(p) for p in photos]
    folders = collections(config.recipe, config.collections_root)
    held = {w: set_signature(load_folder(folders[(w, "held-out")]), size) for w in "ab"}
    train = {w: set_signature(load_folder(folders[(w, "train")]), size) for w in "ab"}
    photo_sig = set_signature(photos, size)

    outputs: dict[str, dict[float, list[np.ndarray]]] = {w: {} for w in "ab"}
    rows = []
    for s in strengths:
        sig: dict[str, Signature] = {}
        row: dict[str, Any] = {"strength": s}
        for w, model in models.items():
            outputs[w][s] = model.run(photos, hashes, s)
            sig[w] = set_signature(outputs[w][s], size)
            pairs = list(zip(outputs[w][s], photos, strict=True))
            row[f"ssim_{w}"] = float(np.mean([blurred_ssim(o, p) for o, p in pairs]))
            row[f"levels_{w}"] = float(np.mean([mean_levels(o, p) for o, p in pairs]))
        for w, other in (("a", "b"), ("b", "a")):
            own, theirs = distance(sig[w], held[w]), distance(sig[other], held[w])
            row[f"d_{w}_own"], row[f"d_{w}_other"] = own, theirs
            row[f"movement_{w}"] = own / distance(photo_sig, held[w])
            row[f"specific_{w}"] = own < theirs
            row[f"terms_{w}"] = term_distances(sig[w], held[w])  # which term moved
        rows.append(row)
    noise = {w: m.from_noise(config.noise_samples) for w, m in models.items()}
    noise_d = {w: distance(set_signature(noise[w], size), held[w]) for w in "ab"}
    cost = {w: step_cost(m, photos, config.repeats) for w, m in models.items()}

    # Where a step is taken: below that the sampler returns the photo itself.
    steps = models["a"].recommended.steps
    near_zero = [s for s in strengths if 0.0 < s <= NEAR_ZERO and step_count(s, steps) > 0]
    floor = denoise_floor.floor(photos, near_zero, models["a"].schedule)
    return {
        "models": {w: str(m.path) for w, m in models.items()},
        "styles": {"a": config.recipe.style_a, "b": config.recipe.style_b},
        "recommended": {w: m.recommended.to_dict() for w, m in models.items()},
        "size": size, "photos": list(config.photos), "strengths": strengths, "rows": rows,
        "signature": {
            "a_held_vs_a_train": distance(held["a"], train["a"]),
            "b_held_vs_b_train": distance(held["b"], train["b"]),
            "a_held_vs_b_held": distance(held["a"], held["b"]),
            "photos_vs_a": distance(photo_sig, held["a"]),
            "photos_vs_b": distance(photo_sig, held["b"]),
            "noise_a_vs_a": noise_d["a"], "noise_b_vs_b": noise_d["b"],
            "photo_terms": {w: term_distances(photo_sig, held[w]) for w in "ab"},
        },
        "cost": cost, "floor": {f"{s:g}": v for s, v in floor.items()},
        "seconds": time.perf_counter() - started,
        "_pictures": {"photos": photos, "outputs": outputs, "noise": noise},
    }  # fmt: skip


def quick_config(config: Config) -> Config:
    return dataclasses.replace(config, strengths=QUICK_STRENGTHS, photos=QUICK_PHOTOS,
                               repeats=3, noise_samples=4)  # fmt: skip
