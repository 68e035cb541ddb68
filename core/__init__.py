"""artd's core: the network, images, checkpoints, inference and training. Nothing about folders."""

__version__ = "0.1.0"

from pathlib import Path

# The model that ships with the project so the daemon runs out of the box (card beside it).
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "default.safetensors"
