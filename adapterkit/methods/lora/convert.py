"""``save_as_lora``: a PiSSA / OLoRA adapter written as a plain LoRA for the original base model.

PiSSA and OLoRA train against a residual base W_res = W - s B_0 A_0 (init.py). After training,
W_res + s B A = W + s (B A - B_0 A_0) = W + s' B' A' with

    A' = [A; A_0] (2r, in),   B' = [B, -B_0] (out, 2r),   s' = s  (alpha' = 2 alpha: alpha' / 2r = alpha / r)

so the adapter applies to the unmodified W, like any LoRA. This is PEFT's
``save_pretrained(..., path_initial_model_for_weight_conversion=...)`` (``LoraModel.subtract_mutated_init``):
the same tensors and config (``r`` and ``lora_alpha`` doubled, ``rank_pattern`` / ``alpha_pattern``
values doubled, ``init_lora_weights: true``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ...errors import AdapterFileError, ConfigError


def save_as_lora(model: nn.Module, path: Union[str, Path], name: str = "default", overwrite: bool = False) -> Path:
    """Write PiSSA / OLoRA adapter ``name`` to ``path`` as a rank-2r LoRA of the original base; returns ``path``."""
    from safetensors.torch import save_file

    from ...inject import adapter_config, adapter_layers
    from ...io.atomic import staged
    from ...io.read import CONFIG_NAME, WEIGHTS_NAME
    from ...io.save import adapter_json
    from ...io.state import state_to_save
    from ...registry import PEFT_PREFIX
    from ...io.state import logical_name

    config = adapter_config(model, name)
    init = getattr(config, "init", "")
    if not (init.startswith("pissa") or init == "olora") or config.dora:
        raise ConfigError(
            f"save_as_lora converts PiSSA / OLoRA adapters (without DoRA); {name!r} has "
            f"init={init!r}{', dora=True' if getattr(config, 'dora', False) else ''}. Use ak.save_adapter."
        )
    if config.rslora and (config.rank_pattern or config.alpha_pattern):
        raise ConfigError(
            "save_as_lora: rsLoRA with rank_pattern / alpha_pattern has no doubled alpha that keeps "
            "every module's scale (PEFT refuses it too)."
        )
    path = Path(path)
    if (path / WEIGHTS_NAME).exists() and not overwrite:
        raise AdapterFileError(
            f"{str(path)!r} already holds {WEIGHTS_NAME}; pass overwrite=True or pick another folder."
        )
    data = adapter_json(model, name)
    data.update(
        init_lora_weights=True,
        r=2 * config.rank,
        lora_alpha=config.alpha * (math.sqrt(2) if config.rslora else 2),
        rank_pattern={k: 2 * v for k, v in config.rank_pattern},
        alpha_pattern={k: 2 * v for k, v in config.alpha_pattern},
    )
    tensors = state_to_save(model, name)
    for layer_name, layer in adapter_layers(model):
        lora = layer.adapters[name] if name in layer.adapters else None
        if lora is None or not hasattr(lora, "a_start"):
            continue
        prefix = PEFT_PREFIX + logical_name(model, layer_name)
        a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
        tensors[f"{prefix}.lora_A.weight"] = torch.cat([a, lora.a_start.detach().cpu().to(a.dtype)], 0).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = torch.cat([b, -lora.b_start.detach().cpu().to(b.dtype)], 1).contiguous()
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    with staged() as stage:
        stage(path / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        stage(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return path
