"""LycorisConfig: the fields LoHa and LoKr share (PEFT's ``LycorisConfig`` and its subclasses).

Both add ``scale * dW`` to a frozen weight, ``scale = alpha / rank``. Regularisation as PEFT does it:
``rank_dropout`` zeroes whole output rows of dW in training (the kept rows rescaled by the mean kept
fraction, as PEFT does for LoHa; LoKr only with ``rank_dropout_scale``), ``module_dropout`` skips the
whole adapter for a training forward with that probability.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LycorisConfig(AdapterConfig):
    """Fields of LoHa and LoKr.

    Args:
        rank: rank r of the low-rank factors (> 0).
        alpha: numerator of the scale (> 0): scale = alpha / rank.
        rank_dropout: probability of dropping an output row of dW in training, in [0, 1).
        module_dropout: probability of skipping the adapter in a training forward, in [0, 1).
        targets: ``"all-linear"`` (every Linear / Conv1D / quantized linear layer except the output
            head), a list of module-name suffixes, or a regular expression matched against the full
            module name. Linear, quantized linear, GPT-2's Conv1D and Conv2d (groups=1) bases.
        exclude: modules never to adapt, in the same forms as ``targets`` (no "all-linear").
        layers: indices of the transformer blocks to adapt (None: all of them).
        use_effective_conv2d: on a Conv2d with a kernel larger than 1x1, factor the kernel with a
            small core tensor (FedPara's Proposition 3, PEFT's option of the same name).
        init: how the factors start (each method lists its choices; the default keeps the model
            unchanged at start, ``"random"`` changes it at once, for tests).
        train_modules: whole modules (name suffixes) trained and saved with the adapter.
    """

    INITS: ClassVar[tuple[str, ...]] = ("kaiming", "random")

    rank: int = 8
    alpha: float = 8.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    targets: Union[str, tuple[str, ...]] = "all-linear"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    use_effective_conv2d: bool = False
    init: str = "kaiming"
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        self._positive("rank", integer=True)
        self._positive("alpha")
        for field in ("rank_dropout", "module_dropout"):
            p = getattr(self, field)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ConfigError(f"{name}.{field} must be a number in [0, 1); got {p!r}.")
        for field in ("targets", "exclude", "train_modules"):
            self._tuple(field)
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        if self.targets in ((), ""):
            raise ConfigError(f"{name}.targets is empty; give 'all-linear', suffixes or a regex.")
        if self.exclude == "all-linear":
            raise ConfigError(f"{name}.exclude cannot be 'all-linear'.")
        self._set("layers", check_layers(name, self.layers))
        self._flag("use_effective_conv2d")
        self._choice("init", self.INITS)

    def _flag(self, field: str) -> None:
        if not isinstance(getattr(self, field), bool):
            raise ConfigError(f"{type(self).__name__}.{field} must be true or false; got {getattr(self, field)!r}.")

    @property
    def scale(self) -> float:
        """The factor on dW: alpha / rank."""
        return self.alpha / self.rank
