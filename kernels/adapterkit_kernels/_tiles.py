"""The one Triton function every kernel uses: a dequantized (BN, BK) tile of a QuantWeight.

W[n, k] = level(c[n * K + k]) * absmax[(n * K + k) // BLOCK], with the layouts of formats.py;
for double quantization absmax[j] = dynamic[q[j]] * nested[j // 256] + offset. All in fp32.
"""

import triton
import triton.language as tl


@triton.jit
def weight_tile(
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
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
    NESTED: tl.constexpr,
):
    # offs_n (BN,), offs_k (BK,) -> fp32 (BN, BK); zero outside (N, K)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    idx = offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    if BITS == 4:
        byte = tl.load(codes_ptr + idx // 2, mask=mask, other=0).to(tl.int32)
        nibble = tl.where(idx % 2 == 0, byte >> 4, byte & 15)
        value = tl.load(levels_ptr + nibble, mask=mask, other=0.0)
    else:
        value = tl.load(codes_ptr + idx, mask=mask, other=0).to(tl.float32) * (1.0 / 127.0)
    blk = idx // BLOCK
    if NESTED:
        q = tl.load(absmax_ptr + blk, mask=mask, other=0).to(tl.int32)
        level = tl.load(dynamic_ptr + q, mask=mask, other=0.0)
        nested = tl.load(nested_ptr + blk // 256, mask=mask, other=0.0)
        scale = level * nested + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + blk, mask=mask, other=0.0)
    return value * scale
