"""BOFT's butterfly: Cayley blocks, the block butterfly permutations, and their product (PEFT 0.21).

Cayley:   Q = (I - S)(I + S)^-1,  S = (R - R^T) / 2          R (b, b) free, Q orthogonal
factor i: F_i = P_i blockdiag(Q_i1 ... Q_iD) P_i^T           P_0 = I
B = F_(m-1) ... F_1 F_0                                       (in, in), the input goes x -> x B
"""

from __future__ import annotations

import torch
from torch import Tensor


def cayley(r: Tensor) -> Tensor:
    """(..., b, b) free matrices -> orthogonal blocks, same shape."""
    s = 0.5 * (r - r.transpose(-2, -1))
    eye = torch.eye(r.shape[-1], device=r.device, dtype=r.dtype).expand_as(s)
    return torch.linalg.solve(eye + s, eye - s, left=False)


def _sort_block(size: int, r: int) -> Tensor:
    """Chunks of r in the order: even chunks, then odd chunks (PEFT's ``sort_block``)."""
    steps = size // r
    order = list(range(0, steps, 2)) + list(range(1, steps, 2))
    return torch.cat([torch.arange(p * r, p * r + r) for p in order])


def permutation(n: int, blocks: int, half: int, factors: int) -> Tensor:
    """PEFT's ``block_butterfly_perm``: indices (n,) shuffling chunks of ``half`` within each group of
    n / blocks entries (identity when there is a single factor)."""
    if factors == 1:
        return torch.arange(n)
    size = n // blocks
    order = _sort_block(size, half)
    return torch.cat([torch.arange(i, i + size)[order] for i in range(0, n, size)])


def permutation_matrices(n: int, block_num: int, block_size: int, factors: int) -> Tensor:
    """P (factors, n, n) with P_i[j, idx_j] = 1 (PEFT's ``perm2mat``)."""
    out = torch.zeros(factors, n, n)
    for i in range(factors):
        idx = permutation(n, block_num // 2**i, block_size // 2, factors)
        out[i, torch.arange(n), idx] = 1.0
    return out


def dense_butterfly(q: Tensor, perms: Tensor) -> Tensor:
    """B (n, n) from the Cayley blocks q (m, D, b, b) and permutations perms (m, n, n)."""
    mats = [p @ torch.block_diag(*blocks) @ p.t() for blocks, p in zip(q, perms.to(q))]
    out = mats[0]
    for m in mats[1:]:
        out = m @ out
    return out
