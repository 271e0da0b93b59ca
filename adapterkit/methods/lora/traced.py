"""LoRA's dropout branch as a torch custom op: what ``torch.compile`` sees of it.

    h = drop(x) @ A^T        x (N, in), A (r, in) -> h (N, r), keep-mask packed to bits (ceil(N in / 8),)

The eager autograd Functions (functional.py) draw a seed from torch's generator and keep the mask
packed to one bit per element. Traced as they are, reading that seed back is a graph break; traced
as ``F.dropout`` instead, the compiled graph keeps a dropped copy of x per layer and a mask, as PEFT
does. As an opaque custom op (``torch.library.custom_op``) the compiler calls the same code, and
backward unpacks the same bits. The seed is a tensor from a second op, ``dropout_seed``, which
makes the eager path's draw (so ``torch.manual_seed`` gives the eager path's masks) and is tagged
random, so a compiled gradient checkpoint keeps it: drawn inside the branch op instead, the
recompute drew a new seed, hence another mask, and wrong gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import branch, masked_grads, seed_tensor


@torch.library.custom_op("adapterkit::lora_dropout_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def dropout_seed(x: Tensor, a: Tensor) -> Tensor:
    """A () int64 seed from torch's default generator, the draw the eager path makes (``seed_tensor``).
    Tagged random, so a compiled checkpoint keeps it, never redraws it. x and A, unused, tell one
    layer's call from another's: the compiler merges calls with equal arguments into one."""
    return seed_tensor()


@dropout_seed.register_fake
def _(x: Tensor, a: Tensor) -> Tensor:
    return torch.empty((), dtype=torch.int64, device="cpu")


@torch.library.custom_op("adapterkit::lora_dropout_branch", mutates_args=())
def dropout_branch(x: Tensor, a: Tensor, p: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    """h = drop(x) @ A^T (N, r) and the keep-mask packed to bits, from ``seed`` (seed_tensor())."""
    h, bits = branch(x, a, p, int(seed))
    return h, bits


@dropout_branch.register_fake
def _(x: Tensor, a: Tensor, p: float, seed: Tensor) -> tuple[Tensor, Tensor]:
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
    x, a, p, _ = inputs
    ctx.save_for_backward(x, a, output[1])  # x, A and the packed mask; h is kept by B's matmul
    ctx.p = p


def _backward(ctx, dh: Tensor, _dbits) -> tuple:
    x, a, bits = ctx.saved_tensors
    need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, da = dropout_branch_grad(dh.contiguous(), x, a, bits, ctx.p, need_x, need_a)
    return (dx if need_x else None), (da if need_a else None), None, None


dropout_branch.register_autograd(_backward, setup_context=_setup_context)
