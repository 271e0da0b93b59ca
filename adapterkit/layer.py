"""AdapterLayer: a frozen base module plus the named adapters that act on it.

Every method's layer subclasses it, so adapter state is found by structure
(``isinstance(m, AdapterLayer)``), never by parameter names. One ``ModuleDict`` holds one module
per adapter name; that module owns all of the adapter's tensors in this layer. Its ``state_dict``
names the base's tensors as the base itself does (``state_dict.py``).

Adapters merged in place (``ak.merge_adapter``) are named in ``merged_names``: their update sits in
the base weight (``merged_fold`` says how to take it out again), so the forward skips their branch.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .errors import MergeError
from .state_dict import StateDictNames


class AdapterLayer(nn.Module):
    """Wraps ``base``; ``adapters[name]`` is one adapter's module for this layer."""

    method = ""
    rows = None  # a mixed-adapter batch's per-row names while one runs (adapterkit/rows.py)
    transparent = False  # wraps a whole block whose insides other methods still target by their names

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.disabled = False
        self.merged_names: tuple[str, ...] = ()  # adapters folded into the base weight in place
        self.merged_fold = None  # the adapterkit.fold.Fold that undoes them
        self.state_dict_names = StateDictNames(self)  # hooks: base keys keep their own names

    def __getattr__(self, name: str):
        # Models read attributes of the layers they own (``self.wo.weight.dtype``,
        # ``self.q_proj.in_features``): answer them from the wrapped base.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base", "adapters", "state_dict_names"):
                raise
            return getattr(self.base, name)

    def add(self, name: str, adapter: nn.Module) -> None:
        """Hold ``adapter`` as ``name``, in this layer's train / eval mode (dropout off in eval)."""
        adapter.train(self.training)
        self.adapters[name] = adapter

    def remove(self, name: str) -> None:
        if name in self.adapters:
            del self.adapters[name]
        self.active = tuple(n for n in self.active if n != name)

    def set_active(self, names: Iterable[str]) -> None:
        """Activate those of ``names`` that this layer holds (others live elsewhere)."""
        self.active = tuple(n for n in names if n in self.adapters)

    def active_adapters(self) -> list[nn.Module]:
        """The active adapters whose branch the forward computes (not those merged into the base)."""
        if self.disabled:
            return []
        return [self.adapters[n] for n in self.active if n not in self.merged_names]

    def check_merged_forward(self) -> None:
        """Refuse a forward that would train merged adapters: their branch is skipped, so they
        would get no gradient and the step would silently leave them unchanged."""
        if not torch.is_grad_enabled():
            return
        trained = [n for n in self.merged_names if any(p.requires_grad for p in self.adapters[n].parameters())]
        if trained:
            raise MergeError(
                f"adapters {trained} are merged into the base weights (ak.merge_adapter), so a forward "
                f"with gradients would not reach them. Call ak.unmerge_adapter(model) before training, "
                f"or run this forward under torch.no_grad()."
            )

    def innermost(self) -> nn.Module:
        """The original module under any nesting of adapter layers."""
        base = self.base
        while isinstance(base, AdapterLayer):
            base = base.base
        return base

    def extra_repr(self) -> str:
        merged = f", merged={list(self.merged_names)}" if self.merged_names else ""
        return f"active={list(self.active)}" + (", disabled" if self.disabled else "") + merged


def own_method(layer: nn.Module, name: str):
    """``layer``'s method ``name`` as its class defines it, or None: never its base's, which
    ``AdapterLayer.__getattr__`` would hand out (a base with a ``release`` or ``merged`` of its own)."""
    return getattr(layer, name) if callable(getattr(type(layer), name, None)) else None
