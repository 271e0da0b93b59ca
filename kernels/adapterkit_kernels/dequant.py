"""Dequantize a QuantWeight to a dense (N, K) tensor with a Triton kernel.

W[n, k] = level(c) * absmax (formats.py). No autograd Function: the codes take no gradient; the
trainable paths (qmatmul, qlora) never call this and never hold a dense W.
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
def _dequantize_kernel(
    out_ptr,
    codes_ptr,
    absmax_ptr,
    nested_ptr,
    offset_ptr,
    levels_ptr,
    dynamic_ptr,
    N,
    K,
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
    NESTED: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
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
    )
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_triton(qw: QuantWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """QuantWeight -> dense (N, K) in ``dtype``."""
    n, k = qw.shape
    out = torch.empty((n, k), device=qw.device, dtype=dtype)
    bn, bk = (64, 256) if _launch.interpreting() else (32, 128)
    grid = (triton.cdiv(n, bn), triton.cdiv(k, bk))
    _dequantize_kernel[grid](out, *_launch.weight_args(qw), n, k, BN=bn, BK=bk, **_launch.weight_meta(qw))
    return out
