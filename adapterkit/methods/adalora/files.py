"""AdaLoRA on disk: PEFT's ``AdaLoraConfig`` keys and tensor names (``peft_type: "ADALORA"``).

=================  ======================  ==========================================
adapterkit         PEFT key                notes
=================  ======================  ==========================================
init_r, target_r,  same names
tinit, tfinal,
deltaT, beta1,
beta2, total_step,
orth_reg_weight
alpha              lora_alpha              > 0 (PEFT's 0 means "the layer's rank": refused)
dropout            lora_dropout
targets            target_modules          "all-linear" is written as the picked modules' names
exclude            exclude_modules
layers             layers_to_transform     with "all-linear" or a regex: the picked names
rank_pattern       rank_pattern            keys ``<module>.lora_E``, init_r booleans each
init               init_lora_weights       default: true, random: false
(derived)          fan_in_fan_out          true when a base is a transformers Conv1D
=================  ======================  ==========================================

Tensors, per adapted module M: ``base_model.model.M.lora_A`` (r, in), ``....lora_E`` (r, 1),
``....lora_B`` (out, r), without ``.weight`` (PEFT keeps them in ParameterDicts). With a rank
pattern, r is the number of kept triplets of M (0 allowed) and the rows of A and E and the columns
of B are the kept ones, as PEFT's ``resize_state_dict_by_rank_pattern`` writes them; a layer built
from such a file holds only those (its scale stays alpha / init_r, PEFT's ``ranknum``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ... import bases
from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from ...targets import resolve
from .config import AdaLoRAConfig
from ...anatomy import base_module

SAME = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step")
KEYS = {
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "targets": "target_modules",
    "exclude": "exclude_modules",
    "layers": "layers_to_transform",
}
PARTS = ("lora_A", "lora_E", "lora_B")
# PEFT keys whose non-default values change what the adapter computes, with that default
_UNSUPPORTED = {
    "use_dora": False,
    "use_rslora": False,
    "bias": "none",
    "lora_bias": False,
    "alpha_pattern": {},
    "layer_replication": None,
    "target_parameters": None,
}


def config_to_file(config: AdaLoRAConfig, model: nn.Module) -> dict[str, Any]:
    picked = resolve(model, config.targets, config.exclude, config.layers, config.train_modules)
    targets: Any = config.targets
    layers = list(config.layers) if config.layers is not None else None
    if targets == "all-linear" or (isinstance(targets, str) and layers is not None):
        targets, layers = sorted(picked), None
    else:
        targets = targets if isinstance(targets, str) else list(targets)
    exclude = config.exclude if isinstance(config.exclude, str) else (list(config.exclude) or None)
    conv1d = any(bases.base_kind(base_module(model, n)) == "conv1d" for n in picked)
    pattern = (
        None
        if config.rank_pattern is None
        else {f"{module}.lora_E": list(kept) for module, kept in config.rank_pattern}
    )
    return {
        **{key: getattr(config, key) for key in SAME},
        "r": 8,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "exclude_modules": exclude,
        "layers_to_transform": layers,
        "layers_pattern": None,
        "init_lora_weights": config.init == "default",
        "fan_in_fan_out": conv1d,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": pattern,
        "alpha_pattern": {},
    }


def config_from_file(data: Mapping[str, Any]) -> AdaLoRAConfig:
    for key, default in _UNSUPPORTED.items():
        value = data.get(key, default)
        if value not in (default, None) and not (isinstance(default, dict) and not value):
            raise ConfigError(
                f"{key}={value!r} is not supported by adapterkit's AdaLoRA (supported: "
                f"{default!r}); re-save the adapter without it, or load it with PEFT."
            )
    fields: dict[str, Any] = {key: data[key] for key in SAME if data.get(key) is not None}
    fields.update({field: data[key] for field, key in KEYS.items() if data.get(key) is not None})
    if isinstance(fields.get("targets"), list) and not fields["targets"]:
        fields.pop("targets")
    if data.get("init_lora_weights") is False:
        fields["init"] = "random"
    if data.get("rank_pattern"):
        fields["rank_pattern"] = {_module(key): kept for key, kept in dict(data["rank_pattern"]).items()}
    try:
        return AdaLoRAConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json (ADALORA): {err}") from None


def _module(key: str) -> str:
    """'model.layers.0.q_proj.lora_E' (or '....lora_E.default') -> 'model.layers.0.q_proj'."""
    return re.sub(r"\.lora_E(\.[^.]+)?$", "", str(key))


def _kept(adapter: nn.Module, module: str):
    """The kept triplets as a bool tensor when ``adapter`` holds all init_r of them and the pattern
    drops some (its tensors are then sliced for the file); else None."""
    kept = adapter.config.kept(module)
    if kept is None or all(kept) or adapter.a.shape[0] != len(kept):
        return None
    return torch.tensor(kept, device=adapter.a.device)


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    prefix = PEFT_PREFIX + module_name
    kept = _kept(adapter, module_name)
    if kept is None:
        return {f"{prefix}.lora_A": adapter.a, f"{prefix}.lora_E": adapter.e, f"{prefix}.lora_B": adapter.b}
    return {
        f"{prefix}.lora_A": adapter.a[kept],
        f"{prefix}.lora_E": adapter.e[kept],
        f"{prefix}.lora_B": adapter.b[:, kept],
    }


@torch.no_grad()
def state_from_file(module_name: str, adapter: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    prefix = PEFT_PREFIX + module_name
    a, e, b = (tensors[f"{prefix}.{part}"] for part in PARTS)
    kept = _kept(adapter, module_name)
    if kept is None:
        adapter.a.copy_(a), adapter.e.copy_(e), adapter.b.copy_(b)
        return
    adapter.e.zero_()
    adapter.a[kept], adapter.e[kept] = a.to(adapter.a), e.to(adapter.e)
    adapter.b[:, kept] = b.to(adapter.b)


def sizes_from_file(config: AdaLoRAConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """Each layer's r in the file must be the config's: init_r, or its rank pattern's kept count."""
    problems = []
    for key, shape in shapes.items():
        if not key.startswith(PEFT_PREFIX) or "." not in key:
            continue
        module, part = key[len(PEFT_PREFIX) :].rsplit(".", 1)
        axis = {"lora_A": 0, "lora_E": 0, "lora_B": 1}.get(part)
        if axis is not None and len(shape) > axis and shape[axis] != config.rank(module):
            problems.append(
                f"{key!r} has shape {tuple(shape)}, rank {shape[axis]}, but the config says "
                f"{config.rank(module)} for {module!r} (init_r and rank_pattern)"
            )
    return problems


FILES = FileFormat(
    peft_type="ADALORA",
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    state_from_file=state_from_file,
    sizes_from_file=sizes_from_file,
)
