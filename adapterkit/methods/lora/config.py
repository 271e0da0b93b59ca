"""LoRAConfig: what a LoRA adapter is and where it goes.

LoRA (Hu et al. 2021, arXiv:2106.09685) adds ``scale * B @ A`` to a frozen weight W, with A of
shape (rank, in) and B of shape (out, rank). ``scale = alpha / rank``, or ``alpha / sqrt(rank)``
with rsLoRA (Kalajdzievic 2023, arXiv:2312.03732). DoRA (Liu et al. 2024, arXiv:2402.09353)
re-learns each output row's magnitude: W' = m * (W + scale B A) / ||W + scale B A||_row.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Union

from ...config import AdapterConfig
from ...errors import ConfigError

INITS = ("kaiming", "gaussian", "random")


@dataclasses.dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
    """Low-rank adaptation.

    Args:
        rank: rank r of the update B @ A (> 0).
        alpha: numerator of the scale (> 0): scale = alpha / rank (alpha / sqrt(rank) with rslora).
        dropout: dropout probability on the input of the low-rank branch, in [0, 1).
        targets: ``"all-linear"`` (every Linear / Conv1D except the output head), a list of
            module-name suffixes (``["q_proj", "v_proj"]``), or a regular expression matched
            against the full module name.
        exclude: modules never to adapt, in the same forms as ``targets`` (no "all-linear").
        layers: indices of the transformer blocks to adapt (None: all of them).
        rslora: use scale = alpha / sqrt(rank).
        dora: weight-decomposed LoRA (Linear and Conv1D bases).
        init: ``"kaiming"`` (A Kaiming-uniform, B zero: the model starts unchanged),
            ``"gaussian"`` (A normal with std 1/rank, B zero), or ``"random"`` (both random:
            the model changes at once; for tests).
        train_modules: whole modules (name suffixes) trained and saved with the adapter, e.g. a
            new classification head ``["classifier"]``.
        target_parameters: parameters (name suffixes, ``"experts.gate_up_proj"``) that get LoRA
            themselves, per expert for a 3-D fused mixture-of-experts weight (PEFT's
            ``target_parameters``: ``params.py``). Needs dropout 0 and no DoRA; with it,
            ``targets`` may be empty (``()``) to adapt only these parameters. As in PEFT,
            ``exclude`` and ``layers`` apply to module targets only.
        parameter_ranks: ``{pattern: rank}`` for target_parameters whose ``module.parameter`` name
            ends with a match of the regular expression (PEFT's ``rank_pattern``, which PEFT's
            "all-linear" writes for Mixtral's fused ``gate_up_proj``: ``{".*\\.gate_up_proj": 2r}``).
        parameter_alphas: ``{pattern: alpha}`` the same way (PEFT's ``alpha_pattern``).
    """

    method = "lora"

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Union[str, tuple[str, ...]] = "all-linear"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    rslora: bool = False
    dora: bool = False
    init: str = "kaiming"
    train_modules: tuple[str, ...] = ()
    target_parameters: tuple[str, ...] = ()
    parameter_ranks: tuple[tuple[str, int], ...] = ()
    parameter_alphas: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        self._positive("rank", integer=True)
        self._positive("alpha")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"{name}.dropout must be a number in [0, 1); got {d!r}.")
        self._tuple("targets")
        self._tuple("exclude")
        self._tuple("train_modules")
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        self._target_parameters()
        self._patterns("parameter_ranks", integer=True)
        self._patterns("parameter_alphas", integer=False)
        if self.targets in ((), "") and not self.target_parameters:
            raise ConfigError(f"{name}.targets is empty; give 'all-linear', suffixes or a regex "
                              "(or target_parameters).")
        if self.exclude == "all-linear":
            raise ConfigError(f"{name}.exclude cannot be 'all-linear'.")
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, int) else self.layers
            if not isinstance(layers, (list, tuple, range)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers
            ):
                raise ConfigError(
                    f"{name}.layers must be block indices (non-negative ints); got {self.layers!r}."
                )
            self._set("layers", tuple(layers))
        for flag in ("rslora", "dora"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{name}.{flag} must be true or false; got {getattr(self, flag)!r}.")
        self._choice("init", INITS)

    def _target_parameters(self) -> None:
        name, value = type(self).__name__, self.target_parameters
        value = (value,) if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{name}.target_parameters must be a list of parameter names (suffixes such "
                              f"as 'experts.gate_up_proj'); got {self.target_parameters!r}.")
        self._set("target_parameters", tuple(value))
        if value and self.dropout:
            raise ConfigError(f"{name}: target_parameters need dropout=0 (got {self.dropout!r}): the update is "
                              "folded into the weight, so there is no separate input to drop (PEFT refuses it too).")
        if value and self.dora:
            raise ConfigError(f"{name}: target_parameters do not work with dora=True (nor in PEFT); "
                              "use plain LoRA there, or DoRA on Linear targets in a separate adapter.")

    def _patterns(self, field: str, integer: bool) -> None:
        name, value = type(self).__name__, getattr(self, field)
        pairs = list(value.items()) if isinstance(value, dict) else value
        what = "a positive integer" if integer else "a positive number"
        try:
            pairs = tuple((p, v) for p, v in pairs)
            ok = all(isinstance(p, str) and not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
                     and v > 0 for p, v in pairs)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{name}.{field} maps regular expressions to {what} each ({{'.*\\.gate_up_proj': 16}}); "
                              f"got {value!r}.")
        for pattern, _ in pairs:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"{name}.{field}: {pattern!r} is not a valid regular expression ({err}).") from None
        if pairs and not self.target_parameters:
            raise ConfigError(f"{name}.{field} applies to target_parameters, and there are none.")
        self._set(field, pairs)

    def parameter_rank_and_scale(self, key: str) -> tuple[int, float]:
        """(rank, scale) of target parameter ``key`` (``module.parameter``): the first pattern of
        parameter_ranks / parameter_alphas matching the end of ``key`` (PEFT's rule), else rank / alpha."""
        def pick(pairs, default):
            return next((v for p, v in pairs if re.match(rf"(.*\.)?({p})$", key)), default)

        rank, alpha = pick(self.parameter_ranks, self.rank), pick(self.parameter_alphas, self.alpha)
        return rank, alpha / (math.sqrt(rank) if self.rslora else rank)

    @property
    def scale(self) -> float:
        """The factor on B @ A: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)
