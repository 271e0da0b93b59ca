"""Prompt tuning, P-tuning and prefix tuning on disk, in PEFT's layout.

One tensor, ``prompt_embeddings``: what the model is fed, as PEFT saves it.
- prompt tuning (``peft_type: "PROMPT_TUNING"``): P (n, D);
- P-tuning (``"P_TUNING"``): the encoder's output P = encoder(E_v) (n, D), not the encoder;
- prefix tuning (``"PREFIX_TUNING"``): the flattened keys/values (n, layers * 2 * kv_dim), after
  the reparameterisation MLP when there is one.
Loading such a file gives an adapter that holds that tensor directly (PEFT's inference form):
it computes the same outputs, and training it further trains the tensor itself.

Config keys: ``num_virtual_tokens``; prompt tuning ``prompt_tuning_init`` (RANDOM | SAMPLE_VOCAB |
TEXT), ``prompt_tuning_init_text``, ``tokenizer_name_or_path``; P-tuning
``encoder_reparameterization_type`` (MLP | LSTM), ``encoder_hidden_size``, ``encoder_num_layers``,
``encoder_dropout``; prefix tuning ``prefix_projection``, ``encoder_hidden_size``. ``token_dim``,
``num_layers`` and ``num_attention_heads`` are left null (PEFT reads them from the model);
``num_transformer_submodules`` is 1 (decoder-only and encoder-only models). A ``train_modules``
copy of module ``M`` is saved as ``base_model.M.<key>``, as PEFT's prompt-learning models do.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import FileFormat
from .config import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

KEY = "prompt_embeddings"
_INIT = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}
_COMMON = {"token_dim": None, "num_layers": None, "num_attention_heads": None, "num_transformer_submodules": 1}


def _check_common(data: Mapping[str, Any]) -> dict[str, Any]:
    if (data.get("num_transformer_submodules") or 1) != 1:
        raise ConfigError(
            f"num_transformer_submodules={data['num_transformer_submodules']} (an encoder-decoder prompt) is not "
            "supported; adapterkit feeds virtual tokens to decoder-only and encoder-only models."
        )
    return {"num_virtual_tokens": data["num_virtual_tokens"]} if "num_virtual_tokens" in data else {}


def _prompt_to_file(config: PromptTuningConfig, model: nn.Module) -> dict[str, Any]:
    return {
        **_COMMON,
        "num_virtual_tokens": config.num_virtual_tokens,
        "prompt_tuning_init": _INIT[config.init],
        "prompt_tuning_init_text": config.init_text,
        "tokenizer_name_or_path": config.tokenizer,
    }


def _prompt_from_file(data: Mapping[str, Any]) -> PromptTuningConfig:
    fields = _check_common(data)
    # the saved tensor replaces the start values, so a text init is read as random (no tokenizer needed)
    init = "vocab" if str(data.get("prompt_tuning_init", "")).upper() == "SAMPLE_VOCAB" else "random"
    fields.update(
        init=init, init_text=data.get("prompt_tuning_init_text"), tokenizer=data.get("tokenizer_name_or_path")
    )
    return PromptTuningConfig(**fields)


def _p_tuning_to_file(config: PromptEncoderConfig, model: nn.Module) -> dict[str, Any]:
    hidden = config.encoder_hidden_size or model.get_input_embeddings().weight.shape[1]
    return {
        **_COMMON,
        "num_virtual_tokens": config.num_virtual_tokens,
        "encoder_reparameterization_type": config.encoder.upper(),
        "encoder_hidden_size": hidden,
        "encoder_num_layers": config.encoder_num_layers,
        "encoder_dropout": config.encoder_dropout,
    }


def _p_tuning_from_file(data: Mapping[str, Any]) -> PromptEncoderConfig:
    fields = _check_common(data)
    kind = str(data.get("encoder_reparameterization_type", "MLP")).lower()
    fields.update(
        encoder=kind,
        encoder_hidden_size=data.get("encoder_hidden_size"),
        encoder_num_layers=data.get("encoder_num_layers") or 2,
        encoder_dropout=data.get("encoder_dropout") or 0.0,
    )
    return PromptEncoderConfig(**fields)


def _prefix_to_file(config: PrefixTuningConfig, model: nn.Module) -> dict[str, Any]:
    from . import geometry

    hidden = config.encoder_hidden_size or geometry(model).kv_dim
    return {
        **_COMMON,
        "num_virtual_tokens": config.num_virtual_tokens,
        "prefix_projection": config.projection,
        "encoder_hidden_size": hidden,
    }


def _prefix_from_file(data: Mapping[str, Any]) -> PrefixTuningConfig:
    fields = _check_common(data)
    fields.update(
        projection=bool(data.get("prefix_projection", False)), encoder_hidden_size=data.get("encoder_hidden_size")
    )
    return PrefixTuningConfig(**fields)


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    return {KEY: adapter.saved()}


@torch.no_grad()
def state_from_file(module_name: str, adapter: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    adapter.load_saved(tensors[KEY])


def _format(peft_type: str, to_file, from_file) -> FileFormat:
    return FileFormat(
        peft_type=peft_type,
        config_to_file=to_file,
        config_from_file=from_file,
        state_to_file=state_to_file,
        state_from_file=state_from_file,
        trained_prefix="base_model.",
        sizes_from_file=_sizes_from_file,
    )


def _sizes_from_file(config, shapes) -> list[str]:
    """``prompt_embeddings`` (n, ...): n must be the config's num_virtual_tokens."""
    shape = shapes.get("prompt_embeddings")
    if shape and shape[0] != config.num_virtual_tokens:
        return [
            f"'prompt_embeddings' has {shape[0]} rows, but the config says "
            f"num_virtual_tokens={config.num_virtual_tokens}"
        ]
    return []


PROMPT_FILES = _format("PROMPT_TUNING", _prompt_to_file, _prompt_from_file)
P_TUNING_FILES = _format("P_TUNING", _p_tuning_to_file, _p_tuning_from_file)
PREFIX_FILES = _format("PREFIX_TUNING", _prefix_to_file, _prefix_from_file)
