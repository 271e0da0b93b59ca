"""The IA3 vector of one layer, and the layer that wraps a base with its IA3 adapters.

Output scaling (keys, values):   y = l * base(x),     l (out,)   stored (out, 1) as PEFT's ``ia3_l``
Input scaling (feed-forward):    y = base(l * x),     l (in,)    stored (1, in)
Several active adapters multiply. Folding: W' = W * l (rows, or columns for input scaling);
an output-scaled bias becomes l * b.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import bases
from ...fold import Fold
from ...layer import AdapterLayer
from .config import IA3Config


class IA3(nn.Module):
    """One adapter's scaling vector for one base layer."""

    def __init__(self, base: nn.Module, config: IA3Config, feedforward: bool):
        super().__init__()
        self.config = config
        self.feedforward = feedforward
        n_in, n_out = bases.features(base)
        shape = (1, n_in) if feedforward else (n_out, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, **bases.place(base)))
        if config.init == "random":
            with torch.no_grad():
                self.ia3_l.add_(torch.randn_like(self.ia3_l) * 0.1)

    def extra_repr(self) -> str:
        return f"{'input' if self.feedforward else 'output'} scaling, {self.ia3_l.numel()} values"

    def vector(self) -> Tensor:
        return self.ia3_l.flatten()


class IA3Layer(AdapterLayer):
    """A base layer and its IA3 adapters (all of one kind: input or output scaling)."""

    method = "ia3"

    def _scales(self, adapters=None) -> tuple[Tensor | None, Tensor | None]:
        """Products of the input-scaling (in,) and output-scaling (out,) vectors of ``adapters``
        (default: the active ones not merged); None where there is none."""
        inp = out = None
        for adapter in self.active_adapters() if adapters is None else adapters:
            v = adapter.vector()
            if adapter.feedforward:
                inp = v if inp is None else inp * v
            else:
                out = v if out is None else out * v
        return inp, out

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        inp, out = self._scales()
        if inp is not None:
            x = x * inp.to(x.dtype)  # (..., in)
        y = self.base(x, *args, **kwargs)
        return y if out is None else y * out.to(y.dtype)  # (..., out)

    def merged(self) -> nn.Module:
        """The base with W' = W * l (and b' = l * b for output scaling)."""
        base = self.innermost()
        inp, out = self._scales()
        if inp is None and out is None:
            return base
        weight = bases.dense_weight(base)
        with torch.no_grad():
            scaled = weight.float()
            if inp is not None:
                scaled = scaled * inp.float().unsqueeze(0)
            if out is not None:
                scaled = scaled * out.float().unsqueeze(1)
            delta = (scaled - weight.float()).to(weight.dtype)
            bias = getattr(base, "bias", None)
            merged = bases.folded(base, delta)
            if out is not None and bias is not None:
                merged.bias.mul_(out.to(merged.bias.dtype))
        return merged

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    @torch.no_grad()
    def fold(self, names, dtype: torch.dtype, weight=None) -> Fold:
        """W' = l_out * W * l_in, b' = l_out * b for adapters ``names``, in ``dtype`` (W not needed)."""
        inp, out = self._scales([self.adapters[n] for n in names])
        return Fold(
            row=None if out is None else out.to(dtype).unsqueeze(1),  # (out, 1)
            col=None if inp is None else inp.to(dtype).unsqueeze(0),  # (1, in)
            bias_row=None if out is None else out.to(dtype),
        )  # (out,)

    def fold_add(self, fold: Fold, dtype: torch.dtype) -> None:
        return None
