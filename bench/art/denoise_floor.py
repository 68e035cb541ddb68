"""The art bench's floor: how close to the photo any denoiser can come at a low strength.

At strength s the sampler noises the photo to level t = s, as SDEdit defines strength, before
the network sees it: ``x_t = a x0 + n eps`` in model space (``core.diffusion.schedule.noised``),
so the photo is under noise of standard deviation ``n / a`` in model space, ``127.5 n / a`` in
0..255 levels (11.4 at strength 0.05 on the cosine schedule). Whatever the network, what it
gives back is at best that photo denoised. For the same photos this measures the mean
absolute difference to the clean photo (the bench's ``levels``) of:

- ``none``: no denoising, ``x_t / a`` read back as pixels;
- ``tv`` and ``nl_means``: scikit-image's total-variation (Chambolle) and non-local means
  denoisers, told the true noise level and with their strength picked per photo against the
  clean photo, an oracle no real denoiser has.

:func:`floor` takes the way the output is made: with a working size the photo is noised
and denoised there and brought back to its size with the sampler's own resizes
(``core.runtime.samplers.working_shape`` and ``resize_pixels``), so the detail a working
scale gives up counts against the floor as against a model; with ``keep`` each estimate
takes the photo's chroma (``core.images.colour.keep_colours``), as ``colour = keep`` does.
A limit below these figures at some strength is one no model reaches there without seeing
less noise. The art bench checks its models against twice the oracle NL-means figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from bench.art.metrics import mean_levels
from bench.shared.common import fmt, table
from bench.shared.photos import PHOTOS, photo
from core.diffusion.schedule import Schedule, noised, seeded_noise

# Each denoiser's strength grid, in units of the true noise sd (nl_means' h) or absolute (tv).
NL_MEANS_H = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5)
TV_WEIGHTS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
DENOISERS = ("none", "tv", "nl_means")


def noise_sd_levels(strength: float, schedule: Schedule) -> float:
    """The sd of the noise on the photo at level ``strength``, in 0..255 levels."""
    ab = float(schedule.alpha_bar(strength))
    return 127.5 * math.sqrt(1 - ab) / math.sqrt(ab)


def _levels(estimate: np.ndarray, reference: np.ndarray) -> float:
    """``bench.art.metrics.mean_levels`` of a 0..1 float estimate, quantised as an output
    would be."""
    return mean_levels((np.clip(estimate, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), reference)


def _best(
    denoise: Callable[[float], np.ndarray], grid: Sequence[float], reference: np.ndarray
) -> float:
    """The best of ``denoise`` over ``grid`` against the clean photo (the oracle); a setting
    that gives NaN (non-local means does with a tiny h) is skipped."""
    found = [e for e in (denoise(k) for k in grid) if np.isfinite(e).all()]
    if not found:
        raise ValueError("every setting of the grid gave NaN")
    return min(_levels(e, reference) for e in found)


def photo_floor(
    clean: np.ndarray,
    strength: float,
    seed: int,
    schedule: Schedule,
    working: int = 0,
    keep: bool = False,
) -> dict[str, float]:
    """Each of :data:`DENOISERS`' levels for one HWC uint8 photo ``clean`` noised to
    ``strength`` at working size ``working`` (0: at its own size), read back at its own size,
    with its chroma kept if ``keep`` (module docstring)."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    from core.images.colour import keep_colours
    from core.runtime.samplers import resize_pixels, working_shape

    pixels = torch.from_numpy(np.array(clean)).permute(2, 0, 1)[None].float() / 255
    full = tuple(pixels.shape[-2:])
    small = resize_pixels(pixels, working_shape(full, working) or full)
    x_t = noised(small, strength, seeded_noise([seed], small.shape[1:]), schedule)
    a = math.sqrt(float(schedule.alpha_bar(strength)))
    seen = ((x_t[0] / a + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64)
    sd = noise_sd_levels(strength, schedule) / 255

    def served(estimate: np.ndarray) -> np.ndarray:
        """An estimate at the working size as the output would show it."""
        back = torch.from_numpy(np.clip(estimate, 0.0, 1.0)).permute(2, 0, 1)[None].float()
        back = resize_pixels(back, full)[0].permute(1, 2, 0).numpy()
        if keep:
            quantised = Image.fromarray((back * 255 + 0.5).astype(np.uint8))
            return np.asarray(keep_colours(quantised, clean), np.float64) / 255
        return back

    def nl_means(k: float) -> np.ndarray:
        return served(denoise_nl_means(seen, h=k * sd, sigma=sd, patch_size=3, patch_distance=5,
                                       channel_axis=-1, fast_mode=False))  # fmt: skip

    def tv(weight: float) -> np.ndarray:
        return served(denoise_tv_chambolle(seen, weight=weight, channel_axis=-1))

    return {
        "none": _levels(served(seen), clean),
        "tv": _best(tv, TV_WEIGHTS, clean),
        "nl_means": _best(nl_means, NL_MEANS_H, clean),
    }


def floor(
    photos: Sequence[np.ndarray],
    strengths: Sequence[float],
    schedule: Schedule,
    working: int = 0,
    keep: bool = False,
) -> dict[float, dict[str, float]]:
    """Per strength (each > 0): the noise sd and each denoiser's mean levels over ``photos``
    (photo i noised with seed i, the same at every strength), made as :func:`photo_floor`
    says."""
    out = {}
    for s in strengths:
        if not 0.0 < s < 1.0:
            raise ValueError(f"the floor needs a strength in (0, 1), got {s!r}")
        per = [photo_floor(p, s, i, schedule, working, keep) for i, p in enumerate(photos)]
        out[s] = {"noise_sd": noise_sd_levels(s, schedule)} | {
            name: float(np.mean([f[name] for f in per])) for name in DENOISERS
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.art.denoise_floor [--strengths S ...] [--size PX] [--working-size PX]
    [--keep]``: the floor for the art bench's photos, as a table."""
    import argparse

    from bench.art.inference import OUTPUT_SIZE, at_output_size

    parser = argparse.ArgumentParser(prog="python -m bench.art.denoise_floor", description=__doc__)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--size", type=int, default=OUTPUT_SIZE, help="the output size")
    parser.add_argument("--working-size", type=int, default=0, help="0: at the output size")
    parser.add_argument("--keep", action="store_true", help="the photo's chroma kept")
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    args = parser.parse_args(argv)
    photos = [at_output_size(photo(name), args.size) for name in args.photos]
    found = floor(photos, args.strengths, Schedule(), args.working_size, args.keep)
    rows = [[f"{s:g}", fmt(f["noise_sd"], 1), *(fmt(f[d], 2) for d in DENOISERS)]
            for s, f in found.items()]  # fmt: skip
    print(table(["strength", "noise sd", "no denoising", "TV, oracle", "NL-means, oracle"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
