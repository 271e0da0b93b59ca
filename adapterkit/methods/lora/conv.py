"""LoRA and DoRA on torch's convolutions: nn.Conv1d, nn.Conv2d, nn.Conv3d, grouped ones included (PEFT's
``_ConvNd`` layer).

    y = conv(x, W) + s * conv_1(conv(drop(x), A), B)       A (r, in, k..), B (out, r / groups, 1..)

A has the base's kernel, stride, padding and dilation (PEFT leaves dilation at 1, which only fits
undilated bases) and no groups; B is a 1x1 convolution with the base's ``groups`` (so r must be a
multiple of ``groups``, as in PEFT). With groups == 1 the branch is the convolution with
dW = s * (B.view(out, r) @ A.view(r, -1)).view(W.shape), so it merges into W; with groups > 1 dW
connects every input channel to every output channel while W is grouped, so it does not (merging
refuses; PEFT says the same).

DoRA (groups == 1; Liu et al. 2024, arXiv:2402.09353): g = m / ||W + dW|| per output channel (norm
over the input channels and the kernel, a constant), m of shape (1, out, 1..) as PEFT stores it:

    y = g * (conv(x, W) + s * branch(x)) + (1 - g) * bias                 (eval, or no dropout)
    y = y_running + (g - 1) * conv(drop(x), W) + g * s * branch(drop(x))  (training with dropout: PEFT)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...errors import UnsupportedModuleError

KINDS = bases.CONV_KINDS
_CONV = {"nn_conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}


def shapes(base: nn.Module, rank: int) -> tuple[tuple, tuple]:
    """(A's shape, B's shape) for a convolution ``base``; refuses ranks that do not split into groups."""
    if rank % base.groups:
        raise UnsupportedModuleError(
            f"LoRA on a {type(base).__name__} with groups={base.groups} needs a rank that is a multiple of "
            f"{base.groups} (its 1x1 B convolution is grouped, as in PEFT); got rank={rank}. Change the rank, "
            f"or leave this module out of the targets."
        )
    ones = (1,) * len(base.kernel_size)
    return (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank // base.groups, *ones)


def branch(lora, x: Tensor, base: nn.Module) -> Tensor:
    """conv_1(conv(x, A), B) (no scale): x (B, in, L..) -> (B, out, L'..)."""
    conv = _CONV[lora.kind]
    h = conv(x.to(lora.a.dtype), lora.a, None, base.stride, base.padding, base.dilation)
    return conv(h, lora.b, None, 1, 0, 1, base.groups)


def forward(lora, x: Tensor, y: Tensor, base: nn.Module) -> Tensor:
    """The running output ``y`` with this adapter's LoRA / DoRA branch added (module docstring)."""
    dropping = lora.training and lora.dropout > 0
    xd = F.dropout(x, lora.dropout, lora.training) if dropping else x
    out = branch(lora, xd, base) * lora.scale
    if lora.magnitude is None:
        return y + out.to(y.dtype)
    g = (lora.magnitude / channel_norm(bases.dense_weight(base), lora.update(lora.a.dtype))).to(y.dtype)
    if dropping:  # PEFT: the base's output on the dropped input, rescaled
        plain = _CONV[lora.kind](
            xd.to(base.weight.dtype), base.weight, None, base.stride, base.padding, base.dilation, base.groups
        )
        return y + (g - 1) * plain.to(y.dtype) + g * out.to(y.dtype)
    bias = 0 if base.bias is None else base.bias.to(y.dtype).view(1, -1, *([1] * (y.dim() - 2)))
    return g * (y - bias + out.to(y.dtype)) + bias


def update(lora, dtype: torch.dtype) -> Tensor:
    """s * dW in W's layout (out, in, k..); only for groups == 1 (refused earlier otherwise)."""
    r = lora.a.shape[0]
    b, a = lora.b.to(dtype), lora.a.to(dtype)
    if b.shape[1] != r:
        raise UnsupportedModuleError(
            "the LoRA update of a grouped convolution is not grouped; it cannot be "
            "written into the base weight (merge refused, as in PEFT)."
        )
    return (b.reshape(-1, r) @ a.reshape(r, -1)).mul_(lora.scale).view(b.shape[0], *a.shape[1:])


@torch.no_grad()
def channel_norm(weight: Tensor, update: Tensor) -> Tensor:
    """||W + dW|| per output channel, shaped (1, out, 1..) like PEFT's magnitude (a constant)."""
    acc = torch.promote_types(weight.dtype, torch.float32)
    total = weight.to(acc) + update.to(acc)
    norm = torch.linalg.vector_norm(total.reshape(total.shape[0], -1), dim=1)
    return norm.view(1, -1, *([1] * (weight.dim() - 2)))
