"""LoRAConfig: what a LoRA adapter is and where it goes.

LoRA (Hu et al. 2021, arXiv:2106.09685) adds ``scale * B @ A`` to a frozen weight W, with A of
shape (rank, in) and B of shape (out, rank). ``scale = alpha / rank``, or ``alpha / sqrt(rank)``
with rsLoRA (Kalajdzievic 2023, arXiv:2312.03732). DoRA (Liu et al. 2024, arXiv:2402.09353)
re-learns each output row's magnitude: W' = m * (W + scale B A) / ||W + scale B A||_row.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError
from .patterns import check_pattern, scale_of
from .replicate import check_map
from .tokens import check_token_indices

INITS = ("kaiming", "gaussian", "random", "pissa", "pissa_niter_K", "olora", "loftq", "eva")
BIASES = ("none", "all", "lora_only")


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
            ``exclude`` and ``layers`` apply to module targets only; ``rank_pattern`` /
            ``alpha_pattern`` to both (``module.parameter`` names, as PEFT matches them).
        rank_pattern: per-module ranks, ``{pattern: rank}``; a pattern is a regex matched against a
            dotted suffix of the module's full name, first match wins (PEFT's rule: patterns.py).
        alpha_pattern: per-module alphas, in the same form.
        bias: which base biases train with the adapter (and are saved with it): ``"none"``,
            ``"all"`` (every bias of the model) or ``"lora_only"`` (the adapted layers' biases).
            They train in place, as in PEFT: ``ak.disabled`` and ``ak.detach`` keep their values.
        lora_bias: give B a trainable bias (zero at start): y = W x + scale (B A x + b_B).
        trainable_token_indices: only these rows of the input embedding train (PEFT's trainable
            tokens): a list of token ids for the input embedding, or ``{module suffix: ids}``.
        loftq_iter: alternating steps of LoftQ (``init="loftq"``, 4-bit NF4 base).
        layer_replication: ``[[start, end), ...]`` block ranges: the model's blocks are replaced by
            weight-sharing copies of these, each copy adapted on its own (replicate.py).
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
    rank_pattern: tuple = ()
    alpha_pattern: tuple = ()
    bias: str = "none"
    lora_bias: bool = False
    trainable_token_indices: Optional[tuple] = None
    loftq_iter: int = 1
    layer_replication: Optional[tuple] = None

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
        if self.targets in ((), "") and not self.target_parameters:
            raise ConfigError(
                f"{name}.targets is empty; give 'all-linear', suffixes or a regex (or target_parameters)."
            )
        if self.exclude == "all-linear":
            raise ConfigError(f"{name}.exclude cannot be 'all-linear'.")
        self._set("layers", check_layers(name, self.layers))
        for flag in ("rslora", "dora"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{name}.{flag} must be true or false; got {getattr(self, flag)!r}.")
        self._check_init()
        self._set("rank_pattern", check_pattern(name, "rank_pattern", self.rank_pattern, integer=True))
        self._set("alpha_pattern", check_pattern(name, "alpha_pattern", self.alpha_pattern, integer=False))
        self._choice("bias", BIASES)
        if not isinstance(self.lora_bias, bool):
            raise ConfigError(f"{name}.lora_bias must be true or false; got {self.lora_bias!r}.")
        if self.lora_bias and (self.dora or self.init not in ("kaiming", "gaussian", "random")):
            raise ConfigError(
                f"{name}.lora_bias works with plain LoRA and the kaiming / gaussian / random "
                f"inits (as in PEFT); got dora={self.dora}, init={self.init!r}."
            )
        self._set("trainable_token_indices", check_token_indices(name, self.trainable_token_indices))
        self._positive("loftq_iter", integer=True)
        self._set("layer_replication", check_map(name, self.layer_replication))

    def _check_init(self) -> None:
        init = self.init
        if isinstance(init, str) and init.startswith("pissa_niter_"):
            k = init[len("pissa_niter_") :]
            if k.isdigit() and int(k) > 0:
                return
            raise ConfigError(
                f"LoRAConfig.init {init!r}: pissa_niter_K needs a positive whole K "
                f"(subspace iterations of the fast SVD), e.g. 'pissa_niter_4'."
            )
        self._choice("init", tuple(i for i in INITS if i != "pissa_niter_K"))

    def _target_parameters(self) -> None:
        name, value = type(self).__name__, self.target_parameters
        value = (value,) if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(
                f"{name}.target_parameters must be a list of parameter names (suffixes such "
                f"as 'experts.gate_up_proj'); got {self.target_parameters!r}."
            )
        self._set("target_parameters", tuple(value))
        if value and self.dropout:
            raise ConfigError(
                f"{name}: target_parameters need dropout=0 (got {self.dropout!r}): the update is "
                "folded into the weight, so there is no separate input to drop (PEFT refuses it too)."
            )
        if value and self.dora:
            raise ConfigError(
                f"{name}: target_parameters do not work with dora=True (nor in PEFT); "
                "use plain LoRA there, or DoRA on Linear targets in a separate adapter."
            )

    def parameter_rank_and_scale(self, key: str) -> tuple[int, float]:
        """(rank, scale) of target parameter ``key`` (``module.parameter``): rank_pattern /
        alpha_pattern's first match at the end of ``key`` (PEFT's rule: patterns.py), else rank / alpha."""
        from .patterns import rank_alpha, scale_of

        rank, alpha = rank_alpha(self, key)
        return rank, scale_of(rank, alpha, self.rslora)

    @property
    def scale(self) -> float:
        """The factor on B @ A: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        return scale_of(self.rank, self.alpha, self.rslora)
