"""CompacterConfig: Compacter adapters (Mahabadi et al. 2021, "Compacter: Efficient Low-Rank
Hypercomplex Adapter Layers", arXiv:2106.04647).

A Compacter is a bottleneck adapter ``A(v) = PHM_up(f(PHM_down(v)))`` whose two projections are
parameterized hypercomplex multiplication (PHM) layers:

    PHM(x) = x H + b,   H = sum_{i=1..n} A_i kron B_i,   B_i = s_i t_i^T  (low rank)

with n = ``phm_dim``, A_i (n, n) the "rule" matrices, shared by every layer of the adapter
(``shared_phm_rule``), and B_i (in/n, out/n) factorised as s_i (in/n, rank) t_i (rank, out/n)
(``factorized_phm_W``). It sits where bottleneck adapters do (``adapterkit.methods.bottleneck``):
``houlsby`` (after attention and feed-forward: the paper's Compacter), ``pfeiffer`` (after the
feed-forward only: Compacter++) or ``parallel``. Defaults follow AdapterHub's ``CompacterConfig``.

Initialisation (AdapterHub's): A_i ~ N(0, phm_init_range^2), each s_i, t_i Glorot-uniform, b = 0.
The adapted model is therefore close to, not exactly, the base model at the start.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError
from ..bottleneck.config import ACTIVATIONS, PRESETS


@dataclasses.dataclass(frozen=True)
class CompacterConfig(AdapterConfig):
    """Compacter: bottleneck adapters built from low-rank PHM layers with shared rule matrices.

    Args:
        preset: ``"houlsby"`` (Compacter), ``"pfeiffer"`` (Compacter++) or ``"parallel"``.
        reduction_factor: bottleneck size d = hidden // reduction_factor (unless ``bottleneck_dim``).
        bottleneck_dim: bottleneck size d, overriding ``reduction_factor``.
        activation: ``"relu"``, ``"gelu"``, ``"silu"`` or ``"tanh"``.
        scale: factor on a parallel adapter's output; serial adapters use 1.
        phm_dim: n, the number of Kronecker terms; hidden and d must be multiples of it.
        phm_rank: rank of each B_i when ``factorized_phm_W``.
        shared_phm_rule: one set of rules A_i for every PHM layer of the adapter (down and up, all
            layers), as in the paper; else each PHM layer has its own.
        factorized_phm_rule: A_i = u_i v_i^T with u_i, v_i (n, 1).
        factorized_phm_W: B_i = s_i t_i^T of rank ``phm_rank`` (else B_i is a full matrix).
        phm_init_range: standard deviation of the rules' normal initialisation.
        phm_bias: a bias b on each PHM layer.
        targets, layers, train_modules: as in ``BottleneckConfig``.
    """

    method = "compacter"

    preset: str = "houlsby"
    reduction_factor: int = 32
    bottleneck_dim: Optional[int] = None
    activation: str = "gelu"
    scale: float = 1.0
    phm_dim: int = 4
    phm_rank: int = 1
    shared_phm_rule: bool = True
    factorized_phm_rule: bool = False
    factorized_phm_W: bool = True
    phm_init_range: float = 1e-4
    phm_bias: bool = True
    targets: Optional[Union[str, tuple[str, ...]]] = None
    layers: Optional[tuple[int, ...]] = None
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        self._choice("preset", PRESETS)
        self._positive("reduction_factor", integer=True)
        if self.bottleneck_dim is not None:
            self._positive("bottleneck_dim", integer=True)
        self._choice("activation", ACTIVATIONS)
        self._positive("scale")
        self._positive("phm_dim", integer=True)
        self._positive("phm_rank", integer=True)
        self._positive("phm_init_range")
        for flag in ("shared_phm_rule", "factorized_phm_rule", "factorized_phm_W", "phm_bias"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"CompacterConfig.{flag} must be True or False; got {getattr(self, flag)!r}.")
        if self.bottleneck_dim is not None and self.bottleneck_dim % self.phm_dim:
            raise ConfigError(
                f"CompacterConfig.bottleneck_dim ({self.bottleneck_dim}) must be a multiple of "
                f"phm_dim ({self.phm_dim}): each PHM layer splits it into phm_dim blocks."
            )
        if self.targets is not None:
            self._tuple("targets")
            if self.targets in ((), ""):
                raise ConfigError("CompacterConfig.targets is empty; use None (placement by preset).")
            if self.preset == "parallel":
                raise ConfigError(
                    "CompacterConfig: explicit targets place serial adapters; use "
                    "preset='houlsby' or 'pfeiffer' with targets, or targets=None."
                )
        self._tuple("train_modules")
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        self._set("layers", check_layers(type(self).__name__, self.layers))

    def size(self, hidden: int) -> int:
        """The bottleneck width d for a hidden size."""
        return self.bottleneck_dim or max(1, hidden // self.reduction_factor)
