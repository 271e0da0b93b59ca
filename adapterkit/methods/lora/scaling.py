"""A LoRA adapter's scale at run time: a weight per adapter (PEFT's ``set_scale``, ``scale_layer``,
``unscale_layer`` and ``rescale_adapter_scale``).

Each adapter computes  y = W x + s B A x  with s = m * alpha / rank (alpha / sqrt(rank) with rsLoRA);
m, its multiplier, starts at 1. Several active adapters then give y = W x + sum_k s_k B_k A_k x: a
weight per active adapter (``ak.set_active(model, [...])`` plus ``ak.set_scale``). DoRA's row norm
||W + s B A|| uses the same s. The multiplier lives in the model only: ``save_adapter`` writes the
configured alpha (as PEFT does), and ``ak.merge`` / ``ak.combine`` / ``ak.resize_rank`` use the
current s. Changing a scale while adapters are merged in place is refused (unmerging would subtract
a different update than was added). Under ``torch.compile`` a new scale value recompiles the graph
(the scale is a Python float).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Optional, Union

from torch import nn

from ...errors import ConfigError
from ...inject import _unknown, adapter_layers, adapter_names, check_model, refuse_while_merged
from .layers import LoRA, LoRALayer


def loras(model: nn.Module, name: str) -> list[LoRA]:
    """Adapter ``name``'s LoRA module in every layer that holds it; errors for unknown / other methods."""
    found = [
        layer.adapters[name]
        for _, layer in adapter_layers(model)
        if isinstance(layer, LoRALayer) and name in layer.adapters
    ]
    if not found:
        if name not in adapter_names(model):
            raise _unknown(model, name)
        raise ConfigError(f"adapter {name!r} is not a LoRA adapter; only LoRA / DoRA adapters have a scale.")
    return found


def refuse_mha(modules: list, doing: str, grouped: bool = False) -> None:
    """ConfigError when some of ``modules`` adapt an nn.MultiheadAttention (two pairs of factors), or
    with ``grouped``, a grouped convolution (B holds rank / groups columns per output channel)."""
    if any(lora.kind == "mha" for lora in modules):
        raise ConfigError(
            f"{doing} does not handle LoRA on nn.MultiheadAttention (its in_proj and out_proj pairs) "
            f"yet; leave the attention module out of that adapter's targets."
        )
    if grouped and any(lora.b.dim() > 2 and lora.b.shape[1] != lora.a.shape[0] for lora in modules):
        raise ConfigError(
            f"{doing} does not handle LoRA on a grouped convolution (groups > 1: B is a grouped 1x1 "
            f"convolution) yet; leave that module out of the adapter's targets."
        )


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number; got {value!r}.")
    return float(value)


def set_scale(model: nn.Module, name: Union[str, Mapping[str, float]], scale: Optional[float] = None) -> nn.Module:
    """Set adapter ``name``'s scale to ``scale`` * alpha / rank (PEFT's ``set_scale``); ``scale=1``
    restores the configured one. ``name`` may be a dict {adapter: multiplier}; returns ``model``."""
    check_model(model, "set_scale")
    wanted = dict(name) if isinstance(name, Mapping) else {name: scale}
    if not wanted:
        raise ConfigError("set_scale got an empty dict; give {adapter name: multiplier}.")
    checked = {}
    for n, m in wanted.items():
        if not isinstance(n, str):
            raise ConfigError(f"set_scale takes an adapter name (or a dict of them); got {n!r}.")
        checked[n] = (_number(m, f"set_scale's multiplier for {n!r}"), loras(model, n))
    refuse_while_merged(model, "change an adapter's scale")
    for m, modules in checked.values():
        for lora in modules:
            lora.scale = m * lora.base_scale
    return model


def scale_active(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the current scale of every active LoRA adapter by ``factor`` (PEFT's ``scale_layer``)."""
    factor = _number(factor, "scale_active's factor")
    for lora in _active(model, "scale the active adapters"):
        lora.scale *= factor
    return model


def unscale_active(model: nn.Module, factor: Optional[float] = None) -> nn.Module:
    """Divide the current scale of every active LoRA adapter by ``factor``; ``None``: back to the
    configured alpha / rank (PEFT's ``unscale_layer``)."""
    if factor is not None and _number(factor, "unscale_active's factor") == 0:
        raise ConfigError("unscale_active's factor is 0; division by zero. Use factor=None to reset.")
    for lora in _active(model, "unscale the active adapters"):
        lora.scale = lora.base_scale if factor is None else lora.scale / factor
    return model


def _active(model: nn.Module, doing: str) -> list[LoRA]:
    check_model(model, doing.split()[0])
    refuse_while_merged(model, doing)
    return [
        layer.adapters[n] for _, layer in adapter_layers(model) if isinstance(layer, LoRALayer) for n in layer.active
    ]


@contextlib.contextmanager
def rescaled(model: nn.Module, multiplier: float) -> Iterator[nn.Module]:
    """Inside the block every LoRA adapter's scale is multiplied by ``multiplier``; restored on exit
    (PEFT's ``rescale_adapter_scale``; with a multiplier in [0, 1]: WiSE-FT, arXiv:2109.01903)."""
    check_model(model, "rescaled")
    multiplier = _number(multiplier, "rescaled's multiplier")
    modules = [a for _, layer in adapter_layers(model) if isinstance(layer, LoRALayer) for a in layer.adapters.values()]
    if not modules:
        raise ConfigError("rescaled: the model holds no LoRA adapter whose scale could change.")
    refuse_while_merged(model, "rescale the adapters")
    saved = [lora.scale for lora in modules]
    for lora in modules:
        lora.scale *= multiplier
    try:
        yield model
    finally:
        for lora, scale in zip(modules, saved):
            lora.scale = scale
