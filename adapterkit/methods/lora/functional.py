"""The LoRA and DoRA branches of a linear layer, as two autograd Functions.

LoRA:  out = y + scale * (drop(x) @ A^T) @ B^T                        x (N, in), y (N, out)
DoRA:  out = s * (y_b + scale * (drop(x) @ A^T) @ B^T - bias) + bias,  s = m / ||W + scale B A||_row

Why custom Functions: with dropout, autograd would keep a dropped copy of x (and its mask) for
every adapted layer. Here only x itself (shared with the base layer and its neighbours) and the
small h = drop(x) @ A^T (N, rank) are kept, plus a seed; backward draws the same mask again.
For DoRA the row norm is a constant (DoRA paper, section 4.3; PEFT does the same) computed from
W and the small factors, never from a dense W + scale B A; the magnitude's gradient is taken
from the output, which the next layer usually keeps anyway, instead of a kept copy of W x.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def new_seed() -> int:
    """A dropout seed drawn from torch's default generator (so ``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def _dropped(x: Tensor, p: float, seed: Optional[int]) -> Tensor:
    """x with each element zeroed with probability p and the rest scaled by 1 / (1 - p)."""
    if seed is None:
        return x
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    mask = torch.empty_like(x).bernoulli_(1.0 - p, generator=gen)
    return mask.mul_(x).mul_(1.0 / (1.0 - p))


class LoRAFunction(torch.autograd.Function):
    """out = y + scale * (drop(x) @ A^T) @ B^T; shapes x (N, in), y (N, out), A (r, in), B (out, r)."""

    @staticmethod
    def forward(ctx, x, y, a, b, scale: float, p: float, seed: Optional[int]):
        h = _dropped(x, p, seed) @ a.t()  # (N, r)
        out = torch.addmm(y, h, b.t(), alpha=scale)  # (N, out)
        ctx.save_for_backward(x, h, a, b)
        ctx.scale, ctx.p, ctx.seed = scale, p, seed
        return out

    @staticmethod
    def backward(ctx, dy):
        x, h, a, b = ctx.saved_tensors
        dx, da, db = _lora_grads(ctx, dy, x, h, a, b)
        return dx, dy, da, db, None, None, None


def _lora_grads(ctx, dz, x, h, a, b):
    """Gradients of scale * (drop(x) @ A^T) @ B^T for an upstream gradient dz (N, out)."""
    need_x, need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
    dh = torch.mm(dz, b).mul_(ctx.scale)  # (N, r)
    db = torch.mm(dz.t(), h).mul_(ctx.scale) if need_b else None  # (out, r)
    da = dx = None
    if ctx.seed is None:
        da = torch.mm(dh.t(), x) if need_a else None  # (r, in)
        dx = torch.mm(dh, a) if need_x else None  # (N, in)
    else:
        if need_a:
            da = torch.mm(dh.t(), _dropped(x, ctx.p, ctx.seed))
        if need_x:  # d drop(x) / dx = mask / (1 - p): the same mask, drawn from the same seed
            dx = _dropped(torch.mm(dh, a), ctx.p, ctx.seed)
    return dx, da, db


class DoRAFunction(torch.autograd.Function):
    """out = s * (y_b - bias + scale * (drop(x) @ A^T) @ B^T) + bias, s = m / norm (norm constant).

    y_b (N, out) is the base output (bias included); m and norm are (out,).
    """

    @staticmethod
    def forward(ctx, x, y_b, a, b, m, bias, norm, scale: float, p: float, seed: Optional[int]):
        h = _dropped(x, p, seed) @ a.t()  # (N, r)
        s = m / norm  # (out,)
        out = torch.addmm(y_b, h, b.t(), alpha=scale).mul_(s)  # s * (y_b + lora)
        if bias is not None:
            out.add_(bias * (1 - s))  # s * (y_b - bias + lora) + bias
        ctx.save_for_backward(x, h, a, b, m, s, bias, out)
        ctx.scale, ctx.p, ctx.seed = scale, p, seed
        return out

    @staticmethod
    def backward(ctx, dy):
        x, h, a, b, m, s, bias, out = ctx.saved_tensors
        dz = dy * s  # (N, out): gradient of the un-scaled sum y_b - bias + lora
        dx, da, db = _lora_grads(ctx, dz, x, h, a, b)
        dm = None
        if ctx.needs_input_grad[4]:  # d out / d m = (out - bias) / m, summed over rows
            z = out if bias is None else out - bias
            dm = (dy * z).sum(0) / m
        return dx, dz, da, db, dm, None, None, None, None, None


@torch.no_grad()
def dora_norm(weight: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """||W + scale B A|| per output row (out,), in fp32, without building B A (out, in).

    ||W_o + c (BA)_o||^2 = ||W_o||^2 + 2c <B_o, (W A^T)_o> + c^2 <B_o, (B A A^T)_o>
    """
    wa = (weight @ a.to(weight.dtype).t()).float()  # (out, r)
    a32, b32 = a.float(), b.float()
    sq = torch.linalg.vector_norm(weight, dim=1, dtype=torch.float32).square()
    sq += 2 * scale * (b32 * wa).sum(1)
    sq += scale * scale * ((b32 @ (a32 @ a32.t())) * b32).sum(1)
    return sq.clamp_min_(0).sqrt_()
