"""Several LoRA / DoRA adapters active on one layer: how their updates compose (PEFT's rule).

Each adapter acts on the running output of the adapters before it, in the order they were activated:

    LoRA:  y <- y + L_k x                                  L_k = s_k B_k A_k
    DoRA:  y <- g_k * (y - b + L_k x) + b                  g_k = m_k / ||W + L_k||_row  (W: the base weight)

so the effective weight is W_0 = W,  W_k = W_{k-1} + L_k (LoRA) or g_k * (W_{k-1} + L_k) (DoRA);
the bias b is unchanged. Plain LoRA adapters simply add up. PEFT's LoRA forward does exactly this in
eval mode or without dropout (its DoRA rescales the running ``result``); in training with dropout
PEFT's DoRA rescales the base output instead (y <- y + (g_k - 1) W x + g_k L_k drop(x)), and
adapterkit's forward follows it there too (``LoRA._linear``). Merging uses the composition above.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import bases
from . import dora_layouts


@torch.no_grad()
def delta(base: nn.Module, adapters: list) -> Tensor:
    """W_n - W: the update to ``base``'s weight, in its layout, of ``adapters`` active in this order."""
    if not any(adapter.magnitude is not None for adapter in adapters[1:]):
        return sum(adapter.delta(base) for adapter in adapters)  # no DoRA after another: they add up
    weight = bases.dense_weight(base)  # (out, in), (num, dim) or (out, in, k..)
    acc = torch.promote_types(weight.dtype, torch.float32)
    w0 = weight.to(acc)
    w = w0.clone()
    for adapter in adapters:
        update = adapter.update(acc)  # in W's layout
        if adapter.magnitude is None:
            w += update
        else:
            w = dora_layouts.factor(adapter, weight, acc) * (w + update)
    return (w - w0).to(weight.dtype)
