"""LoReFT adapters on disk. PEFT has no such method: the config's ``peft_type`` is adapterkit's
own, ``"ADAPTERKIT_LOREFT"``; PEFT cannot load these files.

adapter_config.json: ``peft_type`` plus LoReFTConfig's fields (``rank``, ``layers``,
``positions``, ``tied_weights``, ``dropout``).

adapter_model.safetensors, per edited block ``M`` (e.g. ``model.layers.3``) and intervention
``part`` (``first``, ``last``, or ``both`` when tied), P = ``base_model.model.``:
``P M.loreft.<part>.rotation`` R (rank, hidden), orthonormal rows;
``P M.loreft.<part>.source.weight`` W (rank, hidden); ``P M.loreft.<part>.source.bias`` b (rank,).
R is stored as the matrix itself; loading sets it through the orthogonal parametrization's inverse,
which gives back R to within float rounding (~1e-7), and W, b exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ...config import check_known, field_names
from ...errors import AdapterFileError, ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from .config import LoReFTConfig

PEFT_TYPE = "ADAPTERKIT_LOREFT"
_FIELDS = field_names(LoReFTConfig)


def config_to_file(config: LoReFTConfig, model: nn.Module) -> dict[str, Any]:
    data = config.to_dict()
    return {key: data[key] for key in _FIELDS}


def config_from_file(data: Mapping[str, Any]) -> LoReFTConfig:
    fields = {key: data[key] for key in _FIELDS if key in data}
    check_known(LoReFTConfig, fields, "adapter_config.json")
    try:
        return LoReFTConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json ({PEFT_TYPE}): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    out = {}
    for part, unit in adapter.parts.items():
        key = f"{PEFT_PREFIX}{module_name}.loreft.{part}"
        out.update(
            {
                f"{key}.rotation": unit.rotation.weight,
                f"{key}.source.weight": unit.source.weight,
                f"{key}.source.bias": unit.source.bias,
            }
        )
    return out


def state_from_file(module_name: str, adapter: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    for part, unit in adapter.parts.items():
        key = f"{PEFT_PREFIX}{module_name}.loreft.{part}"
        R = tensors[f"{key}.rotation"].to(unit.source.weight)
        gram = R @ R.T
        if not torch.allclose(gram, torch.eye(len(R), dtype=R.dtype, device=R.device), atol=1e-4):
            raise AdapterFileError(
                f"{key + '.rotation'!r} does not have orthonormal rows (R R^T differs from I "
                f"by {(gram - torch.eye(len(R), dtype=R.dtype, device=R.device)).abs().max():.2g})."
            )
        with torch.no_grad():
            unit.rotation.weight = R
            unit.source.weight.copy_(tensors[f"{key}.source.weight"])
            unit.source.bias.copy_(tensors[f"{key}.source.bias"])


def sizes_from_file(config: LoReFTConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """Every rotation and source has the config's rank as its first dimension."""
    return [
        f"{key!r} has shape {tuple(shape)}; the config's rank is {config.rank}"
        for key, shape in shapes.items()
        if ".loreft." in key and not key.endswith(".bias") and (len(shape) != 2 or shape[0] != config.rank)
    ]


FILES = FileFormat(
    peft_type=PEFT_TYPE,
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    state_from_file=state_from_file,
    sizes_from_file=sizes_from_file,
)
