"""Bottleneck adapters on disk. PEFT has no such method, so the config carries a ``peft_type``
of adapterkit's own, ``"ADAPTERKIT_BOTTLENECK"``; PEFT cannot load these files.

adapter_config.json: ``peft_type`` plus BottleneckConfig's own fields under their own names
(``preset``, ``reduction_factor``, ``bottleneck_dim``, ``activation``, ``scale``, ``targets``,
``layers``, ``init``); ``train_modules`` is written as PEFT's ``modules_to_save``.

adapter_model.safetensors, per adapted module ``M``:
``base_model.model.M.adapter_down.weight`` (d, hidden), ``....adapter_down.bias`` (d,),
``....adapter_up.weight`` (hidden, d), ``....adapter_up.bias`` (hidden,). For a parallel adapter
``M`` is the feed-forward output projection; its input projection holds no tensors.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...config import check_known
from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from .config import BottleneckConfig

PEFT_TYPE = "ADAPTERKIT_BOTTLENECK"
_FIELDS = ("preset", "reduction_factor", "bottleneck_dim", "activation", "scale", "targets", "layers", "init")


def config_to_file(config: BottleneckConfig, model: nn.Module) -> dict[str, Any]:
    data = config.to_dict()
    return {key: data[key] for key in _FIELDS}


def config_from_file(data: Mapping[str, Any]) -> BottleneckConfig:
    fields = {key: data[key] for key in _FIELDS if key in data}
    check_known(BottleneckConfig, fields, "adapter_config.json")
    try:
        return BottleneckConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json ({PEFT_TYPE}): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    if not hasattr(adapter, "down"):  # a parallel adapter's input tap
        return {}
    prefix = f"{PEFT_PREFIX}{module_name}"
    return {
        f"{prefix}.adapter_down.weight": adapter.down.weight,
        f"{prefix}.adapter_down.bias": adapter.down.bias,
        f"{prefix}.adapter_up.weight": adapter.up.weight,
        f"{prefix}.adapter_up.bias": adapter.up.bias,
    }


def sizes_from_file(config: BottleneckConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """adapter_down (d, hidden): d must be the config's bottleneck size for that hidden size."""
    problems = []
    for key, shape in shapes.items():
        if key.endswith(".adapter_down.weight") and len(shape) == 2 and shape[0] != config.size(shape[1]):
            problems.append(
                f"{key!r} has shape {tuple(shape)}, a bottleneck of {shape[0]}, but the config "
                f"gives {config.size(shape[1])} for hidden size {shape[1]}"
            )
    return problems


FILES = FileFormat(
    peft_type=PEFT_TYPE,
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
)
