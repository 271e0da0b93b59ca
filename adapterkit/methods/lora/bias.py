"""Bias training with LoRA: ``bias`` (which base biases train) and ``lora_bias`` (a bias on B).

``bias="all"``: every bias of the model trains (PEFT: each parameter named ``*.bias``);
``bias="lora_only"``: the biases of the layers the adapter wraps. Both train in place, as in PEFT
(its ``_mark_only_adapters_as_trainable``), so ``ak.disabled`` and ``ak.detach`` keep the trained
values. On disk they sit beside the adapter under PEFT's keys: ``base_model.model.<m>.base_layer.bias``
for a module wrapped by LoRA, ``base_model.model.<m>.bias`` for any other.

``lora_bias=True`` gives B a bias b_B (out,): y = W x + scale (B A x + b_B); merging adds
scale * b_B to the base bias (a base without one gets one).
"""

from __future__ import annotations

from torch import Tensor, nn

from ...registry import PEFT_PREFIX


def add_bias(module: nn.Module, delta: Tensor) -> nn.Module:
    """``module`` with ``delta`` (out,) added to its bias (a zero bias created where it has none)."""
    import torch

    with torch.no_grad():
        if getattr(module, "bias", None) is None:
            weight = module.weight
            module.bias = nn.Parameter(
                torch.zeros(delta.shape[0], device=weight.device, dtype=weight.dtype), requires_grad=False
            )
        module.bias.add_(delta.to(module.bias.dtype))
    return module


def _lora_wrapped(module: nn.Module) -> bool:
    from ...layer import AdapterLayer
    from .layers import LoRALayer

    while isinstance(module, AdapterLayer):
        if isinstance(module, LoRALayer):
            return True
        module = module.base
    return False


def trained_biases(model: nn.Module, config, name: str) -> dict[str, Tensor]:
    """{PEFT file key: the live base bias} of the biases ``config.bias`` trains for adapter ``name``."""
    from ...methods.trained_module import TrainedModule
    from ...anatomy import logical_modules

    if config.bias == "none":
        return {}
    out = {}
    for module_name, inner in logical_modules(model):
        bias = getattr(inner, "bias", None)
        if not isinstance(bias, nn.Parameter):
            continue
        outer = model.get_submodule(module_name) if module_name else model
        if isinstance(outer, TrainedModule):
            continue  # a whole trained copy holds its own bias
        wrapped = _lora_wrapped(outer)
        holds = wrapped and _holds(outer, name)
        if config.bias == "lora_only" and not holds:
            continue
        out[f"{PEFT_PREFIX}{module_name}.base_layer.bias" if wrapped else f"{PEFT_PREFIX}{module_name}.bias"] = bias
    return out


def _holds(layer: nn.Module, name: str) -> bool:
    from ...layer import AdapterLayer

    while isinstance(layer, AdapterLayer):
        if name in layer.adapters:
            return True
        layer = layer.base
    return False


def train_biases(model: nn.Module, config, name: str) -> None:
    """Unfreeze the base biases ``config.bias`` asks for (after attach froze the base)."""
    for bias in trained_biases(model, config, name).values():
        bias.requires_grad_(True)
