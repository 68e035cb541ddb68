"""``python -m core.train``: train ConvDiffusionModel with the seed's recipe, done right.

Readable top to bottom: settings, distributed set-up, perceptual loss (offline weights), data
(decode-once cache), model and optimizer (or the resume state), the epoch loop (train,
validate, write), and the promotion gate. Defaults are the seed's: 150 epochs, batch 32,
Adam 1e-3, StepLR(30, 0.1), 128 px stretch, MSE + 1.0 x VGG16 perceptual loss; unlike the
seed, output and target are compared in pixel space (SEED.md defect 1).

Several GPUs or hosts: ``torchrun --nproc_per_node=N -m core.train ...`` (DDP; NCCL on GPU,
gloo on CPU). Each process takes ``batch_size`` images per step, so the global batch is
``batch_size x N``; ``lr`` is used as given. Only rank 0 writes files. Exit status: 0 done,
1 failed, 2 bad settings, 3 trained but the gate kept the served model (under torchrun,
rank 0's 3 makes torchrun report a failure).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from loguru import logger
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from core.checkpoint import CheckpointMeta
from core.config import SettingsError
from core.data import CachedImages, PreparedData, prepare
from core.devices import native_reduced_dtype, pick_device
from core.losses import ImageNetNormalize, PerceptualLoss, TrainingLoss, resolve_vgg_features
from core.model import ConvDiffusionModel
from core.train_gate import EXIT_NOT_PROMOTED, batch_to_device, evaluate, promotion_gate
from core.train_run import (
    BEST,
    LAST_STATE,
    TensorBoard,
    append_metrics,
    cpu_state_dict,
    create_run_dir,
    find_resume_state,
    load_training_state,
    plot_losses,
    rng_state,
    save_best_checkpoint,
    save_epoch_checkpoint,
    save_samples,
    save_training_state,
    set_rng_state,
    truncate_metrics,
    write_json,
)
from core.train_settings import TrainSettings, parse_settings

T = TypeVar("T")


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_spec: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(int(os.environ.get("RANK", "0")), world_size, device)


def main_first(d: Dist, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 first (it may write caches), then on the others if it worked."""
    if not d.enabled:
        return work()
    ok = [True]
    if d.is_main:
        try:
            result = work()
        except BaseException:
            ok = [False]
            dist.broadcast_object_list(ok, src=0)
            raise
    dist.broadcast_object_list(ok, src=0)
    if not ok[0]:
        raise SystemExit(1)  # rank 0 reports the error
    return result if d.is_main else work()


def share_from_main(d: Dist, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and hand its (picklable) result to every rank."""
    if not d.enabled:
        return work()
    box: list = [None, None]
    if d.is_main:
        try:
            box = [True, work()]
        except BaseException:
            dist.broadcast_object_list([False, None], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if not box[0]:
        raise SystemExit(1)
    return box[1]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. ``auto``: what the device computes natively (bf16 on recent CUDA and on
    CPUs with AVX512-BF16/AMX, about 2x faster there; fp16 + scaler on older CUDA), else fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        return native_reduced_dtype(device)
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("--precision fp16 needs CUDA (use bf16 or fp32 on this device)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_meta(
    s: TrainSettings, epoch: int, metrics: dict[str, float], data: PreparedData
) -> CheckpointMeta:
    return CheckpointMeta(
        image_space="pixel",
        train_size=s.image_size,
        # A square crop keeps the content's aspect ratio: serve such a model with "fit".
        resize="stretch" if s.resize == "stretch" else "fit",
        epoch=epoch,
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
        dataset_hash=data.dataset_hash(),
        settings=s.model_dump(mode="json"),
    )


def progress(loader: DataLoader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def train(s: TrainSettings, d: Dist, closing: contextlib.ExitStack) -> int:
    """The whole run; ``closing`` collects what must be undone when it ends (log sinks...)."""
    device = d.device
    seed_everything(s.seed)
    if s.deterministic:
        torch.use_deterministic_algorithms(True)
    channels_last = s.channels_last and device.type == "cuda"

    # Perceptual loss first: missing VGG weights must stop us before any work is done.
    perceptual, vgg_source = None, "off (--perceptual-weight 0)"
    if s.perceptual_weight > 0:
        features, vgg_source = main_first(
            d, lambda: resolve_vgg_features(s.vgg_weights, download=s.vgg_download)
        )
        perceptual = PerceptualLoss(features)
        if channels_last:
            perceptual = perceptual.to(memory_format=torch.channels_last)
    loss_fn = TrainingLoss(perceptual, s.perceptual_weight).to(device)

    # Resume state and the run folder (rank 0 writes; others never need the path).
    state, run = None, None
    if s.resume:
        state_path = find_resume_state(s.out, s.resume)
        state = load_training_state(state_path)
        run = state_path.parent if d.is_main else None
        logger.info("resuming {} after epoch {}", state_path, state["epoch"])
        # The settings given now win; say which differ (a changed batch size breaks equivalence).
        before, now = state.get("settings", {}), s.model_dump(mode="json")
        changed = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
        changed.pop("resume", None)
        if changed:
            logger.warning("resume: settings changed since the run started: {}", changed)
    elif d.is_main:
        run = create_run_dir(s.out)
    if run is not None:
        sink = logger.add(run / "train.log", level="INFO")
        closing.callback(logger.remove, sink)
        logger.info("run folder {}", run)
        logger.info("perceptual loss: {}", vgg_source)

    # Data: scanned, decoded once into the cache and split on rank 0, shared with the others.
    data = share_from_main(
        d,
        lambda: prepare(
            s.data, s.resolved_cache_dir(), s.image_size, s.resize, s.val_fraction,
            max_pixels=s.max_pixels,
        ),
    )  # fmt: skip
    if not data.slots("train"):
        raise RuntimeError(f"no usable training images in {s.data} (see rejected.jsonl)")
    if run is not None:
        write_json(run / "settings.json", s.model_dump(mode="json"))
        (run / "manifest.jsonl").write_bytes(data.manifest_bytes())
        (run / "rejected.jsonl").write_bytes(data.rejected_bytes())
    train_set = CachedImages(data.cache_file, s.image_size, data.slots("train"))
    val_set = CachedImages(data.cache_file, s.image_size, data.slots("val"))
    sampler = DistributedSampler(
        train_set, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=s.seed
    )
    loader = DataLoader(
        train_set,
        batch_size=s.batch_size,
        sampler=sampler,  # shuffles by (seed, epoch): a resumed epoch sees the same order
        collate_fn=CachedImages.collate_fn,
        num_workers=s.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=s.num_workers > 0,
        generator=torch.Generator().manual_seed(s.seed),  # keeps the global RNG untouched
    )
    val_batches = DataLoader(val_set, batch_size=s.batch_size, collate_fn=CachedImages.collate_fn)
    sample_batch = val_set.__getitems__(list(range(min(s.sample_count, len(val_set)))))

    # Model, optimizer, schedule: fresh from the seed, or exactly where the last run stopped.
    model = ConvDiffusionModel().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.lr_step, gamma=s.lr_gamma)
    start_epoch, best_val_loss = 0, math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_val_loss = state["epoch"], state["best_val_loss"]
        set_rng_state(state["rng"])
        if run is not None:
            truncate_metrics(run, start_epoch)
    raw_model = model
    if s.compile:
        model = torch.compile(model)
    if d.enabled:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp_dtype = autocast_dtype(s.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    normalize = ImageNetNormalize().to(device)
    tensorboard = TensorBoard(run, s.tensorboard) if run is not None else None
    if tensorboard is not None:
        closing.callback(tensorboard.close)
    show_bar = d.is_main and sys.stderr.isatty()
    logger.info(
        "training {} epochs from {} on {} x{} ({}), global batch {}, {} train / {} val images",
        s.epochs, start_epoch, device, d.world_size, amp_dtype or torch.float32,
        s.batch_size * d.world_size, len(train_set), len(val_set),
    )  # fmt: skip

    for epoch in range(start_epoch, s.epochs):
        # ---- train one epoch
        model.train()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, mse, perceptual, n
        for step, batch in enumerate(progress(loader, show_bar, f"epoch {epoch + 1}")):
            inputs, target = batch_to_device(batch, device, normalize, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                output = model(inputs)
                loss, mse, perceptual_loss = loss_fn(output, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = target.shape[0]
            parts = torch.stack([loss.detach(), mse.detach(), perceptual_loss.detach()]).double()
            sums[:3] += parts * n
            sums[3] += n
            if not show_bar and d.is_main and (step + 1) % s.log_every == 0:
                logger.info("epoch {} step {}: loss {:.5f}", epoch + 1, step + 1, loss.item())
        scheduler.step()
        if d.enabled:
            dist.all_reduce(sums)
        seconds = time.perf_counter() - started
        total, mse_sum, perceptual_sum, count = sums.tolist()

        # ---- validate and write (rank 0); the others wait at the barrier
        if d.is_main:
            done = epoch + 1
            val = evaluate(raw_model, val_batches, loss_fn, device, channels_last=channels_last)
            row = {
                "epoch": done,
                "loss": total / count,
                "mse": mse_sum / count,
                "perceptual": perceptual_sum / count,
                **val,
                "lr": lr,
                "images_per_s": count / seconds,
                "seconds": seconds,
            }
            append_metrics(run, row)
            tensorboard.scalars(row, done)
            logger.info(
                "epoch {}/{}: loss {:.5f} (mse {:.5f}, perceptual {:.5f}) val_mse {:.5f} "
                "val_psnr {:.2f} dB, {:.1f} images/s",
                done, s.epochs, row["loss"], row["mse"], row["perceptual"],
                row.get("val_mse", math.nan), row.get("val_psnr", math.nan), row["images_per_s"],
            )  # fmt: skip
            weights = cpu_state_dict(raw_model)
            meta = checkpoint_meta(s, done, {k: v for k, v in row.items() if k != "epoch"}, data)
            if val and val["val_loss"] < best_val_loss:
                best_val_loss = val["val_loss"]
                save_best_checkpoint(run, weights, meta)
            if done % s.checkpoint_every == 0 or done == s.epochs:
                save_epoch_checkpoint(run, weights, meta, s.keep_last)
            if done % s.sample_every == 0 or done == s.epochs:
                plot_losses(run)
                if len(sample_batch):
                    with torch.no_grad():
                        raw_model.eval()
                        inputs, target = batch_to_device(sample_batch, device, normalize, False)
                        grid = save_samples(
                            run / "samples" / f"epoch-{done:03d}.png", target, raw_model(inputs)
                        )
                    tensorboard.image("samples", grid, done)
            # Last: a crash before this line redoes the epoch, never skips it.
            save_training_state(
                run / LAST_STATE,
                {
                    "model": weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": done,
                    "best_val_loss": best_val_loss,
                    "rng": rng_state(),
                    "settings": s.model_dump(mode="json"),
                },
            )
        d.barrier()

    if not d.is_main or s.promote is None:
        return 0
    best = run / "checkpoints" / BEST
    if not best.exists():
        logger.error("gate: no best checkpoint (no validation images?); nothing promoted")
        return EXIT_NOT_PROMOTED
    result = promotion_gate(s.promote, best, val_batches, loss_fn, device, s.promote_tolerance)
    write_json(run / "gate.json", result.to_dict())
    return 0 if result.promoted else EXIT_NOT_PROMOTED


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"python -m core.train: {exc}", file=sys.stderr)
        return 2
    d = None
    closing = contextlib.ExitStack()
    try:
        d = setup_distributed(settings.device)
        if not d.is_main:
            logger.remove()
            logger.add(sys.stderr, level="WARNING")
        with closing:
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
        if d is not None and d.enabled:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _expected(exc: Exception) -> bool:
    """Errors whose message says it all (no traceback needed)."""
    from core.checkpoint import CheckpointError
    from core.losses import VGGWeightsError

    return isinstance(exc, VGGWeightsError | CheckpointError | FileNotFoundError)


if __name__ == "__main__":
    raise SystemExit(main())
