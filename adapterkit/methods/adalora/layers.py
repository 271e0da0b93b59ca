"""The AdaLoRA triplets of one layer, and the layer that wraps a base with its AdaLoRA adapters.

    y = W x + (drop(x) (E * A)^T B^T) * alpha / (init_r + 1e-5)
    A (r, in): right singular vectors, E (r, 1): singular values, B (out, r): left singular vectors

as PEFT's ``SVDLinear`` (its ``scaling`` is alpha, its ``ranknum`` stays init_r, also in a layer
that a saved rank pattern shrank). Masking a triplet sets its E to zero (allocator.py), so the
forward needs no mask. Folding: W' = W + B (E * A) * alpha / (init_r + 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...fold import Fold
from ...layer import AdapterLayer
from .config import AdaLoRAConfig

EPS = 1e-5  # PEFT's guard on ranknum


class AdaLoRA(nn.Module):
    """One adapter's triplets in one Linear / Conv1D / quantized linear base."""

    def __init__(self, base: nn.Module, config: AdaLoRAConfig, rank: int):
        super().__init__()
        self.config = config
        n_in, n_out = bases.features(base)
        weight = next(iter(base.parameters()), None)
        if weight is None:
            weight = next(iter(base.buffers()))
        place = {"device": weight.device, "dtype": weight.dtype if weight.dtype.is_floating_point else torch.float32}
        self.a = nn.Parameter(torch.empty(rank, n_in, **place))
        self.e = nn.Parameter(torch.empty(rank, 1, **place))
        self.b = nn.Parameter(torch.empty(n_out, rank, **place))
        with torch.no_grad():
            if config.init == "random":
                for p in (self.a, self.e, self.b):
                    nn.init.normal_(p)
            else:
                self.e.zero_()
                nn.init.normal_(self.a, std=0.02)
                nn.init.normal_(self.b, std=0.02)

    @property
    def ranknum(self) -> float:
        """PEFT's ``ranknum``: init_r, whatever this layer holds."""
        return float(self.config.init_r)

    def extra_repr(self) -> str:
        return f"rank={self.a.shape[0]}, init_r={self.config.init_r}, alpha={self.config.alpha:g}"

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``y`` plus this adapter's branch: x (..., in), y (..., out) -> (..., out)."""
        x = F.dropout(x.to(self.a.dtype), self.config.dropout, self.training)
        h = x @ (self.a * self.e).t()  # (..., r)
        return y + (h @ self.b.t() * self.config.alpha / (self.ranknum + EPS)).to(y.dtype)

    @torch.no_grad()
    def update(self, dtype: torch.dtype) -> Tensor:
        """B (E * A) * alpha / (init_r + eps) in ``dtype``: (out, in)."""
        a, e, b = self.a.to(dtype), self.e.to(dtype), self.b.to(dtype)
        return b @ (a * e) * self.config.alpha / (self.ranknum + EPS)


class AdaLoRALayer(AdapterLayer):
    """A base layer and its AdaLoRA adapters; active adapters' branches add up."""

    method = "adalora"

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        y = self.base(x, *args, **kwargs)
        for adapter in self.active_adapters():
            y = adapter(x, y)
        return y

    def merged(self) -> nn.Module:
        """The base with the active adapters' updates added to its weight."""
        base = self.innermost()
        adapters = self.active_adapters()
        if not adapters:
            return base
        dtype = torch.promote_types(bases.dense_weight(base).dtype, torch.float32)
        return bases.folded(base, sum(adapter.update(dtype) for adapter in adapters))

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    @torch.no_grad()
    def fold(self, names, dtype: torch.dtype, weight=None) -> Fold:
        """W' = W + sum of the updates of adapters ``names`` (no row or column scales)."""
        return Fold(terms=tuple((name, None) for name in names))

    @torch.no_grad()
    def fold_add(self, fold: Fold, dtype: torch.dtype) -> Tensor:
        total = None
        for name, _ in fold.terms:
            update = self.adapters[name].update(dtype)
            total = update if total is None else total.add_(update)
        return total
