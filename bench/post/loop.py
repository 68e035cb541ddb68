"""The post's per-image inference loop, copied faithfully (docs/post.md): the suite's baseline.

PIL open -> convert RGB -> Resize((128, 128)) -> ToTensor -> Normalize -> model -> denormalize
-> save_image PNG, one image at a time, fp32, default torch threads. Run as a subprocess so
nothing the bench did to torch (threads, precision) leaks in:

    python -m bench.post.loop CHECKPOINT.pth INPUT_DIR OUTPUT_DIR [--device cpu]

Prints one JSON line: images, loop seconds (first open to last save), wall seconds.
"""

from __future__ import annotations

import argparse
import json
import time

_started = time.perf_counter()

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

from core.network.model import ConvDiffusionModel  # noqa: E402  (the post's network, same layers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("inputs")
    parser.add_argument("outputs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from pathlib import Path

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    transform = transforms.Compose(
        [transforms.Resize((128, 128)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    model = ConvDiffusionModel().to(args.device)
    model.load_state_dict(torch.load(args.checkpoint, map_location=args.device))
    model.eval()
    mean_t = torch.tensor(mean, device=args.device).view(-1, 1, 1)
    std_t = torch.tensor(std, device=args.device).view(-1, 1, 1)
    out = Path(args.outputs)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in Path(args.inputs).iterdir() if p.suffix == ".jpg")
    loop_started = time.perf_counter()
    for path in paths:
        x = transform(Image.open(path).convert("RGB")).unsqueeze(0).to(args.device)
        with torch.no_grad():
            y = model(x)
        y = (y.squeeze(0) * std_t + mean_t).clamp(0, 1)
        save_image(y, out / f"{path.name}.png")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    done = time.perf_counter()
    print(
        json.dumps({"images": len(paths), "loop_s": done - loop_started, "wall_s": done - _started})
    )


if __name__ == "__main__":
    main()
