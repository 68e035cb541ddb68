"""The post's network rewritten for inference, with every BatchNorm folded away.

The post puts BatchNorm *after* ReLU (``conv -> ReLU -> BN``), so the usual folding into
the convolution does not apply, and in eager mode the ReLU and BatchNorm passes cost about
as much as the convolutions. They still fold exactly. With BN as ``s * v + b`` per channel:

- all ``s >= 0`` (any trained model we have seen): ``s * relu(z) + b = relu(s * z) + b``.
  The convolution takes the scale (weights and bias times ``s``), ReLU fuses into it, and
  the shift ``b`` is one add; in the encoder it goes after the max-pool, on a tensor four
  times smaller, because ReLU and adding a constant both commute with max-pooling;
- some ``s < 0``: ``s * relu(z) + b`` is ``max(s*z + b, b)`` where ``s >= 0`` and
  ``min(s*z + b, b)`` where ``s < 0``: one per-channel clamp after the convolution (and
  after the pool: a monotone function commutes with max-pooling too).

On CPU the convolution and its ReLU run as one oneDNN call
(``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` itself emits);
where that op is missing or refuses the input, plain ``conv2d`` + ``relu_`` does the same.
Weights are stored in the serving dtype, so no per-call casting (autocast) is needed.
In fp32 the result equals the original model's to rounding (about 3e-7). The ``upsample``
decoder variant (core.network.model) folds the same way: its stages are plain convolutions that run
on the nearest-upsampled input; so does ``upsample-full``, whose full-resolution stages
(``fine``, ``dec3``, ``mix``) are more of the same blocks and run in the output layer's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.network.model import ConvDiffusionModel, UpsampleConv2d
from core.network.precision import MIXED_REDUCED_STAGES, PRECISIONS, STAGES


@dataclass
class _Stage:
    """One ``conv -> ReLU -> BN`` block, folded."""

    weight: torch.Tensor
    bias: torch.Tensor
    shift: torch.Tensor  # relu form: added after ReLU (and pool)
    low: torch.Tensor | None  # clamp form only: per-channel bounds
    high: torch.Tensor | None
    kind: str  # "conv", "transpose" (stride-2 transposed) or "upsample" (2x nearest, conv)

    @property
    def relu_form(self) -> bool:
        return self.low is None


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> _Stage:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    transpose = isinstance(conv, nn.ConvTranspose2d)
    kind = _kind(conv)
    # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
    out_axis = (1, -1, 1, 1) if transpose else (-1, 1, 1, 1)
    weight = conv.weight * scale.view(out_axis)
    assert conv.bias is not None  # the post's convolutions all have a bias
    channel = (1, -1, 1, 1)
    if bool((scale >= 0).all()):
        return _Stage(weight, conv.bias * scale, shift.view(channel), None, None, kind)
    inf = torch.full_like(shift, float("inf"))
    low = torch.where(scale >= 0, shift, -inf).view(channel)
    high = torch.where(scale >= 0, inf, shift).view(channel)
    return _Stage(weight, conv.bias * scale + shift, shift.view(channel), low, high, kind)


def _kind(conv: nn.Module) -> str:
    if isinstance(conv, nn.ConvTranspose2d):
        return "transpose"
    return "upsample" if isinstance(conv, UpsampleConv2d) else "conv"


# A trained pixel-space model drifts 5/255 in all-bf16 but under 1/255 in bf16-mixed, which
# costs 1.3x the all-bf16 time and 2.5x less than fp32 on a bf16-native CPU.
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stage_dtypes(precision: str) -> tuple[torch.dtype, ...]:
    """The dtype of each stage for a precision name (one of :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}: {precision!r}")
    reduced = _DTYPES[precision.removesuffix("-mixed")]
    if precision.endswith("-mixed"):
        return tuple(reduced if use else torch.float32 for use in MIXED_REDUCED_STAGES)
    return (reduced,) * STAGES


class FoldedModel(nn.Module):
    """Inference-only equivalent of a :class:`ConvDiffusionModel` (eval-mode BatchNorm)."""

    def __init__(
        self,
        model: ConvDiffusionModel,
        precision: str = "fp32",
        *,
        channels_last: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        device = next(model.parameters()).device
        self.precision = precision
        self.dtypes = stage_dtypes(precision)
        with torch.no_grad():
            stages = [
                _fold(block[0], block[2])
                for block in (model.enc1, model.enc2, model.enc3, model.dec1, model.dec2)
            ]
            self._stages = [
                self._cast(stage, dtype, channels_last)
                for stage, dtype in zip(stages, self.dtypes, strict=False)
            ]
            dtype = self.dtypes[-1]
            # upsample-full: (fine, dec3, mix), next to the image like the output layer.
            self._full = (
                [
                    self._cast(_fold(block[0], block[2]), dtype, channels_last)
                    for block in (model.fine, model.dec3, model.mix)
                ]
                if model.full
                else []
            )
            last = model.out[0] if model.full else model.dec3[0]
            layout = torch.channels_last if channels_last else torch.contiguous_format
            self._last_weight = last.weight.detach().to(dtype).contiguous(memory_format=layout)
            assert last.bias is not None
            self._last_bias = last.bias.detach().to(dtype)
            self._last_kind = _kind(last)
        # The oneDNN fused op only exists for CPU tensors; it is used until it first fails.
        self._fused = fused and device.type == "cpu" and _has_fused_ops()

    @staticmethod
    def _cast(stage: _Stage, dtype: torch.dtype, channels_last: bool) -> _Stage:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return _Stage(
            stage.weight.detach().to(dtype).contiguous(memory_format=layout),
            stage.bias.detach().to(dtype),
            stage.shift.detach().to(dtype),
            None if stage.low is None else stage.low.detach().to(dtype),
            None if stage.high is None else stage.high.detach().to(dtype),
            stage.kind,
        )

    @property
    def fused(self) -> bool:
        return self._fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        skips = []
        for stage in self._stages[:3]:
            x = self._encode(stage, x.to(stage.weight.dtype))
            skips.append(x)
        for stage, skip in zip(self._stages[3:], (skips[1], skips[0]), strict=True):
            x = self._decode(stage, x.to(stage.weight.dtype))
            x = x.add_(skip.to(x.dtype))
        if self._full:
            fine, up, mix = self._full
            x = self._decode(up, x.to(up.weight.dtype))
            x = self._decode(mix, x.add_(self._decode(fine, image.to(fine.weight.dtype))))
        x = _conv(
            x.to(self._last_weight.dtype), self._last_weight, self._last_bias, self._last_kind
        )
        # 3 channels: the Sigmoid in fp32 costs nothing and keeps bf16 rounding off the output.
        return torch.sigmoid(x.float())

    def _encode(self, stage: _Stage, x: torch.Tensor) -> torch.Tensor:
        if stage.relu_form:
            # relu, pool and "+ shift" all commute, so the cheap ones run on the pooled tensor.
            return F.max_pool2d(self._conv_relu(stage, x), 2).add_(stage.shift)
        pooled = F.max_pool2d(_conv(x, stage.weight, stage.bias, stage.kind), 2)
        return pooled.clamp_(stage.low, stage.high)

    def _decode(self, stage: _Stage, x: torch.Tensor) -> torch.Tensor:
        if stage.relu_form:
            return self._conv_relu(stage, x).add_(stage.shift)
        return _conv(x, stage.weight, stage.bias, stage.kind).clamp_(stage.low, stage.high)

    def _conv_relu(self, stage: _Stage, x: torch.Tensor) -> torch.Tensor:
        if self._fused:
            try:
                return _fused_conv_relu(x, stage)
            except RuntimeError:
                self._fused = False  # unsupported layout or dtype here: plain ops from now on
        return _conv(x, stage.weight, stage.bias, stage.kind).relu_()


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kind: str) -> torch.Tensor:
    # The post's layers: 3x3 convolutions with padding 1; the transposed ones upsample 2x.
    if kind == "transpose":
        return F.conv_transpose2d(x, weight, bias, stride=2, padding=1, output_padding=1)
    if kind == "upsample":
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    return F.conv2d(x, weight, bias, padding=1)


def _fused_conv_relu(x: torch.Tensor, stage: _Stage) -> torch.Tensor:
    if stage.kind == "transpose":
        op = torch.ops.mkldnn._convolution_transpose_pointwise
        return op(x, stage.weight, stage.bias, [1, 1], [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
    if stage.kind == "upsample":
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    op = torch.ops.mkldnn._convolution_pointwise
    return op(x, stage.weight, stage.bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")


def _has_fused_ops() -> bool:
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(mkldnn, name)
        for name in ("_convolution_pointwise", "_convolution_transpose_pointwise")
    )
