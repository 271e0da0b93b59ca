"""One LoKr adapter on one base layer, and the layer that holds LoKr adapters.

    dW = kron(w1, w2) * scale       w1 (a, c), w2 (b, d) -> (a b, c d) = (out, in)
    y  = base(x) + op(x, dW)        op: F.linear or F.conv2d

On a linear base the forward never builds dW: with x viewed as X (N, c, d),
x dW^T = w1 X w2^T (N, a, b), flattened to (N, out). Conv2d: w2 is (b, d, kh, kw) when full,
(b, d * kh * kw) as a rank-r product, or with ``use_effective_conv2d`` a CP product
t2 x_1 w2_a^T x_2 w2_b^T (t2 (r, r, kh, kw), w2_a (r, b), w2_b (r, d)); w1 is always 2-D.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..lycoris.layer import DeltaLayer, apply_delta, param_place, row_mask, weight_shape
from .config import LoKrConfig


def factorization(n: int, factor: int = -1) -> tuple[int, int]:
    """(m, n / m), m <= n / m: m = ``factor`` where it divides n; otherwise the divisors are walked
    up from 1 while m stays at most ``factor`` (-1: no bound) and below n / m (LyCORIS's rule, which
    PEFT copies: 512 -> (16, 32), 1376 -> (32, 43), 127 -> (1, 127), (512, factor 4) -> (4, 128))."""
    if factor > 0 and n % factor == 0:
        return factor, n // factor
    bound = n if factor == -1 else factor
    m, k = 1, n
    while m < k:
        new_m = m + 1
        while n % new_m:
            new_m += 1
        if new_m + n // new_m > n + 1 or new_m > bound:
            break
        m, k = new_m, n // new_m
    return (k, m) if m > k else (m, k)


class LoKr(nn.Module):
    """w1 (or w1_a, w1_b) and w2 (or w2_a, w2_b, or t2, w2_a, w2_b) of one adapter."""

    def __init__(self, base: nn.Module, config: LoKrConfig):
        super().__init__()
        self.config = config
        self.scale = config.scale
        self.shape = weight_shape(base)  # (out, in) or (out, in, kh, kw)
        r, place, kernel = config.rank, param_place(base), tuple(self.shape[2:])
        (a, b), (c, d) = (
            factorization(self.shape[0], config.decompose_factor),
            factorization(self.shape[1], config.decompose_factor),
        )
        self.split = (a, b, c, d)
        full_w1 = not (config.decompose_both and r < max(a, c) / 2)
        full_w2 = not r < max(b, d) / 2
        effective = config.use_effective_conv2d and kernel not in ((), (1, 1))

        def new(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, **place))

        self.w1 = new(a, c) if full_w1 else None
        self.w1_a, self.w1_b = (None, None) if full_w1 else (new(a, r), new(r, c))
        self.w2 = new(b, d, *kernel) if full_w2 else None
        self.t2 = new(r, r, *kernel) if not full_w2 and effective else None
        if full_w2:
            self.w2_a = self.w2_b = None
        elif effective:
            self.w2_a, self.w2_b = new(r, b), new(r, d)
        else:
            self.w2_a, self.w2_b = new(b, r), new(r, d * math.prod(kernel))
        self.reset(config.init)

    @torch.no_grad()
    def reset(self, init: str) -> None:
        """Kaiming-uniform everywhere, then zero w1 (or w1_a) for "kaiming", w2 (or w2_b) for
        "lycoris": dW = 0 at start; "random" keeps all."""
        for p in self.parameters():
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        if init == "kaiming":
            (self.w1 if self.w1 is not None else self.w1_a).zero_()
        elif init == "lycoris":
            (self.w2 if self.w2 is not None else self.w2_b).zero_()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def extra_repr(self) -> str:
        a, b, c, d = self.split
        return f"rank={self.config.rank}, scale={self.scale:g}, w1=({a}, {c}), w2=({b}, {d})"

    def factors(self, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
        """(w1 (a, c), w2 (b, d) / (b, d, kh, kw) / (b, d * kh * kw)) in ``dtype``."""
        dtype = dtype or self.dtype
        w1 = self.w1.to(dtype) if self.w1 is not None else self.w1_a.to(dtype) @ self.w1_b.to(dtype)
        if self.w2 is not None:
            w2 = self.w2.to(dtype)
        elif self.t2 is not None:  # (r, r, kh, kw) x (r, b) x (r, d) -> (b, d, kh, kw)
            w2 = torch.einsum(
                "i j k l, i p, j r -> p r k l", self.t2.to(dtype), self.w2_a.to(dtype), self.w2_b.to(dtype)
            )
        else:
            w2 = self.w2_a.to(dtype) @ self.w2_b.to(dtype)
        return w1, w2

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """dW = kron(w1, w2) * scale in the base weight's layout, in ``dtype`` (default: the factors')."""
        w1, w2 = self.factors(dtype)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]  # (a, c, 1, 1)
        return (torch.kron(w1, w2.contiguous()) * self.scale).reshape(self.shape)

    def forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """op(x, dW), with rank dropout in training."""
        mask = None
        if self.training and self.config.rank_dropout > 0:
            mask = row_mask(self.shape[0], self.config.rank_dropout, self.config.rank_dropout_scale, x)
        if len(self.shape) == 2:
            a, b, c, d = self.split
            w1, w2 = self.factors()
            xs = x.to(w1.dtype).reshape(-1, c, d)  # (N, c, d)
            y = (w1 @ (xs @ w2.t())).reshape(*x.shape[:-1], a * b) * self.scale  # (N, c, b) -> (N, a, b)
            return y if mask is None else y * mask.to(y.dtype)
        delta = self.delta_weight()
        if mask is not None:
            delta = delta * mask.to(delta.dtype).view(-1, 1, 1, 1)
        return apply_delta(x, delta, base)


class LoKrLayer(DeltaLayer):
    """A base layer and its LoKr adapters."""

    method = "lokr"
