"""The data a run trains and validates on: the prepared set and the loaders over its splits.

``core.training.data`` scans, decodes once into a memory-mapped cache and splits; this module
runs that on rank 0 only, hands the result to the other ranks and builds each rank's loader: a
``DistributedSampler`` shuffled by (seed, epoch), so a resumed epoch sees the same order.
Validation batches carry each image's content hash (:class:`ValBatches`), the key of the
fixed noise a denoise figure uses.

Which data a run loads is its objective's choice (``Objective.load_data``: the collection
alone, or a style run's content photos beside it).
A style run (:func:`load_style_data`) trains and validates on content photos: the loaders run
over ``--content-data`` (its own cache under ``cache/content``, its manifest beside the
collection's) or, when it is not given, over the collection itself; the collection's training
split is the style images (:attr:`Data.style_set`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.training.data import CachedImages, PreparedData, prepare
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
    """The prepared data set and the loaders over its two splits (for style: the content
    photos, and the collection's training split as the style images)."""

    prepared: PreparedData  # what the loaders run over
    train_set: CachedImages
    val_set: CachedImages
    sampler: DistributedSampler
    loader: DataLoader
    val_batches: ValBatches
    sample_batch: torch.Tensor  # the first ``sample_count`` validation images, uint8 NHWC
    sample_keys: Sequence[str]  # their content hashes
    style_set: CachedImages | None = None  # style: the collection's training split
    collection: PreparedData | None = None  # style with --content-data: the collection

    def dataset_hash(self) -> str:
        """What checkpoints record: the manifest's hash; with separate content photos, the
        hash of both manifests (collection first)."""
        if self.collection is None:
            return self.prepared.dataset_hash()
        both = self.collection.manifest_bytes() + b"content\n" + self.prepared.manifest_bytes()
        return hashlib.sha256(both).hexdigest()


def load_collection(s: TrainSettings, d: Dist, run: RunFolder) -> Data:
    """The collection (``--data``), scanned, decoded once into the cache and split on rank
    0, shared with the others."""
    return _loaders(s, d, _prepare_collection(s, d, run))


def load_style_data(s: TrainSettings, d: Dist, run: RunFolder) -> Data:
    """A style run's data: loaders over the content photos (``--content-data``, else the
    collection), and the collection's training split as :attr:`Data.style_set`."""
    prepared = _prepare_collection(s, d, run)
    style_set = CachedImages(prepared.cache_file, s.image_size, prepared.slots("train"))
    if s.content_data is None:
        data = _loaders(s, d, prepared)
        data.style_set = style_set
        return data
    cache = s.resolved_cache_dir() / "content"  # keys are relative paths: one cache per root
    content = _prepare(s, d, s.content_data, cache, "content-rejected.jsonl")
    run.write_content_inputs(content)
    data = _loaders(s, d, content)
    data.style_set, data.collection = style_set, prepared
    return data


def _prepare_collection(s: TrainSettings, d: Dist, run: RunFolder) -> PreparedData:
    """The collection prepared, and the run folder's record of it."""
    prepared = _prepare(s, d, s.data, s.resolved_cache_dir(), "rejected.jsonl")
    run.write_inputs(s.as_json(), prepared)
    return prepared


def _prepare(s: TrainSettings, d: Dist, root: Path, cache: Path, rejects: str) -> PreparedData:
    """One folder scanned, decoded into ``cache`` and split on rank 0, shared."""
    prepared = share_from_main(
        d,
        lambda: prepare(
            root, cache, s.image_size, s.resize, s.val_fraction, max_pixels=s.max_pixels
        ),
    )
    if not prepared.slots("train"):
        raise RuntimeError(f"no usable training images in {root} (see {rejects})")
    return prepared


def _loaders(s: TrainSettings, d: Dist, prepared: PreparedData) -> Data:
    """Each rank's loaders over one prepared set's two splits."""
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
