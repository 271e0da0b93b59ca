"""The input gradient of y = x @ W^T, fused: dx = dy @ W, W dequantized tile by tile in registers.

dy (M, N), W (N, K) quantized -> dx (M, K). Each program owns a (BM, BK) tile of dx and walks N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _launch
from ._tiles import weight_tile
from .formats import QuantWeight


@triton.jit
def _qmatmul_grad_kernel(
    dy_ptr,
    dx_ptr,
    codes_ptr,
    absmax_ptr,
    nested_ptr,
    offset_ptr,
    levels_ptr,
    dynamic_ptr,
    M,
    N,
    K,
    stride_dym,
    stride_dxm,
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
    NESTED: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_k = pid_k * BK + tl.arange(0, BK)
    dot_dtype = dy_ptr.dtype.element_ty
    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        dy_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :], mask=dy_mask, other=0.0)
        dy = dy.to(tl.float32).to(dot_dtype)
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
        acc += tl.dot(dy, w.to(dot_dtype), input_precision=PREC)
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


def qmatmul_input_grad_triton(dy: Tensor, qw: QuantWeight) -> Tensor:
    """dy (M, N) -> dy @ W (M, K), in dy's dtype."""
    dy = dy.contiguous()
    m, n = dy.shape
    k = qw.shape[1]
    cfg = _launch.matmul_blocks(m, k, n)
    dx = torch.empty((m, k), device=dy.device, dtype=dy.dtype)
    grid = (triton.cdiv(m, cfg["BM"]), triton.cdiv(k, cfg["BN"]))
    extra = {key: cfg[key] for key in ("num_warps", "num_stages") if key in cfg}
    _qmatmul_grad_kernel[grid](
        dy,
        dx,
        *_launch.weight_args(qw),
        m,
        n,
        k,
        dy.stride(0),
        dx.stride(0),
        PREC=_launch.dot_precision(dy.dtype),
        BM=cfg["BM"],
        BN=cfg["BK"],
        BK=cfg["BN"],
        **_launch.weight_meta(qw),
        **extra,
    )
    return dx
