"""core.diffusion.schedule: schedule, settings, the SDEdit/DDIM sampler and a toy denoise training.

Real torch on the CPU with tiny shapes; the denoiser is the real ConvDiffusionModel."""

from __future__ import annotations

import math
import warnings
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.diffusion.sampler_settings import SamplerSettings
from core.diffusion.schedule import (
    V_RANGE,
    Schedule,
    clean_pixels,
    image_seed,
    noised,
    sample,
    sample_levels,
    seeded_noise,
    step_count,
    target,
    timesteps,
)
from core.network.model import ConvDiffusionModel

SIZE = 16
SCHEDULE = Schedule()
V_SCHEDULE = Schedule(parameterisation="v")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _waves(n: int, generator: torch.Generator) -> torch.Tensor:
    """n procedural 16 px images: per-channel plane waves of random direction, frequency,
    phase and amplitude around mid-grey (a family the toy denoiser can generalise over)."""
    grid = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    yx = torch.stack(grid).float() / SIZE
    freq = torch.randint(-2, 3, (n, 1, 2, 1, 1), generator=generator).float()
    freq[:, :, 0] += (freq[:, :, 0] == 0).float()  # never a flat image
    phase = torch.rand(n, 3, 1, 1, generator=generator) * 2 * math.pi
    amp = 0.2 + 0.25 * torch.rand(n, 3, 1, 1, generator=generator)
    wave = (freq * yx).sum(2) * 2 * math.pi
    return (0.5 + amp * torch.sin(wave + phase)).clamp(0, 1)


def _untrained() -> ConvDiffusionModel:
    torch.manual_seed(0)
    return ConvDiffusionModel().eval()


def _validation_loss(model: ConvDiffusionModel) -> float:
    """Fixed images, levels and noise seeds: a deterministic figure."""
    pixels = _waves(10, torch.Generator().manual_seed(123))
    levels = torch.linspace(0.1, 0.9, 10)
    noise = seeded_noise(list(range(10)), (3, SIZE, SIZE))
    model.eval()
    with torch.no_grad():
        return F.mse_loss(model(noised(pixels, levels, noise, SCHEDULE)), pixels).item()


def _train(model: ConvDiffusionModel, schedule: Schedule) -> ConvDiffusionModel:
    """200 denoise steps of batch 4 on fresh waves, toward ``schedule``'s target."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):
        pixels = _waves(4, generator)
        noise = torch.randn(pixels.shape, generator=generator)
        t = sample_levels(4, generator)
        x_t = noised(pixels, t, noise, schedule)
        loss = F.mse_loss(model(x_t), target(pixels, t, noise, schedule))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[ConvDiffusionModel, float, float]:
    """The toy x0 denoiser: (model, loss before, loss after)."""
    model = _untrained()
    before = _validation_loss(model)
    model = _train(model, SCHEDULE)
    return model, before, _validation_loss(model)


@pytest.fixture(scope="module")
def trained_v() -> ConvDiffusionModel:
    """The same toy training with the v parameterisation."""
    return _train(_untrained(), V_SCHEDULE)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# --- schedule ---------------------------------------------------------------------------


def test_schedule_endpoints_and_monotonic() -> None:
    assert SCHEDULE.alpha_bar(0.0) == pytest.approx(1.0, abs=1e-4)
    assert SCHEDULE.alpha_bar(1.0) == pytest.approx(0.0, abs=1e-4)
    assert SCHEDULE.alpha_bar(1.0) > 0.0 and SCHEDULE.alpha_bar(0.0) < 1.0
    grid = torch.linspace(0, 1, 101)
    values = SCHEDULE.alpha_bar(grid)
    assert isinstance(values, torch.Tensor) and values.dtype == torch.float32
    assert bool((values[1:] <= values[:-1]).all()) and values[50] < values[10]
    floats = torch.tensor([SCHEDULE.alpha_bar(float(t)) for t in grid])
    assert torch.allclose(values, floats)


def test_schedule_dict_round_trip() -> None:
    record = SCHEDULE.to_dict()
    assert record["kind"] == "cosine" and record["parameterisation"] == "x0"
    assert Schedule.from_dict(record) == SCHEDULE
    custom = Schedule(offset=0.01, min_alpha_bar=1e-4)
    assert Schedule.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"colour": 1}, "colour"),
        ({"kind": "linear"}, "kind"),
        ({"parameterisation": "eps"}, "parameterisation"),
        ({"parameterisation": "V"}, "parameterisation"),
        ({"offset": "small"}, "offset"),
        ({"min_alpha_bar": 0.0}, "min_alpha_bar"),
        ({"max_alpha_bar": 1.0}, "max_alpha_bar"),
    ],
)
def test_schedule_bad_dict_names_the_key(change: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        Schedule.from_dict({**SCHEDULE.to_dict(), **change})


def test_schedule_dict_needs_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        Schedule.from_dict({"offset": 0.008})


def test_noised_is_the_forward_process() -> None:
    pixels = torch.rand(3, 3, 8, 8)
    noise = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = noised(pixels, t, noise, SCHEDULE)
    assert x_t.shape == pixels.shape and x_t.dtype == pixels.dtype
    for i in range(3):
        ab = SCHEDULE.alpha_bar(float(t[i]))
        expected = math.sqrt(ab) * (2 * pixels[i] - 1) + math.sqrt(1 - ab) * noise[i]
        assert torch.allclose(x_t[i], expected, atol=1e-6, rtol=0)
        assert torch.allclose(
            noised(pixels[i : i + 1], float(t[i]), noise[i : i + 1], SCHEDULE),
            x_t[i : i + 1],
            atol=1e-6,
        )
    assert torch.allclose(x_t[0], 2 * pixels[0] - 1, atol=0.02)  # t = 0: (almost) clean
    assert torch.allclose(x_t[2], noise[2], atol=0.02)  # t = 1: (almost) pure noise
    levels = sample_levels(1000, torch.Generator().manual_seed(0))
    assert levels.shape == (1000,) and float(levels.min()) >= 0 and float(levels.max()) < 1
    assert abs(float(levels.mean()) - 0.5) < 0.05


def test_v_target_and_clean_pixels_invert_each_other() -> None:
    """x0 = a x_t - s v with v = a eps - s x0: the target, read back at its input and level,
    is the clean image (noise kept inside the Sigmoid's reach, |v| < V_RANGE)."""
    pixels = torch.rand(4, 3, 8, 8)
    noise = torch.randn(4, 3, 8, 8).clamp(-2.5, 2.5)
    levels = [0.02, 0.3, 0.7, 0.98]
    t = torch.tensor(levels)
    x_t = noised(pixels, t, noise, V_SCHEDULE)
    out = target(pixels, t, noise, V_SCHEDULE)
    assert float(out.min()) > 0.0 and float(out.max()) < 1.0
    for i, level in enumerate(levels):
        a, s = math.sqrt(SCHEDULE.alpha_bar(level)), math.sqrt(1 - SCHEDULE.alpha_bar(level))
        v = a * noise[i] - s * (2 * pixels[i] - 1)
        assert torch.allclose(out[i], v / (2 * V_RANGE) + 0.5, atol=1e-6)
        back = clean_pixels(out[i : i + 1].clone(), x_t[i : i + 1], level, V_SCHEDULE)
        assert torch.allclose(back[0], pixels[i], atol=1e-5), level
    assert target(pixels, t, noise, SCHEDULE) is pixels  # x0: the clean image itself


def test_v_reads_a_mid_output_as_the_scaled_input() -> None:
    """v = 0 (out = 0.5) means x0_hat = a x_t: at a low level that is nearly the input, where
    an x0 network saying 0.5 means flat grey."""
    x_t = torch.rand(1, 3, 8, 8) * 2 - 1
    half = torch.full_like(x_t, 0.5)
    a = math.sqrt(SCHEDULE.alpha_bar(0.05))
    kept = clean_pixels(half.clone(), x_t, 0.05, V_SCHEDULE)
    assert torch.allclose(kept, (a * x_t + 1) / 2, atol=1e-6)
    assert torch.equal(clean_pixels(half.clone(), x_t, 0.05, SCHEDULE), half)


def test_v_keeps_the_input_at_low_strength_where_x0_redraws_it(
    trained: tuple[ConvDiffusionModel, float, float], trained_v: ConvDiffusionModel
) -> None:
    """Both toy denoisers, trained alike, on an input unlike their waves (a photo is unlike
    the collection): at strength 0.05 the v model's output stays close to it and far
    closer than the x0 model's, which redraws every pixel at half resolution; at strength 1
    both make waves (the v model is a working denoiser too). Measured: mean abs difference
    (0..255 levels) 8.6 for v and 24.7 for x0 at 0.05."""
    probe = _waves(1, torch.Generator().manual_seed(999))
    speckle = torch.rand(probe.shape, generator=torch.Generator().manual_seed(5))
    probe = (probe + 0.3 * speckle).clamp(0, 1)
    near_zero = SamplerSettings(strength=0.05, steps=20)
    diffs = {}
    for name, model, schedule in (("x0", trained[0], SCHEDULE), ("v", trained_v, V_SCHEDULE)):
        outs = [sample(model, probe, [seed], near_zero, schedule) for seed in range(3)]
        diffs[name] = float(np.mean([(o - probe).abs().mean() * 255 for o in outs]))
    assert diffs["v"] < 0.5 * diffs["x0"], diffs


# --- settings and timesteps -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": math.nan}, "strength"),
        ({"strength": "half"}, "strength"),
        ({"eta": 2.0}, "eta"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"seed": 1.0}, "seed"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_settings_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        SamplerSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_accept_the_edges() -> None:
    SamplerSettings(strength=0, steps=1, eta=0, seed=None)
    settings = SamplerSettings(strength=1, steps=1000, eta=1, seed=2**63 - 1)
    assert settings == SamplerSettings(strength=1.0, steps=1000, eta=1.0, seed=2**63 - 1)
    assert isinstance(settings.strength, float) and isinstance(settings.eta, float)


@pytest.mark.parametrize(
    ("strength", "steps"), [(1.0, 25), (0.5, 25), (0.3, 10), (0.04, 25), (0.7, 1)]
)
def test_timesteps_count_and_end_at_zero(strength: float, steps: int) -> None:
    n = math.floor(steps * strength + 0.5)
    levels = timesteps(strength, steps)
    assert step_count(strength, steps) == n
    if n == 0:
        assert levels == []
        return
    assert len(levels) == n + 1 and levels[0] == strength and levels[-1] == 0.0
    assert all(a > b for a, b in pairwise(levels))


def test_timesteps_empty_without_steps() -> None:
    assert timesteps(0.0, 25) == [] and timesteps(0.01, 25) == []


def test_half_rounds_up() -> None:
    assert step_count(0.5, 25) == 13 and len(timesteps(0.5, 25)) == 14


# --- sampler ----------------------------------------------------------------------------


def test_strength_zero_returns_input_exactly() -> None:
    pixels = torch.rand(2, 3, SIZE, SIZE)
    for settings in (SamplerSettings(strength=0.0), SamplerSettings(strength=0.01, steps=10)):
        out = sample(_untrained(), pixels, [1, 2], settings, SCHEDULE)
        assert torch.equal(out, pixels) and out is not pixels


def test_one_denoise_call_per_step_for_the_whole_batch() -> None:
    calls: list[int] = []

    def denoise(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.full_like(x, 0.25)

    out = sample(denoise, torch.rand(3, 3, 8, 8), [1, 2, 3], SamplerSettings(0.5, 10), SCHEDULE)
    assert calls == [3] * 5
    assert torch.equal(out, torch.full_like(out, 0.25))  # the last step returns x0_hat


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_oracle_denoiser_keeps_the_forward_marginals(eta: float) -> None:
    """With a denoiser that knows x0, every x_t the sampler visits must look like the
    forward process at that level: mean sqrt(ab) x0, standard deviation sqrt(1 - ab). This
    pins the initial noising and the DDIM eq. 12 coefficients for every eta."""
    seen: list[torch.Tensor] = []

    def oracle(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.full_like(x, 0.75)

    pixels = torch.full((2, 3, 32, 32), 0.75)  # x0 = 0.5 in model space
    settings = SamplerSettings(strength=0.8, steps=10, eta=eta)
    out = sample(oracle, pixels, [1, 2], settings, SCHEDULE)
    assert torch.equal(out, pixels)
    levels = timesteps(0.8, 10)
    assert len(seen) == len(levels) - 1
    first_noise = (seen[0] - math.sqrt(SCHEDULE.alpha_bar(levels[0])) * 0.5) / math.sqrt(
        1 - SCHEDULE.alpha_bar(levels[0])
    )
    for x_t, t in zip(seen, levels, strict=False):
        ab = SCHEDULE.alpha_bar(t)
        noise = (x_t - math.sqrt(ab) * 0.5) / math.sqrt(1 - ab)
        assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05, t
        if eta == 0.0:  # deterministic DDIM keeps the very same noise
            assert torch.allclose(noise, first_noise, atol=1e-4)
        elif t < levels[0]:
            assert not torch.allclose(noise, first_noise, atol=1e-2)


def test_same_seed_same_output_different_seed_different_output() -> None:
    model, pixels = _untrained(), torch.rand(1, 3, SIZE, SIZE)
    settings = SamplerSettings(strength=0.6, steps=10)
    first = sample(model, pixels, [42], settings, SCHEDULE)
    assert torch.equal(first, sample(model, pixels, [42], settings, SCHEDULE))
    other = sample(model, pixels, [43], settings, SCHEDULE)
    assert (first - other).abs().max() > 1e-3


def test_noise_is_per_image_and_batch_independent() -> None:
    alone = seeded_noise([5], (3, 4, 4))
    batch = seeded_noise([9, 5, 7], (3, 4, 4))
    assert torch.equal(alone[0], batch[1]) and not torch.equal(batch[0], batch[2])


def test_batch_composition_independence() -> None:
    model, pixels = _untrained(), torch.rand(3, 3, SIZE, SIZE)
    settings = SamplerSettings(strength=0.7, steps=10)

    def one_at_a_time(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x[i : i + 1]) for i in range(x.shape[0])])

    # The sampler's own arithmetic is per image: bit-exact with a per-image denoiser.
    alone = sample(one_at_a_time, pixels[:1], [11], settings, SCHEDULE)
    batched = sample(one_at_a_time, pixels, [11, 12, 13], settings, SCHEDULE)
    assert torch.equal(alone[0], batched[0])
    # The batched network itself rounds differently with batch size through oneDNN's
    # convolutions on the CPU (measured: 2-5e-7 per forward, 1.2-1.8e-7 after sampling, no
    # uint8 pixel changed), so that comparison is tolerant; without oneDNN it is exact.
    alone = sample(model, pixels[:1], [11], settings, SCHEDULE)
    batched = sample(model, pixels, [11, 12, 13], settings, SCHEDULE)
    assert torch.allclose(alone[0], batched[0], atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 note when toggled
        with torch.backends.mkldnn.flags(enabled=False):
            alone = sample(model, pixels[:1], [11], settings, SCHEDULE)
            batched = sample(model, pixels, [11, 12, 13], settings, SCHEDULE)
    assert torch.equal(alone[0], batched[0])


def test_output_stays_in_unit_range(trained: tuple[ConvDiffusionModel, float, float]) -> None:
    pixels = torch.rand(2, 3, SIZE, SIZE)

    def wild(x: torch.Tensor) -> torch.Tensor:  # a denoiser that overshoots 0..1
        return x * 3

    for denoise in (trained[0], _untrained(), wild):
        for eta in (0.0, 1.0):
            out = sample(denoise, pixels, [1, 2], SamplerSettings(1.0, 8, eta), SCHEDULE)
            assert out.shape == pixels.shape and out.dtype == pixels.dtype
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_strength_one_ignores_the_input() -> None:
    model, settings = _untrained(), SamplerSettings(strength=1.0, steps=5)
    first = sample(model, torch.rand(1, 3, SIZE, SIZE), [3], settings, SCHEDULE)
    assert torch.equal(first, sample(model, torch.zeros(1, 3, SIZE, SIZE), [3], settings, SCHEDULE))


def test_denoise_training_loss_falls(trained: tuple[ConvDiffusionModel, float, float]) -> None:
    _, before, after = trained
    assert after < 0.6 * before, (before, after)  # measured 0.077 -> 0.031


@pytest.mark.parametrize("parameterisation", ["x0", "v"])
def test_content_similarity_falls_with_strength(
    trained: tuple[ConvDiffusionModel, float, float],
    trained_v: ConvDiffusionModel,
    parameterisation: str,
) -> None:
    """With the toy-trained denoiser, a held-out wave is kept at low strength and replaced
    by another of the family at strength 1. Measured (three training seeds): correlation
    with the input 0.96, 0.91-0.93, 0.77-0.83, 0.22-0.29, 0.02-0.06 at strengths 0.1,
    0.2, 0.4, 0.8, 1.0 for x0; 0.95, 0.83-0.84, 0.54-0.56, 0.07-0.10, -0.03-0.00 for v. An
    untrained network scores a flat ~0.09 and fails here."""
    model = trained[0] if parameterisation == "x0" else trained_v
    schedule = Schedule(parameterisation=parameterisation)
    probe = _waves(1, torch.Generator().manual_seed(999))
    means = []
    for strength in (0.1, 0.2, 0.4, 0.8, 1.0):
        settings = SamplerSettings(strength=strength, steps=10)
        outs = [sample(model, probe, [seed], settings, schedule) for seed in range(3)]
        means.append(np.mean([_correlation(out, probe) for out in outs]))
    assert means[0] > 0.8 and means[-1] < 0.25, means
    assert all(a > b + 0.02 for a, b in pairwise(means)), means


# --- seeds ------------------------------------------------------------------------------


def test_image_seed_is_stable_and_sensitive() -> None:
    sha = "ab" * 32
    settings = SamplerSettings(strength=0.5).to_dict()
    seed = image_seed(sha, settings)
    assert seed == image_seed(sha, dict(reversed(list(settings.items()))))
    assert 0 <= seed < 2**63
    assert seed != image_seed("cd" * 32, settings)
    assert seed != image_seed(sha, {**settings, "strength": 0.6})
    explicit = {**settings, "seed": 7}
    assert image_seed(sha, explicit) != seed
    assert image_seed(sha, explicit) != image_seed("cd" * 32, explicit)
    # Pinned: a change here would change every user's output for the same file.
    assert image_seed("0" * 64, {"steps": 25}) == 7704709531602673934
