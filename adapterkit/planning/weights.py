"""What stays in memory the whole run: weights, adapter parameters, gradients, optimizer states.

Counted from the model built on the meta device, so every parameter and buffer is included
exactly (tied weights once). With ``b`` the model dtype's bytes and n = out * in:

    dense weight           n * b
    4-bit (NF4/FP4)        ceil(n / 2) codes + absmax per block of ``block`` (64): fp32 each, or
                           with double quantization uint8 each + fp32 per 256 blocks + offset +
                           256 fp32 levels (``adapterkit_kernels.formats.storage_shapes``);
                           the output head stays dense, as ``ak.quantize`` keeps it
    8-bit                  n int8 codes + fp32 absmax per block
    LoRA (rank r)          r * (in + out) per adapted module, DoRA + out (the magnitude), in the
                           adapter dtype: the base's float dtype; fp32 on a 4-bit base without bias
    gradients              one per trainable parameter, in its dtype
    AdamW                  2 states per trainable element in the parameter's dtype (torch)
    8-bit AdamW (bnb)      2 uint8 states + 2 fp32 absmax per 256 elements, for tensors of >= 4096
                           elements; smaller tensors keep 2 fp32 states; paged: the same bytes in
                           memory the driver may move to the CPU under pressure
    paged_adamw32bit       2 fp32 states (QLoRA's optimizer)
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from ..anatomy import block_index, output_head
from .settings import DTYPE_BYTES, Settings
from .shape import ModelShape, meta_model, role_of

MIN_8BIT = 4096  # bitsandbytes keeps smaller tensors' states in fp32 (min_8bit_size)
BNB_BLOCK = 256  # bitsandbytes' blockwise optimizer states: one absmax per 256 elements


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted linear layer: where it is and its sizes."""

    name: str
    role: str
    layer: int
    n_in: int
    n_out: int
    quantized: bool
    bias: bool


@dataclasses.dataclass(frozen=True)
class Inventory:
    params: int  # parameters of the base model
    weights: int  # bytes of the base model as stored (quantized where asked)
    quant_constants: int  # of which: absmax and nested constants of quantized weights
    largest_linear: int  # elements of the largest quantized weight (CPU dequantizes it)
    targets: tuple[Target, ...]
    trained_modules: tuple[int, ...]  # element counts of whole trained module copies (heads)


def _quant_bytes(out_f: int, in_f: int, settings: Settings) -> tuple[int, int]:
    """(all bytes, constants' bytes) of one quantized (out, in) weight."""
    import torch
    from adapterkit_kernels import formats

    q = settings.quant
    qtype = formats.QUANT_TYPE_8BIT if q.bits == 8 else q.quant_type
    shapes = formats.storage_shapes((out_f, in_f), qtype, q.block, q.double_quant and q.bits == 4)
    sizes = {name: math.prod(shape) * torch.empty(0, dtype=dt).element_size() for name, (shape, dt) in shapes.items()}
    return sum(sizes.values()), sum(v for k, v in sizes.items() if k != "codes")


def _quantized_names(model: nn.Module, settings: Settings) -> set[str]:
    if settings.quant is None:
        return set()
    head = output_head(model)
    skip = settings.quant.skip
    return {
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and m is not head and not any(n == s or n.endswith("." + s) for s in skip)
    }


def inventory(shape: ModelShape, settings: Settings) -> Inventory:
    """Parameters, stored bytes and adapter targets of ``shape`` under ``settings``."""
    from .. import targets as targets_mod

    model = meta_model(shape, settings.task)
    b = settings.b
    quantized = _quantized_names(model, settings)
    total = weights = constants = largest = 0
    seen: set = set()  # tied weights (embeddings and head) are one tensor
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if name in quantized and pname == "weight":
                nbytes, const = _quant_bytes(p.shape[0], p.shape[1], settings)
                weights, constants, largest = weights + nbytes, constants + const, max(largest, p.numel())
            else:
                weights += p.numel() * b
        for buf in module.buffers(recurse=False):
            weights += buf.numel() * buf.element_size()
    a = settings.adapter
    names = targets_mod.resolve(model, a.targets, a.exclude, a.layers, a.train_modules)
    found = []
    for name in names:
        m = model.get_submodule(name)
        layer = block_index(model, name)
        found.append(
            Target(
                name,
                role_of(name, shape.family) or "other",
                -1 if layer is None else layer,
                m.in_features,
                m.out_features,
                name in quantized,
                m.bias is not None,
            )
        )
    trained = tuple(p.numel() for s in _trained_modules(model, settings) for p in model.get_submodule(s).parameters())
    return Inventory(total, weights, constants, largest, tuple(found), trained)


def _trained_modules(model: nn.Module, settings: Settings) -> list[str]:
    """Whole modules trained with the adapter: ``train_modules``, or the classification head that
    ``adapterkit train`` adds when none is given."""
    wanted = tuple(settings.adapter.train_modules)
    if not wanted and settings.task == "classification":
        wanted = ("classifier", "score")
    names = [n for n, _ in model.named_modules() if n and any(n == s or n.endswith("." + s) for s in wanted)]
    return [n for n in names if not any(n.startswith(p + ".") for p in names)]


def adapter_dtype_bytes(target: Target, settings: Settings) -> int:
    if settings.adapter_dtype is not None:
        return DTYPE_BYTES[settings.adapter_dtype]
    if target.quantized and not target.bias:
        return 4  # the adapter takes the dtype of the base's first float tensor: fp32 here
    return settings.b


def trainable_tensors(inv: Inventory, settings: Settings) -> list[tuple[int, int]]:
    """(elements, bytes per element) of every trainable tensor."""
    r, out = settings.adapter.rank, []
    for t in inv.targets:
        ab = adapter_dtype_bytes(t, settings)
        out += [(r * t.n_in, ab), (t.n_out * r, ab)]
        if settings.adapter.dora:
            out.append((t.n_out, ab))
    return out + [(n, settings.b) for n in inv.trained_modules]


def optimizer_bytes(tensors: list[tuple[int, int]], optimizer: str) -> int:
    """Optimizer state bytes for the trainable tensors (see the module docstring)."""
    total = 0
    for n, nbytes in tensors:
        if optimizer == "adamw":
            total += 2 * n * nbytes
        elif optimizer in ("adamw8bit", "paged_adamw8bit"):
            total += 2 * n + 8 * math.ceil(n / BNB_BLOCK) if n >= MIN_8BIT else 8 * n
        elif optimizer == "paged_adamw32bit":
            total += 8 * n
    return total
