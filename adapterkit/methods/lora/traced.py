"""LoRA's dropout branch as a torch custom op: what ``torch.compile`` sees of it.

    h = drop(x) @ A^T        x (N, in), A (r, in) -> h (N, r), keep-mask packed to bits (ceil(N in / 8),)

The eager autograd Functions (functional.py) draw a seed from torch's generator and keep the mask
packed to one bit per element. Traced as they are, reading that seed back is a graph break; traced
as ``F.dropout`` instead, the compiled graph keeps a dropped copy of x per layer and a mask, as PEFT
does. As an opaque custom op (``torch.library.custom_op``) the compiler calls the same code: the
seed is drawn inside the op (so ``torch.manual_seed`` gives the eager path's masks, and gradient
checkpointing's restored generator state redraws the same ones), and backward unpacks the same bits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import branch, masked_grads, new_seed


@torch.library.custom_op("adapterkit::lora_dropout_branch", mutates_args=())
def dropout_branch(x: Tensor, a: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """h = drop(x) @ A^T (N, r) and the keep-mask packed to bits; the seed drawn here."""
    h, bits = branch(x, a, p, new_seed())
    return h, bits


@dropout_branch.register_fake
def _(x: Tensor, a: Tensor, p: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape[0], a.shape[0]), x.new_empty((x.numel() + 7) // 8, dtype=torch.uint8)


@torch.library.custom_op("adapterkit::lora_dropout_branch_grad", mutates_args=())
def dropout_branch_grad(
    dh: Tensor, x: Tensor, a: Tensor, bits: Tensor, p: float, need_x: bool, need_a: bool
) -> tuple[Tensor, Tensor]:
    """(dx (N, in), dA (r, in)) for dh (N, r); an empty tensor in place of one not needed."""
    dx, da = masked_grads(dh * (1.0 / (1.0 - p)), x, a, bits, need_x, need_a)
    return (x.new_empty(0) if dx is None else dx), (a.new_empty(0) if da is None else da)


@dropout_branch_grad.register_fake
def _(dh, x, a, bits, p, need_x, need_a):
    return (torch.empty_like(x) if need_x else x.new_empty(0)), (torch.empty_like(a) if need_a else a.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    x, a, p = inputs
    ctx.save_for_backward(x, a, output[1])  # x, A and the packed mask; h is kept by B's matmul
    ctx.p = p


def _backward(ctx, dh: Tensor, _dbits) -> tuple:
    x, a, bits = ctx.saved_tensors
    need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, da = dropout_branch_grad(dh.contiguous(), x, a, bits, ctx.p, need_x, need_a)
    return (dx if need_x else None), (da if need_a else None), None


dropout_branch.register_autograd(_backward, setup_context=_setup_context)
