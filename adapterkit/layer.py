"""AdapterLayer: a frozen base module plus the named adapters that act on it.

Every method's layer subclasses it, so adapter state is found by structure
(``isinstance(m, AdapterLayer)``), never by parameter names. One ``ModuleDict`` holds one module
per adapter name; that module owns all of the adapter's tensors in this layer.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn


class AdapterLayer(nn.Module):
    """Wraps ``base``; ``adapters[name]`` is one adapter's module for this layer."""

    method = ""
    rows = None  # a mixed-adapter batch's per-row names while one runs (adapterkit/rows.py)

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.disabled = False

    def __getattr__(self, name: str):
        # Models read attributes of the layers they own (``self.wo.weight.dtype``,
        # ``self.q_proj.in_features``): answer them from the wrapped base.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base", "adapters"):
                raise
            return getattr(self.base, name)

    def add(self, name: str, adapter: nn.Module) -> None:
        self.adapters[name] = adapter

    def remove(self, name: str) -> None:
        if name in self.adapters:
            del self.adapters[name]
        self.active = tuple(n for n in self.active if n != name)

    def set_active(self, names: Iterable[str]) -> None:
        """Activate those of ``names`` that this layer holds (others live elsewhere)."""
        self.active = tuple(n for n in names if n in self.adapters)

    def active_adapters(self) -> list[nn.Module]:
        return [] if self.disabled else [self.adapters[n] for n in self.active]

    def innermost(self) -> nn.Module:
        """The original module under any nesting of adapter layers."""
        base = self.base
        while isinstance(base, AdapterLayer):
            base = base.base
        return base

    def extra_repr(self) -> str:
        return f"active={list(self.active)}" + (", disabled" if self.disabled else "")
