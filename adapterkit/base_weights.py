"""base_state_dict: a model's weights under the original model's own names, adapters folded in.

What an inference engine holding the plain model (vLLM, fed by TRL during GRPO) must receive after
each training step: ``(name, tensor)`` pairs whose names are the ``state_dict`` keys of the model as
it was before ``attach`` (no ``.base.`` / ``.adapters.``), and whose values are, with ``merged=True``,
those of ``ak.merge(copy.deepcopy(model)).state_dict()``:  W' = W + sum of the active adapters' updates.

The model is never changed. Each adapter layer is merged in a copy of that one layer, so the extra
memory is one layer's weights at a time; the pairs are produced lazily, in ``state_dict`` order.
A quantized base is sent dense (as ``merge`` makes it). Weights tied to an adapted base (an
embedding shared with the head) are sent as that base's merged value, as ``merge`` leaves them.

This is a pure function of the model: an in-place merge / unmerge can give the same pairs.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from . import bases
from .errors import MergeError
from .inject import adapter_layers, merge
from .layer import AdapterLayer
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
    return _walk(model, merged)


def check_mergeable(model: nn.Module) -> None:
    """Raise ``MergeError`` where ``ak.merge`` would: an adapter that cannot be folded into its base."""
    for name, layer in adapter_layers(model):
        if not hasattr(layer, "merged"):
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
        # id of each adapted base's tensor -> (layer name, layer, key in the layer); a tied weight met
        # outside the layer is looked up here
        self.adapted: dict[int, tuple[str, AdapterLayer, str]] = {}
        self.cache: dict[str, dict[str, Tensor]] = {}  # merged units that tied weights refer to
        if merged:
            for prefix, layer in adapter_layers(model):
                for local, p in layer.innermost().state_dict(keep_vars=True).items():
                    self.adapted.setdefault(id(p), (prefix, layer, local))

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
        cached = self.cache.get(prefix[:-1])
        if cached is not None:
            return {prefix + k: v for k, v in cached.items()}
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

    def plain(self, value: Tensor) -> Tensor:
        """An entry outside adapter layers; a weight tied to an adapted base takes its merged value."""
        tied = self.adapted.get(id(value))
        if tied is None:
            return value.detach()
        prefix, layer, local = tied
        if prefix not in self.cache:
            self.cache[prefix] = self.unit(layer, "")  # kept: the layer itself may come later
        return self.cache[prefix][local]
