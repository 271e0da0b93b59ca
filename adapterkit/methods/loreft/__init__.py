"""LoReFT: low-rank interventions on the hidden states that transformer blocks output."""

from __future__ import annotations

import torch

from ... import bases
from ...errors import TargetError
from ...registry import Method, register
from . import positions
from .config import LoReFTConfig
from .files import FILES, PEFT_TYPE
from .layers import Intervention, LoReFT, LoReFTLayer
from ...anatomy import base_module, blocks


def _where(model, config: LoReFTConfig) -> dict[str, int]:
    """{block name: hidden size}, the hidden size being what the block's last projection outputs."""
    found = {}
    for block in blocks(model):
        if config.layers is not None and block.index not in config.layers:
            continue
        last = block.ffn_out or (block.attention_out[-1] if block.attention_out else None)
        if last is not None:
            found[block.prefix] = bases.features(base_module(model, last))[1]
    if not found:
        raise TargetError(
            f"LoReFTConfig.layers={list(config.layers or ())} names no transformer block of "
            f"{type(model).__name__} (it has {len(blocks(model))} blocks per stack); pick indices below that."
        )
    positions.install(model)
    return found


def _build(block, config: LoReFTConfig, hidden: int) -> LoReFT:
    like = next(iter(block.parameters()), None)
    dtype = torch.float64 if like is not None and like.dtype == torch.float64 else torch.float32  # see layers.py
    return LoReFT(hidden, config, {"device": like.device if like is not None else None, "dtype": dtype})


METHOD = register(Method(config=LoReFTConfig, layer=LoReFTLayer, where=_where, build=_build, files=FILES))

__all__ = ["LoReFTConfig", "LoReFT", "LoReFTLayer", "Intervention", "METHOD", "PEFT_TYPE"]
