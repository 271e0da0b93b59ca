"""What adapterkit knows about the base layers it wraps: their kind, sizes and dense weight.

One place answers "how is this base's weight laid out" so that LoRA, DoRA, merging and
quantized bases agree. A base is:
- ``linear``:    ``nn.Linear`` (and subclasses, e.g. bitsandbytes' 4/8-bit layers), weight (out, in);
- ``conv1d``:    transformers' ``Conv1D`` (GPT-2), weight stored transposed, (in, out);
- ``embedding``: ``nn.Embedding``, weight (num_embeddings, dim);
- ``conv2d``:    ``nn.Conv2d`` (any ``groups``), weight (out, in / groups, kh, kw);
- ``nn_conv1d``: ``nn.Conv1d``, weight (out, in / groups, k); ``conv3d``: ``nn.Conv3d``, (out, in / groups, kd, kh, kw);
- ``mha``:       ``nn.MultiheadAttention`` (LoRA only: its in_proj and out_proj, methods/lora/mha.py);
- ``quant``:     a quantized linear layer whose class sets ``is_quantized_base = True`` and
                 has ``in_features``, ``out_features``, ``bias`` and ``dequantize()`` -> (out, in).
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn

SUPPORTED = (
    "nn.Linear",
    "transformers Conv1D",
    "nn.Embedding",
    "nn.Conv1d",
    "nn.Conv2d",
    "nn.Conv3d",
    "nn.MultiheadAttention",
    "adapterkit QuantLinear",
)
CONV_KINDS = ("nn_conv1d", "conv2d", "conv3d")  # torch's convolutions, any groups


def _is_conv1d(module: nn.Module) -> bool:
    # transformers is only imported by the user; if it is not loaded, no module is a Conv1D.
    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(module, utils.Conv1D)


def base_kind(module: nn.Module) -> Optional[str]:
    """The kind of a base module, or None when adapterkit cannot wrap it."""
    if getattr(type(module), "is_quantized_base", False):
        return "quant"
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_conv1d(module):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {1: "nn_conv1d", 2: "conv2d", 3: "conv3d"}[len(module.kernel_size)]
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    return None


def is_linear_like(module: nn.Module) -> bool:
    """What ``targets="all-linear"`` picks: Linear, Conv1D and quantized linear layers."""
    return base_kind(module) in ("linear", "conv1d", "quant")


def place(module: nn.Module) -> dict:
    """Where a new adapter tensor for ``module`` lives: ``{"device", "dtype"}`` of its weights.

    The device of its first parameter or buffer (a bias-free QuantLinear has only buffers); the dtype
    its matmuls run in: a quantized base's compute dtype, else its first floating-point tensor's,
    else float32.
    """
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = getattr(module, "compute_dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((t.dtype for t in tensors if t.dtype.is_floating_point), torch.float32)
    return {"device": device, "dtype": dtype}


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) sizes of a base, as LoRA's A (rank, in) and B (out, rank) see them."""
    kind = base_kind(module)
    if kind in ("linear", "quant"):
        return module.in_features, module.out_features
    if kind == "conv1d":
        return module.weight.shape[0], module.weight.shape[1]
    if kind == "embedding":
        return module.num_embeddings, module.embedding_dim
    if kind in CONV_KINDS:
        return module.in_channels, module.out_channels
    if kind == "mha":
        return module.embed_dim, module.embed_dim
    raise TypeError(f"not a supported base: {type(module).__name__}")


def foldable(module: nn.Module) -> bool:
    """Whether an update can be added to this base's weight (a dense float weight)."""
    kind = base_kind(module)
    if kind == "quant":
        return True
    if kind == "mha":
        return module.in_proj_weight is not None and module.in_proj_weight.dtype.is_floating_point
    if kind in CONV_KINDS and module.groups > 1:
        return False  # LoRA's update of a grouped convolution is not grouped (methods/lora/conv.py)
    return kind is not None and module.weight.dtype.is_floating_point


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight as LoRA's update is shaped: (out, in) for linear kinds, as stored otherwise.

    A view where the weight is dense (no copy); a new tensor for a quantized base.
    """
    kind = base_kind(module)
    if kind == "quant":
        return module.dequantize()
    if not module.weight.dtype.is_floating_point:
        raise TypeError(f"{type(module).__name__} holds a {module.weight.dtype} weight, not a float one")
    if kind == "conv1d":
        return module.weight.t()
    return module.weight


def folded(module: nn.Module, delta: torch.Tensor) -> nn.Module:
    """A plain module computing the base with ``delta`` added to its (out, in) weight.

    Dense bases are updated in place and returned. A quantized base becomes an ``nn.Linear``
    in its compute dtype (dequantize, add; re-quantizing is a separate, explicit step).
    """
    kind = base_kind(module)
    with torch.no_grad():
        if kind == "quant":
            weight = module.dequantize()
            dense = nn.Linear(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                device=weight.device,
                dtype=weight.dtype,
            )
            dense.weight.copy_(weight + delta.to(weight.dtype))
            if module.bias is not None:
                dense.bias.copy_(module.bias)
            return dense
        target = module.weight.t() if kind == "conv1d" else module.weight
        target.add_(delta.to(target.dtype))
    return module
