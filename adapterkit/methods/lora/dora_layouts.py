"""DoRA's factor g = m / ||W + dW|| for each kind of base, shaped to scale W in its own layout.

    Linear / Conv1D / quantized:  W (out, in),      norm per output row,        g (out, 1)
    Conv1d / 2d / 3d:             W (out, in, k..), norm per output channel,    g (out, 1, 1..);  m (1, out, 1..)
    Embedding:                    W (num, dim),     norm per embedding column,  g (1, dim);       m (dim,)

(the shapes of m are PEFT's, so files match). The Embedding forward is y = g * (E[ids] + s A^T[ids] B^T),
PEFT's ``DoraEmbeddingLayer``; merging multiplies W by g in every case (fold.py's ``row`` broadcasts).
Norms are constants (no gradient), computed in fp32 (fp64 for fp64 weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import bases
from . import conv
from .functional import dora_norm


@torch.no_grad()
def norm(kind: str, weight: Tensor, lora) -> Tensor:
    """||W + dW|| in m's shape, for ``lora``'s current factors and scale."""
    if kind in conv.KINDS:
        return conv.channel_norm(weight, lora.update(lora.a.dtype))
    if kind == "embedding":
        acc = torch.promote_types(weight.dtype, torch.float32)
        return torch.linalg.vector_norm(weight.to(acc) + lora.update(acc), dim=0)  # (dim,)
    return dora_norm(weight, lora.a, lora.b, lora.scale)  # (out,)


@torch.no_grad()
def base_norm(kind: str, weight: Tensor) -> Tensor:
    """||W|| in m's shape: the magnitude of a DoRA adapter whose update is zero."""
    if kind in conv.KINDS:
        return conv.channel_norm(weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    acc = torch.promote_types(weight.dtype, torch.float32)
    return torch.linalg.vector_norm(weight.to(acc), dim=0 if kind == "embedding" else 1)


def initial_magnitude(kind: str, base: nn.Module, lora) -> Tensor:
    """m at creation: ||W + dW||, so the adapter starts as the base does (DoRA's init)."""
    return norm(kind, bases.dense_weight(base), lora)


@torch.no_grad()
def factor(lora, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """g in ``dtype``, broadcastable against W in its layout (module docstring)."""
    g = lora.magnitude.to(dtype) / norm(lora.kind, weight, lora).to(dtype)
    if lora.kind in conv.KINDS:
        return g.reshape(-1, *([1] * (weight.dim() - 1)))
    if lora.kind == "embedding":
        return g.reshape(1, -1)
    return g.unsqueeze(1)


def embedding(lora, rows_b: Tensor, y: Tensor, base: nn.Module) -> Tensor:
    """Embedding DoRA: g * (y + s A^T[ids] B^T); ``rows_b`` = A^T[ids] B^T (..., dim)."""
    g = lora.magnitude / norm("embedding", base.weight, lora).to(lora.magnitude.dtype)  # (dim,)
    return (g * (y + rows_b * lora.scale)).to(y.dtype)
