"""A LoRA layer in a mixed-adapter batch: row i uses adapter k(i) alone (see adapterkit/rows.py).

    y_i = base(x_i) + s_k(i) * B_k(i) A_k(i) x_i          rows named "__base__", or naming an adapter
                                                          this layer lacks, keep base(x_i)

Linear / Conv1D / quantized bases with plain LoRA adapters: one gathered pass per layer. The
factors of the adapters this batch uses are stacked once per call (ranks zero-padded to the
largest, which adds exact zeros), gathered per row by index, and applied with two batched matmuls:

    H = bmm(X, A[slot]^T) * s[slot]      X (n, T, in), A (k, r, in) -> H (n, T, r)
    Y[rows] += bmm(H, B[slot]^T)         B (k, out, r)              -> (n, T, out)

(with every row adapted, the second product accumulates into Y in place: ``baddbmm_``).

Embedding and Conv2d bases, and DoRA adapters, loop over the few distinct adapters instead: each
adapter's own forward on its rows (index_select), written back with index_copy. Inference only, no
dropout: ``rows.checked`` refuses a model in training mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_GATHERED = ("linear", "conv1d", "quant")


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
    if all(a.kind in _GATHERED and a.magnitude is None for a in adapters):
        return _gathered(layer, x, y, held, adapters)
    base = layer.innermost()
    for name, adapter in zip(held, adapters):
        rows = groups[name]
        xs, ys = x.index_select(0, rows), y.index_select(0, rows)
        y = y.index_copy_(0, rows, adapter(xs, ys, ys, base))
    return y


def _gathered(layer, x: Tensor, y: Tensor, held: tuple[str, ...], adapters: list) -> Tensor:
    # x (B, ..., in), y (B, ..., out) -> (B, ..., out)
    batch = x.shape[0]
    a, b, scale = _stacked(layer, held, adapters, y.dtype)  # (k, r, in), (k, out, r), (k,) or one float
    rows, slot = layer.rows.slots(batch, x.device, held)  # (n,), (n,)
    every_row = rows.numel() == batch
    x3 = x.to(y.dtype).reshape(batch, -1, a.shape[2])  # (B, T, in)
    if not every_row:
        x3 = x3.index_select(0, rows)  # (n, T, in)
    h = torch.bmm(x3, a.index_select(0, slot).transpose(1, 2))  # (n, T, r)
    if isinstance(scale, Tensor):
        h, scale = h * scale.index_select(0, slot).view(-1, 1, 1), 1.0
    b_rows = b.index_select(0, slot).transpose(1, 2)  # (n, r, out), a view
    y = y.contiguous()
    y3 = y.view(batch, -1, b.shape[1])  # (B, T, out), the storage of y
    if every_row:
        y3.baddbmm_(h, b_rows, alpha=scale)  # accumulates in place: no (B, T, out) temporary
    else:
        y3.index_add_(0, rows, torch.bmm(h, b_rows), alpha=scale)
    return y


def _stacked(layer, held: tuple[str, ...], adapters: list, dtype: torch.dtype):
    """A (k, r, in), B (k, out, r) of ``held``, ranks zero-padded to the largest, and their
    scales: one float when they agree, else a (k,) tensor.

    Kept for the rest of the call or ``mixed_batch`` block when no gradient is being recorded
    (``generate`` steps reuse them); built afresh under autograd.
    """
    cache = layer.rows.cache
    key = (layer, held, dtype)
    if key in cache and not torch.is_grad_enabled():
        return cache[key]
    rank = max(adapter.a.shape[0] for adapter in adapters)
    a = torch.stack([_padded(ad.a.to(dtype), 0, rank) for ad in adapters])  # (k, r, in)
    b = torch.stack([_padded(ad.b.to(dtype), 1, rank) for ad in adapters])  # (k, out, r)
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
