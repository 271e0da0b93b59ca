"""LoHa and LoKr on disk: PEFT's ``LoHaConfig`` / ``LoKrConfig`` keys (``methods/loha/files.py``,
``methods/lokr/files.py`` add their tensor names).

=====================  =====================  ==========================================
adapterkit             PEFT key               notes
=====================  =====================  ==========================================
rank                   r
alpha                  alpha
rank_dropout           rank_dropout
module_dropout         module_dropout
targets                target_modules         "all-linear" is written as the full names of
                                              the modules it picked (as PEFT does); a regex
                                              stays a string
exclude                exclude_modules        null when empty
layers                 layers_to_transform    with "all-linear" or a regex, the picked
                                              modules' names are written instead
use_effective_conv2d   use_effective_conv2d
init                   init_weights           kaiming: true, random: false, lycoris:
                                              "lycoris" (LoKr)
(LoKr) decompose_both, decompose_factor, rank_dropout_scale: the same names
=====================  =====================  ==========================================

Per-module ranks and alphas (``rank_pattern``, ``alpha_pattern``) are refused on load.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import nn

from ...errors import ConfigError
from ...targets import resolve

KEYS = {
    "rank": "r",
    "alpha": "alpha",
    "rank_dropout": "rank_dropout",
    "module_dropout": "module_dropout",
    "targets": "target_modules",
    "exclude": "exclude_modules",
    "layers": "layers_to_transform",
    "use_effective_conv2d": "use_effective_conv2d",
    "init": "init_weights",
    "decompose_both": "decompose_both",
    "decompose_factor": "decompose_factor",
    "rank_dropout_scale": "rank_dropout_scale",
}
_INIT_TO_FILE = {"kaiming": True, "random": False, "lycoris": "lycoris"}
_UNSUPPORTED = ("rank_pattern", "alpha_pattern")


def config_to_file(config, model: nn.Module) -> dict[str, Any]:
    """PEFT's config fields for ``config`` as attached to ``model``."""
    picked = resolve(model, config.targets, config.exclude, config.layers, config.train_modules, check_kinds=False)
    targets: Any = config.targets
    layers = list(config.layers) if config.layers is not None else None
    if targets == "all-linear" or (isinstance(targets, str) and layers is not None):
        targets, layers = sorted(picked), None  # the picked modules' full names, as PEFT writes them
    else:
        targets = targets if isinstance(targets, str) else list(targets)
    out: dict[str, Any] = {"rank_pattern": {}, "alpha_pattern": {}, "layers_pattern": None}
    for field, key in KEYS.items():
        if hasattr(config, field):
            out[key] = getattr(config, field)
    exclude = config.exclude if isinstance(config.exclude, str) else (list(config.exclude) or None)
    out.update(
        target_modules=targets,
        exclude_modules=exclude,
        layers_to_transform=layers,
        init_weights=_INIT_TO_FILE[config.init],
    )
    return out


def config_from_file(cls, data: Mapping[str, Any]):
    """A ``cls`` (LoHaConfig / LoKrConfig) from PEFT's config dict; refuses what it cannot honour."""
    for key in _UNSUPPORTED:
        if data.get(key):
            raise ConfigError(
                f"{key}={data[key]!r} (per-module values) is not supported by adapterkit's "
                f"{cls.__name__.removesuffix('Config')}; re-save the adapter without it, or load it with PEFT."
            )
    fields: dict[str, Any] = {}
    valid = {f for f in KEYS if f in cls.__dataclass_fields__}
    for field in valid:
        if data.get(KEYS[field]) is not None:
            fields[field] = data[KEYS[field]]
    if "init" in fields:
        init = fields["init"]
        fields["init"] = "random" if init is False else "lycoris" if init == "lycoris" else "kaiming"
    if isinstance(fields.get("targets"), list) and not fields["targets"]:
        fields.pop("targets")
    try:
        return cls(**fields)
    except ConfigError as err:
        raise ConfigError(_with_file_keys(str(err))) from None


def _with_file_keys(message: str) -> str:
    """'LoHaConfig.rank must ...' -> 'LoHaConfig.rank (file key 'r') must ...'."""

    def name(match: re.Match) -> str:
        key = KEYS.get(match.group(2))
        return match.group(0) + (f" (file key {key!r})" if key and key != match.group(2) else "")

    return "adapter_config.json: " + re.sub(r"(LoHaConfig|LoKrConfig)\.(\w+)", name, message, count=1)


def rank_problems(rank: int, shapes: Mapping[str, tuple], leaves: tuple[str, ...]) -> list[str]:
    """The file's rank against the config's: the first axis of each ``leaves`` tensor is r."""
    return [
        f"{key!r} has shape {tuple(shape)}, rank {shape[0]}, but the config says r={rank}"
        for key, shape in shapes.items()
        if key.rsplit(".", 1)[-1] in leaves and shape and shape[0] != rank
    ]
