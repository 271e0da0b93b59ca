"""LoRA on each kind of base layer, and the layer that wraps a base with its LoRA adapters.

Linear / Conv1D:  y = W x + scale * B (A drop(x))            (DoRA: see functional.py)
Embedding:        y = E[ids] + scale * A^T[ids] B^T           A (r, num), B (dim, r), as PEFT
Conv1d/2d/3d:     y = conv(x, W) + scale * conv1x1(conv(drop(x), A), B)        (conv.py; DoRA too)
MultiheadAttention: in_proj and out_proj updated for the call                  (mha.py)
DoRA's factor per kind of base: dora_layouts.py.
lora_bias adds scale * b_B to the branch (bias.py); each module's rank and alpha may come from
rank_pattern / alpha_pattern (patterns.py); PiSSA / OLoRA / LoftQ set A, B from W (init.py).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...errors import MergeError
from ...fold import Fold
from ...layer import AdapterLayer
from ...quant.linear import QuantLinear
from . import conv, dora_layouts, mha, mixed, stack
from .config import LoRAConfig
from .patterns import scale_of
from .traced import dropout_branch, dropout_seed
from .bias import add_bias
from .init import changes_base, initialise
from .functional import (
    DoRAFunction,
    LoRAFunction,
    dora_norm,
    new_seed,
)


def _init_pair(a: Tensor, b: Tensor, init: str, rank: int, a_is_zero: bool = False) -> None:
    """Identity at start: one factor zero. ``random``: both random (the model changes at once)."""
    with torch.no_grad():
        if init == "eva":  # A is set from data later (eva.py); B zero as PEFT
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b.zero_()
            return
        if init == "gaussian":
            nn.init.normal_(a, std=1.0 / rank)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if init == "random":
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        else:
            b.zero_()
        if a_is_zero and init != "random":  # embeddings: A zero, B normal (PEFT's choice)
            a.zero_()
            nn.init.normal_(b)


class LoRA(nn.Module):
    """One adapter in one layer: A (rank, in), B (out, rank), and for DoRA a magnitude (out,).

    Conv2d keeps A as (rank, in, kh, kw) and B as (out, rank, 1, 1).
    """

    def __init__(self, base: nn.Module, config: LoRAConfig, rank: Optional[int] = None, alpha: Optional[float] = None):
        super().__init__()
        self.config = config
        self.kind = bases.base_kind(base)
        # this module's rank and alpha (rank_pattern / alpha_pattern: patterns.py)
        r = config.rank if rank is None else rank
        self._alpha = alpha if alpha is not None and alpha != config.alpha else None
        self.scale = scale_of(r, self.alpha, config.rslora)
        self.dropout = config.dropout
        n_in, n_out = bases.features(base)
        place = bases.place(base)
        if self.kind in conv.KINDS:
            shape_a, shape_b = conv.shapes(base, r)
            self.a = nn.Parameter(torch.empty(*shape_a, **place))
            self.b = nn.Parameter(torch.empty(*shape_b, **place))
        elif self.kind == "mha":
            mha.check(base, config)
            self.a = nn.Parameter(torch.empty(r, n_in, **place))
            self.b = nn.Parameter(torch.empty(3 * n_out, r, **place))
        else:
            self.a = nn.Parameter(torch.empty(r, n_in, **place))
            self.b = nn.Parameter(torch.empty(n_out, r, **place))
        # lora_bias: a bias on B, scaled with it: y = W x + scale (B A x + bias) (PEFT's lora_B.bias)
        self.bias = nn.Parameter(torch.zeros(n_out, **place)) if config.lora_bias else None
        if changes_base(config.init):  # PiSSA, OLoRA, LoftQ: A, B from W, and W rewritten (init.py)
            initialise(self, base, config.init, config.loftq_iter)
        else:
            _init_pair(self.a, self.b, config.init, r, a_is_zero=self.kind == "embedding")
        if self.kind == "mha":
            mha.add_out_proj(self, base, place)
            _init_pair(self.a_out, self.b_out, config.init, r)
        self.magnitude = None
        if config.dora:
            self.magnitude = nn.Parameter(dora_layouts.initial_magnitude(self.kind, base, self).to(place["dtype"]))

    @property
    def rank(self) -> int:
        """This module's rank (rank_pattern may set it per module)."""
        return self.a.shape[0]

    @property
    def alpha(self) -> float:
        """This module's alpha: alpha_pattern's where one matched, else the config's."""
        return self.config.alpha if self._alpha is None else self._alpha

    @property
    def base_scale(self) -> float:
        """alpha / rank of this module (alpha / sqrt(rank) with rsLoRA), before any ak.set_scale."""
        return scale_of(self.rank, self.alpha, self.config.rslora)

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, scale={self.scale:g}"
            + (", dora" if self.magnitude is not None else "")
            + (", bias" if self.bias is not None else "")
        )

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor, y_base: Tensor, base: nn.Module) -> Tensor:
        """The layer's output ``y`` with this adapter's contribution added."""
        if self.kind == "embedding":
            return self._embedding(x, y, base)
        if self.kind in conv.KINDS:
            return self._with_bias(conv.forward(self, x, y, base))
        return self._with_bias(self._linear(x, y, y_base, base))

    def _with_bias(self, out: Optional[Tensor]) -> Optional[Tensor]:
        """``out`` + scale * bias (lora_bias); channels on dim 1 for convolutions, last otherwise."""
        if out is None or self.bias is None:
            return out
        bias = (self.bias * self.scale).to(out.dtype)
        return out + (bias.view(-1, *([1] * (out.dim() - 2))) if self.kind in conv.KINDS else bias)

    def fused(self, x: Tensor, base: nn.Module) -> Optional[Tensor]:
        """``base(x)`` with this adapter added in one pass over x, for a quantized base and plain LoRA
        (the fused Triton kernel on CUDA): x (..., in) -> (..., out); None where that does not apply
        (DoRA, dropout in training, another base). The base's own call runs it, so its forward hooks
        run too, and see base + LoRA (elsewhere a hook on the base sees the base output alone)."""
        if not isinstance(base, QuantLinear) or self.magnitude is not None or (self.training and self.dropout > 0):
            return None
        return self._with_bias(base(x, lora=(self.a, self.b, self.scale)))

    def _traced_dropout(self) -> bool:
        """Dropout under ``torch.compile``: the plain forward, with the dropout branch as a custom op
        (traced.py; the Functions' seed, read back from a tensor, would be a graph break)."""
        return self.training and self.dropout > 0 and torch.compiler.is_compiling()

    def plain(self, x: Tensor, y: Tensor, y_base: Tensor, base: nn.Module) -> Tensor:
        """What ``_linear`` computes, in plain torch ops: x (..., in), y (..., out) -> (..., out).

        LoRA: y + s B A drop(x).  DoRA: g (ref + s B A drop(x) - bias) + bias, g = m / ||W + s B A||_row
        held constant, ref = y (or the base output y_base with dropout in training, PEFT's rule).
        drop(x) A^T is the custom op ``dropout_branch`` (the same mask as the Functions, packed).
        """
        dtype = y.dtype
        a, b = self.a.to(dtype), self.b.to(dtype)
        if self.training and self.dropout > 0:
            x2 = x.to(dtype).reshape(-1, a.shape[1])  # (N, in)
            h = dropout_branch(x2, a, self.dropout, dropout_seed(x2, a))[0]  # (N, r)
            update = F.linear(h, b).view(y.shape) * self.scale
        else:
            update = F.linear(F.linear(x.to(dtype), a), b) * self.scale
        if self.magnitude is None:
            return y + update
        norm = dora_norm(bases.dense_weight(base), a, b, self.scale).detach()  # (out,) fp32, a constant
        g = (self.magnitude.to(dtype) / norm).to(dtype)  # (out,)
        bias = base.bias.to(dtype) if getattr(base, "bias", None) is not None else None
        ref = y_base if self.training and self.dropout > 0 else y
        out = g * (ref + update - bias) + bias if bias is not None else g * (ref + update)
        return out if y is ref else y + (out - ref)

    def _linear(self, x, y, y_base, base):
        # x (..., in), y (..., out) -> (..., out)
        if self._traced_dropout():
            return self.plain(x, y, y_base, base)
        dtype = y.dtype
        a, b = self.a.to(dtype), self.b.to(dtype)
        x2 = x.to(dtype).reshape(-1, a.shape[1])
        seed = new_seed() if self.training and self.dropout > 0 else None
        if self.magnitude is None:
            out = LoRAFunction.apply(x2, y.reshape(-1, b.shape[0]), a, b, self.scale, self.dropout, seed)
            return out.view(y.shape)
        norm = dora_norm(bases.dense_weight(base), a, b, self.scale)
        bias = base.bias.to(dtype) if getattr(base, "bias", None) is not None else None
        # after other active adapters DoRA rescales the running y, but with dropout in training the
        # base output y_base (both PEFT's rule: stack.py)
        ref = y_base if seed is not None else y
        out = DoRAFunction.apply(
            x2,
            ref.reshape(-1, b.shape[0]),
            a,
            b,
            self.magnitude.to(dtype),
            bias,
            norm,
            self.scale,
            self.dropout,
            seed,
        ).view(y.shape)
        return out if y is ref else y + (out - ref)

    def _embedding(self, ids, y, base):
        # ids (...), y (..., dim): PEFT applies no dropout to embeddings
        rows = F.embedding(
            ids, self.a.t(), base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse
        )  # (..., r)
        if self.magnitude is not None:
            return dora_layouts.embedding(self, rows @ self.b.t().to(rows.dtype), y, base)
        return y + (rows @ self.b.t().to(rows.dtype)).to(y.dtype) * self.scale

    # -- merging --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, dtype: torch.dtype) -> Tensor:
        """scale * B A computed in ``dtype``, in the base weight's layout: (out, in), (num, dim)
        for embeddings, (out, in, k..) for convolutions."""
        if self.kind in conv.KINDS:
            return conv.update(self, dtype)
        a, b = self.a.to(dtype), self.b.to(dtype)
        update = (b @ a).mul_(self.scale)  # (out, in); for embeddings (dim, num)
        return update.t() if self.kind == "embedding" else update

    @torch.no_grad()
    def delta(self, base: nn.Module) -> Tensor:
        """The update to the base weight, in its layout: (out, in), (num, dim) or (out, in, k..)."""
        update = self.update(self.a.dtype)
        if self.magnitude is None:
            return update
        weight = bases.dense_weight(base)
        g = dora_layouts.factor(self, weight, weight.dtype)  # (out, 1), (out, 1, 1..) or (1, dim)
        return (g - 1) * weight + g * update.to(weight.dtype)

    @torch.no_grad()
    def bias_delta(self) -> Optional[Tensor]:
        """The update to the base bias (out,): scale * lora_bias; None without one."""
        return None if self.bias is None else self.bias * self.scale


class LoRALayer(AdapterLayer):
    """A base layer and its LoRA adapters; active adapters' contributions add up."""

    method = "lora"

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        if isinstance(self.base, nn.MultiheadAttention):
            return mha.forward(self, x, *args, **kwargs)
        adapters = self.active_adapters()
        if self.rows is not None:  # a mixed-adapter batch: an adapter per row (mixed.py)
            return mixed.forward(self, x, *args, **kwargs)
        if len(adapters) == 1 and not args and not kwargs and not isinstance(self.base, AdapterLayer):
            out = adapters[0].fused(x, self.base)  # a quantized base and LoRA in one pass
            if out is not None:
                return out
        y_base = self.base(x, *args, **kwargs)
        y = y_base
        base = self.innermost()
        for adapter in self.active_adapters():
            y = adapter(x, y, y_base, base)
        return y

    def merged(self) -> nn.Module:
        """The base with the active adapters folded in, in order (DoRA rescales those before it: stack.py)."""
        base = self.innermost()
        adapters = self.active_adapters()
        if not adapters:
            return base
        if isinstance(base, nn.MultiheadAttention):
            return mha.merged(base, adapters)
        total = stack.delta(base, adapters)
        merged = bases.folded(base, total)
        biases = [d for d in (a.bias_delta() for a in adapters) if d is not None]
        return add_bias(merged, sum(biases)) if biases else merged

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    @torch.no_grad()
    def fold(self, names, dtype: torch.dtype, weight) -> Fold:
        """The map that merges adapters ``names`` (in this layer's active order, as the forward
        composes them: stack.py), in ``dtype``; ``weight()`` gives the unmerged W (LoRA's layout).

        W_k = W_{k-1} + L_k (LoRA) or g_k (W_{k-1} + L_k) (DoRA, g_k = m_k / ||W + L_k|| (out, 1),
        kept), so W_n = row * W + add with row = product of the g_k.
        """
        terms, row = [], None
        for name in names:
            lora = self.adapters[name]
            if lora.bias is not None:
                raise MergeError(
                    f"adapter {name!r} has lora_bias: merge_adapter (in place) does not fold it; "
                    f"use ak.merge, which adds it to the base bias."
                )
            if lora.magnitude is None:
                terms.append((name, None))
                continue
            g = dora_layouts.factor(lora, weight(), dtype)  # (out, 1), (out, 1, 1..) or (1, dim)
            terms.append((name, g))
            row = g if row is None else row * g
        return Fold(row=row, terms=tuple(terms))

    @torch.no_grad()
    def fold_add(self, fold: Fold, dtype: torch.dtype) -> Tensor:
        """The dense part of ``fold``: D_k = D_{k-1} + L_k (LoRA) or g_k (D_{k-1} + L_k) (DoRA)."""
        total = None
        for name, g in fold.terms:
            update = self.adapters[name].update(dtype)  # a new tensor: changed in place
            total = update if total is None else total.add_(update)
            if g is not None:
                total.mul_(g.to(total))
        return total
