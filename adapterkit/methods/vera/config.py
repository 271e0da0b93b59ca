"""VeRAConfig: vector-based random matrix adaptation (Kopiczko et al. 2024, "VeRA: Vector-based
Random Matrix Adaptation", arXiv:2310.11454).

One pair of frozen random matrices A (rank, in_max) and B (out_max, rank) is shared by every adapted
layer (each takes its top-left slice); a layer learns only two vectors:
``y = W x + lambda_b * (B (lambda_d * (A drop(x))))``, lambda_d (rank,), lambda_b (out,).
A and B are drawn from ``projection_prng_key`` exactly as PEFT draws them, so files interoperate.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

INITS = ("zero", "random")


@dataclasses.dataclass(frozen=True)
class VeRAConfig(AdapterConfig):
    """VeRA: frozen shared random projections, trained scaling vectors.

    Args:
        rank: rows of the shared A / columns of B (PEFT's ``r``, default 256: far fewer trained
            values than LoRA at the same rank, so ranks are higher).
        targets: ``"all-linear"``, module-name suffixes, or a regex (Linear, Conv1D, quantized).
        exclude: modules never to adapt (suffixes or regex).
        layers: indices of the transformer blocks to adapt (None: all).
        projection_prng_key: seed of the generator that draws A and B (PEFT's Kaiming-uniform draw).
        save_projection: write A and B into the adapter file (True: exact on any machine; False:
            they are drawn again from the key on load).
        dropout: dropout on the branch's input, in [0, 1) (PEFT's ``vera_dropout``).
        d_initial: starting value of every lambda_d entry (> 0; small values are recommended).
        init: ``"zero"`` (lambda_b = 0: the model starts unchanged) or ``"random"`` (lambda_b = 1,
            lambda_d normal, as PEFT's ``init_weights=False``; for tests).
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "vera"

    rank: int = 256
    targets: Union[str, tuple[str, ...]] = "all-linear"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    projection_prng_key: int = 0
    save_projection: bool = True
    dropout: float = 0.0
    d_initial: float = 0.1
    init: str = "zero"
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        self._positive("rank", integer=True)
        key = self.projection_prng_key
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 2**63:
            raise ConfigError(f"{name}.projection_prng_key must be an integer in [0, 2**63); got {key!r}.")
        if not isinstance(self.save_projection, bool):
            raise ConfigError(f"{name}.save_projection must be true or false; got {self.save_projection!r}.")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"{name}.dropout must be a number in [0, 1); got {d!r}.")
        self._positive("d_initial")
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
