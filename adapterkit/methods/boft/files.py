"""BOFT on disk: PEFT's ``BOFTConfig`` keys and tensor names (``peft_type: "BOFT"``).

=================  =======================  ==========================================
adapterkit         PEFT key                 notes
=================  =======================  ==========================================
block_size         boft_block_size
block_num          boft_block_num
butterfly_factor   boft_n_butterfly_factor  PEFT without its CUDA extension trains 1
                                            factor whatever this says: the tensors'
                                            first axis is what counts (read from them)
dropout            boft_dropout
targets / exclude  target_modules /         "all-linear" is written as the picked
/ layers           exclude_modules /        modules' full names
                   layers_to_transform
init               init_weights             identity: true, random: false
=================  =======================  ==========================================

Tensors: ``base_model.model.<module>.boft_R`` (m, D, b, b) and ``....boft_s`` (out, 1).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from ..linear_targets import picked, targets_from_file, targets_to_file
from .config import BOFTConfig

KEYS = {
    "block_size": "boft_block_size",
    "block_num": "boft_block_num",
    "butterfly_factor": "boft_n_butterfly_factor",
    "dropout": "boft_dropout",
}
_UNSUPPORTED = {"bias": "none"}


def config_to_file(config: BOFTConfig, model: nn.Module) -> dict[str, Any]:
    from . import KINDS

    names = picked(model, config, "BOFT", KINDS)
    return {
        **{key: getattr(config, field) for field, key in KEYS.items()},
        **targets_to_file(config, model, names),
        "init_weights": config.init == "identity",
        "bias": "none",
    }


def config_from_file(data: Mapping[str, Any]) -> BOFTConfig:
    for key, default in _UNSUPPORTED.items():
        if data.get(key, default) not in (default, None):
            raise ConfigError(
                f"{key}={data[key]!r} is not supported by adapterkit's BOFT (supported: "
                f"{default!r}); re-save the adapter without it, or load it with PEFT."
            )
    fields = targets_from_file(data)
    fields.update({field: data[key] for field, key in KEYS.items() if data.get(key) is not None})
    fields.setdefault("block_num", 0)
    if data.get("init_weights") is False:
        fields["init"] = "random"
    try:
        return BOFTConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json (BOFT): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    prefix = PEFT_PREFIX + module_name
    return {f"{prefix}.boft_R": adapter.boft_R, f"{prefix}.boft_s": adapter.boft_s}


def sizes_from_file(config: BOFTConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """boft_R (m, D, b, b): the file's factor count m must be the config's."""
    problems = []
    for key, shape in shapes.items():
        if key.endswith(".boft_R") and len(shape) == 4 and shape[0] != config.butterfly_factor:
            problems.append(
                f"{key!r} holds {shape[0]} butterfly factor(s) but boft_n_butterfly_factor is "
                f"{config.butterfly_factor} (PEFT without its CUDA extension trains 1 factor whatever the config "
                f"says: set boft_n_butterfly_factor to {shape[0]} in adapter_config.json)"
            )
    return problems


FILES = FileFormat(
    peft_type="BOFT",
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
)
