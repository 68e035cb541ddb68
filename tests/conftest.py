"""Fixtures shared by the whole suite: real checkpoints and real image files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shared.common import seeded_model_state  # noqa: E402
from core.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from core.network.model import ConvDiffusionModel  # noqa: E402


def seeded_model(seed: int = 0) -> ConvDiffusionModel:
    """A fixed random network with non-trivial BatchNorm statistics (like a trained one):
    the bench's (``bench.shared.common.seeded_model_state``), so both use one recipe."""
    model = ConvDiffusionModel()
    model.load_state_dict(seeded_model_state(seed))
    return model.eval()


def textured_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: real texture, unlike a flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(x / (7 + seed % 5)),
            127 + 100 * np.cos(y / (11 + seed % 3)),
            127 + 100 * np.sin((x + y) / 17),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_images(
    folder: Path, count: int, size: tuple[int, int] = (96, 64), fmt: str = "JPEG"
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[fmt]
    paths = []
    for i in range(count):
        path = folder / f"img{i:04d}{ext}"
        textured_image(*size, seed=i).save(path, fmt)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def pixel_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our format, pixel space."""
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, seeded_model(0).state_dict(), CheckpointMeta(epoch=1))
    return path


@pytest.fixture(scope="session")
def post_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare state_dict written with torch.save, exactly as the post's script does."""
    path = tmp_path_factory.mktemp("post") / "model_epoch_150.pth"
    torch.save(seeded_model(1).state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    yield
    from daemon_harness import kill_leftovers

    kill_leftovers()


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    # Two cores shared by the suite: keep torch from oversubscribing them.
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One OpenMP thread for a test (``pytestmark = pytest.mark.usefixtures("one_thread")``
    for a whole module): training and sampling tests would thrash on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
