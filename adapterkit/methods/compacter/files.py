"""Compacter adapters on disk. PEFT has no such method: the config's ``peft_type`` is adapterkit's
own, ``"ADAPTERKIT_COMPACTER"``; PEFT cannot load these files.

adapter_config.json: ``peft_type`` plus CompacterConfig's fields under their own names;
``train_modules`` is written as PEFT's ``modules_to_save``.

adapter_model.safetensors, per adapted module ``M`` (P = ``base_model.model.``, n = phm_dim):
``P M.compacter_down.W_left`` (n, hidden/n, rank), ``....W_right`` (n, rank, d/n) (or ``....W``
(n, hidden/n, d/n) when not ``factorized_phm_W``), ``....b`` (d,); the same under
``compacter_up`` with hidden and d swapped. The rules A: ``P phm_rule`` (n, n, n) once for the
whole adapter when ``shared_phm_rule``, else ``P M.compacter_down.phm_rule`` and
``P M.compacter_up.phm_rule``; factorised rules are ``phm_rule_left`` (n, n, 1) and
``phm_rule_right`` (n, 1, n) (AdapterHub's names).
A parallel adapter's input projection holds no tensors.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...config import check_known, field_names
from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from .config import CompacterConfig

PEFT_TYPE = "ADAPTERKIT_COMPACTER"
_FIELDS = tuple(f for f in field_names(CompacterConfig) if f != "train_modules")


def config_to_file(config: CompacterConfig, model: nn.Module) -> dict[str, Any]:
    data = config.to_dict()
    return {key: data[key] for key in _FIELDS}


def config_from_file(data: Mapping[str, Any]) -> CompacterConfig:
    fields = {key: data[key] for key in _FIELDS if key in data}
    check_known(CompacterConfig, fields, "adapter_config.json")
    try:
        return CompacterConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json ({PEFT_TYPE}): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    if not hasattr(adapter, "down"):  # a parallel adapter's input tap
        return {}
    prefix, out = f"{PEFT_PREFIX}{module_name}", {}
    for side in ("down", "up"):
        phm = getattr(adapter, side)
        out.update({f"{prefix}.compacter_{side}.{key}": t for key, t in phm.named_parameters(recurse=False)})
        rules = PEFT_PREFIX[:-1] if adapter.config.shared_phm_rule else f"{prefix}.compacter_{side}"
        out.update({f"{rules}.{key}": t for key, t in phm.phm_rules().named_parameters()})
    return out


def sizes_from_file(config: CompacterConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """Every PHM weight's first dimension is phm_dim, a factorised one's rank is phm_rank, and a
    down projection's bottleneck is the config's size for its hidden size."""
    n, problems = config.phm_dim, []
    for key, shape in shapes.items():
        if key.rsplit(".", 1)[-1].startswith("phm_rule"):
            if len(shape) != 3 or shape[0] != n:
                problems.append(f"{key!r} has shape {tuple(shape)}; the config's phm_dim is {n}")
            continue
        if len(shape) != 3:
            continue
        rank = shape[2] if key.endswith(".W_left") else shape[1] if key.endswith(".W_right") else None
        if shape[0] != n or (rank is not None and rank != config.phm_rank):
            problems.append(
                f"{key!r} has shape {tuple(shape)}; the config gives phm_dim {n}, phm_rank {config.phm_rank}"
            )
        elif ".compacter_down." in key and key.endswith((".W_right", ".W")):
            left = shapes.get(key[: key.rindex(".")] + ".W_left", shape)
            hidden, d = n * left[1], n * shape[2]
            if d != config.size(hidden):
                problems.append(
                    f"{key!r} gives a bottleneck of {d} for hidden size {hidden}, but the "
                    f"config gives {config.size(hidden)}"
                )
    return problems


FILES = FileFormat(
    peft_type=PEFT_TYPE,
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
)
