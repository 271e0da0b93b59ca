"""Bottleneck adapter modules and the layer that wraps a base with them.

Serial (after a module):   y = o + A(o),           o = base(x)              (houlsby, pfeiffer)
Parallel (beside an FFN):  y = base(h) + s * A(x),  x = the FFN's input      (parallel)
with A(v) = W_up f(W_down v + b_down) + b_up.

A parallel adapter lives on the FFN's output projection; the FFN's input projection (in the same
block) holds a parameterless ``Tap`` that hands its input over. The two share one ``Handover``,
made for that pair when the adapter is placed: within a block the input projection always runs
first, so the handover carries x from the tap to its own adapter and to no other (one value per
thread, as data-parallel replicas share it).
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import bases
from ...errors import InputError
from ...layer import AdapterLayer
from .config import BottleneckConfig

_ACT = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class Handover:
    """Carries the FFN input x from one block's ``Tap`` (on module ``tap``) to the parallel adapter
    beside the same FFN (on module ``out``); not a module, so it holds no state in state_dict.
    A copy of a model (``copy.deepcopy``, pickling) gets a fresh handover per pair, still shared
    by the pair's two modules."""

    def __init__(self, tap: str, out: str):
        self.tap, self.out = tap, out
        self._held = threading.local()

    def put(self, x: Tensor) -> None:
        self._held.x = x

    def take(self) -> Tensor:
        x = getattr(self._held, "x", None)
        if x is None:
            raise InputError(
                f"the parallel bottleneck adapter on {self.out!r} takes its input from {self.tap!r}, which "
                "did not run before it; call the whole feed-forward block (or model), not its output "
                "projection alone."
            )
        del self._held.x
        return x

    def __deepcopy__(self, memo) -> "Handover":
        return Handover(self.tap, self.out)

    def __reduce__(self):
        return Handover, (self.tap, self.out)

    def __repr__(self) -> str:
        return f"Handover({self.tap!r} -> {self.out!r})"


class Placement(NamedTuple):
    """Where one module sits: role 'serial', 'parallel' or 'tap'; a parallel pair's handover."""

    role: str
    handover: Optional[Handover] = None


class Bottleneck(nn.Module):
    """A(v) = W_up f(W_down v + b_down) + b_up; down (d, hidden), up (hidden, d)."""

    def __init__(
        self, hidden: int, config: BottleneckConfig, parallel: bool, like: Tensor, handover: Optional[Handover] = None
    ):
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.handover = handover  # a parallel adapter's input, from its Tap
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
    """Parameterless: hands a parallel adapter's input (the FFN input) to that adapter."""

    def __init__(self, config: BottleneckConfig, handover: Handover):
        super().__init__()
        self.config = config
        self.handover = handover

    def extra_repr(self) -> str:
        return f"for {self.handover.out}"


class BottleneckLayer(AdapterLayer):
    """A base module with serial adapters after it, or one side of a parallel adapter."""

    method = "bottleneck"

    def forward(self, x, *args, **kwargs):
        adapters = self.active_adapters()
        for adapter in adapters:
            if isinstance(adapter, Tap):
                adapter.handover.put(x)
        y = self.base(x, *args, **kwargs)
        for adapter in adapters:
            if isinstance(adapter, Tap):
                continue
            if adapter.parallel:
                y = y + adapter.branch(adapter.handover.take()).to(y.dtype)
            else:
                y = y + adapter.branch(y).to(y.dtype)
        return y


def build(base: nn.Module, config: BottleneckConfig, placement: Placement) -> nn.Module:
    """The module for one base: a Tap ('tap'), a parallel ('parallel') or serial adapter."""
    if placement.role == "tap":
        return Tap(config, placement.handover)
    _, n_out = bases.features(base)
    like = next(iter(base.parameters()), None)
    if like is None:
        like = next(iter(base.buffers()))
    parallel = placement.role == "parallel"
    return Bottleneck(n_out, config, parallel=parallel, like=like, handover=placement.handover if parallel else None)
