"""The network's names and constants as checkpoints record them, importable without torch.

The service reads checkpoint metadata (core.checkpoint.meta) without ever building a network:
the network itself runs in a model worker. So what that metadata is checked against (the
architecture's name, its decoder variants, the guide's channels, the input normalisation, the
post's image space) lives here, and core.network.model and core.network.space use it.
"""

from __future__ import annotations

ARCHITECTURE = "ConvDiffusionModel"
# The decoder's 2x upsampling: the post's transposed convolutions, or upsample-then-convolve.
DECODERS: tuple[str, ...] = ("transpose", "upsample", "upsample-full")
# The most extra input channels a guided network takes (core/network/guide.py: colour + presence).
MAX_GUIDE_CHANNELS = 4
# Channels of the upsample-full variant's full-resolution level.
FULL_WIDTH = 32
# The post normalizes inputs with ImageNet statistics; VGG's perceptual loss expects them too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The ``image_space`` of a checkpoint trained with the post's script. The value is on disk (in
# checkpoint metadata) and keeps the project's old word for the post, so old checkpoints load.
POST_IMAGE_SPACE = "seed"
