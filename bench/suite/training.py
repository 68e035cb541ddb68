"""Suite member ``training``: images/s, the post's training loop against ``python -m core.train``.

Perceptual loss on and off, on the same images, alternating. Ours reads the decode-once
cache: its epochs after the first never decode a JPEG, the post's decode every file every epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bench.post.run import post_epoch_s
from bench.shared.common import Run, alternate, fmt, median, run_child, table
from bench.shared.datasets import small_set


def random_vgg(out: Path) -> Path:
    """VGG16 features[:16] with random weights: the same work per step as ImageNet's."""
    path = out / "vgg16-features16-random.pth"
    if not path.exists():
        from torchvision.models import vgg16

        torch.manual_seed(0)
        torch.save(vgg16(weights=None).features[:16].state_dict(), path)
    return path


def training_set(run: Run) -> Path:
    """The small set in one class folder (the post's ImageFolder needs class sub-folders)."""
    files = small_set(run.out, run.pick(32, 256))
    folder = run.out / "data" / f"train-{len(files)}"
    if not (folder / "art").is_dir() or len(list((folder / "art").iterdir())) != len(files):
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "art").mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, folder / "art" / path.name)
    return folder


def ours(run: Run, data: Path, vgg: Path, perceptual: str, epochs: int) -> dict:
    out = run.out / "training" / f"ours-{perceptual}"
    shutil.rmtree(out, ignore_errors=True)
    args = ["-m", "core.train", "--data", str(data), "--out", str(out), "--epochs", str(epochs)]
    args += ["--vgg-weights", str(vgg), "--perceptual-weight", "1" if perceptual == "on" else "0"]
    args += ["--device", run.device, "--no-tensorboard", "--cache-dir", str(out / "cache")]
    run_child(args, run.out / "training.log")
    rows = [
        json.loads(line) for line in next(out.glob("run-*/metrics.jsonl")).read_text().splitlines()
    ]
    return rows[-1]


def bench(run: Run) -> None:
    data, vgg = training_set(run), random_vgg(run.out)
    epochs = run.pick(2, 3)
    rows = []
    n = len(list((data / "art").iterdir()))
    for perceptual in ("on", "off"):
        last: list[dict] = []

        def our_epoch(perceptual: str = perceptual, last: list[dict] = last) -> float:
            last.append(ours(run, data, vgg, perceptual, epochs))
            return last[-1]["seconds"]

        times = alternate(
            {
                "post": lambda p=perceptual: post_epoch_s(run, data, vgg, p, epochs),
                "ours": our_epoch,
            },
            run.pick(1, 3),
        )
        # Ours trains on the training split only (the rest validates): compare images/s.
        post_ips = n / median(times["post"])
        our_ips = median([r["images_per_s"] for r in last])
        result = {"images": n, "post_ips": post_ips, "ours_ips": our_ips,
                  "post_epoch_s": median(times["post"]), "ours_epoch_s": median(times["ours"]),
                  "ratio": our_ips / post_ips}  # fmt: skip
        run.figures[f"training.perceptual_{perceptual}"] = result
        rows.append(
            [perceptual, n, fmt(post_ips), fmt(our_ips), f"**{result['ratio']:.2f}x**",
             fmt(result["post_epoch_s"], 2), fmt(result["ours_epoch_s"], 2)]
        )  # fmt: skip
    headers = ["perceptual loss", "images", "post img/s", "ours img/s", "ratio",
               "post epoch s", "ours epoch s (cached)"]  # fmt: skip
    run.report(
        f"### Training, last of {epochs} epochs (batch 32, 128 px, CPU)\n\n"
        + table(headers, rows)
        + "\n"
    )
