"""Bottleneck adapter modules and the layer that wraps a base with them.

Serial (after a module):   y = o + A(o),           o = base(x)              (houlsby, pfeiffer)
Parallel (beside an FFN):  y = base(h) + s * A(x),  x = the FFN's input      (parallel)
with A(v) = W_up f(W_down v + b_down) + b_up.

A parallel adapter lives on the FFN's output projection; the FFN's input projection holds a
parameterless ``Tap`` that hands its input over. Within a block the input projection always runs
first, so one slot per adapter name and thread carries x from the tap to the adapter.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...layer import AdapterLayer
from .config import BottleneckConfig

_ACT = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
_SLOTS = threading.local()


def _slots() -> dict:
    if not hasattr(_SLOTS, "inputs"):
        _SLOTS.inputs = {}
    return _SLOTS.inputs


class Bottleneck(nn.Module):
    """A(v) = W_up f(W_down v + b_down) + b_up; down (d, hidden), up (hidden, d)."""

    def __init__(self, hidden: int, config: BottleneckConfig, parallel: bool, like: Tensor):
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.scale = config.scale if parallel else 1.0
        d = config.size(hidden)
        place = {"device": like.device, "dtype": like.dtype if like.dtype.is_floating_point else torch.float32}
        self.down = nn.Linear(hidden, d, **place)
        self.up = nn.Linear(d, hidden, **place)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.down.bias.zero_()
            if config.init == "zeros":
                self.up.weight.zero_()
                self.up.bias.zero_()

    def extra_repr(self) -> str:
        kind = f"parallel, scale={self.scale:g}" if self.parallel else "serial"
        return f"{kind}, {self.config.activation}"

    def branch(self, v: Tensor) -> Tensor:
        # (..., hidden) -> (..., hidden)
        h = _ACT[self.config.activation](self.down(v.to(self.down.weight.dtype)))
        return self.up(h) * self.scale


class Tap(nn.Module):
    """Parameterless: records a parallel adapter's input (the FFN input) for the adapter."""

    def __init__(self, config: BottleneckConfig):
        super().__init__()
        self.config = config


class BottleneckLayer(AdapterLayer):
    """A base module with serial adapters after it, or one side of a parallel adapter."""

    method = "bottleneck"

    def forward(self, x, *args, **kwargs):
        adapters = self.active_adapters()
        slots = _slots()
        for name, adapter in zip(self.active, adapters):
            if isinstance(adapter, Tap):
                slots[name] = x
        y = self.base(x, *args, **kwargs)
        for name, adapter in zip(self.active, adapters):
            if isinstance(adapter, Tap):
                continue
            if adapter.parallel:
                y = y + adapter.branch(slots.pop(name)).to(y.dtype)
            else:
                y = y + adapter.branch(y).to(y.dtype)
        return y


def build(base: nn.Module, config: BottleneckConfig, role: str) -> nn.Module:
    """The module for one base: a Tap ('tap'), a parallel ('parallel') or serial adapter."""
    if role == "tap":
        return Tap(config)
    _, n_out = bases.features(base)
    like = next(iter(base.parameters()), None)
    if like is None:
        like = next(iter(base.buffers()))
    return Bottleneck(n_out, config, parallel=role == "parallel", like=like)
