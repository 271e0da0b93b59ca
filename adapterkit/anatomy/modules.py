"""The modules of a model as the user built it: adapter layers are seen as the base they wrap."""

from __future__ import annotations

from typing import Iterator

from torch import nn

from ..layer import AdapterLayer


def unwrapped(module: nn.Module) -> nn.Module:
    """The module an adapter layer wraps (the innermost base, through nested layers), or ``module``."""
    return module.innermost() if isinstance(module, AdapterLayer) else module


def base_module(model: nn.Module, name: str) -> nn.Module:
    """The base module at ``name``: what ``model.get_submodule(name)`` was before any adapter."""
    return unwrapped(model.get_submodule(name))


def logical_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for the model as the user built it: adapter layers show as their base, and
    the insides of a ``transparent`` layer's base (a whole block, LoReFT) keep their own names."""
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, AdapterLayer):
            skip.append(name + ".")
            yield name, module.innermost()
            for inner, sub in logical_modules(module.innermost()) if module.transparent else ():
                if inner:
                    yield f"{name}.{inner}" if name else inner, sub
        else:
            yield name, module
