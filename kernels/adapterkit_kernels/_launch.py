"""What every Triton launcher needs: the QuantWeight's tensors as kernel arguments, and block sizes.

Block sizes: the interpreter (CPU, TRITON_INTERPRET=1) is fastest with few, large programs;
compiled GPU code wants 16 <= block and tensor-core friendly tiles.
"""

from __future__ import annotations

import os

import torch

from . import formats
from .formats import QuantWeight


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def weight_args(qw: QuantWeight) -> tuple:
    """(codes, absmax, nested, offset, levels, dynamic) pointers for _tiles.weight_tile."""
    device = qw.device
    levels = formats.code_table(qw.quant_type, device) if qw.bits == 4 else qw.absmax
    if qw.double_quant:
        nested, offset, dynamic = qw.nested_absmax, qw.nested_offset, qw.nested_levels
    else:
        nested = offset = dynamic = qw.absmax  # unused placeholders (NESTED is False)
    return qw.codes, qw.absmax, nested, offset, levels, dynamic


def weight_meta(qw: QuantWeight) -> dict:
    return {"BLOCK": qw.block, "BITS": qw.bits, "NESTED": qw.double_quant}


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def matmul_blocks(m: int, n: int, k: int) -> dict:
    """Block sizes and split-K for an (m, k) x (k, n) product; decode shapes (m <= 16) split K."""
    if interpreting():
        return {"BM": max(16, min(64, next_pow2(m))), "BN": 64, "BK": 64, "SPLIT_K": 1, "num_warps": 4}
    if m <= 16:  # decode: bound by reading the 4-bit weight; spread K over more programs
        tiles = -(-n // 64)
        split = max(1, min(k // 512, 264 // max(tiles, 1)))
        return {"BM": 16, "BN": 64, "BK": 128, "SPLIT_K": split, "num_warps": 4}
    if m <= 128:
        return {"BM": 64, "BN": 128, "BK": 64, "SPLIT_K": 1, "num_warps": 4, "num_stages": 4}
    return {"BM": 128, "BN": 128, "BK": 64, "SPLIT_K": 1, "num_warps": 8, "num_stages": 3}


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"
