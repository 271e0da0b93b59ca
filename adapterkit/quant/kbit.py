"""One call that readies a quantized model for adapter training with little memory.

What it does (PEFT's ``prepare_model_for_kbit_training`` without its surprises):
- freezes every parameter (adapters attached afterwards are the only trainable ones);
- turns on gradient checkpointing, non-reentrant (so no hook forcing the inputs to need grads),
  and turns off the generation cache that checkpointing cannot use;
- keeps every dtype as it is: PEFT casts all fp16/bf16 parameters, embeddings and head included,
  to fp32 (twice their memory, and fp32 activations downstream); here only ``upcast_norms=True``
  casts normalisation weights, and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checkpointing
from ..errors import ConfigError


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("RMSNorm")


def prepare_for_kbit_training(
    model: nn.Module, gradient_checkpointing: bool = True, upcast_norms: bool = False
) -> nn.Module:
    """Freeze, checkpoint, keep dtypes; returns the model (changed in place)."""
    if gradient_checkpointing and not checkpointing.supported(model):  # refused before anything changes
        raise ConfigError(
            f"{type(model).__name__} has no activation_checkpointing_enable() (not a transformers model); "
            "pass gradient_checkpointing=False and wrap blocks in torch.utils.checkpoint yourself"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        checkpointing.enable(model)
    if upcast_norms:
        for module in model.modules():
            if _is_norm(module):
                module.to(torch.float32)
    return model
