"""Fused dequantize + matmul: y = x @ W^T (+ scale * (x @ A^T) @ B^T), W never dense in memory.

x (M, K), W (N, K) quantized (formats.py), A (r, K), B (N, r) -> y (M, N).
Each program computes a (BM, BN) tile of y: it walks K in BK steps, dequantizes the (BN, BK)
tile of W in registers and accumulates in fp32. With the LoRA branch (HAS_LORA) the same x tile
also feeds h = x @ A^T (BM, R), and the tile ends with acc += scale * h @ B^T: x is read once.
Decode shapes (M <= 16) split K over programs (SPLIT_K) so that reading the 4-bit weight, the
bound at small M, is spread over the whole GPU; partial sums are added afterwards (linear in h too).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from ._tiles import weight_tile
from .formats import QuantWeight


@triton.jit
def _qmatmul_kernel(
    x_ptr,
    out_ptr,
    codes_ptr,
    absmax_ptr,
    nested_ptr,
    offset_ptr,
    levels_ptr,
    dynamic_ptr,
    a_ptr,
    b_ptr,
    scale,
    M,
    N,
    K,
    R,
    stride_xm,
    stride_om,
    stride_os,
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_LORA: tl.constexpr,
    RP: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    dot_dtype = x_ptr.dtype.element_ty
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if HAS_LORA:
        offs_r = tl.arange(0, RP)
        h = tl.zeros((BM, RP), dtype=tl.float32)
    k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BK) * BK
    k_start = pid_s * k_span
    for k0 in range(k_start, tl.minimum(k_start + k_span, K), BK):
        offs_k = k0 + tl.arange(0, BK)
        x_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=x_mask, other=0.0)
        x = x.to(tl.float32).to(dot_dtype)  # fp32 right after the load: the interpreter's bf16 is wrong
        w = weight_tile(
            codes_ptr,
            absmax_ptr,
            nested_ptr,
            offset_ptr,
            levels_ptr,
            dynamic_ptr,
            offs_n,
            offs_k,
            N,
            K,
            BLOCK,
            BITS,
            NESTED,
        )  # (BN, BK) fp32
        acc += tl.dot(x, tl.trans(w).to(dot_dtype), input_precision=PREC)
        if HAS_LORA:
            a_mask = (offs_r[None, :] < R) & (offs_k[:, None] < K)
            a = tl.load(a_ptr + offs_r[None, :] * K + offs_k[:, None], mask=a_mask, other=0.0)  # (BK, RP)
            h += tl.dot(x, a.to(tl.float32).to(dot_dtype), input_precision=PREC)
    if HAS_LORA:
        b_mask = (offs_r[:, None] < R) & (offs_n[None, :] < N)
        b = tl.load(b_ptr + offs_n[None, :] * R + offs_r[:, None], mask=b_mask, other=0.0)  # (RP, BN)
        acc += scale * tl.dot(h.to(dot_dtype), b.to(tl.float32).to(dot_dtype), input_precision=PREC)
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out_ptrs = out_ptr + pid_s * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def qmatmul_triton(
    x: Tensor,
    qw: QuantWeight,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    scale: float = 1.0,
    blocks: Optional[dict] = None,
) -> Tensor:
    """x (M, K) -> x @ W^T [+ scale * (x @ A^T) @ B^T] (M, N), in x's dtype.

    ``blocks`` overrides the block sizes / SPLIT_K that ``_launch.matmul_blocks`` picks.
    """
    x = x.contiguous()
    m, k = x.shape
    n = qw.shape[0]
    assert k == qw.shape[1], (x.shape, qw.shape)
    cfg = {**_launch.matmul_blocks(m, n, k), **(blocks or {})}
    split = cfg["SPLIT_K"]
    out = torch.empty((split, m, n), device=x.device, dtype=torch.float32 if split > 1 else x.dtype)
    has_lora = a is not None
    r = a.shape[0] if has_lora else 1
    if has_lora:
        a, b = a.to(x.dtype).contiguous(), b.to(x.dtype).contiguous()
    grid = (triton.cdiv(m, cfg["BM"]), triton.cdiv(n, cfg["BN"]), split)
    extra = {key: cfg[key] for key in ("num_warps", "num_stages") if key in cfg}
    _qmatmul_kernel[grid](
        x,
        out,
        *_launch.weight_args(qw),
        a if has_lora else x,
        b if has_lora else x,
        float(scale),
        m,
        n,
        k,
        r,
        x.stride(0),
        out.stride(1),
        out.stride(0),
        HAS_LORA=has_lora,
        RP=max(16, _launch.next_pow2(r)),
        PREC=_launch.dot_precision(x.dtype),
        BM=cfg["BM"],
        BN=cfg["BN"],
        BK=cfg["BK"],
        SPLIT_K=split,
        **_launch.weight_meta(qw),
        **extra,
    )
    return out[0] if split == 1 else out.sum(0).to(x.dtype)


class QMatmulTriton(torch.autograd.Function):
    """y = x @ W^T with W frozen; backward: dx = dy @ W, fused the same way (qmatmul_grad.py)."""

    @staticmethod
    def forward(ctx, x: Tensor, qw: QuantWeight):
        ctx.qw = qw
        return qmatmul_triton(x, qw)

    @staticmethod
    def backward(ctx, dy: Tensor):
        from .qmatmul_grad import qmatmul_input_grad_triton

        dx = qmatmul_input_grad_triton(dy, ctx.qw) if ctx.needs_input_grad[0] else None
        return dx, None
