"""Suite member ``floors``: decode alone (our draft path), model alone (best batch and
precision), encode alone (PNG level 1 with provenance text).

Each is measured on one thread, so it is core-time per image; the limit a pipeline can reach
on this machine is then ``cores / (decode + model + encode)`` images/s. The post's fp32
batch-1 layout is shown beside."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.shared.common import Run, bench_checkpoints, fmt, median, table
from bench.shared.datasets import photo_mix, small_set

BATCHES = (1, 4, 8, 16, 32)


def per_item_ms(work: Callable[[], object], items: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000 / items)
    return median(samples)


def decode_ms(files: list[Path], repeats: int) -> float:
    from core.images import loading

    blobs = [p.read_bytes() for p in files]  # from memory: the page cache holds them anyway
    return per_item_ms(
        lambda: [loading.load(b, 128, "stretch") for b in blobs], len(blobs), repeats
    )


def model_ms(checkpoint: Path, device: str, repeats: int) -> dict[str, float]:
    """ms/image for each (precision, batch); the engine's own choices (layout, probe) apply."""
    from core.runtime.engine import Engine

    figures = {}
    for precision in ("fp32", "auto"):
        engine = Engine.from_path(checkpoint, device=device, precision=precision, max_batch=64)
        label = engine.precision
        for batch in BATCHES:
            pixels = torch.rand(batch, 3, 128, 128, generator=torch.Generator().manual_seed(0))
            engine.infer(pixels)  # warm-up: oneDNN picks its kernels on the first call
            figures[f"{label} b{batch}"] = per_item_ms(
                lambda e=engine, p=pixels: _sync(e.infer(p)), batch, repeats * 2
            )
    return figures


def post_layout_ms(checkpoint: Path, device: str, repeats: int) -> float:
    """The post's model call: fp32, NCHW, batch 1, no_grad."""
    from core.network.model import ConvDiffusionModel

    model = ConvDiffusionModel().to(device).eval()
    model.load_state_dict(torch.load(checkpoint, map_location=device))
    x = torch.randn(1, 3, 128, 128, device=device)
    with torch.no_grad():
        model(x)
        return per_item_ms(lambda: _sync(model(x)), 1, repeats * 10)


def _sync(t: torch.Tensor) -> torch.Tensor:
    if t.is_cuda:
        torch.cuda.synchronize()
    return t


def encode_ms(repeats: int) -> tuple[float, float, float]:
    """(ours: PNG level 1, Z_RLE, provenance text; the same with zlib's default strategy;
    the post's save_image: PNG default level)."""
    import io
    import zlib

    from bench.shared.datasets import textured
    from core.outputs.encoding import encode

    images = [textured(i, 128, 128) for i in range(16)]  # texture like the model's outputs
    meta = {f"artd:{k}": "x" * 64 for k in ("model", "input", "settings", "time", "ai")}
    ours = per_item_ms(lambda: [encode(i, "png", metadata=meta) for i in images], 16, repeats)
    default_strategy = per_item_ms(
        lambda: [
            i.save(io.BytesIO(), "PNG", compress_level=1, compress_type=zlib.Z_DEFAULT_STRATEGY)
            for i in images
        ],
        16,
        repeats,
    )
    post = per_item_ms(lambda: [i.save(io.BytesIO(), "PNG") for i in images], 16, repeats)
    return ours, default_strategy, post


def unfolded_ms(checkpoint: Path, device: str, repeats: int) -> dict[str, float]:
    """The post's module (BatchNorm not folded), channels_last, batch 4: what the engine ran
    before core.network.folded, for the side-by-side."""
    from core.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(checkpoint)).to(device)
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    figures = {}
    for label, dtype in (("fp32", torch.float32), ("bf16 autocast", torch.bfloat16)):
        enabled = dtype != torch.float32
        kind = torch.device(device).type  # autocast takes "cuda", not "cuda:0"
        with torch.inference_mode(), torch.autocast(kind, dtype=dtype, enabled=enabled):
            model(x)
            figures[f"unfolded module, {label} b4"] = per_item_ms(
                lambda: _sync(model(x)), 4, repeats * 2
            )
    return figures


def bench(run: Run) -> None:
    ours_ckpt, post_ckpt = bench_checkpoints(run.out)
    cores = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # core-time, not wall time on all cores
    try:
        repeats = run.pick(3, 5)
        models = model_ms(ours_ckpt, run.device, repeats)
        best = min(models, key=models.get)
        post_model = post_layout_ms(post_ckpt, run.device, repeats)
        unfolded = unfolded_ms(ours_ckpt, run.device, repeats)
        encode, default_strategy, post_encode = encode_ms(repeats)
        rows, limits = [], {}
        for name, files in {
            "photos": photo_mix(run.out, run.pick(24, 200)),
            "small": small_set(run.out, run.pick(64, 300)),
        }.items():
            decode = decode_ms(files[: run.pick(16, 64)], repeats)
            total = decode + models[best] + encode
            limits[name] = cores * 1000 / total
            rows.append(
                [name, fmt(decode, 2), f"{fmt(models[best], 2)} ({best})", fmt(encode, 2),
                 fmt(total, 2), f"**{fmt(limits[name])}**"]
            )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    run.figures["floors"] = {
        "cores": cores, "model_ms": models, "best": best, "post_model_ms": post_model,
        "unfolded_ms": unfolded, "encode_ms": encode,
        "encode_default_strategy_ms": default_strategy, "post_encode_ms": post_encode,
        "limit_ips": limits,
    }  # fmt: skip
    headers = [
        "set",
        "decode ms",
        "model ms (best)",
        "encode ms",
        "sum ms",
        f"limit img/s ({cores} cores)",
    ]
    model_rows = [[k, fmt(v, 2)] for k, v in models.items()]
    model_rows += [[k, fmt(v, 2)] for k, v in unfolded.items()]
    model_rows += [["post layout (fp32 NCHW b1)", fmt(post_model, 2)]]
    run.report(
        "### Floor figures (one thread each: core-ms per image at 128 px)\n\n"
        + table(headers, rows)
        + f"\n\nEncode: ours {fmt(encode, 2)} ms (PNG level 1, Z_RLE, provenance), level 1 "
        f"with zlib's default strategy {fmt(default_strategy, 2)} ms, the post's save_image "
        f"{fmt(post_encode, 2)} ms (PNG level 6).\n\n"
        + table(["model: precision and batch", "ms/image"], model_rows)
        + "\n"
    )
