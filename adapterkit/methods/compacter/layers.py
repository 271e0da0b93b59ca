"""Compacter modules: PHM layers, their rule matrices, and the adapter built from two of them.

    PHM(x) = x H + b,   H = sum_i A_i kron B_i        (Mahabadi et al. 2021, eq. 4-5)
    A(v)   = PHM_up(f(PHM_down(v)))                     the bottleneck, placed like bottleneck adapters

The rules A_i live in a ``PHMRules`` module: one per adapter, used by every PHM layer of every
Compacter, as in the paper and AdapterHub (registered in the first one only, so that the model's
state_dict, ``save_pretrained`` and optimizers see one tensor); or one per PHM layer when
``shared_phm_rule`` is False. The layer is the bottleneck layer (serial, parallel,
tap), under the method name ``compacter``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ... import bases
from ...layer import AdapterLayer
from ...errors import ConfigError
from ..bottleneck.layers import _ACT, BottleneckLayer, Handover, Placement, Tap
from .config import CompacterConfig


def _normal(shape, std: float, place: dict) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, **place).normal_(0.0, std))


class PHMRules(nn.Module):
    """The rule matrices A_i: ``phm_rule`` (n, n, n), A[i] = A_i, or ``phm_rule_left`` (n, n, 1)
    times ``phm_rule_right`` (n, 1, n) when factorised (AdapterHub's names)."""

    def __init__(self, config: CompacterConfig, place: dict):
        super().__init__()
        n, std = config.phm_dim, config.phm_init_range
        if config.factorized_phm_rule:
            self.phm_rule_left = _normal((n, n, 1), std, place)
            self.phm_rule_right = _normal((n, 1, n), std, place)
        else:
            self.phm_rule = _normal((n, n, n), std, place)

    def forward(self) -> Tensor:
        """A: (n, n, n)."""
        if hasattr(self, "phm_rule"):
            return self.phm_rule
        return self.phm_rule_left @ self.phm_rule_right  # (n, n, 1) @ (n, 1, n)


class PHM(nn.Module):
    """x H + b with H = sum_i A_i kron B_i (in, out); B_i = W_left[i] W_right[i] or W[i].
    ``rules``: the adapter's shared A, or None for rules of this layer's own. One PHM layer of the
    adapter ``owns`` the shared rules (registers them: state_dict, save_pretrained and optimizers
    see them once); the others hold them without registering."""

    def __init__(
        self, n_in: int, n_out: int, config: CompacterConfig, rules: Optional[PHMRules], place: dict, owns: bool = True
    ):
        super().__init__()
        n, rank = config.phm_dim, config.phm_rank
        self.shape = (n_in, n_out)
        if config.factorized_phm_W:
            self.W_left = nn.Parameter(torch.empty(n, n_in // n, rank, **place))  # s_i
            self.W_right = nn.Parameter(torch.empty(n, rank, n_out // n, **place))  # t_i^T
            tensors = (self.W_left, self.W_right)
        else:
            self.W = nn.Parameter(torch.empty(n, n_in // n, n_out // n, **place))
            tensors = (self.W,)
        for w in tensors:  # Glorot-uniform, one block at a time
            for i in range(n):
                nn.init.xavier_uniform_(w.data[i])
        self.b = nn.Parameter(torch.zeros(n_out, **place)) if config.phm_bias else None
        if rules is None or owns:
            self.rules = rules if rules is not None else PHMRules(config, place)
        else:
            self.shared = (rules,)  # a tuple: not a submodule

    def phm_rules(self) -> PHMRules:
        shared = getattr(self, "shared", None)
        return shared[0] if shared is not None else self.rules

    def blocks(self) -> Tensor:
        """B: (n, in/n, out/n)."""
        return self.W_left @ self.W_right if hasattr(self, "W_left") else self.W

    def forward(self, x: Tensor) -> Tensor:
        # x (..., in) -> (..., out)
        A, B = self.phm_rules()(), self.blocks()  # (n, n, n), (n, in/n, out/n)
        H = torch.einsum("iac,ikp->akcp", A, B).reshape(self.shape)  # sum_i A_i kron B_i: (in, out)
        y = x @ H
        return y + self.b if self.b is not None else y


class Compacter(nn.Module):
    """A(v) = PHM_up(f(PHM_down(v))) * scale; down (hidden -> d), up (d -> hidden)."""

    def __init__(
        self,
        hidden: int,
        config: CompacterConfig,
        parallel: bool,
        rules: Optional[PHMRules],
        like: Tensor,
        owns: bool = True,
        handover: Optional[Handover] = None,
    ):
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.handover = handover  # a parallel Compacter's input, from its Tap
        self.scale = config.scale if parallel else 1.0
        d = config.size(hidden)
        for what, size in (("hidden size", hidden), ("bottleneck size", d)):
            if size % config.phm_dim:
                raise ConfigError(
                    f"CompacterConfig: the {what} {size} is not a multiple of phm_dim {config.phm_dim}; "
                    f"pick a phm_dim that divides {hidden} and the bottleneck size (or set bottleneck_dim)."
                )
        place = {"device": like.device, "dtype": like.dtype if like.dtype.is_floating_point else torch.float32}
        self.down = PHM(hidden, d, config, rules, place, owns)
        self.up = PHM(d, hidden, config, rules, place, owns=False)

    def extra_repr(self) -> str:
        kind = f"parallel, scale={self.scale:g}" if self.parallel else "serial"
        return f"{kind}, {self.config.activation}, phm_dim={self.config.phm_dim}"

    def branch(self, v: Tensor) -> Tensor:
        # (..., hidden) -> (..., hidden)
        h = _ACT[self.config.activation](self.down(v.to(self.down.blocks().dtype)))
        return self.up(h) * self.scale


class CompacterLayer(AdapterLayer):
    """A base module with Compacters after it (serial) or beside its feed-forward block (parallel).
    Its forward is the bottleneck layer's; a class of its own keeps the two methods apart."""

    method = "compacter"
    forward = BottleneckLayer.forward


def like_tensor(base: nn.Module) -> Tensor:
    like = next(iter(base.parameters()), None)
    return like if like is not None else next(iter(base.buffers()))


def build(
    base: nn.Module, config: CompacterConfig, placement: Placement, rules: Optional[PHMRules], owns: bool
) -> nn.Module:
    """The module for one base: a Tap ('tap'), a parallel ('parallel') or serial Compacter; the one
    that ``owns`` the shared ``rules`` registers them."""
    if placement.role == "tap":
        return Tap(config, placement.handover)
    _, n_out = bases.features(base)
    parallel = placement.role == "parallel"
    handover = placement.handover if parallel else None
    return Compacter(n_out, config, parallel, rules, like_tensor(base), owns=owns, handover=handover)
