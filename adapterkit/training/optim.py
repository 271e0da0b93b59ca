"""Optimizer and learning-rate schedule.

- AdamW (Loshchilov & Hutter 2019), or bitsandbytes' 8-bit / paged 8-bit AdamW (Dettmers et al.
  2022, arXiv:2110.02861), or plain SGD.
- LoRA+ (Hayou et al. 2024, arXiv:2402.12354): B's learning rate is ``ratio`` times A's.
- Schedules: lr(t) = lr * w(t) * d(t); warmup w(t) = min(1, (t + 1) / warmup) over ``warmup``
  optimizer steps, then decay d over the rest: constant 1, linear (1 - p), cosine
  (1 + cos(pi p)) / 2, with p the fraction of the decay phase done.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..inject import adapter_layers
from .sections import OptimConfig


def _loraplus_b_params(model: nn.Module) -> set[int]:
    """ids of LoRA ``b`` factors, found by structure (the adapter modules of LoRA layers)."""
    from ..methods.lora.layers import LoRA

    found = set()
    for _, layer in adapter_layers(model):
        for adapter in layer.adapters.values():
            if isinstance(adapter, LoRA) and adapter.b.requires_grad:
                found.add(id(adapter.b))
    return found


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters; with LoRA+ the B factors form a group at ``ratio * lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; check the adapter's targets.")
    if cfg.loraplus_ratio is None:
        return [{"params": params, "lr": cfg.lr}]
    b_ids = _loraplus_b_params(model)
    if not b_ids:
        raise ConfigError(
            "optim.loraplus_ratio is set but the adapter has no LoRA B factors; "
            "remove loraplus_ratio or use a LoRA adapter."
        )
    rest = [p for p in params if id(p) not in b_ids]
    b = [p for p in params if id(p) in b_ids]
    return [{"params": rest, "lr": cfg.lr}, {"params": b, "lr": cfg.lr * cfg.loraplus_ratio}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, groups=None) -> torch.optim.Optimizer:
    """The optimizer over ``groups`` (default: ``param_groups(model, cfg)``)."""
    groups = groups if groups is not None else param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(
            f"optim.optimizer {cfg.optimizer!r} needs bitsandbytes: pip install bitsandbytes; or use 'adamw'."
        ) from None
    cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps else int(cfg.warmup_ratio * total)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The multiplier on the base lr at optimizer step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int):
    warmup = warmup_steps(cfg, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule))
