"""Activation (gradient) checkpointing of a transformers model, under either of its names.

transformers 5.23 renamed ``gradient_checkpointing_enable`` / ``is_gradient_checkpointing`` to
``activation_checkpointing_enable`` / ``is_activation_checkpointing``; the old names warn
(FutureWarning) and go in v6. Calls here take the new name where the installed transformers has it.
"""

from __future__ import annotations

from torch import nn

from .errors import ConfigError


def supported(model: nn.Module) -> bool:
    """Whether the model can turn checkpointing on (a transformers model)."""
    return hasattr(model, "activation_checkpointing_enable") or hasattr(model, "gradient_checkpointing_enable")


def enable(model: nn.Module, use_reentrant: bool = False) -> None:
    """Checkpoint the model's blocks (non-reentrant by default) and stop it caching keys / values."""
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(
            f"{type(model).__name__} has no activation_checkpointing_enable() / gradient_checkpointing_enable() "
            "(not a transformers model); wrap its blocks in torch.utils.checkpoint yourself"
        )
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def is_on(model: nn.Module) -> bool:
    """Whether the model's blocks are checkpointed (False for models without the switch)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))
