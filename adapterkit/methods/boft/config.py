"""BOFTConfig: orthogonal butterfly fine-tuning (Liu et al. 2024, "Parameter-Efficient Orthogonal
Finetuning via Butterfly Factorization", arXiv:2311.06243).

The input of a frozen linear layer is rotated by a product of m butterfly factors, each a permuted
block-diagonal of Cayley rotations, and the output rows are rescaled:
``y = s * (W (B^T x)) + b``, B = P_m D_m P_m^T ... P_1 D_1 P_1^T, s (out,). With m = 1 it is OFT
with exact Cayley blocks plus the scale s.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

INITS = ("identity", "random")
MAX_FACTORS = 16  # 2^15 blocks per group: beyond any layer's input size


@dataclasses.dataclass(frozen=True)
class BOFTConfig(AdapterConfig):
    """Butterfly orthogonal fine-tuning (PEFT 0.21's BOFT).

    Args:
        block_size: size b of each rotation block (PEFT's ``boft_block_size``, default 4); 0 to size
            blocks by ``block_num``. Exactly one of the two is non-zero; it must divide each layer's
            input size.
        block_num: blocks per factor (PEFT's ``boft_block_num``); 0 to use ``block_size``.
        butterfly_factor: number m of butterfly factors (PEFT's ``boft_n_butterfly_factor``, 1 to 16).
            PEFT without its CUDA extension uses 1 whatever is asked; adapterkit uses what is asked.
        dropout: multiplicative dropout: in training, a share of the blocks of one factor is
            replaced by the identity (PEFT's ``boft_dropout``), in [0, 1).
        targets: ``"all-linear"``, module-name suffixes, or a regex (nn.Linear or quantized linear).
        exclude: modules never to adapt.  layers: indices of the transformer blocks to adapt.
        init: ``"identity"`` (R = 0, s = 1: the model starts unchanged) or ``"random"``.
        train_modules: whole modules trained and saved with the adapter.
    """

    method = "boft"

    block_size: int = 4
    block_num: int = 0
    butterfly_factor: int = 1
    dropout: float = 0.0
    targets: Union[str, tuple[str, ...]] = "all-linear"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    init: str = "identity"
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        for field in ("block_size", "block_num"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}.{field} must be a non-negative integer; got {value!r}.")
        if (self.block_size == 0) == (self.block_num == 0):
            raise ConfigError(
                f"{name}: give exactly one of block_size ({self.block_size}) and block_num ({self.block_num}) as "
                "non-zero (block_size x block_num = the layer's input size); e.g. BOFTConfig(block_size=4)."
            )
        self._positive("butterfly_factor", integer=True)
        if self.butterfly_factor > MAX_FACTORS:
            raise ConfigError(
                f"{name}.butterfly_factor must be at most {MAX_FACTORS} (factor k pairs blocks "
                f"2^(k-1) apart); got {self.butterfly_factor}."
            )
        if self.butterfly_factor > 1 and (self.block_size or self.block_num) % 2:
            raise ConfigError(
                f"{name}: with butterfly_factor > 1, block_size / block_num must be even; "
                f"got {self.block_size or self.block_num}."
            )
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"{name}.dropout must be a number in [0, 1); got {d!r}.")
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
