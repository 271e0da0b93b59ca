"""OFTConfig: orthogonal fine-tuning (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by
Orthogonal Finetuning", arXiv:2306.07280; Cayley-Neumann: Qiu et al. 2025, arXiv:2506.19847).

The input of a frozen linear layer is rotated block by block: ``y = W (R x) + b``, R block-diagonal,
each block (b, b) orthogonal, the Cayley transform of a skew-symmetric Q: R = (I + Q)(I - Q)^-1,
or its Neumann series I + 2Q + 2Q^2 + ... (PEFT's default). Q = 0 at the start: R = I.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

INITS = ("identity", "random")
MAX_TERMS = 100  # a bound, so that a damaged file cannot make every forward loop for ever


@dataclasses.dataclass(frozen=True)
class OFTConfig(AdapterConfig):
    """Orthogonal fine-tuning with block-diagonal rotations (PEFT 0.21's OFT).

    Args:
        rank: number of blocks per layer (PEFT's ``r``); 0 to size blocks by ``block_size``.
        block_size: size b of each block (PEFT's ``oft_block_size``, default 32); 0 to size blocks
            by ``rank``. Exactly one of the two is non-zero; a layer whose input size it does not
            divide takes the nearest size that does (with a warning, as PEFT).
        targets: ``"all-linear"``, module-name suffixes, or a regex (nn.Linear or quantized linear).
        exclude: modules never to adapt.  layers: indices of the transformer blocks to adapt.
        coft: constrained OFT: each block's Q is kept within ``eps`` of zero.
        eps: COFT's radius (> 0).
        block_share: one rotation block shared by all blocks of a layer.
        module_dropout: PEFT's multiplicative block dropout probability, in [0, 1); PEFT 0.21's
            linear OFT stores it without applying it, and so does adapterkit (files agree).
        use_cayley_neumann: the Neumann series instead of the exact inverse.
        num_cayley_neumann_terms: terms of that series (1 to 100).
        init: ``"identity"`` (Q = 0: the model starts unchanged) or ``"random"`` (Q normal, std 0.1).
        train_modules: whole modules trained and saved with the adapter.
    """

    method = "oft"

    rank: int = 0
    block_size: int = 32
    targets: Union[str, tuple[str, ...]] = "all-linear"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    module_dropout: float = 0.0
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5
    init: str = "identity"
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        for field in ("rank", "block_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}.{field} must be a non-negative integer; got {value!r}.")
        if (self.rank == 0) == (self.block_size == 0):
            raise ConfigError(
                f"{name}: give exactly one of rank ({self.rank}) and block_size ({self.block_size}) as non-zero "
                "(rank x block_size = the layer's input size); e.g. OFTConfig(block_size=32) or "
                "OFTConfig(rank=8, block_size=0)."
            )
        for flag in ("coft", "block_share", "use_cayley_neumann"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{name}.{flag} must be true or false; got {getattr(self, flag)!r}.")
        self._positive("eps")
        self._positive("num_cayley_neumann_terms", integer=True)
        if self.num_cayley_neumann_terms > MAX_TERMS:
            raise ConfigError(
                f"{name}.num_cayley_neumann_terms must be at most {MAX_TERMS} (each term is a "
                f"matrix product per block per step); got {self.num_cayley_neumann_terms}."
            )
        d = self.module_dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"{name}.module_dropout must be a number in [0, 1); got {d!r}.")
        for field in ("targets", "exclude", "train_modules"):
            self._tuple(field)
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        if self.targets in ((), ""):
            raise ConfigError(f"{name}.targets is empty; give 'all-linear', module-name suffixes or a regex.")
        if self.exclude == "all-linear":
            raise ConfigError(f"{name}.exclude cannot be 'all-linear'.")
        self._set("layers", check_layers(name, self.layers))
        self._choice("init", INITS)
