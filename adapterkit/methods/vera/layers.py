"""VeRA's shared projections, one layer's scaling vectors, and the layer that wraps a base.

    y = W x + lambda_b * (B[:out] (lambda_d * (A[:, :in] drop(x))))
    A (rank, in_max), B (out_max, rank): frozen, drawn once per adapter, shared by all its layers
    lambda_d (rank,), lambda_b (out,): trained (PEFT's ``vera_lambda_d`` / ``vera_lambda_b``)
Folding: W' = W + (lambda_b B[:out]) (lambda_d A[:, :in])  (out, in).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...fold import Fold
from ...layer import AdapterLayer
from .config import VeRAConfig


def kaiming_draw(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """PEFT's ``_kaiming_init``: uniform(+-sqrt(3) * sqrt(2) / sqrt(fan_in)), fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def place(base: nn.Module) -> dict:
    """Device and float dtype for an adapter's tensors: those of the base's first tensor."""
    tensor = next(iter(base.parameters()), None)
    if tensor is None:
        tensor = next(iter(base.buffers()))
    return {"device": tensor.device, "dtype": tensor.dtype if tensor.dtype.is_floating_point else torch.float32}


class Projections(nn.Module):
    """The frozen A (rank, in_max) and B (out_max, rank) one VeRA adapter shares across its layers.

    Drawn on the CPU from ``torch.Generator().manual_seed(key)``: A first, then B (PEFT's order).
    Each layer holds this module itself, so ``model.to(...)`` keeps one copy for all of them.
    """

    def __init__(self, rank: int, in_max: int, out_max: int, key: int, persistent: bool, **where):
        super().__init__()
        gen = torch.Generator(device="cpu").manual_seed(key)
        a = kaiming_draw((rank, in_max), gen)
        b = kaiming_draw((out_max, rank), gen)
        self.register_buffer("vera_A", a.to(**where), persistent=persistent)
        self.register_buffer("vera_B", b.to(**where), persistent=persistent)

    def extra_repr(self) -> str:
        return f"A {tuple(self.vera_A.shape)}, B {tuple(self.vera_B.shape)}, frozen"


class VeRA(nn.Module):
    """One adapter in one layer: lambda_b (out,), lambda_d (rank,), and the shared projections."""

    def __init__(self, base: nn.Module, config: VeRAConfig, projections: Projections):
        super().__init__()
        self.config = config
        self.n_in, self.n_out = bases.features(base)
        where = place(base)
        self.projections = projections
        if config.init == "zero":
            self.vera_lambda_b = nn.Parameter(torch.zeros(self.n_out, **where))
            self.vera_lambda_d = nn.Parameter(torch.full((config.rank,), float(config.d_initial), **where))
        else:  # PEFT's init_weights=False
            self.vera_lambda_b = nn.Parameter(torch.ones(self.n_out, **where))
            self.vera_lambda_d = nn.Parameter(torch.randn(config.rank).to(**where))

    def extra_repr(self) -> str:
        return f"rank={self.config.rank}, in={self.n_in}, out={self.n_out}"

    def slices(self) -> tuple[Tensor, Tensor]:
        """A[:, :in] (rank, in) and B[:out] (out, rank)."""
        return self.projections.vera_A[:, : self.n_in], self.projections.vera_B[: self.n_out]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        # x (..., in), y (..., out) -> (..., out)
        a, b = self.slices()
        d, lb = self.vera_lambda_d, self.vera_lambda_b
        x = F.dropout(x.to(d.dtype), self.config.dropout, self.training)
        h = F.linear(x, a.to(x)) * d  # (..., rank)
        return (y + lb * F.linear(h, b.to(x))).to(y.dtype)  # (..., out)

    @torch.no_grad()
    def update(self, dtype: torch.dtype) -> Tensor:
        """(lambda_b B) (lambda_d A) in ``dtype``: (out, in), a new tensor."""
        a, b = (t.to(dtype) for t in self.slices())
        return (self.vera_lambda_b.to(dtype).unsqueeze(1) * b) @ (self.vera_lambda_d.to(dtype).unsqueeze(1) * a)


class VeRALayer(AdapterLayer):
    """A base layer and its VeRA adapters; active adapters' contributions add up."""

    method = "vera"

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        y = self.base(x, *args, **kwargs)
        for adapter in self.active_adapters():
            y = adapter(x, y)
        return y

    def merged(self) -> nn.Module:
        """The base with W' = W + sum of the active adapters' updates."""
        base = self.innermost()
        adapters = self.active_adapters()
        if not adapters:
            return base
        weight = bases.dense_weight(base)
        acc = torch.promote_types(weight.dtype, torch.float32)
        return bases.folded(base, sum(a.update(acc) for a in adapters).to(weight.dtype))

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    @torch.no_grad()
    def fold(self, names, dtype: torch.dtype, weight=None) -> Fold:
        return Fold(terms=tuple(names))

    @torch.no_grad()
    def fold_add(self, fold: Fold, dtype: torch.dtype) -> Tensor:
        return sum(self.adapters[n].update(dtype) for n in fold.terms)
