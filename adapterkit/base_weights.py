"""base_state_dict: a model's weights under the original model's own names, adapters folded in.

What an inference engine holding the plain model (vLLM, fed by TRL during GRPO) must receive after
each training step: ``(name, tensor)`` pairs whose names are the ``state_dict`` keys of the model as
it was before ``attach`` (no ``.base.`` / ``.adapters.``), and whose values are, with ``merged=True``,
those of ``ak.merge(copy.deepcopy(model)).state_dict()``:  W' = W + sum of the active adapters' updates.

The model is never changed. Each adapter layer is merged in a copy of that one layer, so the extra
memory is one layer's weights at a time; the pairs are produced lazily, in ``state_dict`` order.
A quantized base is sent dense (as ``merge`` makes it). A weight tied to an adapted base (an
embedding shared with the head) is sent as ``merge`` leaves it: the adapted module's entry merged,
the other module's entry its own unmerged value. The two then differ, so a receiver that ties them
again (``tie_word_embeddings=True``, as vLLM does) would compute something else: a warning says so.

This is a pure function of the model: an in-place merge / unmerge can give the same pairs.
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterator

import torch
from torch import Tensor, nn

from . import anatomy, bases
from .errors import MergeError
from .inject import adapter_layers, merge
from .layer import AdapterLayer, own_method
from .methods.trained_module import TrainedModule


def base_state_dict(model: nn.Module, merged: bool = True) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for every ``state_dict`` entry of the un-adapted model.

    ``merged=True``: the active adapters are folded in (values as ``ak.merge`` computes them);
    raises ``MergeError`` at once, before anything is produced, when some adapter cannot be folded.
    ``merged=False``: the base weights as they are (a quantized base keeps its packed buffers).
    Tensors are detached; those not touched by an adapter are the model's own (no copy).
    """
    if merged:
        check_mergeable(model)
        _warn_tied(model)
    return _walk(model, merged)


def _warn_tied(model: nn.Module) -> None:
    tied = anatomy.tied_parameters(model)
    pairs = [
        (name, anatomy.tied_with(layer.innermost(), name, tied))
        for name, layer in adapter_layers(model)
        if tied and layer.active_adapters() and not isinstance(layer, TrainedModule)
    ]
    pairs = [(name, others) for name, others in pairs if others]
    if pairs:
        where = "; ".join(f"{name} (tied to {', '.join(others)})" for name, others in pairs)
        warnings.warn(
            f"base_state_dict: {where}: the adapted module's weight is sent merged and the other's "
            f"unmerged, as ak.merge leaves them. A receiver must not tie them again "
            f"(tie_word_embeddings=False), or it computes something other than this model.",
            stacklevel=2,
        )


def check_mergeable(model: nn.Module) -> None:
    """Raise ``MergeError`` where ``ak.merge`` would: an adapter that cannot be folded into its base."""
    for name, layer in adapter_layers(model):
        if own_method(layer, "merged") is None:
            raise MergeError(
                f"{name}: {type(layer).__name__} adapters cannot be folded into the base weights, so the "
                f"base model's weights cannot represent this model. Use LoRA, DoRA or IA3 adapters, or "
                f"serve the adapter itself (ak.save_adapter) instead of merged weights."
            )
        base = layer.innermost()
        if layer.active_adapters() and not isinstance(layer, TrainedModule) and not bases.foldable(base):
            raise MergeError(
                f"{name}: cannot fold adapters into a {type(base).__name__} whose weight is not a dense "
                f"float tensor. Quantize with ak.quantize (merging dequantizes), or keep the adapters unmerged."
            )


def _walk(model: nn.Module, merged: bool) -> Iterator[tuple[str, Tensor]]:
    units = _Units(model, merged)
    yield from units.items(model, "")


class _Units:
    """Walks the module tree; an adapter layer (or, merged, a quantized base) is one unit."""

    def __init__(self, model: nn.Module, merged: bool):
        self.merged = merged
        self.special = {id(m) for _, m in adapter_layers(model)}
        if merged:
            self.special |= {id(m) for m in model.modules() if bases.base_kind(m) == "quant"}

    def items(self, module: nn.Module, prefix: str) -> Iterator[tuple[str, Tensor]]:
        if id(module) in self.special:
            yield from self.unit(module, prefix).items()
            return
        if not any(id(m) in self.special for m in module.modules()):
            for key, value in module.state_dict(prefix=prefix, keep_vars=True).items():
                yield key, self.plain(value)
            return
        own = module.state_dict(keep_vars=True)  # the module's direct entries, in state_dict's order
        for key, value in own.items():
            if "." not in key:
                yield prefix + key, self.plain(value)
        for name, child in module.named_children():
            yield from self.items(child, f"{prefix}{name}.")

    def unit(self, module: nn.Module, prefix: str) -> dict[str, Tensor]:
        """One adapter layer's (or quantized base's) entries under ``prefix``."""
        if not self.merged:
            return {k: self.plain(v) for k, v in module.innermost().state_dict(prefix=prefix).items()}
        with torch.no_grad():
            if isinstance(module, AdapterLayer):
                holder = nn.Module()
                holder.add_module("unit", copy.deepcopy(module))
                done = merge(holder).unit
            else:  # a quantized base no adapter wraps: dense, as merge leaves it
                done = bases.folded(module, torch.zeros(()))
        return {k: v.detach() for k, v in done.state_dict(prefix=prefix).items()}

    @staticmethod
    def plain(value: Tensor) -> Tensor:
        """An entry outside adapter layers, as it is (a weight tied to an adapted base included)."""
        return value.detach()
