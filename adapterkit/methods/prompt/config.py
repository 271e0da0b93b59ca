"""Configs of the virtual-token methods: prompt tuning, prefix tuning and P-tuning.

- Prompt tuning (Lester et al. 2021, arXiv:2104.08691): n trained embeddings P (n, D) are put in
  front of the token embeddings: the model reads [P; E(x)].
- P-tuning (Liu et al. 2021, arXiv:2103.10385): the same, with P = encoder(E_v), an MLP or a
  bidirectional LSTM over trained virtual-token embeddings E_v (n, D).
- Prefix tuning (Li & Liang 2021, arXiv:2101.00190): every attention layer l attends to trained
  keys and values K_l, V_l (n, heads, head_dim) in front of the sequence's own, given to the model
  as its key/value cache; optionally reparameterised by an MLP, [K; V] = MLP(E_v).
Attention masks (and labels, for prompt tuning and P-tuning) are extended for the n virtual tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ...config import AdapterConfig
from ...errors import ConfigError

PROMPT_INITS = ("random", "vocab", "text")
ENCODERS = ("mlp", "lstm")


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig(AdapterConfig):
    """Prompt tuning: trained virtual-token embeddings in front of the input.

    Args:
        num_virtual_tokens: n, the number of virtual tokens.
        init: ``"random"`` (normal), ``"vocab"`` (embeddings of n random vocabulary tokens) or
            ``"text"`` (embeddings of the tokens of ``init_text``, repeated or cut to n).
        init_text: the text for ``init="text"``.
        tokenizer: a tokenizer name or local path (for ``init="text"``), read with AutoTokenizer.
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "prompt_tuning"

    num_virtual_tokens: int = 20
    init: str = "random"
    init_text: Optional[str] = None
    tokenizer: Optional[str] = None
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        _train_modules(self)
        self._positive("num_virtual_tokens", integer=True)
        self._choice("init", PROMPT_INITS)
        for name in ("init_text", "tokenizer"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"PromptTuningConfig.{name} must be a string or None; got {getattr(self, name)!r}.")
        if self.init == "text" and (not self.init_text or not self.tokenizer):
            raise ConfigError(
                "PromptTuningConfig(init='text') needs init_text (a non-empty string) and tokenizer "
                f"(a name or local path); got init_text={self.init_text!r}, tokenizer={self.tokenizer!r}."
            )


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig(AdapterConfig):
    """P-tuning: virtual-token embeddings passed through a trained encoder.

    Args:
        num_virtual_tokens: n, the number of virtual tokens.
        encoder: ``"mlp"`` (Linear-ReLU-Linear-ReLU-Linear) or ``"lstm"`` (a bidirectional LSTM,
            then Linear-ReLU-Linear), PEFT's ``encoder_reparameterization_type``.
        encoder_hidden_size: the encoder's width (None: the model's embedding size).
        encoder_num_layers: LSTM layers (the MLP always has three linear layers).
        encoder_dropout: dropout between LSTM layers.
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "p_tuning"

    num_virtual_tokens: int = 20
    encoder: str = "mlp"
    encoder_hidden_size: Optional[int] = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        _train_modules(self)
        self._positive("num_virtual_tokens", integer=True)
        self._choice("encoder", ENCODERS)
        if self.encoder_hidden_size is not None:
            self._positive("encoder_hidden_size", integer=True)
        self._positive("encoder_num_layers", integer=True)
        d = self.encoder_dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"PromptEncoderConfig.encoder_dropout must be a number in [0, 1); got {d!r}.")


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(AdapterConfig):
    """Prefix tuning: trained keys and values in front of every attention layer's own.

    The prefix reaches the layers through the model's key/value cache, so it cannot be combined
    with transformers' gradient checkpointing (which drops the cache); use prompt tuning there.

    Args:
        num_virtual_tokens: n, the prefix length.
        projection: reparameterise the prefix by an MLP (Linear-Tanh-Linear) over n trained
            embeddings, as in the paper; files keep only its output, as PEFT's do.
        encoder_hidden_size: the MLP's width (None: the model's key/value size).
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "prefix_tuning"

    num_virtual_tokens: int = 20
    projection: bool = False
    encoder_hidden_size: Optional[int] = None
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        _train_modules(self)
        self._positive("num_virtual_tokens", integer=True)
        if not isinstance(self.projection, bool):
            raise ConfigError(f"PrefixTuningConfig.projection must be true or false; got {self.projection!r}.")
        if self.encoder_hidden_size is not None:
            self._positive("encoder_hidden_size", integer=True)


def _train_modules(config: AdapterConfig) -> None:
    config._tuple("train_modules")
    if isinstance(config.train_modules, str):
        config._set("train_modules", (config.train_modules,))
