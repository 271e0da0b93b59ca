"""OFT in one layer: rotation blocks on the input of a frozen linear base.

    x (..., in) -> (..., n, b);  x_j <- x_j R_j  for each block j;  y = W x_rot + b
    R_j (b, b) from q (n or 1, b(b-1)/2) (rotation.py); in = n * b
Folding: W' = W blockdiag(R)^T (out, in), exactly the same map. Several active adapters rotate in
turn, x R_1 R_2 ..., so W' = W (R_1 R_2 ...)^T.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ... import bases
from ...fold import Fold
from ...layer import AdapterLayer
from ..vera.layers import place
from .config import OFTConfig
from .rotation import cayley, project


def nearest_divisor(n: int, value: int) -> int:
    """PEFT's ``adjust_oft_parameters``: the divisor of n nearest to value (ties: the lower)."""
    if value >= n:
        return n
    higher = value
    while higher <= n and n % higher != 0:
        higher += 1
    lower = value
    while lower > 1 and n % lower != 0:
        lower -= 1
    return lower if value - lower <= higher - value else higher


def blocks_for(n_in: int, config: OFTConfig) -> tuple[int, int]:
    """(number of blocks, block size) for a layer with ``n_in`` inputs, adjusted as PEFT does."""
    given = config.rank or config.block_size
    fitted = nearest_divisor(n_in, given) if n_in % given else given
    if fitted != given:
        field = "rank" if config.rank else "block_size"
        warnings.warn(f"OFT: {field}={given} does not divide the layer's {n_in} inputs; using {fitted}.", stacklevel=2)
    return (fitted, n_in // fitted) if config.rank else (n_in // fitted, fitted)


class OFT(nn.Module):
    """One adapter in one layer: q (n, b(b-1)/2), or (1, ...) with block_share (PEFT's ``oft_R.weight``)."""

    def __init__(self, base: nn.Module, config: OFTConfig):
        super().__init__()
        self.config = config
        self.n_in = bases.features(base)[0]
        self.n, self.b = blocks_for(self.n_in, config)
        rows = 1 if config.block_share else self.n
        self.q = nn.Parameter(torch.zeros(rows, self.b * (self.b - 1) // 2, **place(base)))
        if config.init == "random":
            with torch.no_grad():
                self.q.normal_(0.0, 0.1)

    def extra_repr(self) -> str:
        return f"blocks={self.n}, block_size={self.b}" + (", shared" if self.config.block_share else "")

    def rotations(self) -> Tensor:
        """The n blocks R_j (n, b, b); COFT first pulls q back onto its ball, in place (as PEFT)."""
        c = self.config
        if c.coft:
            with torch.no_grad():
                self.q.copy_(project(self.q, self.b, c.eps))
        r = cayley(self.q, self.b, c.use_cayley_neumann, c.num_cayley_neumann_terms)
        return r.expand(self.n, -1, -1) if c.block_share else r

    def forward(self, x: Tensor) -> Tensor:
        # x (..., in) -> (..., n, b) @ R -> (..., in)
        r = self.rotations()
        xb = x.to(r.dtype).reshape(*x.shape[:-1], self.n, self.b)
        return torch.einsum("...nk,nkc->...nc", xb, r).reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def blocks(self, dtype: torch.dtype) -> Tensor:
        """The n blocks R_j (n, b, b) in ``dtype``."""
        return self.rotations().to(dtype)


def dense(blocks: Tensor) -> Tensor:
    """blockdiag(R_1, ..., R_n): (n, b, b) -> (n b, n b)."""
    return torch.block_diag(*blocks)


def product(adapters: list[OFT], dtype: torch.dtype) -> Tensor:
    """The blocks (m, c, c) of R_1 R_2 ... for adapters in order: blockwise when their block sizes agree,
    else one dense block (1, in, in)."""
    mats = [a.blocks(dtype) for a in adapters]
    if len({m.shape for m in mats}) > 1:
        mats = [dense(m).unsqueeze(0) for m in mats]
    out = mats[0]
    for m in mats[1:]:
        out = out @ m
    return out


class OFTLayer(AdapterLayer):
    """A linear base and its OFT adapters; active adapters rotate the input in turn."""

    method = "oft"

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        for adapter in self.active_adapters():
            x = adapter(x)
        return self.base(x, *args, **kwargs)

    def merged(self) -> nn.Module:
        """The base with W' = W (R_1 R_2 ...)^T."""
        base = self.innermost()
        adapters = self.active_adapters()
        if not adapters:
            return base
        weight = bases.dense_weight(base)
        acc = torch.promote_types(weight.dtype, torch.float32)
        w = weight.to(acc)
        rotated = rotate(w, product(adapters, acc))
        return bases.folded(base, (rotated - w).to(weight.dtype))

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    @torch.no_grad()
    def fold(self, names, dtype: torch.dtype, weight=None) -> Fold:
        blocks = product([self.adapters[n] for n in names], dtype)  # (m, c, c)
        return Fold(right=blocks.transpose(-2, -1).contiguous())  # W' = W blockdiag(R^T)

    def fold_add(self, fold: Fold, dtype: torch.dtype) -> None:
        return None


def rotate(weight: Tensor, blocks: Tensor) -> Tensor:
    """W blockdiag(R)^T without building the dense matrix: (out, m, c) x (m, c, c)."""
    m, c = blocks.shape[0], blocks.shape[-1]
    return torch.einsum("omk,mjk->omj", weight.reshape(weight.shape[0], m, c), blocks).reshape(weight.shape)
