"""The layer that adds weight updates built from factors, and where such adapters may go.

    y = base(x) + sum_k op(x, dW_k)      op: F.linear (Linear, Conv1D, quantized) or F.conv2d

Each adapter module (LoHa, LoKr) gives ``delta_weight()`` -> dW in the base weight's layout
((out, in) or (out, in, kh, kw)) and ``forward(x, base)`` -> op(x, dW) (on a linear base computed
from the factors without building dW where that is cheaper). Merging adds dW to W: ``ak.merge``
(``merged``) and ``ak.merge_adapter`` (``fold`` / ``fold_add``: W' = W + sum_k dW_k).
Module dropout (PEFT's): in training each adapter is skipped with probability ``module_dropout``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...errors import UnsupportedModuleError
from ...fold import Fold, compute_dtype
from ...layer import AdapterLayer
from ...targets import resolve
from ...anatomy import unwrapped

KINDS = ("linear", "quant", "conv1d", "conv2d")


def place(model: nn.Module, config, what: str) -> dict[str, None]:
    """{module name: None} for the modules ``config`` targets; refuses bases ``what`` cannot wrap."""
    names = resolve(model, config.targets, config.exclude, config.layers, config.train_modules, check_kinds=False)
    for name in names:
        module = model.get_submodule(name)
        base = unwrapped(module)
        if bases.base_kind(base) not in KINDS:
            raise UnsupportedModuleError(
                f"{what} adapts Linear, quantized linear, Conv1D and Conv2d (groups=1) layers; {name!r} is a "
                f"{type(base).__name__}. Exclude it or change targets."
            )
    return dict.fromkeys(names)


def param_place(base: nn.Module) -> dict[str, Any]:
    """device and float dtype for an adapter's tensors: the base's."""
    tensor = next(iter(base.parameters()), None)
    if tensor is None:
        tensor = next(iter(base.buffers()))
    return {"device": tensor.device, "dtype": tensor.dtype if tensor.dtype.is_floating_point else torch.float32}


def weight_shape(base: nn.Module) -> tuple[int, ...]:
    """The shape of dW: (out, in) for linear kinds, (out, in, kh, kw) for Conv2d."""
    n_in, n_out = bases.features(base)
    return (n_out, n_in, *base.kernel_size) if bases.base_kind(base) == "conv2d" else (n_out, n_in)


def apply_delta(x: Tensor, delta: Tensor, base: nn.Module) -> Tensor:
    """op(x, dW): the base's operation with dW as weight and no bias."""
    x = x.to(delta.dtype)
    if bases.base_kind(base) == "conv2d":
        # x (B, in, H, W) -> (B, out, H', W')
        return F.conv2d(x, delta, None, base.stride, base.padding, base.dilation, base.groups)
    return F.linear(x, delta)  # (..., in) -> (..., out)


def row_mask(rows: int, p: float, rescale: bool, like: Tensor) -> Tensor:
    """Rank dropout's mask over dW's output rows (PEFT's draw: ``torch.rand(rows) > p``), divided by
    its mean when ``rescale`` (an all-dropped mask stays zero)."""
    keep = (torch.rand(rows) > p).to(like.dtype)
    if rescale and keep.any():
        keep = keep / keep.mean()
    return keep.to(like.device)


class DeltaLayer(AdapterLayer):
    """A base layer and its adapters of one weight-update method; active adapters add up."""

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        y = self.base(x, *args, **kwargs)
        base = self.innermost()
        for adapter in self.active_adapters():
            p = adapter.config.module_dropout
            # module dropout; drawn as PEFT draws it (before rank dropout's draw), so that a seeded
            # run takes the same random numbers
            if self.training and (p > 0 or adapter.config.rank_dropout > 0) and not bool(torch.rand(1) > p):
                continue  # this adapter sits out this step
            y = y + adapter(x, base).to(y.dtype)
        return y

    def merged(self) -> nn.Module:
        """The base with dW of the active adapters added."""
        base = self.innermost()
        adapters = self.active_adapters()
        if not adapters:
            return base
        with torch.no_grad():
            total = sum(a.delta_weight(compute_dtype(a.dtype)) for a in adapters)
        return bases.folded(base, total)

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    def fold(self, names, dtype: torch.dtype, weight=None) -> Fold:
        """W' = W + sum dW over adapters ``names``: no scales, only ``add``."""
        return Fold(terms=tuple(names))

    @torch.no_grad()
    def fold_add(self, fold: Fold, dtype: torch.dtype) -> Tensor:
        total = None
        for name in fold.terms:
            delta = self.adapters[name].delta_weight(dtype)
            total = delta if total is None else total.add_(delta)
        return total
