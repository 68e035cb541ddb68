"""The network and what trains it: model, optimizer, schedule and mixed precision.

A fresh run starts from the post's recipe (Adam, StepLR); a resumed one restores every part
of the ``last.pt`` state, RNGs last (initialising the fresh weights has drawn from them), so
the rest of the run matches an uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.network.model import ConvDiffusionModel
from core.network.space import ImageSpace
from core.runtime.devices import native_reduced_dtype
from core.training.distributed import Dist
from core.training.settings import TrainSettings
from core.training.state import rng_state, set_rng_state


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


@dataclass
class Learner:
    """The network and what trains it: fresh (the post's recipe), or where the last run stopped."""

    device: torch.device
    raw: ConvDiffusionModel  # the weights: validated, sampled and saved
    model: nn.Module  # what the loop calls: ``raw``, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    space: ImageSpace  # pixel space, the objective's statistics (recorded in every checkpoint)
    channels_last: bool
    start_epoch: int
    best_val_loss: float

    def state(self, epoch: int, weights: dict[str, torch.Tensor], s: TrainSettings) -> dict:
        """The resume state after ``epoch`` (``core.training.state``)."""
        return {
            "model": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_val_loss": self.best_val_loss,
            "rng": rng_state(),
            "settings": s.as_json(),
        }


def build_learner(
    s: TrainSettings,
    d: Dist,
    state: dict[str, Any] | None,
    channels_last: bool,
    space: ImageSpace,
    network: ConvDiffusionModel,
) -> Learner:
    """Model, optimizer, schedule and mixed precision; restored from ``state`` when resuming
    (the RNGs last: initialising the fresh weights has drawn from them). ``space``: how the
    network sees images, and ``network`` the fresh network, both the objective's
    (``Objective.space``, ``Objective.network``)."""
    device = d.device
    raw = network.to(device)
    if channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(raw.parameters(), lr=s.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.lr_step, gamma=s.lr_gamma)
    start_epoch, best_val_loss = 0, math.inf
    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_val_loss = state["epoch"], state["best_val_loss"]
        set_rng_state(state["rng"])
    model: nn.Module = torch.compile(raw) if s.compile else raw
    if d.enabled:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp_dtype = autocast_dtype(s.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    space = space.to(device)
    return Learner(
        device, raw, model, optimizer, scheduler, scaler, amp_dtype, space, channels_last,
        start_epoch, best_val_loss,
    )  # fmt: skip
