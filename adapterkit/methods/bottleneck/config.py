"""BottleneckConfig: bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al.
2021, arXiv:2005.00247; parallel: He et al. 2022, arXiv:2110.04366).

An adapter is ``A(h) = W_up f(W_down h + b_down) + b_up`` with W_down (d, hidden), W_up (hidden, d).
- ``houlsby``:  serial, after each attention output projection and after each feed-forward block:
  ``y = o + A(o)`` with ``o`` the projection's output (before the residual add / LayerNorm);
- ``pfeiffer``: serial, after each feed-forward block only;
- ``parallel``: beside each feed-forward block: ``y = FFN(x) + scale * A(x)``, x the block's input.
W_up and b_up start at zero, so the adapted model equals the base at the start.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

PRESETS = ("houlsby", "pfeiffer", "parallel")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
INITS = ("zeros", "random")


@dataclasses.dataclass(frozen=True)
class BottleneckConfig(AdapterConfig):
    """Bottleneck adapters (down-projection, non-linearity, up-projection, residual).

    Args:
        preset: ``"houlsby"``, ``"pfeiffer"`` or ``"parallel"`` (see the module docstring).
        reduction_factor: bottleneck size d = hidden // reduction_factor (ignored when
            ``bottleneck_dim`` is set).
        bottleneck_dim: bottleneck size d, overriding ``reduction_factor``.
        activation: ``"relu"``, ``"gelu"``, ``"silu"`` or ``"tanh"``.
        scale: factor on a parallel adapter's output (He et al. use 4); serial adapters use 1.
        targets: None (placement by preset) or module-name suffixes / a regex: serial adapters
            after exactly those modules.
        layers: indices of the transformer blocks to adapt (None: all).
        init: ``"zeros"`` (W_up = 0: identity at start) or ``"random"`` (for tests).
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "bottleneck"

    preset: str = "pfeiffer"
    reduction_factor: int = 16
    bottleneck_dim: Optional[int] = None
    activation: str = "relu"
    scale: float = 1.0
    targets: Optional[Union[str, tuple[str, ...]]] = None
    layers: Optional[tuple[int, ...]] = None
    init: str = "zeros"
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        self._choice("preset", PRESETS)
        self._positive("reduction_factor", integer=True)
        if self.bottleneck_dim is not None:
            self._positive("bottleneck_dim", integer=True)
        self._choice("activation", ACTIVATIONS)
        self._positive("scale")
        if self.targets is not None:
            self._tuple("targets")
            if self.targets in ((), ""):
                raise ConfigError("BottleneckConfig.targets is empty; use None (placement by preset).")
            if self.preset == "parallel":
                raise ConfigError(
                    "BottleneckConfig: explicit targets place serial adapters; use "
                    "preset='houlsby' or 'pfeiffer' with targets, or targets=None."
                )
        self._tuple("train_modules")
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        self._set("layers", check_layers(type(self).__name__, self.layers))
        self._choice("init", INITS)

    def size(self, hidden: int) -> int:
        """The bottleneck width d for a hidden size."""
        return self.bottleneck_dim or max(1, hidden // self.reduction_factor)
