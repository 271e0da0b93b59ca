"""The LoRA and DoRA branches of a linear layer, as autograd Functions.

LoRA:  out = y + scale * (drop(x) @ A^T) @ B^T                        x (N, in), y (N, out)
DoRA:  out = s * (y_b + scale * (drop(x) @ A^T) @ B^T - bias) + bias,  s = m / ||W + scale B A||_row

drop(x) = x * keep / (1 - p), keep ~ Bernoulli(1 - p) per element (inverted dropout, as torch and PEFT).
LoRA: Hu et al. 2021 (arXiv:2106.09685); DoRA: Liu et al. 2024 (arXiv:2402.09353).

``LoRAFunction`` / ``DoRAFunction`` take the base output y computed outside, by the base's own
call (any base kind, its hooks run). Running an nn.Linear base inside the same node was measured
to save 0.3% (LoRA) and 1.6% (DoRA) of a training step on CPU, too little for the guards it needs.

Why custom Functions: with dropout, autograd would keep a dropped copy of x and a float mask for
every adapted layer. Here only x itself (shared with the base layer and its neighbours) and the
small h = drop(x) @ A^T (N, rank) are kept, plus the keep-mask packed to one bit per element
(1/32 of an fp32 copy of x); backward unpacks the same mask. Packing and unpacking cost less than
drawing the mask a second time from a saved seed. The mask comes from a seeded generator with
16 random bits per element (so p is rounded to a multiple of 2^-16), several times cheaper on
CPU than ``bernoulli_``.
For DoRA the row norm is a constant (DoRA paper, section 4.3; PEFT does the same) computed from
W and the small factors, never from a dense W + scale B A; the magnitude's gradient is taken from
the output, which the next layer often keeps anyway, instead of a kept copy of W x. With dropout
in training, s multiplies W x rather than PEFT's W drop(x) (the same expectation, without a
second full matmul); with dropout 0 or in eval mode both are identical.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor

_SPREAD = 0x0101010101010101  # one byte copied into all 8 bytes of an int64
_BIT_PER_BYTE = 0x8040201008040201 - 2**64  # byte k keeps bit k (as a signed int64)
_LOW7 = 0x7F7F7F7F7F7F7F7F  # added to bytes of 0 or 2^k: the top bit of each byte says "non-zero"
_ONES = 0x0101010101010101  # bit 0 of every byte
_GATHER = 0x0102040810204080  # sums 8 bytes holding 0/1 into the top byte, byte k -> bit k
_TOP_BYTE = 7 if sys.byteorder == "little" else 0


def seed_tensor() -> Tensor:
    """A dropout seed drawn from torch's default CPU generator (so ``torch.manual_seed`` fixes it), as
    a () int64 tensor (traced.py's seed op returns it)."""
    return torch.randint(0, 2**62, (), dtype=torch.int64, device="cpu")


def new_seed() -> int:
    """``seed_tensor()`` as a Python int (the eager Functions take it so)."""
    return int(seed_tensor())


def keep_mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> Tensor:
    """float32 tensor of ``shape``: 1 with probability 1 - p (rounded to a multiple of 2^-16), else 0.

    One 64-bit draw gives four 16-bit uniforms u; an element is kept when u < round((1 - p) 2^16).
    The same (shape, p, seed, device) always gives the same mask.
    """
    return _neg_keep(shape, p, seed, device).neg_()


def _neg_keep(shape: torch.Size, p: float, seed: int, device: torch.device) -> Tensor:
    """-1 where kept, 0 where dropped (keep_mask without its last pass), float32."""
    n = shape.numel()
    threshold = round((1.0 - p) * 65536)
    if threshold >= 65536:
        return torch.full(shape, -1.0, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=gen)  # all 64 bits uniform
    uniform = words.view(torch.int16)[:n].view(shape).float()  # integers in [-2^15, 2^15)
    # u - threshold is an integer: <= -1 (kept) or >= 0 (dropped); exact in float32
    return uniform.sub_(threshold - 32768).clamp_(-1, 0)


def pack_mask(keep: Tensor) -> Tensor:
    """A mask packed to bits: uint8 (ceil(n / 8),), bit i % 8 of byte i // 8 set where element i
    is non-zero. ``keep`` holds 0 and 1 (or -1): whole numbers that fit in an int8."""
    flat = keep.reshape(-1).to(torch.int8)  # (float -> int8 is a fast cast on CPU; -> uint8 is not)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.int64).bitwise_and_(_ONES)  # 8 elements (bytes of 0/1) per word
    top = words.mul_(_GATHER).view(torch.uint8)[_TOP_BYTE::8]  # the top byte of each word
    return torch.empty_like(top, memory_format=torch.contiguous_format).copy_(top)


def unpack_mask(bits: Tensor, shape: torch.Size) -> Tensor:
    """The 0/1 uint8 tensor of ``shape`` that ``pack_mask`` packed into ``bits``."""
    words = bits.to(torch.int64).mul_(_SPREAD).bitwise_and_(_BIT_PER_BYTE)  # byte k: 2^k or 0
    words = words.add_(_LOW7).bitwise_right_shift_(7).bitwise_and_(_ONES)  # byte k: 1 or 0
    return words.view(torch.uint8)[: shape.numel()].view(shape)


def branch(x: Tensor, a: Tensor, p: float, seed: Optional[int]) -> tuple[Tensor, Optional[Tensor]]:
    """h = drop(x) @ A^T (N, r), and the keep-mask packed to bits (None without dropout)."""
    if seed is None:
        return x @ a.t(), None
    neg_keep = _neg_keep(x.shape, p, seed, x.device)  # (N, in) float32: -1 kept, 0 dropped
    bits = pack_mask(neg_keep)
    neg_keep = neg_keep if neg_keep.dtype == x.dtype else neg_keep.to(x.dtype)
    h = neg_keep.mul_(x) @ a.t()  # -(x * keep), in the mask's own buffer
    return h.mul_(-1.0 / (1.0 - p)), bits  # the sign and 1 / (1 - p) on the small side


def _lora_grads(dz, x, h, a, b, bits, scale: float, p: float, need) -> tuple:
    """Gradients (dx, dA, dB) of scale * (drop(x) @ A^T) @ B^T for an upstream dz (N, out).

    ``need``: which of (x, A, B) want a gradient; the others come back as None.
    """
    need_x, need_a, need_b = need
    dh = torch.mm(dz, b).mul_(scale)  # (N, r): gradient of h
    db = torch.mm(dz.t(), h).mul_(scale) if need_b else None  # (out, r)
    if bits is None:
        da = torch.mm(dh.t(), x) if need_a else None  # (r, in)
        dx = torch.mm(dh, a) if need_x else None  # (N, in)
        return dx, da, db
    dx, da = masked_grads(dh.mul_(1.0 / (1.0 - p)), x, a, bits, need_x, need_a)
    return dx, da, db


def masked_grads(dh, x, a, bits, need_x: bool, need_a: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients (dx, dA) of h = (x * keep / (1 - p)) @ A^T, given dh (N, r) already times 1 / (1 - p):
    d drop(x) / dx = keep / (1 - p), with the forward's mask (``bits``) unpacked. None where not needed."""
    keep = unpack_mask(bits, x.shape).to(x.dtype)  # (N, in) 0/1
    dx = torch.mm(dh, a).mul_(keep) if need_x else None  # (N, in)
    da = torch.mm(dh.t(), keep.mul_(x)) if need_a else None  # (r, in); keep becomes x * keep
    return dx, da


def _dora_scale(out, s, bias) -> Tensor:
    """s * (out - bias) + bias, in place; ``out`` holds y_b + scale * h @ B^T."""
    out.mul_(s)
    if bias is not None:
        out.add_(bias * (1 - s))
    return out


def _dora_magnitude_grad(dy, out, bias, m) -> Tensor:
    """d loss / d m = sum over rows of dy * (out - bias) / m: from the output, no kept W x."""
    dm = (dy * out).sum(0)
    if bias is not None:
        dm -= dy.sum(0) * bias
    return dm.div_(m)


class LoRAFunction(torch.autograd.Function):
    """out = y + scale * (drop(x) @ A^T) @ B^T; shapes x (N, in), y (N, out), A (r, in), B (out, r).

    ``y`` is the base output, computed outside. ``seed`` None means no dropout (p is then ignored).
    """

    @staticmethod
    def forward(ctx, x, y, a, b, scale: float, p: float, seed: Optional[int]):
        h, bits = branch(x, a, p, seed)
        out = torch.addmm(y, h, b.t(), alpha=scale)  # (N, out)
        ctx.save_for_backward(x, h, a, b, bits)
        ctx.scale, ctx.p = scale, p
        return out

    @staticmethod
    def backward(ctx, dy):
        x, h, a, b, bits = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        dx, da, db = _lora_grads(dy, x, h, a, b, bits, ctx.scale, ctx.p, need)
        return dx, dy, da, db, None, None, None


class DoRAFunction(torch.autograd.Function):
    """out = s * (y_b - bias + scale * (drop(x) @ A^T) @ B^T) + bias, s = m / norm (norm constant).

    y_b (N, out) is the base output (bias included), computed outside; m and norm are (out,).
    """

    @staticmethod
    def forward(ctx, x, y_b, a, b, m, bias, norm, scale: float, p: float, seed: Optional[int]):
        h, bits = branch(x, a, p, seed)
        s = (m / norm).to(x.dtype)  # (out,); norm comes in fp32
        out = _dora_scale(torch.addmm(y_b, h, b.t(), alpha=scale), s, bias)  # (N, out)
        ctx.save_for_backward(x, h, a, b, m, s, bias, out, bits)
        ctx.scale, ctx.p = scale, p
        return out

    @staticmethod
    def backward(ctx, dy):
        x, h, a, b, m, s, bias, out, bits = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        dz = dy * s  # (N, out): gradient of the un-scaled sum y_b - bias + lora
        dx, da, db = _lora_grads(dz, x, h, a, b, bits, ctx.scale, ctx.p, need)
        dm = _dora_magnitude_grad(dy, out, bias, m) if ctx.needs_input_grad[4] else None
        dbias = (dy * (1 - s)).sum(0) if ctx.needs_input_grad[5] else None  # the direct path only
        return dx, dz, da, db, dm, dbias, None, None, None, None


def weight_sq(weight: Tensor) -> Tensor:
    """||W_o||^2 per output row (out,), in fp32 (fp64 for fp64 weights)."""
    acc = torch.promote_types(weight.dtype, torch.float32)
    with torch.no_grad():
        return torch.linalg.vector_norm(weight, dim=1, dtype=acc).square_()


@torch.no_grad()
def dora_norm(weight: Tensor, a: Tensor, b: Tensor, scale: float, w_sq: Optional[Tensor] = None) -> Tensor:
    """||W + scale B A|| per output row (out,), in fp32 (fp64 for fp64 weights), without building B A.

    ||W_o + c (BA)_o||^2 = ||W_o||^2 + 2c <B_o, (W A^T)_o> + c^2 <B_o, (B A A^T)_o>
    ``w_sq``: ||W_o||^2 when the caller has it already (W is frozen: it changes rarely).
    """
    acc = torch.promote_types(weight.dtype, torch.float32)
    wa = (weight @ a.to(weight.dtype).t()).to(acc)  # (out, r)
    a32, b32 = a.to(acc), b.to(acc)
    sq = weight_sq(weight) if w_sq is None else w_sq.clone()
    sq += 2 * scale * (b32 * wa).sum(1)
    sq += scale * scale * ((b32 @ (a32 @ a32.t())) * b32).sum(1)
    return sq.clamp_min_(0).sqrt_()
