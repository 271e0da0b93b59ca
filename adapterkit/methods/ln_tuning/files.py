"""LN tuning on disk: PEFT's ``LNTuningConfig`` keys and tensor names (``peft_type: "LN_TUNING"``).

=================  =================  ==============================================
adapterkit         PEFT key           notes
=================  =================  ==============================================
targets            target_modules     "auto" is written as the full names of the
                                      norms picked
exclude            exclude_modules    null when empty
=================  =================  ==============================================

Tensors: the copy's own, ``base_model.model.<module>.ln_tuning_layers.weight`` (dim,) and, for a
norm with a bias, ``....ln_tuning_layers.bias`` (the adapter name is left out, as PEFT does).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from .config import LNTuningConfig


def config_to_file(config: LNTuningConfig, model: nn.Module) -> dict[str, Any]:
    from . import placement

    targets: Any = config.targets
    targets = (
        sorted(placement(model, config))
        if targets == "auto"
        else (targets if isinstance(targets, str) else list(targets))
    )
    exclude = config.exclude if isinstance(config.exclude, str) else (list(config.exclude) or None)
    return {"target_modules": targets, "exclude_modules": exclude}


def config_from_file(data: Mapping[str, Any]) -> LNTuningConfig:
    fields: dict[str, Any] = {}
    for field, key in (("targets", "target_modules"), ("exclude", "exclude_modules")):
        if data.get(key):
            fields[field] = data[key]
    try:
        return LNTuningConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json (LN_TUNING): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    prefix = f"{PEFT_PREFIX}{module_name}.ln_tuning_layers."
    return {prefix + k: t for k, t in adapter.norm.state_dict(keep_vars=True).items()}


FILES = FileFormat(
    peft_type="LN_TUNING", config_to_file=config_to_file, config_from_file=config_from_file, state_to_file=state_to_file
)
