"""The data a run trains and validates on: the prepared set and the loaders over its splits.

``core.data`` scans, decodes once into a memory-mapped cache and splits; this module runs that
on rank 0 only, hands the result to the other ranks and builds each rank's loader: a
``DistributedSampler`` shuffled by (seed, epoch), so a resumed epoch sees the same order.
Validation batches carry each image's content hash (:class:`ValBatches`), the key of the
fixed noise a denoise figure uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.data import CachedImages, PreparedData, prepare
from core.training.distributed import Dist, share_from_main
from core.training.run_folder import RunFolder
from core.training.settings import TrainSettings


@dataclass
class ValBatches:
    """The validation split in order, batch by batch, as (uint8 NHWC pixels, content hashes)."""

    loader: DataLoader
    keys: Sequence[str]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Sequence[str]]]:
        start = 0
        for batch in self.loader:
            yield batch, self.keys[start : start + len(batch)]
            start += len(batch)

    def __len__(self) -> int:
        return len(self.loader)


@dataclass
class Data:
    """The prepared data set and the loaders over its two splits."""

    prepared: PreparedData
    train_set: CachedImages
    val_set: CachedImages
    sampler: DistributedSampler
    loader: DataLoader
    val_batches: ValBatches
    sample_batch: torch.Tensor  # the first ``sample_count`` validation images, uint8 NHWC
    sample_keys: Sequence[str]  # their content hashes


def load_data(s: TrainSettings, d: Dist, run: RunFolder) -> Data:
    """Scanned, decoded once into the cache and split on rank 0, shared with the others."""
    prepared = share_from_main(
        d,
        lambda: prepare(
            s.data, s.resolved_cache_dir(), s.image_size, s.resize, s.val_fraction,
            max_pixels=s.max_pixels,
        ),
    )  # fmt: skip
    if not prepared.slots("train"):
        raise RuntimeError(f"no usable training images in {s.data} (see rejected.jsonl)")
    run.write_inputs(s.as_json(), prepared)
    train_set = CachedImages(prepared.cache_file, s.image_size, prepared.slots("train"))
    val_set = CachedImages(prepared.cache_file, s.image_size, prepared.slots("val"))
    sampler = DistributedSampler(
        train_set, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=s.seed
    )
    loader = DataLoader(
        train_set,
        batch_size=s.batch_size,
        sampler=sampler,  # shuffles by (seed, epoch): a resumed epoch sees the same order
        collate_fn=CachedImages.collate_fn,
        num_workers=s.num_workers,
        pin_memory=d.device.type == "cuda",
        persistent_workers=s.num_workers > 0,
        generator=torch.Generator().manual_seed(s.seed),  # keeps the global RNG untouched
    )
    val_keys = [e.sha256 for e in prepared.entries if e.split == "val"]  # slots("val") order
    val_batches = ValBatches(
        DataLoader(val_set, batch_size=s.batch_size, collate_fn=CachedImages.collate_fn), val_keys
    )
    shown = min(s.sample_count, len(val_set))
    sample_batch = val_set.__getitems__(list(range(shown)))
    return Data(
        prepared, train_set, val_set, sampler, loader, val_batches, sample_batch, val_keys[:shown]
    )
