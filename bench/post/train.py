"""The post's training loop, copied faithfully (docs/post.md): the training bench's baseline.

Faithful except where it cannot run here:
VGG16 ``features[:16]`` is read from a file (randomly initialised by the bench: same speed as
the pretrained one) instead of downloaded, and nothing is moved to CUDA unless asked.

    python -m bench.post.train DATA_DIR VGG_FEATURES.pth --epochs 2 [--perceptual on|off]

Prints one JSON line with the seconds of each epoch (decoding included, as in the post).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from core.network.model import ConvDiffusionModel


def is_valid_image(path: str) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        print(f"invalid image: {path}")
        return False


def vgg_features(path: str) -> nn.Sequential:
    from torchvision.models import vgg16

    features = vgg16(weights=None).features[:16]
    features.load_state_dict(torch.load(path, weights_only=True))
    for p in features.parameters():
        p.requires_grad = False
    return features.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("vgg")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--perceptual", choices=["on", "off"], default="on")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    transform = transforms.Compose(
        [
            transforms.Resize((128, 128)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    dataset = datasets.ImageFolder(args.data, transform=transform, is_valid_file=is_valid_image)
    dataloader = DataLoader(dataset, batch_size=32, shuffle=True)
    model = ConvDiffusionModel().to(device)
    vgg = vgg_features(args.vgg).to(device) if args.perceptual == "on" else None
    mse_loss = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    epoch_seconds = []
    for _epoch in range(args.epochs):
        started = time.perf_counter()
        for inputs, _ in dataloader:
            inputs = inputs.to(device)
            outputs = model(inputs)
            loss = mse_loss(outputs, inputs)
            if vgg is not None:
                loss = loss + mse_loss(vgg(outputs), vgg(inputs))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - started)
    print(json.dumps({"images": len(dataset), "epoch_s": epoch_seconds}))


if __name__ == "__main__":
    main()
