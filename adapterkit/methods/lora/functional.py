"""The LoRA and DoRA branches of a linear layer, as two autograd Functions.

LoRA:  out = y + scale * (drop(x) @ A^T) @ B^T                        x (N, in), y (N, out)
DoRA:  out = s * (y_b + scale * (drop(x) @ A^T) @ B^T - bias) + bias,  s = m / ||W + scale B A||_row

drop(x) = x * keep / (1 - p), keep ~ Bernoulli(1 - p) per element (inverted dropout, as torch and PEFT).

Why custom Functions: with dropout, autograd would keep a dropped copy of x (and a float mask) for
every adapted layer. Here only x itself (shared with the base layer and its neighbours) and the
small h = drop(x) @ A^T (N, rank) are kept, plus the keep-mask packed to one bit per element
(1/32 of an fp32 copy of x); backward unpacks the same mask. The mask comes from a seeded
generator, 16 random bits per element (so p is rounded to a multiple of 2^-16), which is several
times cheaper on CPU than ``bernoulli_``.
For DoRA the row norm is a constant (DoRA paper, arXiv:2402.09353, section 4.3; PEFT does the
same) computed from W and the small factors, never from a dense W + scale B A; the magnitude's
gradient is taken from the output, which the next layer often keeps anyway, instead of a kept
copy of W x. With dropout in training, s multiplies W x rather than PEFT's W drop(x) (the same
expectation, without a second full matmul); with dropout 0 or in eval mode both are identical.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_SPREAD = 0x0101010101010101  # one byte copied into all 8 bytes of an int64
_BIT_PER_BYTE = 0x8040201008040201 - 2**64  # byte k keeps bit k (as a signed int64)
_LOW7 = 0x7F7F7F7F7F7F7F7F  # added to bytes of 0 or 2^k: the top bit of each byte says "non-zero"
_ONES = 0x0101010101010101  # bit 0 of every byte
_GATHER = 0x0102040810204080  # sums 8 bytes holding 0/1 into the top byte, byte k -> bit k


def new_seed() -> int:
    """A dropout seed drawn from torch's default generator (so ``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def keep_mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> Tensor:
    """float32 tensor of ``shape``: 1 with probability 1 - p (rounded to a multiple of 2^-16), else 0.

    One 64-bit draw gives four 16-bit uniforms u; an element is kept when u < round((1 - p) 2^16).
    The same (shape, p, seed, device) always gives the same mask.
    """
    n = shape.numel()
    threshold = round((1.0 - p) * 65536)
    if threshold >= 65536:
        return torch.ones(shape, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=gen)  # all 64 bits uniform
    uniform = words.view(torch.int16)[:n].view(shape).float()  # integers in [-2^15, 2^15)
    # threshold - u is an integer: >= 1 (kept) or <= 0 (dropped); exact in float32
    return uniform.neg_().add_(threshold - 32768).clamp_(0, 1)


def pack_mask(keep: Tensor) -> Tensor:
    """A 0/1 tensor packed to bits: uint8 (ceil(n / 8),), element i in bit i % 8 of byte i // 8."""
    flat = keep.reshape(-1).to(torch.int8)  # (float -> int8 is a fast cast on CPU; -> uint8 is not)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.int64)  # 8 elements (bytes of 0/1) per word
    return ((words * _GATHER) >> 56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_mask(bits: Tensor, shape: torch.Size) -> Tensor:
    """The 0/1 uint8 tensor of ``shape`` that ``pack_mask`` packed into ``bits``."""
    words = (bits.to(torch.int64) * _SPREAD).bitwise_and_(_BIT_PER_BYTE)  # byte k: 2^k or 0
    words = ((words + _LOW7) >> 7).bitwise_and_(_ONES)  # byte k: 1 or 0
    return words.view(torch.uint8)[: shape.numel()].view(shape)


def _masked(x: Tensor, keep: Optional[Tensor]) -> Tensor:
    """x with dropped elements zeroed (the 1 / (1 - p) factor is applied to the small side)."""
    return x if keep is None else x * keep.to(x.dtype)


class LoRAFunction(torch.autograd.Function):
    """out = y + scale * (drop(x) @ A^T) @ B^T; shapes x (N, in), y (N, out), A (r, in), B (out, r).

    ``seed`` None means no dropout (p is then ignored).
    """

    @staticmethod
    def forward(ctx, x, y, a, b, scale: float, p: float, seed: Optional[int]):
        keep = None if seed is None else keep_mask(x.shape, p, seed, x.device)
        h = _masked(x, keep) @ a.t()  # (N, r)
        if keep is not None:
            h.mul_(1.0 / (1.0 - p))
        out = torch.addmm(y, h, b.t(), alpha=scale)  # (N, out)
        ctx.save_for_backward(x, h, a, b, None if keep is None else pack_mask(keep))
        ctx.scale, ctx.p = scale, p
        return out

    @staticmethod
    def backward(ctx, dy):
        x, h, a, b, bits = ctx.saved_tensors
        dx, da, db = _lora_grads(ctx, dy, x, h, a, b, bits)
        return dx, dy, da, db, None, None, None


def _lora_grads(ctx, dz, x, h, a, b, bits):
    """Gradients of scale * (drop(x) @ A^T) @ B^T for an upstream gradient dz (N, out)."""
    need_x, need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
    dh = torch.mm(dz, b).mul_(ctx.scale)  # (N, r): gradient of h
    db = torch.mm(dz.t(), h).mul_(ctx.scale) if need_b else None  # (out, r)
    keep = None
    if bits is not None:  # d drop(x) / dx = keep / (1 - p): the forward's mask, unpacked
        keep = unpack_mask(bits, x.shape).to(x.dtype)
        dh.mul_(1.0 / (1.0 - ctx.p))
    da = torch.mm(dh.t(), _masked(x, keep)) if need_a else None  # (r, in)
    dx = None
    if need_x:
        dx = torch.mm(dh, a)  # (N, in)
        if keep is not None:
            dx.mul_(keep)  # (dh @ A) * keep / (1 - p); the factor is already in dh
    return dx, da, db


class DoRAFunction(torch.autograd.Function):
    """out = s * (y_b - bias + scale * (drop(x) @ A^T) @ B^T) + bias, s = m / norm (norm constant).

    y_b (N, out) is the base output (bias included); m and norm are (out,).
    """

    @staticmethod
    def forward(ctx, x, y_b, a, b, m, bias, norm, scale: float, p: float, seed: Optional[int]):
        keep = None if seed is None else keep_mask(x.shape, p, seed, x.device)
        h = _masked(x, keep) @ a.t()  # (N, r)
        if keep is not None:
            h.mul_(1.0 / (1.0 - p))
        s = m / norm  # (out,)
        out = torch.addmm(y_b, h, b.t(), alpha=scale).mul_(s)  # s * (y_b + lora)
        if bias is not None:
            out.add_(bias * (1 - s))  # s * (y_b - bias + lora) + bias
        ctx.save_for_backward(x, h, a, b, m, s, bias, out, None if keep is None else pack_mask(keep))
        ctx.scale, ctx.p = scale, p
        return out

    @staticmethod
    def backward(ctx, dy):
        x, h, a, b, m, s, bias, out, bits = ctx.saved_tensors
        dz = dy * s  # (N, out): gradient of the un-scaled sum y_b - bias + lora
        dx, da, db = _lora_grads(ctx, dz, x, h, a, b, bits)
        dm = None
        if ctx.needs_input_grad[4]:  # d out / d m = (out - bias) / m, summed over rows
            dm = (dy * out).sum(0)
            if bias is not None:
                dm -= dy.sum(0) * bias
            dm /= m
        return dx, dz, da, db, dm, None, None, None, None, None


@torch.no_grad()
def dora_norm(weight: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """||W + scale B A|| per output row (out,), in fp32 (fp64 for fp64 weights), without building B A.

    ||W_o + c (BA)_o||^2 = ||W_o||^2 + 2c <B_o, (W A^T)_o> + c^2 <B_o, (B A A^T)_o>
    """
    acc = torch.promote_types(weight.dtype, torch.float32)
    wa = (weight @ a.to(weight.dtype).t()).to(acc)  # (out, r)
    a32, b32 = a.to(acc), b.to(acc)
    sq = torch.linalg.vector_norm(weight, dim=1, dtype=acc).square()
    sq += 2 * scale * (b32 * wa).sum(1)
    sq += scale * scale * ((b32 @ (a32 @ a32.t())) * b32).sum(1)
    return sq.clamp_min_(0).sqrt_()
