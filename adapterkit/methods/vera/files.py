"""VeRA on disk: PEFT's ``VeraConfig`` keys and tensor names (``peft_type: "VERA"``).

=====================  =====================  ==========================================
adapterkit             PEFT key               notes
=====================  =====================  ==========================================
rank                   r
targets / exclude /    target_modules /       "all-linear" is written as the picked
layers                 exclude_modules /      modules' full names (linear_targets.py)
                       layers_to_transform
projection_prng_key    projection_prng_key
save_projection        save_projection
dropout                vera_dropout
d_initial              d_initial
init                   init_weights           zero: true, random: false
(derived)              fan_in_fan_out         true when a base is a transformers Conv1D
=====================  =====================  ==========================================

Tensors: ``base_model.model.<module>.vera_lambda_b`` (out,) and ``....vera_lambda_d`` (rank,) per
layer; with ``save_projection`` the shared ``base_model.vera_A`` (rank, in_max) and
``base_model.vera_B`` (out_max, rank) once (PEFT's keys: no ``.model``, no adapter name). Without
them the projections are drawn again from ``projection_prng_key`` on load, as PEFT does.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from ..linear_targets import picked, targets_from_file, targets_to_file
from .config import VeRAConfig

PROJECTION_A, PROJECTION_B = "base_model.vera_A", "base_model.vera_B"
_UNSUPPORTED = {"bias": "none"}  # PEFT keys whose other values change the math, with their default


def config_to_file(config: VeRAConfig, model: nn.Module) -> dict[str, Any]:
    names = picked(model, config, "VeRA")
    return {
        "r": config.rank,
        **targets_to_file(config, model, names),
        "projection_prng_key": config.projection_prng_key,
        "save_projection": config.save_projection,
        "vera_dropout": config.dropout,
        "d_initial": config.d_initial,
        "init_weights": config.init == "zero",
        "bias": "none",
    }


def config_from_file(data: Mapping[str, Any]) -> VeRAConfig:
    for key, default in _UNSUPPORTED.items():
        if data.get(key, default) not in (default, None):
            raise ConfigError(
                f"{key}={data[key]!r} is not supported by adapterkit's VeRA (supported: "
                f"{default!r}); re-save the adapter without it, or load it with PEFT."
            )
    fields = targets_from_file(data)
    for field, key in (
        ("rank", "r"),
        ("projection_prng_key", "projection_prng_key"),
        ("save_projection", "save_projection"),
        ("dropout", "vera_dropout"),
        ("d_initial", "d_initial"),
    ):
        if data.get(key) is not None:
            fields[field] = data[key]
    if data.get("init_weights") is False:
        fields["init"] = "random"
    try:
        return VeRAConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json (VERA): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    prefix = PEFT_PREFIX + module_name
    out = {f"{prefix}.vera_lambda_b": adapter.vera_lambda_b, f"{prefix}.vera_lambda_d": adapter.vera_lambda_d}
    if adapter.config.save_projection:  # every layer names the one shared pair: written once
        out[PROJECTION_A] = adapter.projections.vera_A
        out[PROJECTION_B] = adapter.projections.vera_B
    return out


def sizes_from_file(config: VeRAConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """lambda_d (rank,), A (rank, in), B (out, rank): the file's rank must be the config's."""
    problems = []
    for key, shape in shapes.items():
        axis = {"vera_lambda_d": 0, "vera_A": 0, "vera_B": 1}.get(key.rsplit(".", 1)[-1])
        if axis is not None and len(shape) > axis and shape[axis] != config.rank:
            problems.append(
                f"{key!r} has shape {tuple(shape)}, rank {shape[axis]}, but the config says r={config.rank}"
            )
    return problems


FILES = FileFormat(
    peft_type="VERA",
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
)
