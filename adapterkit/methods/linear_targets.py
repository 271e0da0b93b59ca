"""Targets of the methods that wrap linear layers only (VeRA, OFT, BOFT): resolved, checked, and
written to / read from PEFT's ``target_modules`` / ``exclude_modules`` / ``layers_to_transform``.

"all-linear" (and a regex with ``layers``) is written as the full names of the modules picked, as
PEFT writes them; suffix lists and regexes stay as given.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .. import bases
from ..errors import UnsupportedModuleError
from ..targets import resolve
from ..anatomy import base_module

KINDS = ("linear", "conv1d", "quant")


def picked(model: nn.Module, config, method: str, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """The modules ``config`` targets; UnsupportedModuleError for one of another kind."""
    names = resolve(model, config.targets, config.exclude, config.layers, config.train_modules, check_kinds=False)
    for name in names:
        base = base_module(model, name)
        if bases.base_kind(base) not in kinds:
            allowed = {"linear": "nn.Linear", "conv1d": "transformers Conv1D", "quant": "quantized linear"}
            raise UnsupportedModuleError(
                f"{method} adapts {' / '.join(allowed[k] for k in kinds)} layers; {name!r} is a "
                f"{type(base).__name__}. Exclude it or change targets."
            )
    return names


def targets_to_file(config, model: nn.Module, names: list[str]) -> dict[str, Any]:
    """PEFT's target_modules, exclude_modules, layers_to_transform, layers_pattern, fan_in_fan_out."""
    targets: Any = config.targets
    layers = list(config.layers) if config.layers is not None else None
    if targets == "all-linear" or (isinstance(targets, str) and layers is not None):
        targets, layers = sorted(names), None
    else:
        targets = targets if isinstance(targets, str) else list(targets)
    exclude = config.exclude if isinstance(config.exclude, str) else (list(config.exclude) or None)
    conv1d = any(bases.base_kind(base_module(model, n)) == "conv1d" for n in names)
    return {
        "target_modules": targets,
        "exclude_modules": exclude,
        "layers_to_transform": layers,
        "layers_pattern": None,
        "fan_in_fan_out": conv1d,
    }


def targets_from_file(data: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields targets / exclude / layers from a PEFT config dict (absent keys left out)."""
    fields: dict[str, Any] = {}
    for field, key in (
        ("targets", "target_modules"),
        ("exclude", "exclude_modules"),
        ("layers", "layers_to_transform"),
    ):
        value = data.get(key)
        if value is not None and value != []:
            fields[field] = value
    return fields
