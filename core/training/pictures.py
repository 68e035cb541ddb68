"""The two pictures a run draws: the loss curves (``loss.png``) and the sample grids
(``input | output`` rows for reconstruct, ``content photo | stylised`` for style; for
denoise, see core.objectives.denoise).

Both are returned as PNG bytes for the run folder to write atomically; matplotlib is
imported only when a plot is drawn (it costs about a second) and always with the Agg
backend, since training machines have no display.
"""

from __future__ import annotations

import io

import torch
from torchvision.utils import make_grid

from core.images.pixels import from_tensor
from core.outputs.encoding import encode

# (metrics.jsonl key, legend label) of each curve in loss.png.
CURVES = (
    ("loss", "train loss"),
    ("mse", "train MSE"),
    ("perceptual", "train perceptual"),
    ("val_loss", "val loss"),
    ("val_mse", "val MSE"),
    # style runs (core.training.style)
    ("content", "train content"),
    ("style", "train style"),
    ("val_content", "val content"),
    ("val_style", "val style"),
)


def loss_plot_png(rows: list[dict[str, float]], title: str) -> bytes:
    """Training and validation curves of the metrics rows so far (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in CURVES:
        values = [r.get(key) for r in rows]
        # A log axis cannot show zero or missing values (perceptual loss off, no val split).
        if all(v is not None and v > 0 for v in values):
            ax.plot(epochs, values, label=label, marker="." if len(rows) < 30 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def sample_grid(inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """Rows of ``input | output`` (0..1 pixels, NCHW): the grid as PNG and as a CHW tensor."""
    pairs = torch.stack([inputs.float().cpu(), outputs.float().cpu()], dim=1).flatten(0, 1)
    return image_grid(pairs, 2)


def image_grid(images: torch.Tensor, columns: int) -> tuple[bytes, torch.Tensor]:
    """0..1 NCHW images laid out row by row, ``columns`` to a row: PNG and CHW tensor."""
    grid = make_grid(images.float().cpu(), nrow=columns, padding=2, pad_value=1.0)
    return encode(from_tensor(grid), "png"), grid
