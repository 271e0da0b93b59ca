"""Prompt tuning, P-tuning and prefix tuning: virtual tokens fed through a model-level hook."""

from __future__ import annotations

import math

import torch

from ...errors import TargetError, UnsupportedModuleError
from ...anatomy import input_embedding
from ...registry import Method, register
from . import hook
from .config import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from .files import P_TUNING_FILES, PREFIX_FILES, PROMPT_FILES
from .encoders import Geometry, PrefixEncoder, PromptEncoder, PromptTable
from .layers import PrefixLayer, PromptLayer, PTuningLayer, VirtualTokenLayer


def embedding_name(model) -> str:
    """The name of the model's input embedding module (seen through adapter layers)."""
    embeddings = input_embedding(model)
    if embeddings is None:
        raise UnsupportedModuleError(
            f"virtual tokens go in front of the input embeddings, but {type(model).__name__} has no "
            "get_input_embeddings(); use a Hugging Face model, or another method."
        )
    while hasattr(embeddings, "innermost"):
        embeddings = embeddings.innermost()
    for name, module in model.named_modules():
        if module is embeddings or (hasattr(module, "innermost") and module.innermost() is embeddings):
            return name
    raise TargetError(f"the input embeddings of {type(model).__name__} are not among its modules.")


def geometry(model) -> Geometry:
    """Layers, key/value heads and head size from the model's config (as PEFT reads them)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()

    def first(*keys):
        return next((getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None), None)

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head", "num_heads")
    if None in (layers, hidden, heads):
        raise UnsupportedModuleError(
            f"prefix tuning reads the number of layers, hidden size and attention heads from the model's "
            f"config; {type(model).__name__} has none that says so (layers={layers}, hidden={hidden}, "
            f"heads={heads}). Use prompt tuning, or a Hugging Face model."
        )
    kv_heads = first("num_key_value_heads") or heads
    head_dim = first("head_dim") or hidden // heads
    return Geometry(layers=layers, heads=kv_heads, head_dim=head_dim)


def _where(model, config) -> dict:
    """{input embedding's name: the model's attention geometry for prefix tuning, else None}."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise UnsupportedModuleError(
            f"{type(model).__name__} is an encoder-decoder model; adapterkit feeds virtual tokens to "
            "decoder-only and encoder-only models. Use LoRA, IA3 or bottleneck adapters here."
        )
    name = embedding_name(model)
    placement = geometry(model) if isinstance(config, PrefixTuningConfig) else None
    hook.install(model)
    return {name: placement}


def _text_token_ids(config: PromptTuningConfig) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(config.tokenizer)(config.init_text)["input_ids"]
    n = config.num_virtual_tokens
    return (ids * math.ceil(n / len(ids)))[:n]


def _build_prompt(base, config: PromptTuningConfig, placement: None) -> PromptTable:
    ids = None
    if config.init == "vocab":
        ids = torch.randint(0, base.num_embeddings, (config.num_virtual_tokens,))
    elif config.init == "text":
        ids = _text_token_ids(config)
    return PromptTable(config, base, ids)


def _build_p_tuning(base, config: PromptEncoderConfig, placement: None) -> PromptEncoder:
    return PromptEncoder(config, base.weight.shape[1], base.weight)


def _build_prefix(base, config: PrefixTuningConfig, geometry) -> PrefixEncoder:
    return PrefixEncoder(config, geometry, base.weight)


register(Method(config=PromptTuningConfig, layer=PromptLayer, where=_where, build=_build_prompt, files=PROMPT_FILES))
register(
    Method(config=PromptEncoderConfig, layer=PTuningLayer, where=_where, build=_build_p_tuning, files=P_TUNING_FILES)
)
register(Method(config=PrefixTuningConfig, layer=PrefixLayer, where=_where, build=_build_prefix, files=PREFIX_FILES))

__all__ = [
    "PromptTuningConfig",
    "PromptEncoderConfig",
    "PrefixTuningConfig",
    "PromptTable",
    "PromptEncoder",
    "PrefixEncoder",
    "PromptLayer",
    "PTuningLayer",
    "PrefixLayer",
    "VirtualTokenLayer",
    "geometry",
]
