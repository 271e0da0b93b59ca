"""One LoHa adapter on one base layer, and the layer that holds LoHa adapters.

    dW = (w1_a @ w1_b) * (w2_a @ w2_b) * scale          (out, r) @ (r, in) -> (out, in)
    y  = base(x) + op(x, dW)                             op: F.linear or F.conv2d

Conv2d: dW is built as (out, in * kh * kw) and viewed as (out, in, kh, kw); with
``use_effective_conv2d`` (kernel larger than 1x1) each factor is a CP product instead,
W_i = t_i x_1 w_i_a^T x_2 w_i_b^T: t_i (r, r, kh, kw), w_i_a (r, out), w_i_b (r, in).
Rank dropout drops output rows of dW in training and rescales by the kept fraction (PEFT's LoHa).

Gradients come from autograd. PEFT 0.21's hand-written backward of the CP form (``HadaWeightCP``)
gives wrong gradients for w1_a and w2_a (forward and the other gradients agree), so an effective
Conv2d trains differently there; ours match finite differences (tests/methods/test_loha.py).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lycoris.layer import DeltaLayer, apply_delta, param_place, row_mask, weight_shape
from .config import LoHaConfig


def cp_weight(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """t (r, r, kh, kw), wa (r, out), wb (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


class LoHa(nn.Module):
    """Factors w1_a, w1_b, w2_a, w2_b (and t1, t2 for an effective Conv2d) of one adapter."""

    def __init__(self, base: nn.Module, config: LoHaConfig):
        super().__init__()
        self.config = config
        self.scale = config.scale
        self.shape = weight_shape(base)  # (out, in) or (out, in, kh, kw)
        r, out, place = config.rank, self.shape[0], param_place(base)
        effective = config.use_effective_conv2d and len(self.shape) == 4 and self.shape[2:] != (1, 1)
        self.t1: Optional[nn.Parameter] = None
        self.t2: Optional[nn.Parameter] = None
        if effective:
            self.t1 = nn.Parameter(torch.empty(r, r, *self.shape[2:], **place))
            self.t2 = nn.Parameter(torch.empty(r, r, *self.shape[2:], **place))
            a_shape, b_shape = (r, out), (r, self.shape[1])
        else:
            a_shape, b_shape = (out, r), (r, math.prod(self.shape[1:]))
        self.w1_a = nn.Parameter(torch.empty(a_shape, **place))
        self.w1_b = nn.Parameter(torch.empty(b_shape, **place))
        self.w2_a = nn.Parameter(torch.empty(a_shape, **place))
        self.w2_b = nn.Parameter(torch.empty(b_shape, **place))
        self.reset(config.init)

    @torch.no_grad()
    def reset(self, init: str) -> None:
        """Kaiming-uniform factors; w2_b zero unless ``init == "random"`` (so dW = 0 at start)."""
        for p in self.parameters():
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        if init != "random":
            self.w2_b.zero_()

    @property
    def dtype(self) -> torch.dtype:
        return self.w1_a.dtype

    def extra_repr(self) -> str:
        cp = ", effective conv2d" if self.t1 is not None else ""
        return f"rank={self.config.rank}, scale={self.scale:g}, shape={tuple(self.shape)}{cp}"

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """dW in the base weight's layout, in ``dtype`` (default: the factors')."""
        w1_a, w1_b, w2_a, w2_b = (p.to(dtype or self.dtype) for p in (self.w1_a, self.w1_b, self.w2_a, self.w2_b))
        if self.t1 is None:
            delta = (w1_a @ w1_b) * (w2_a @ w2_b) * self.scale  # (out, r) @ (r, in) -> (out, in)
        else:
            t1, t2 = self.t1.to(w1_a.dtype), self.t2.to(w1_a.dtype)
            delta = cp_weight(t1, w1_a, w1_b) * cp_weight(t2, w2_a, w2_b) * self.scale  # (out, in, kh, kw)
        return delta.reshape(self.shape)

    def forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """op(x, dW), with rank dropout in training."""
        mask = None
        if self.training and self.config.rank_dropout > 0:
            mask = row_mask(self.shape[0], self.config.rank_dropout, True, self.w1_a)
        if len(self.shape) == 2 and self._factored():
            y = self._linear_factored(x)  # (..., out)
            return y if mask is None else y * mask
        delta = self.delta_weight()
        if mask is not None:
            delta = delta * mask.view(-1, *[1] * (delta.dim() - 1))
        return apply_delta(x, delta, base)

    def _factored(self) -> bool:
        """Whether x -> (x K_in^T) K_out^T (r^2 (in + out) per row) costs less than x dW^T (in out)."""
        out, n_in = self.shape
        return self.config.rank**2 * (n_in + out) < n_in * out

    def _linear_factored(self, x: Tensor) -> Tensor:
        """x dW^T without dW: dW[o, i] = sum_pq w1_a[o,p] w2_a[o,q] w1_b[p,i] w2_b[q,i] = K_out K_in."""
        r = self.config.rank
        x = x.to(self.dtype)
        k_in = (self.w1_b.unsqueeze(1) * self.w2_b.unsqueeze(0)).reshape(r * r, -1)  # (r^2, in)
        k_out = (self.w1_a.unsqueeze(2) * self.w2_a.unsqueeze(1)).reshape(-1, r * r)  # (out, r^2)
        return F.linear(F.linear(x, k_in), k_out) * self.scale  # (..., in) -> (..., r^2) -> (..., out)


class LoHaLayer(DeltaLayer):
    """A base layer and its LoHa adapters."""

    method = "loha"
