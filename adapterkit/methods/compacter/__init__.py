"""Compacter: bottleneck adapters made of low-rank PHM layers, placed like bottleneck adapters."""

from __future__ import annotations

import torch

from ...registry import Method, register
from ..bottleneck import _where as bottleneck_where
from .config import CompacterConfig
from .files import FILES, PEFT_TYPE
from .layers import PHM, Compacter, CompacterLayer, PHMRules, build, like_tensor


def _where(model, config: CompacterConfig) -> dict:
    """{module name: (placement, rules, owns)}: bottleneck placement; ``rules`` is the adapter's one
    ``PHMRules`` (shared by all its layers; the first adapter ``owns`` it) or None (each PHM layer
    makes its own)."""
    placed = bottleneck_where(model, config)
    rules = None
    if config.shared_phm_rule:
        like = like_tensor(model.get_submodule(next(iter(placed))))
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        rules = PHMRules(config, {"device": like.device, "dtype": dtype})
    owner = next(name for name, place in placed.items() if place.role != "tap")
    return {name: (place, rules, name == owner) for name, place in placed.items()}


def _build(base, config: CompacterConfig, placement):
    place, rules, owns = placement
    return build(base, config, place, rules, owns)


METHOD = register(Method(config=CompacterConfig, layer=CompacterLayer, where=_where, build=_build, files=FILES))

__all__ = ["CompacterConfig", "Compacter", "CompacterLayer", "PHM", "PHMRules", "METHOD", "PEFT_TYPE"]
