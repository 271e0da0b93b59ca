"""A model's shape, read from its config: the sizes the memory formulas use, and (from a model
built on the ``meta`` device: every module, no storage) its exact parameters and which modules an
adapter config targets.

Families the activation formulas know (others are refused with the list):
- ``decoder``: Llama-style causal LMs (llama, mistral, qwen2, qwen3): RMSNorm, rotary positions,
  attention with grouped KV heads, gated MLP down(act(gate(x)) * up(x));
- ``encoder``: BERT-style (bert, roberta, xlm-roberta): post-LayerNorm, GELU MLP, dropout,
  used for classification.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Optional

from ..errors import ConfigError

DECODERS = ("llama", "mistral", "qwen2", "qwen3")
ENCODERS = ("bert", "roberta", "xlm-roberta")
QK_NORM = ("qwen3",)

# the last part(s) of a module name -> its role in a block
ROLES = {
    "decoder": {
        "q_proj": "q",
        "k_proj": "k",
        "v_proj": "v",
        "o_proj": "o",
        "gate_proj": "gate",
        "up_proj": "up",
        "down_proj": "down",
    },
    "encoder": {
        "self.query": "q",
        "self.key": "k",
        "self.value": "v",
        "attention.output.dense": "o",
        "intermediate.dense": "up",
        "output.dense": "down",
    },
}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Sizes of a transformer: d (hidden), I (intermediate), L (layers), H / KV heads, head dim, V."""

    model_type: str
    family: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qk_norm: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    config: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def _need(config: dict, key: str, model_type: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"the {model_type} config has no positive integer {key!r} (got {value!r}); plan needs it to size the model."
        )
    return value


def check_family(config: dict) -> str:
    """The config's model_type if plan can size it; else ConfigError naming the families it reads."""
    mt = str(config.get("model_type", ""))
    if mt not in DECODERS + ENCODERS:
        raise ConfigError(
            f"plan reads Llama-style decoders ({', '.join(DECODERS)}) and BERT-style encoders "
            f"({', '.join(ENCODERS)}); this config is model_type {mt!r}, which it cannot size."
        )
    return mt


def model_shape(config: dict) -> ModelShape:
    """The ModelShape of a full transformers config dict; ConfigError for a family it cannot read."""
    mt = check_family(config)
    family = "decoder" if mt in DECODERS else "encoder"
    d = _need(config, "hidden_size", mt)
    heads = _need(config, "num_attention_heads", mt)
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    return ModelShape(
        model_type=mt,
        family=family,
        hidden=d,
        intermediate=_need(config, "intermediate_size", mt),
        layers=_need(config, "num_hidden_layers", mt),
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        vocab=_need(config, "vocab_size", mt),
        qk_norm=mt in QK_NORM,
        hidden_dropout=float(config.get("hidden_dropout_prob") or 0.0),
        attention_dropout=float(config.get("attention_probs_dropout_prob") or config.get("attention_dropout") or 0.0),
        config=dict(config),
    )


def role_of(name: str, family: str) -> Optional[str]:
    for suffix, role in ROLES[family].items():
        if name == suffix or name.endswith("." + suffix):
            return role
    return None


@lru_cache(maxsize=8)
def _meta_model_cached(config_json: str, task: str):
    import json

    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**json.loads(config_json))
    auto = (
        transformers.AutoModelForSequenceClassification
        if task == "classification"
        else transformers.AutoModelForCausalLM
    )
    with torch.device("meta"):
        return auto.from_config(config)


def meta_model(shape: ModelShape, task: str):
    """The model built on the meta device (shapes only): cached, never modified."""
    import json

    config = {k: v for k, v in shape.config.items() if k != "transformers_version"}
    try:
        return _meta_model_cached(json.dumps(config, sort_keys=True, default=str), task)
    except ValueError as err:
        raise ConfigError(
            f"transformers cannot build a {task} model from this {shape.model_type} config: {err}"
        ) from None


def encoder_config_check(shape: ModelShape, task: str) -> None:
    if shape.family == "encoder" and task != "classification":
        raise ConfigError(
            f"{shape.model_type} is an encoder: plan sizes it for task 'classification' "
            f"(set model.task=classification); got task {task!r}."
        )
    if shape.family == "decoder" and task not in ("causal-lm", "classification"):
        raise ConfigError(f"plan sizes decoders for tasks causal-lm and classification; got {task!r}.")


def describe(shape: ModelShape, params: Optional[int] = None) -> str:
    size = f"{params / 1e9:.2f}B parameters, " if params else ""
    return (
        f"{shape.model_type} ({size}{shape.layers} layers, hidden {shape.hidden}, intermediate "
        f"{shape.intermediate}, {shape.heads} heads / {shape.kv_heads} KV, vocab {shape.vocab})"
    )


def config_value(shape: ModelShape, key: str, default: Any = None) -> Any:
    return shape.config.get(key, default)
