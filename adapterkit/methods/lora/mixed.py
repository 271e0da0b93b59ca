"""A LoRA layer in a mixed-adapter batch: row i uses adapter k(i) alone (see adapterkit/rows.py).

    y_i = base(x_i) + s_k(i) * B_k(i) A_k(i) x_i          rows named "__base__", or naming an adapter
                                                          this layer lacks, keep base(x_i)

Linear / Conv1D / quantized bases with plain LoRA adapters: one segmented pass per layer. Rows are
grouped by adapter into k segments of m rows (short segments padded with copies of one of their
rows, whose results are dropped); the k adapters' factors, stacked once per call or ``mixed_batch``
block (ranks zero-padded to the largest: exact zeros), meet their segments in two batched matmuls:

    X_seg = X[take]                      (k, m T, in)
    H     = bmm(X_seg, A^T) * s          A (k, r, in)   -> (k, m T, r)
    Y[rows] += bmm(H, B^T)               B (k, out, r)  -> (k, m T, out)

Each adapter's factors are read once per layer (no per-row copies), in a fixed number of
operations however many adapters the batch names. When padding would more than double the rows
(very uneven groups), and for Embedding / Conv2d bases and DoRA adapters, the layer loops over the
few distinct adapters instead: each adapter's own forward on its rows (index_select), written back
with index_copy. Inference only, no dropout: ``rows.checked`` refuses a model in training mode.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

_SEGMENTED = ("linear", "conv1d", "quant")


class Segments(NamedTuple):
    """Rows grouped by adapter: ``take`` (k m,) the row behind each segment slot (None: the batch as
    it is), ``dest`` (n,) the rows that get results, ``keep`` (n,) their slots (None: all slots)."""

    k: int
    m: int
    take: Optional[Tensor]
    dest: Tensor
    keep: Optional[Tensor]


def forward(layer, x: Tensor, *args, **kwargs) -> Tensor:
    """``layer``'s output for a batch whose rows name their adapters in ``layer.rows``."""
    y = layer.base(x, *args, **kwargs)
    if layer.disabled:
        return y
    groups = layer.rows.groups(x.shape[0], x.device)
    held = tuple(name for name in groups if name in layer.adapters)
    if not held:
        return y
    adapters = [layer.adapters[name] for name in held]
    if all(a.kind in _SEGMENTED and a.magnitude is None and a.bias is None for a in adapters):
        segments = _segments(layer.rows, x.shape[0], x.device, held)
        if segments is not None:
            return _segmented(layer, x, y, held, adapters, segments)
    base = layer.innermost()
    for name, adapter in zip(held, adapters):
        rows = groups[name]
        xs, ys = x.index_select(0, rows), y.index_select(0, rows)
        y = y.index_copy_(0, rows, adapter(xs, ys, ys, base))
    return y


def _segmented(layer, x: Tensor, y: Tensor, held: tuple, adapters: list, seg: Segments) -> Tensor:
    # x (B, ..., in), y (B, ..., out) -> (B, ..., out)
    a, b, scale = _stacked(layer, held, adapters, y.dtype)  # (k, r, in), (k, out, r), (k,) or one float
    x3 = x.to(y.dtype).reshape(x.shape[0], -1, a.shape[2])  # (B, T, in)
    steps = x3.shape[1]
    if seg.take is not None:
        x3 = x3.index_select(0, seg.take)  # (k m, T, in)
    h = torch.bmm(x3.reshape(seg.k, seg.m * steps, -1), a.transpose(1, 2))  # (k, m T, r)
    if isinstance(scale, Tensor):
        h, scale = h * scale.view(-1, 1, 1), 1.0
    delta = torch.bmm(h, b.transpose(1, 2)).view(seg.k * seg.m, steps, -1)  # (k m, T, out)
    if seg.keep is not None:
        delta = delta.index_select(0, seg.keep)  # (n, T, out)
    y = y.contiguous()
    y.view(y.shape[0], steps, -1).index_add_(0, seg.dest, delta, alpha=scale)
    return y


def _segments(rows, batch: int, device: torch.device, held: tuple) -> Optional[Segments]:
    """How this batch's rows of adapters ``held`` form segments; None when padding would more than
    double them. Computed once per call (or block) and batch size, shared by the layers."""
    key = ("segments", batch, device, held)
    if key not in rows.cache:
        groups = rows.groups(batch, device)
        members = [groups[name].tolist() for name in held]
        k, m = len(members), max(len(g) for g in members)
        n = sum(len(g) for g in members)
        if k * m > 2 * n:
            rows.cache[key] = None
            return None
        take = [g[i] if i < len(g) else g[0] for g in members for i in range(m)]
        dest = [i for g in members for i in g]
        keep = [j * m + i for j, g in enumerate(members) for i in range(len(g))]
        as_tensor = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
        rows.cache[key] = Segments(
            k,
            m,
            None if take == list(range(batch)) else as_tensor(take),
            as_tensor(dest),
            None if k * m == n else as_tensor(keep),
        )
    return rows.cache[key]


def _stacked(layer, held: tuple, adapters: list, dtype: torch.dtype):
    """A (k, r, in), B (k, out, r) of ``held``, ranks zero-padded to the largest, and their scales:
    one float when they agree, else a (k,) tensor.

    Kept for the rest of the call or ``mixed_batch`` block when no gradient is being recorded
    (``generate`` steps reuse them); built afresh under autograd.
    """
    cache = layer.rows.cache
    key = (layer, held, dtype)
    if key in cache and not torch.is_grad_enabled():
        return cache[key]
    rank = max(adapter.a.shape[0] for adapter in adapters)
    a = torch.stack([_padded(ad.a.to(dtype), 0, rank) for ad in adapters])
    b = torch.stack([_padded(ad.b.to(dtype), 1, rank) for ad in adapters])
    scales = [ad.scale for ad in adapters]
    scale = scales[0] if len(set(scales)) == 1 else torch.tensor(scales, dtype=dtype, device=a.device)
    if not torch.is_grad_enabled():
        cache[key] = (a, b, scale)
    return a, b, scale


def _padded(factor: Tensor, dim: int, rank: int) -> Tensor:
    """``factor`` with zero rows (dim 0) or columns (dim 1) up to ``rank``: A (r, in) or B (out, r)."""
    missing = rank - factor.shape[dim]
    if not missing:
        return factor
    return F.pad(factor, (0, missing) if dim == 1 else (0, 0, 0, missing))
