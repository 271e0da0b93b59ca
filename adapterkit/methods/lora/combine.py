"""combine: a new LoRA adapter made from existing ones.

- ``"cat"``: exact. A' = [A_1; A_2; ...] (ranks add up), B' = [w_1 s_1 B_1, w_2 s_2 B_2, ...],
  scale 1, so scale' B' A' = sum_i w_i s_i B_i A_i: the adapters' weighted sum, as one adapter.
- ``"linear"``: same rank kept. A' = sum_i sqrt(w_i s_i) A_i, B' = sum_i sqrt(w_i s_i) B_i, scale 1
  (PEFT's "linear"); exact for one adapter, an approximation (cross terms) for several.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch
from torch import nn

from ...config import check_adapter_name
from ...errors import AdapterNameError, ConfigError, MergeError
from ...inject import adapter_config, adapter_layers, adapter_names, refuse_while_merged, set_active
from ...transaction import unchanged_on_error
from .config import LoRAConfig
from .layers import LoRA, LoRALayer

HOW = ("cat", "linear")


def combine(
    model: nn.Module,
    names: Sequence[str],
    name: str,
    weights: Optional[Sequence[float]] = None,
    how: str = "cat",
) -> nn.Module:
    """Add adapter ``name`` = the weighted combination of LoRA adapters ``names``; make it active."""
    check_adapter_name(name)
    refuse_while_merged(model, "combine adapters")
    if name in adapter_names(model):
        raise AdapterNameError(f"an adapter named {name!r} is already attached; pick another name.")
    if how not in HOW:
        raise ConfigError(f"combine how={how!r}; expected one of {HOW}.")
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise AdapterNameError(f"combine takes a list of adapter names; got {names!r}.")
    weights = [1.0] * len(names) if weights is None else list(weights)
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise ConfigError(f"combine weights must be finite numbers; got {weights!r}.")
    if not names or len(weights) != len(names):
        raise ConfigError(f"combine needs one weight per adapter; got {len(names)} names, {len(weights)} weights.")
    configs = [adapter_config(model, n) for n in names]
    for n, cfg in zip(names, configs):
        if not isinstance(cfg, LoRAConfig) or cfg.dora:
            raise ConfigError(f"combine takes plain LoRA adapters; {n!r} is {type(cfg).__name__}"
                              f"{' with dora=True' if getattr(cfg, 'dora', False) else ''}.")
        extras = [f for f in ("rank_pattern", "alpha_pattern", "lora_bias", "trainable_token_indices")
                  if getattr(cfg, f, None)] + (["bias"] if getattr(cfg, "bias", "none") != "none" else [])
        if extras:
            raise ConfigError(f"combine takes plain LoRA adapters; {n!r} uses {', '.join(extras)}.")
    ranks = [c.rank for c in configs]
    if how == "linear" and len(set(ranks)) > 1:
        raise ConfigError(f"combine how='linear' needs equal ranks; got {ranks}. Use how='cat'.")
    rank = sum(ranks) if how == "cat" else ranks[0]
    targets = tuple(ln for ln, layer in adapter_layers(model)
                    if isinstance(layer, LoRALayer) and any(n in layer.adapters for n in names))
    config = dataclasses.replace(configs[0], rank=rank, alpha=float(rank), rslora=False, targets=targets,
                                 exclude=(), layers=None, train_modules=())
    if how == "linear" and any(w < 0 for w in weights):
        raise ConfigError(f"combine how='linear' needs non-negative weights; got {weights}.")
    with unchanged_on_error(model):
        for _, layer in adapter_layers(model):
            if isinstance(layer, LoRALayer) and any(n in layer.adapters for n in names):
                layer.add(name, _combined(layer, names, weights, ranks, config, how))
        set_active(model, name)
    return model


@torch.no_grad()
def _combined(layer: LoRALayer, names, weights, ranks, config: LoRAConfig, how: str) -> LoRA:
    """This layer's share of the combination; an adapter missing here contributes zeros."""
    new = LoRA(layer.innermost(), config)
    new.a.zero_()
    new.b.zero_()
    row = 0
    for n, w, rank in zip(names, weights, ranks):
        src = layer.adapters[n] if n in layer.adapters else None
        if src is not None and how == "cat":
            new.a[row:row + rank] = src.a
            new.b[:, row:row + rank] = src.b * (w * src.scale)
        elif src is not None:
            root = math.sqrt(w * src.scale)
            new.a += src.a * root
            new.b += src.b * root
        row += rank
    if not (torch.isfinite(new.a).all() and torch.isfinite(new.b).all()):
        raise MergeError(f"combine: adapters {list(names)} hold NaN or Inf values in a layer; the combination "
                         "would be NaN. Check those adapters' weights (a diverged training run?).")
    return new
