"""Freeze or unfreeze one adapter's parameters (PEFT's ``set_requires_grad``).

``attach`` makes the new adapter trainable and leaves the others as they are; these switch
``requires_grad`` of every parameter of adapter ``name`` (in every layer that holds it, its
``train_modules`` copies included) and touch nothing else. Any method's adapter.
"""

from __future__ import annotations

from typing import Iterable, Union

from torch import nn

from .errors import AdapterNameError
from .inject import _unknown, adapter_layers, adapter_names, check_model


def _names(model: nn.Module, names: Union[str, Iterable[str]], call: str) -> list[str]:
    check_model(model, call)
    is_list = isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)
    if not isinstance(names, str) and not is_list:
        raise AdapterNameError(f"{call} takes an adapter name or a non-empty list of names; got {names!r}.")
    wanted = [names] if isinstance(names, str) else list(names)
    have = adapter_names(model)
    for name in wanted:
        if name not in have:
            raise _unknown(model, name)
    return wanted


def set_trainable(model: nn.Module, names: Union[str, Iterable[str]], trainable: bool = True) -> nn.Module:
    """``requires_grad = trainable`` on every parameter of the adapters ``names``; returns ``model``."""
    wanted = _names(model, names, "freeze_adapter" if not trainable else "unfreeze_adapter")
    for _, layer in adapter_layers(model):
        for name in wanted:
            if name in layer.adapters:
                for p in layer.adapters[name].parameters():
                    if p.is_floating_point() or p.is_complex():
                        p.requires_grad_(trainable)
    return model


def freeze_adapter(model: nn.Module, names: Union[str, Iterable[str]]) -> nn.Module:
    """Stop training adapter(s) ``names``: their parameters get ``requires_grad=False``."""
    return set_trainable(model, names, False)


def unfreeze_adapter(model: nn.Module, names: Union[str, Iterable[str]]) -> nn.Module:
    """Train adapter(s) ``names`` again: their parameters get ``requires_grad=True``."""
    return set_trainable(model, names, True)
