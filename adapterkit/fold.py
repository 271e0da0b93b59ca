"""How merging in place changes a base layer: an affine map of its weight, kept so it can be undone.

    merge:    W' = (row * W * col) M + add          b' = bias_row * b
    unmerge:  W  = ((W' - add) M^-1) / (row * col)  b  = b' / bias_row

W is the base weight in LoRA's layout: (out, in) for Linear / Conv1D, (num, dim) for Embedding,
(out, in, kh, kw) for Conv2d. row (out, 1) and col (1, in) scale rows and columns (None: 1),
add is dense, the size of W (None: 0), bias_row (out,) scales the bias (None: unchanged),
M = blockdiag(right) multiplies from the right (right (m, c, c), m c = in; None: I).
- LoRA:  add = scale B A
- DoRA:  row = g, add = g * scale B A,  g = m / ||W + scale B A||_row taken from the unmerged W and
         kept here, since the merged W no longer gives it (PEFT keeps the same norm)
- IA3:   row = l (keys, values: the bias too), col = l (feed-forward input)
- VeRA:  add = (lambda_b B) (lambda_d A)
- OFT:   right = R^T per block (its rotation of the input, kept; unmerge inverts it in fp64)
- BOFT:  row = s, right = T^T (its butterfly T: blocks with one factor, else one dense block)
Several adapters in one layer compose in their active order, as the forward does
(methods/lora/stack.py): W_k = W_{k-1} + L_k (LoRA) or g_k (W_{k-1} + L_k) (DoRA), so row is the
product of the g_k and add is built the same way; IA3 vectors multiply. Everything is computed in
fp32 (fp64 for fp64 weights); the caller rounds once.
The small tensors are kept (``Fold``); ``add`` is computed again from the adapter when needed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 weights."""
    return torch.promote_types(dtype, torch.float32)


@dataclasses.dataclass
class Fold:
    """The small part of one layer's merge map (see the module docstring)."""

    row: Optional[Tensor] = None  # (out, 1)
    col: Optional[Tensor] = None  # (1, in)
    bias_row: Optional[Tensor] = None  # (out,)
    terms: tuple = ()  # per merged adapter, what the layer needs to rebuild ``add`` (DoRA: its s)
    right: Optional[Tensor] = None  # (m, c, c): W' = W blockdiag(right) (OFT)

    def factors(self) -> list[Tensor]:
        return [t for t in (self.row, self.col, self.bias_row) if t is not None]

    def invertible(self) -> bool:
        """Whether the merge can be undone: every scale finite and non-zero."""
        scales = all(bool(torch.isfinite(t).all() and (t != 0).all()) for t in self.factors())
        if self.right is None or not scales:
            return scales
        return bool(torch.isfinite(self.right).all()) and bool((torch.linalg.det(self.right.double()) != 0).all())

    def _times(self, weight: Tensor, blocks: Tensor) -> Tensor:
        """W blockdiag(blocks): (out, m, c) x (m, c, c) -> (out, in)."""
        m, c = blocks.shape[0], blocks.shape[-1]
        return torch.einsum("omk,mkj->omj", weight.reshape(weight.shape[0], m, c), blocks).reshape(weight.shape)

    def apply(self, weight: Tensor, bias: Optional[Tensor], add: Optional[Tensor]):
        """(W', b') from the unmerged (W, b); new tensors, the inputs are not changed."""
        row, col, bias_row = self._like(weight)
        out = weight
        if row is not None:
            out = out * row
        if col is not None:
            out = out * col
        if self.right is not None:
            out = self._times(out, self.right.to(out))
        if add is not None:
            out = out + add
        if bias is not None and bias_row is not None:
            bias = bias * bias_row
        return out, bias

    def invert(self, weight: Tensor, bias: Optional[Tensor], add: Optional[Tensor]):
        """(W, b) from the merged (W', b')."""
        row, col, bias_row = self._like(weight)
        out = weight if add is None else weight - add
        if self.right is not None:
            out = self._times(out, torch.linalg.inv(self.right.double()).to(out))
        if row is not None:
            out = out / row
        if col is not None:
            out = out / col
        if bias is not None and bias_row is not None:
            bias = bias / bias_row
        return out, bias

    def _like(self, weight: Tensor) -> tuple:
        """The kept scales on ``weight``'s device and dtype (the model may have moved since)."""
        return tuple(None if t is None else t.to(weight) for t in (self.row, self.col, self.bias_row))
