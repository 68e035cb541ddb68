"""``python -m core.train``: train ConvDiffusionModel with the post's recipe, done right.

Reads top to bottom the way :func:`train` runs: settings, perceptual loss (offline weights),
the resume state and the run folder, data (decode-once cache), model and optimizer, one
epoch loop (train, then validate and write), and the promotion gate. Defaults are the
post's: 150 epochs, batch 32, Adam 1e-3, StepLR(30, 0.1), 128 px stretch, MSE + 1.0 x VGG16
perceptual loss; unlike the post, output and target are compared in pixel space (defect 1 in
docs/post.md).

``--objective`` picks what the network learns (``core.objectives``; docs/training.md): the
objective decides the image space, each step's input and target, the loss and its parts, the
validation figure, the sample grid and what a checkpoint records; this file names none of
them. ``denoise`` trains the same network as a diffusion denoiser (each image noised to a
random level, the clean image as the target); ``style`` trains photo -> the collection's
manner (Johnson et al. 2016) and needs VGG16 weights whatever ``--perceptual-weight`` says,
stopping before any work when none are found. The promotion gate never compares checkpoints
of different objectives (``core.training.gate``).

Several GPUs or hosts: ``torchrun --nproc_per_node=N -m core.train ...`` (DDP; NCCL on GPU,
gloo on CPU; ``core.training.distributed``). Each process takes ``batch_size`` images per
step, so the global batch is ``batch_size x N``; ``lr`` is used as given. Only rank 0
validates and writes files. Exit status: 0 done, 1 failed, 2 bad settings, 3 trained but the
gate kept the served model, also when that model has another objective (under torchrun, rank
0's 3 makes torchrun report a failure).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch import nn
from torch.utils.data import DataLoader

from core.checkpoint import CheckpointMeta
from core.config import SettingsError
from core.objectives import Objective, Steps
from core.objectives import get as objective_named
from core.training.command import parse_settings
from core.training.distributed import Dist, main_first, setup
from core.training.gate import EXIT_NOT_PROMOTED, promotion_gate
from core.training.learner import Learner, build_learner
from core.training.loaders import Data
from core.training.losses import RunLoss, resolve_vgg_features
from core.training.run_folder import RunFolder
from core.training.settings import TrainSettings
from core.training.state import find_resume_state, load_training_state


def train(s: TrainSettings, d: Dist, closing: contextlib.ExitStack) -> int:
    """The whole run; ``closing`` collects what must be undone when it ends (the run folder's
    log sink and TensorBoard)."""
    seed_everything(s.seed, s.deterministic)
    objective = objective_named(s.objective)
    channels_last = s.channels_last and d.device.type == "cuda"
    # VGG first: missing weights must stop us before any work is done.
    vgg, vgg_source = load_vgg(s, d, objective, channels_last)
    state_path, state = load_resume(s)
    run = closing.enter_context(
        RunFolder.start(s.out, resume_state=state_path, main=d.is_main, tensorboard=s.tensorboard)
    )
    logger.info("{} loss: {}", objective.vgg_use, vgg_source)
    if state is not None:
        run.truncate_metrics(state["epoch"])  # the interrupted epoch is trained again

    data = objective.load_data(s, d, run)
    loss_fn = objective.loss(s, d, vgg, data)
    learner = build_learner(s, d, state, channels_last, objective.space(), objective.network(s))
    steps = objective.steps(s, d, loss_fn, data)  # each step's input, target and loss extras
    logger.info(
        "training {} ({}) epochs from {} on {} x{} ({}), global batch {}, {} train / {} val images",
        s.epochs, s.objective, learner.start_epoch, d.device, d.world_size,
        learner.amp_dtype or torch.float32,
        s.batch_size * d.world_size, len(data.train_set), len(data.val_set),
    )  # fmt: skip

    for epoch in range(learner.start_epoch, s.epochs):
        result = train_epoch(s, d, learner, data, loss_fn, epoch, steps, objective.loss_parts)
        if d.is_main:
            end_epoch(s, objective, learner, data, loss_fn, run, epoch + 1, result)
        d.barrier()

    if not d.is_main or s.promote is None:
        return 0
    return gate(s, learner, data, loss_fn, run)


# --- set-up -------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python's, NumPy's and torch's RNGs (weights, shuffling, everything random)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def load_vgg(
    s: TrainSettings, d: Dist, objective: Objective, channels_last: bool
) -> tuple[nn.Sequential | None, str]:
    """VGG16 ``features[:16]`` when the objective needs it (a perceptual weight, or style),
    and where its weights came from (rank 0 looks first: it may download them into the hub
    cache the others then read)."""
    options = objective.vgg_options(s)
    if options is None:
        return None, "off (--perceptual-weight 0)"
    features, source = main_first(
        d, lambda: resolve_vgg_features(s.vgg_weights, download=s.vgg_download, **options)
    )
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    return features, source


def load_resume(s: TrainSettings) -> tuple[Path | None, dict[str, Any] | None]:
    """``--resume``: the state file and its contents; (None, None) for a fresh run."""
    if not s.resume:
        return None, None
    path = find_resume_state(s.out, s.resume)
    state = load_training_state(path)
    logger.info("resuming {} after epoch {}", path, state["epoch"])
    # The settings given now win; say which differ (a changed batch size breaks equivalence).
    before, now = state.get("settings", {}), s.as_json()
    changed = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
    changed.pop("resume", None)
    trained = before.get("objective", "reconstruct")  # states from before objectives
    if trained != s.objective:
        raise SettingsError(
            f"--resume: the run trains {trained}, not {s.objective}; "
            "start a new run to change the objective"
        )
    built = before.get("decoder", "transpose")  # states from before decoder variants
    if built != s.decoder:
        raise SettingsError(
            f"--resume: the run's network has the {built} decoder, not {s.decoder}; "
            "start a new run to change the network"
        )
    guided = before.get("guide_abstraction", "luminance")  # states from before guides
    if guided != s.guide_abstraction:
        raise SettingsError(
            f"--resume: the run's guide keeps {guided}, not {s.guide_abstraction}; "
            "start a new run to change the guide"
        )
    meant = before.get("parameterisation", "x0")  # states from before parameterisations
    if meant != s.parameterisation:
        raise SettingsError(
            f"--resume: the run's network predicts {meant}, not {s.parameterisation}; "
            "start a new run to change the parameterisation"
        )
    if changed:
        logger.warning("resume: settings changed since the run started: {}", changed)
    return path, state


# --- one loop -----------------------------------------------------------------------------------


@dataclass
class EpochResult:
    """One epoch's training figures, summed over every rank: the loss's parts by name
    (``Objective.loss_parts``), the learning rate and the speed."""

    parts: dict[str, float]
    lr: float
    images_per_s: float
    seconds: float

    def row(self, epoch: int, val: dict[str, float]) -> dict[str, float]:
        """The epoch's ``metrics.jsonl`` row, validation figures in the middle."""
        return {
            "epoch": epoch,
            **self.parts,
            **val,
            "lr": self.lr,
            "images_per_s": self.images_per_s,
            "seconds": self.seconds,
        }


def train_epoch(
    s: TrainSettings,
    d: Dist,
    learner: Learner,
    data: Data,
    loss_fn: RunLoss,
    epoch: int,
    steps: Steps,
    names: tuple[str, ...],
) -> EpochResult:
    """One pass over this rank's share of the training set, then one scheduler step;
    ``steps`` (what they draw: a denoise run's noise, a style run's style image) is
    re-seeded for the epoch like the sampler's shuffle. ``names``: the loss's parts."""
    learner.model.train()
    data.sampler.set_epoch(epoch)
    steps.start_epoch(epoch)
    lr = learner.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    show_bar = d.is_main and sys.stderr.isatty()
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=d.device)  # parts, n
    for step, batch in enumerate(progress(data.loader, show_bar, f"epoch {epoch + 1}")):
        parts, n = train_step(learner, batch, loss_fn, steps)
        sums[:-1] += parts * n
        sums[-1] += n
        if not show_bar and d.is_main and (step + 1) % s.log_every == 0:
            logger.info("epoch {} step {}: loss {:.5f}", epoch + 1, step + 1, parts[0].item())
    learner.scheduler.step()
    d.all_reduce(sums)
    seconds = time.perf_counter() - started
    *totals, count = sums.tolist()
    parts = {name: total / count for name, total in zip(names, totals, strict=True)}
    return EpochResult(parts, lr, count / seconds, seconds)


def train_step(
    learner: Learner,
    batch: torch.Tensor,
    loss_fn: RunLoss,
    steps: Steps,
) -> tuple[torch.Tensor, int]:
    """One optimizer step; returns the loss's parts (``Objective.loss_parts``) as float64 and
    the batch's size. ``steps`` makes the network's input and the target from the batch
    (denoise: the noised batch and the clean one) and may give the loss more (style: the
    step's style image)."""
    inputs, target = steps.pair(batch, learner)
    amp = learner.amp_dtype
    with torch.autocast(learner.device.type, dtype=amp, enabled=amp is not None):
        output = learner.model(inputs)
        losses = loss_fn(output, target, *steps.loss_args(learner.device))
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(losses[0]).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    parts = torch.stack([part.detach() for part in losses]).double()
    return parts, target.shape[0]


def progress(loader: DataLoader, enabled: bool, desc: str) -> Iterable[torch.Tensor]:
    """The loader, behind a tqdm bar when ``enabled`` (rank 0 on a terminal)."""
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


# --- checkpoint ---------------------------------------------------------------------------------


def end_epoch(
    s: TrainSettings,
    objective: Objective,
    learner: Learner,
    data: Data,
    loss_fn: RunLoss,
    run: RunFolder,
    done: int,
    result: EpochResult,
) -> None:
    """Rank 0, after epoch ``done``: validate, then write metrics, checkpoints, pictures and,
    last, the resume state (a crash before it redoes the epoch, never skips it)."""
    figure = objective.run_figure(s, learner.space)
    val = objective.evaluate(
        learner.raw, data.val_batches, loss_fn, learner.device, figure,
        channels_last=learner.channels_last,
    )  # fmt: skip
    row = result.row(done, val)
    run.log_metrics(row)
    objective.log_epoch(done, s.epochs, row)
    weights = cpu_state_dict(learner.raw)
    metrics = {k: v for k, v in row.items() if k != "epoch"}
    meta = checkpoint_meta(s, objective, done, metrics, data)
    if val and val["val_loss"] < learner.best_val_loss:
        learner.best_val_loss = val["val_loss"]
        run.save_best(weights, meta)
    if done % s.checkpoint_every == 0 or done == s.epochs:
        run.save_epoch(weights, meta, s.keep_last)
    if done % s.sample_every == 0 or done == s.epochs:
        run.plot_losses()
        save_samples(s, objective, learner, data, run, done)
    run.save_state(learner.state(done, weights, s))


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """One CPU copy of the weights, shared by the checkpoints and the resume state."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def checkpoint_meta(
    s: TrainSettings, objective: Objective, epoch: int, metrics: dict[str, float], data: Data
) -> CheckpointMeta:
    """What a checkpoint records: the run, and what its objective decides
    (``Objective.meta_fields``: ImageNet's ``normalization`` by default, denoise's contract,
    schedule and sampler)."""
    return CheckpointMeta(
        image_space="pixel",
        train_size=s.image_size,
        # A square crop keeps the content's aspect ratio: serve such a model with "fit".
        resize="stretch" if s.resize == "stretch" else "fit",
        epoch=epoch,
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
        dataset_hash=data.dataset_hash(),
        settings=s.as_json(),
        decoder=s.decoder,
        colour=None if s.recommend_colour == "none" else s.recommend_colour,
        **objective.meta_fields(s),  # type: ignore[arg-type]
    )


@torch.no_grad()
def save_samples(
    s: TrainSettings,
    objective: Objective,
    learner: Learner,
    data: Data,
    run: RunFolder,
    epoch: int,
) -> None:
    """The sample grid: the first validation images and what the network makes of them
    (the objective's grid: image | output rows; denoise samples at a few strengths, plus a
    row from pure noise)."""
    if not len(data.sample_batch):
        return
    learner.raw.eval()
    images, columns = objective.sample_grid(learner, data, s)
    run.save_sample_grid(epoch, images, columns)


def gate(s: TrainSettings, learner: Learner, data: Data, loss_fn: RunLoss, run: RunFolder) -> int:
    """``--promote``: the run's best checkpoint against the served one; the exit status."""
    best = run.best
    if best is None or not best.exists():
        logger.error("gate: no best checkpoint (no validation images?); nothing promoted")
        return EXIT_NOT_PROMOTED
    result = promotion_gate(
        s.promote, best, data.val_batches, loss_fn, learner.device, s.promote_tolerance,
        across_objectives=s.promote_across_objectives,
    )  # fmt: skip
    run.write_json("gate.json", result.to_dict())
    return 0 if result.promoted else EXIT_NOT_PROMOTED


# --- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"python -m core.train: {exc}", file=sys.stderr)
        return 2
    d = None
    try:
        d = setup(settings.device)
        if not d.is_main:
            logger.remove()
            logger.add(sys.stderr, level="WARNING")
        with contextlib.ExitStack() as closing:
            return train(settings, d, closing)
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        logger.warning("interrupted; resume with --resume latest")
        return 130
    except Exception as exc:
        logger.opt(exception=not _expected(exc)).error("training failed: {}", exc)
        return 1
    finally:
        if d is not None:
            d.close()


def _expected(exc: Exception) -> bool:
    """Errors whose message says it all (no traceback needed)."""
    from core.checkpoint import CheckpointError
    from core.training.losses import VGGWeightsError

    return isinstance(exc, VGGWeightsError | CheckpointError | FileNotFoundError | SettingsError)


if __name__ == "__main__":
    raise SystemExit(main())
