"""Diffusion on the post's network: a denoiser without noise conditioning.

Pure functions and frozen dataclasses over tensors; nothing here knows about the engine,
the daemon or the trainer.

- Model space: pixels ``p`` in 0..1 map to ``x = 2p - 1`` in [-1, 1]. The network's input
  is ``x_t = a x0 + s eps`` with ``a = sqrt(ab(t))``, ``s = sqrt(1 - ab(t))``, as is (no
  ImageNet normalisation). The network is never told ``t`` (Sun, Jiang, Zhao and He 2025,
  "Is Noise Conditioning Necessary for Denoising Generative Models?"); the sampler, which
  knows ``t``, reads the network's Sigmoid output ``out`` in 0..1 by the schedule's
  ``parameterisation`` (:func:`clean_pixels`):

  - ``x0`` (the first denoise models): ``out`` is the predicted clean pixels. Every pixel
    is redrawn by the network, whose finest features are at half resolution, so even a
    faint noise level gives back a softened image in the collection's colours.
  - ``v`` (Salimans and Ho 2022, "Progressive Distillation"): ``out`` encodes
    ``v = a eps - s x0`` as ``v = V_RANGE (2 out - 1)``, and ``x0_hat = a x_t - s v``. At a
    low level ``x0_hat`` is mostly ``x_t`` itself (a skip around the network, as EDM's
    ``c_skip`` is), so the photo's colours and full-resolution detail survive a low
    strength; at a high level it is mostly the network's. ``V_RANGE`` bounds what the
    Sigmoid can say (``v`` has about unit spread; 4 covers it but for the far tails).

- Training: ``x_t = noised(pixels, t, noise, schedule)`` with ``t = sample_levels(n, g)``,
  then ``loss(model(x_t), target(pixels, t, noise, schedule))``: the clean pixels (x0), or
  ``v`` mapped into 0..1 (v; the MSE on it is the usual v-loss).
- Sampling is img2img as in SDEdit (Meng et al. 2021): noise the input to level
  ``strength``, then denoise back to 0 in ``round(steps * strength)`` DDIM steps (Song,
  Meng and Ermon 2021, eq. 12) with stochasticity ``eta`` (1 = DDPM's posterior noise).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import pairwise

import torch

from core.diffusion.sampler_settings import SamplerSettings

Denoise = Callable[[torch.Tensor], torch.Tensor]
# What the network's output means (module docstring), and the v parameterisation's range.
PARAMETERISATIONS: tuple[str, ...] = ("x0", "v")
V_RANGE = 4.0
# A denoise checkpoint's recorded image space: ImageSpace.normalize(p) == to_model(p).
DENOISE_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass(frozen=True)
class Schedule:
    """Cosine variance-preserving schedule over continuous t in [0, 1] (Nichol & Dhariwal
    2021): ``ab(t) = f(t) / f(0)``, ``f(t) = cos((t + offset) / (1 + offset) * pi / 2)^2``,
    clamped to [min_alpha_bar, max_alpha_bar] so neither signal nor noise is exactly 0."""

    kind: str = "cosine"
    offset: float = 0.008
    min_alpha_bar: float = 1e-5
    max_alpha_bar: float = 1.0 - 1e-5
    parameterisation: str = "x0"

    def __post_init__(self) -> None:
        if self.kind != "cosine":
            raise ValueError(f"schedule kind must be 'cosine', got {self.kind!r}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"schedule parameterisation must be one of {', '.join(PARAMETERISATIONS)}, "
                f"got {self.parameterisation!r}"
            )
        for name in ("offset", "min_alpha_bar", "max_alpha_bar"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"schedule {name} must be a number, got {value!r}")
        if not 0.0 < self.offset < 1.0:
            raise ValueError(f"schedule offset must be in (0, 1), got {self.offset!r}")
        if not 0.0 < self.min_alpha_bar < self.max_alpha_bar < 1.0:
            raise ValueError(
                "schedule needs 0 < min_alpha_bar < max_alpha_bar < 1, got "
                f"{self.min_alpha_bar!r} and {self.max_alpha_bar!r}"
            )

    def alpha_bar(self, t: float | torch.Tensor) -> float | torch.Tensor:
        """Signal fraction ab(t) for a float (sampler: no tensor, no host sync) or a tensor."""
        s, lo, hi = self.offset, self.min_alpha_bar, self.max_alpha_bar
        if isinstance(t, torch.Tensor):
            f = torch.cos((t.double() + s) / (1 + s) * (math.pi / 2)) ** 2
            return (f / math.cos(s / (1 + s) * math.pi / 2) ** 2).clamp(lo, hi).to(t.dtype)
        f = math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return min(max(f / math.cos(s / (1 + s) * math.pi / 2) ** 2, lo), hi)

    def to_dict(self) -> dict[str, object]:
        """The checkpoint metadata's record of this schedule."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Schedule:
        """Inverse of :meth:`to_dict`; an unknown key or a bad value raises ValueError."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"unknown schedule key {key!r} (known: {sorted(known)})")
        if "kind" not in data:
            raise ValueError("schedule key 'kind' is missing")
        return cls(**data)  # type: ignore[arg-type]


def to_model(pixels: torch.Tensor) -> torch.Tensor:
    """0..1 pixels -> model space [-1, 1] (a new tensor)."""
    return pixels * 2.0 - 1.0


def sample_levels(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise levels, t ~ U(0, 1) on the CPU, shape (n,). Uniform t under the cosine
    schedule already spreads the log signal-to-noise ratio over the useful range (Nichol &
    Dhariwal 2021), so no reweighting is done here."""
    return torch.rand(n, generator=generator)


def noised(
    pixels: torch.Tensor, t: torch.Tensor | float, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """The network's training input ``x_t = sqrt(ab) (2 pixels - 1) + sqrt(1 - ab) noise``;
    ``t`` is a float or one level per image (shape (N,)); the network's target for it is
    :func:`target`."""
    a, s = _signal_noise(t, pixels, schedule)
    if isinstance(a, float):
        return to_model(pixels).mul_(a).add_(noise, alpha=s)
    return to_model(pixels).mul_(a).addcmul_(noise, s)


def _signal_noise(
    t: torch.Tensor | float, like: torch.Tensor, schedule: Schedule
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """``(a, s) = (sqrt(ab), sqrt(1 - ab))`` at ``t``: floats for a float ``t``, else one
    pair per image shaped (N, 1, 1, 1) on ``like``'s device and dtype."""
    if not isinstance(t, torch.Tensor):
        ab = float(schedule.alpha_bar(float(t)))
        return math.sqrt(ab), math.sqrt(1 - ab)
    ab = schedule.alpha_bar(t.detach().double())  # float64 where t lives (the CPU, usually)
    assert isinstance(ab, torch.Tensor)

    def coefficient(c: torch.Tensor) -> torch.Tensor:
        return c.to(like.device, like.dtype).view(-1, 1, 1, 1)

    return coefficient(ab.sqrt()), coefficient((1 - ab).sqrt())


def target(
    pixels: torch.Tensor, t: torch.Tensor | float, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """What the network's 0..1 output is trained toward for ``noised(pixels, t, noise)``:
    ``pixels`` (x0), or ``v = a noise - s (2 pixels - 1)`` as ``(v / V_RANGE + 1) / 2`` (v;
    a few far-tail values fall outside 0..1, where the Sigmoid cannot follow)."""
    if schedule.parameterisation == "x0":
        return pixels
    a, s = _signal_noise(t, pixels, schedule)
    v = noise * a - to_model(pixels) * s
    return v.mul_(0.5 / V_RANGE).add_(0.5)


def clean_pixels(
    out: torch.Tensor, x_t: torch.Tensor, t: float, schedule: Schedule
) -> torch.Tensor:
    """The predicted clean pixels in 0..1 from the network's 0..1 output ``out`` at input
    ``x_t`` and level ``t``: ``out`` itself (x0; may be ``out``, clamped in place), or
    ``(a x_t - s V_RANGE (2 out - 1) + 1) / 2`` (v; a new tensor). Never reads ``x_t`` for
    x0."""
    if schedule.parameterisation == "x0":
        return out.clamp_(0.0, 1.0)
    a, s = _signal_noise(t, x_t, schedule)
    v = out.float().mul(2 * V_RANGE).sub_(V_RANGE)
    return x_t.float().mul(a).sub_(v, alpha=s).add_(1.0).mul_(0.5).clamp_(0.0, 1.0)


def step_count(strength: float, steps: int) -> int:
    """``round(steps * strength)``, half rounded up (Python's round gives 12 for 25 * 0.5)."""
    return math.floor(steps * strength + 0.5)


def timesteps(strength: float, steps: int) -> list[float]:
    """The levels the sampler visits: ``n + 1`` evenly spaced levels from ``strength`` down
    to exactly 0.0, where ``n = step_count(strength, steps)``; ``[]`` when ``n == 0``.
    Each consecutive pair is one denoising step (``n`` network calls)."""
    n = step_count(strength, steps)
    if n == 0:
        return []
    return [strength * (n - k) / n for k in range(n)] + [0.0]


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def _draw(
    generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device
) -> torch.Tensor:
    """One standard-normal draw per image, each from its own CPU generator, then moved to
    ``device``: the values depend on the image's seed only, never on the batch or device."""
    pin = device.type == "cuda"
    out = torch.empty((len(generators), *shape), dtype=torch.float32, pin_memory=pin)
    for i, generator in enumerate(generators):
        torch.randn(tuple(shape), generator=generator, out=out[i])
    # The caching host allocator keeps a pinned block until its copy has run.
    return out.to(device, non_blocking=pin)


def seeded_noise(
    seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard-normal noise (len(seeds), *shape), image i from seed i: the same stream
    :func:`sample` starts with. For fixed noise in a deterministic validation figure."""
    return _draw(_generators(seeds), shape, torch.device(device))


def _coefficients(schedule: Schedule, t: float, s: float, eta: float) -> tuple[float, ...]:
    """DDIM eq. 12 from level t to s < t with x0 given, rewritten over (x_t, x0_hat):
    ``x_s = cx x_t + c0 x0_hat + sigma z`` (see :func:`sample`)."""
    a_t, a_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * max(0.0, 1 - a_t / a_s))
    direction = math.sqrt(max(0.0, 1 - a_s - sigma * sigma))
    cx = direction / math.sqrt(1 - a_t)
    c0 = math.sqrt(a_s) - cx * math.sqrt(a_t)
    return cx, c0, sigma


@torch.no_grad()
def sample(
    denoise: Denoise,
    pixels: torch.Tensor,
    seeds: Sequence[int],
    settings: SamplerSettings,
    schedule: Schedule,
) -> torch.Tensor:
    """SDEdit img2img (Meng et al. 2021) with DDIM updates (Song et al. 2021, eq. 12).

    ``denoise`` maps a batch x_t (model space, on the device) to the network's output in
    0..1, which :func:`clean_pixels` reads by ``schedule.parameterisation``; its returned
    tensor may be overwritten. ``pixels`` is (N, 3, H, W) in 0..1;
    at strength 1 only its shape, device and dtype are used (generation from noise).
    ``seeds`` holds one int per image. The whole batch steps together, one ``denoise`` call
    per step. With levels t_0 = strength > ... > t_n = 0 and ``ab = schedule.alpha_bar``:

        x_{t_0} = sqrt(ab(t_0)) x0 + sqrt(1 - ab(t_0)) z_0        (x0 = 0 at strength 1)
        x0_hat  = 2 clean_pixels(denoise(x_t), x_t, t) - 1         (x0: 2 denoise(x_t) - 1)
        eps_hat = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)
        sigma   = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)
        x_s     = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z_k

    and the last step (s = 0) returns the prediction itself, no noise added. Image i's
    noise z comes from its own CPU generator seeded with seeds[i], drawn in a fixed order
    (z_0, then one draw per step that adds noise). Zero steps return a copy of ``pixels``.
    """
    if pixels.dim() != 4 or len(seeds) != pixels.shape[0]:
        raise ValueError(f"need one seed per image: {len(seeds)} seeds, {tuple(pixels.shape)}")
    levels = timesteps(settings.strength, settings.steps)
    if not levels:
        return pixels.clone()
    generators = _generators(seeds)
    shape, device = pixels.shape[1:], pixels.device
    a_0 = schedule.alpha_bar(levels[0])
    x = _draw(generators, shape, device).mul_(math.sqrt(1 - a_0))
    if settings.strength < 1.0:
        x.add_(to_model(pixels.float()), alpha=math.sqrt(a_0))
    for t, s in pairwise(levels):
        out = denoise(x)
        if out.data_ptr() == x.data_ptr():  # a denoiser that hands back its input
            out = out.clone()
        clean = clean_pixels(out, x, t, schedule)  # in 0..1
        if s == 0.0:
            return clean.float().to(pixels.dtype)
        cx, c0, sigma = _coefficients(schedule, t, s, settings.eta)
        # cx x_t + c0 x0_hat with x0_hat = 2 clean - 1, in place.
        x.mul_(cx).add_(clean, alpha=2 * c0).sub_(c0)
        if sigma > 0.0:
            x.add_(_draw(generators, shape, device), alpha=sigma)
    raise AssertionError("timesteps always end at 0.0")


def image_seed(content_sha256: str, settings: Mapping[str, object]) -> int:
    """A stable 63-bit seed from the input's content hash and its settings.

    SHA-256 over canonical JSON (sorted keys, no whitespace) of both, so the same file with
    the same settings always gets the same noise, and so the same output. An explicit
    ``seed`` in the settings is hashed *with* the content rather than used as is: changing
    it re-rolls every image, while two different files never share a noise stream.
    ``artd generate`` can pass a per-image label (``"generate:<seed>:<index>"``) as content.
    """
    canonical = json.dumps(
        {"content": content_sha256, "settings": dict(settings)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1
