"""IA3 on disk: PEFT's ``IA3Config`` keys and tensor names (``peft_type: "IA3"``).

=================  =====================  =============================================
adapterkit         PEFT key               notes
=================  =====================  =============================================
targets            target_modules         "auto" and ``layers`` are written as the full
                                          names of the modules picked (exact in PEFT);
                                          a regex stays a string
feedforward        feedforward_modules    likewise
exclude            exclude_modules        null when empty
init               init_ia3_weights       ones: true, random: false
(derived)          fan_in_fan_out         true when a base is a transformers Conv1D
=================  =====================  =============================================

Tensors: ``base_model.model.<module>.ia3_l``, (out, 1) for output scaling, (1, in) for input
(feed-forward) scaling.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ... import bases
from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from .config import IA3Config
from ...anatomy import base_module


def config_to_file(config: IA3Config, model: nn.Module) -> dict[str, Any]:
    from . import placement

    placed = placement(model, config)
    names = [n for n, _ in placed]
    targets: Any = config.targets
    feedforward: Any = config.feedforward
    if not (isinstance(targets, str) and targets != "auto" and config.layers is None):
        targets = names
    if not (isinstance(feedforward, str) and feedforward != "auto" and config.layers is None):
        feedforward = [n for n, ff in placed if ff]
    exclude = config.exclude if isinstance(config.exclude, str) else (list(config.exclude) or None)
    conv1d = any(bases.base_kind(base_module(model, n)) == "conv1d" for n in names)
    return {
        "target_modules": targets,
        "feedforward_modules": feedforward,
        "exclude_modules": exclude,
        "init_ia3_weights": config.init == "ones",
        "fan_in_fan_out": conv1d,
    }


def config_from_file(data: Mapping[str, Any]) -> IA3Config:
    fields: dict[str, Any] = {}
    for field, key in (("targets", "target_modules"), ("exclude", "exclude_modules")):
        if data.get(key):
            fields[field] = data[key]
    fields["feedforward"] = data.get("feedforward_modules") or ()
    if data.get("init_ia3_weights") is False:
        fields["init"] = "random"
    try:
        return IA3Config(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json (IA3): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    return {f"{PEFT_PREFIX}{module_name}.ia3_l": adapter.ia3_l}


FILES = FileFormat(
    peft_type="IA3", config_to_file=config_to_file, config_from_file=config_from_file, state_to_file=state_to_file
)
