"""Pure-PyTorch quantize, dequantize and quantized matmuls: the CPU path (beside qmatmul_cpu) and the test oracle.

Layouts are defined in ``formats.py``. The matmuls compute, for x (M, K) and W (N, K):
    qmatmul:             y  = x @ W^T                          (M, N)
    qmatmul_input_grad:  dx = dy @ W                           (M, K)
    qlora_matmul:        y  = x @ W^T + scale * (x @ A^T) @ B^T,  A (r, K), B (N, r)
each by dequantizing W to the input dtype and calling torch.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import formats
from .formats import QuantWeight
from .scratch import scratch


def _blockwise_absmax(flat: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """fp32 (n,) -> (absmax (blocks,), flat / absmax clamped to [-1, 1]); a short last block is allowed."""
    n = flat.numel()
    full = n - n % block
    absmax = flat[:full].view(-1, block).abs().amax(dim=1)
    scaled = torch.clamp(flat[:full].view(-1, block) * (1.0 / absmax.clamp(min=1e-38)).view(-1, 1), -1, 1)
    scaled = scaled.reshape(-1)
    if full < n:
        last = flat[full:].abs().amax().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.view(1)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    return absmax, scaled


def _nearest(scaled: Tensor, code: Tensor) -> Tensor:
    """Index of the nearest level of ``code`` (ties to the upper level, as bitsandbytes)."""
    order = torch.argsort(code)
    levels = code[order]
    bounds = (levels[:-1] + levels[1:]) / 2
    return order[torch.bucketize(scaled, bounds)]


def _double_quant(absmax: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fp32 absmax (blocks,) -> (uint8 codes, nested absmax (ceil(blocks / 256),), offset (), levels)."""
    offset = absmax.mean()
    nested, scaled = _blockwise_absmax(absmax - offset, formats.NESTED_BLOCK)
    levels = formats.dynamic_map(absmax.device).clone()
    search = levels.clone()
    search[0] = -1.0  # bitsandbytes searches with the lowest level at -1.0 (it stores -0.993)
    q = _nearest(scaled, search).to(torch.uint8)
    return q, nested, offset, levels


def quantize_4bit(
    weight: Tensor, quant_type: str = "nf4", block: int = formats.DEFAULT_BLOCK, double_quant: bool = True
) -> QuantWeight:
    """(out, in) float weight -> 4-bit QuantWeight, the bytes bitsandbytes' quantize_4bit writes."""
    formats.check_format(quant_type, block, double_quant)
    flat = weight.detach().reshape(-1).float()
    absmax, scaled = _blockwise_absmax(flat, block)
    if scaled.numel() % 2:  # an odd count: the spare nibble holds the code of 0.0, as bitsandbytes
        scaled = torch.cat([scaled, scaled.new_zeros(1)])
    q = _nearest(scaled, formats.code_table(quant_type, weight.device))
    codes = formats.pack_nibbles(q)
    if not double_quant:
        return QuantWeight(codes, absmax, tuple(weight.shape), quant_type, block)
    qabs, nested, offset, levels = _double_quant(absmax)
    return QuantWeight(codes, qabs, tuple(weight.shape), quant_type, block, nested, offset, levels)


def quantize_8bit(weight: Tensor, block: int = formats.DEFAULT_BLOCK) -> QuantWeight:
    """(out, in) float weight -> blockwise symmetric int8 QuantWeight."""
    formats.check_format(formats.QUANT_TYPE_8BIT, block)
    flat = weight.detach().reshape(-1).float()
    absmax, scaled = _blockwise_absmax(flat, block)
    codes = torch.round(scaled * formats.INT8_MAX).to(torch.int8)
    return QuantWeight(codes, absmax, tuple(weight.shape), formats.QUANT_TYPE_8BIT, block)


def quantize(
    weight: Tensor,
    bits: int = 4,
    quant_type: str = "nf4",
    block: int = formats.DEFAULT_BLOCK,
    double_quant: bool = True,
) -> QuantWeight:
    if bits == 8:
        return quantize_8bit(weight, block)
    return quantize_4bit(weight, quant_type, block, double_quant)


def block_absmax(qw: QuantWeight) -> Tensor:
    """The fp32 absmax per block (undoing double quantization)."""
    if not qw.double_quant:
        return qw.absmax.float()
    levels = qw.nested_levels[qw.absmax.long()]  # (blocks,)
    blocks = qw.absmax.numel()
    scale = qw.nested_absmax.repeat_interleave(formats.NESTED_BLOCK)[:blocks]
    return levels * scale + qw.nested_offset


def dequantize(qw: QuantWeight, dtype: torch.dtype = torch.float32, reuse: bool = False) -> Tensor:
    """QuantWeight -> dense (out, in) weight in ``dtype`` (computed in fp32, then cast).

    ``reuse``: write into this thread's scratch buffer for the size (scratch.py), valid until the
    next reusing dequantize of that size: only for a matmul that consumes the weight at once.
    """
    n, device = qw.numel, qw.device
    if qw.bits == 8:
        out = scratch(n, torch.float32, device) if reuse else None
        values = torch.mul(qw.codes, 1.0 / formats.INT8_MAX, out=out)  # int8 -> fp32
    else:
        pairs = formats.byte_pairs(qw.quant_type, device)  # (256,) int64: one gather reads two codes
        m = qw.codes.numel()
        index = scratch(m, torch.int32, device).copy_(qw.codes) if reuse else qw.codes.int()
        out = scratch(m, torch.int64, device) if reuse else None
        values = torch.index_select(pairs, 0, index, out=out).view(torch.float32)[:n]  # (n,)
    absmax = block_absmax(qw)
    if n % qw.block == 0:  # whole blocks: broadcast the scales in place (values is not qw's)
        values.view(-1, qw.block).mul_(absmax.view(-1, 1))
    else:
        values.mul_(absmax.repeat_interleave(qw.block)[:n])
    weight = values.view(qw.shape)
    if dtype == torch.float32:
        return weight
    return scratch(n, dtype, device).view(qw.shape).copy_(weight) if reuse else weight.to(dtype)


def qmatmul(x: Tensor, qw: QuantWeight) -> Tensor:
    """x (M, K) -> x @ W^T (M, N)."""
    return x @ dequantize(qw, x.dtype, reuse=True).t()


def qmatmul_input_grad(dy: Tensor, qw: QuantWeight) -> Tensor:
    """dy (M, N) -> dy @ W (M, K)."""
    return dy @ dequantize(qw, dy.dtype, reuse=True)


def qlora_matmul(x: Tensor, qw: QuantWeight, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """x (M, K) -> x @ W^T + scale * (x @ A^T) @ B^T (M, N)."""
    return torch.addmm(qmatmul(x, qw), x @ a.t().to(x.dtype), b.t().to(x.dtype), alpha=scale)


class QMatmulReference(torch.autograd.Function):
    """y = x @ W^T on the reference path; backward dequantizes again instead of keeping W.

    ``add`` (M, N): accumulate into it in place instead (no fresh output to write).
    """

    @staticmethod
    def forward(ctx, x: Tensor, qw: QuantWeight, add: Optional[Tensor] = None):
        ctx.qw = qw
        if add is None:
            return qmatmul(x, qw)
        ctx.mark_dirty(add)
        return add.addmm_(x, dequantize(qw, x.dtype, reuse=True).t())

    @staticmethod
    def backward(ctx, dy: Tensor):
        needs = ctx.needs_input_grad
        dx = qmatmul_input_grad(dy, ctx.qw) if needs[0] else None
        return (dx, None, dy) if len(needs) == 3 else (dx, None)


class LoRABranch(torch.autograd.Function):
    """y = (scale * x @ A^T) @ B^T, keeping x, A, B and the (M, r) scale * x @ A^T for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, scale: float):
        ctx.scale = scale
        h = (x @ a.t().to(x.dtype)).mul_(scale)  # (M, r)
        ctx.save_for_backward(x, a, b, h)
        return h @ b.t().to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, a, b, h = ctx.saved_tensors
        return *lora_grads(dy, x, a, b, ctx.scale, ctx.needs_input_grad[:3], h), None


def lora_grads(dy: Tensor, x: Tensor, a: Tensor, b: Tensor, scale: float, needs, h=None) -> tuple:
    """Gradients of scale * (x @ A^T) @ B^T for (x, A, B), None where ``needs`` says none.

    dh = scale * dy @ B (M, r); dx = dh @ A; dA = dh^T @ x; dB = dy^T @ h, h = scale * x @ A^T
    (the kept h, or recomputed when None).
    """
    a_, b_ = a.to(dy.dtype), b.to(dy.dtype)
    dh = (dy @ b_).mul_(scale)  # (M, r)
    dx = dh @ a_ if needs[0] else None
    da = (dh.t() @ x.to(dy.dtype)).to(a.dtype) if needs[1] else None
    db = None
    if needs[2]:
        h = (x.to(dy.dtype) @ a_.t()).mul_(scale) if h is None else h.to(dy.dtype)
        db = (dy.t() @ h).to(b.dtype)
    return dx, da, db


def qlora(x: Tensor, qw: QuantWeight, a: Tensor, b: Tensor, scale: float, matmul=QMatmulReference) -> Tensor:
    """x (M, K) -> x @ W^T + scale * (x @ A^T) @ B^T (M, N), differentiable in x, A and B.

    The LoRA branch runs first and the base matmul last, adding into the branch's output. So the
    tensors this layer keeps for backward (x, A, B, h) are kept before its base matmul runs, and a
    checkpointed block whose last kept tensors are this layer's (a transformer block's last
    projection) stops its recompute before that matmul: torch's non-reentrant checkpoint ends
    the recompute once every kept tensor is back (``torch.utils.checkpoint.set_checkpoint_early_stop``).
    ``matmul``: the base matmul's autograd Function (this file's, or another with its signature: ops
    passes the C++ CPU kernel's).
    """
    return matmul.apply(x, qw, LoRABranch.apply(x, a, b, scale))


def maybe_bias(y: Tensor, bias: Optional[Tensor]) -> Tensor:
    return y if bias is None else y + bias.to(y.dtype)
