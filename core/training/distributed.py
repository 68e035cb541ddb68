"""One process or many under ``torchrun``: who this process is, and how ranks share work.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them the run is a single
process and every helper here is a plain call. DDP uses NCCL on GPUs and gloo on CPUs.
Rank 0 is the *main* process: it decodes the data set, evaluates and writes the run folder;
``Dist.is_main`` is the one test of that in the trainer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from core.runtime.devices import pick_device

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in the run: its rank, how many there are, and its device."""

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

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over every rank, in place."""
        if self.enabled:
            dist.all_reduce(tensor)

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def setup(device_spec: str) -> Dist:
    """This process's Dist; joins the process group when torchrun started several."""
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
        raise SystemExit(1)  # rank 0 reports the error
    return box[1]
