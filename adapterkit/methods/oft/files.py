"""OFT on disk: PEFT's ``OFTConfig`` keys and tensor names (``peft_type: "OFT"``).

========================  ========================  =====================================
adapterkit                PEFT key                  notes
========================  ========================  =====================================
rank / block_size         r / oft_block_size        exactly one non-zero, as PEFT
targets / exclude /       target_modules /          "all-linear" is written as the picked
layers                    exclude_modules /         modules' full names
                          layers_to_transform
coft, eps, block_share,   the same names            module_dropout: PEFT stores it and its
module_dropout                                      linear forward does not apply it
use_cayley_neumann,       the same names
num_cayley_neumann_terms
init                      init_weights              identity: true, random: false
========================  ========================  =====================================

Tensors: ``base_model.model.<module>.oft_R.weight`` (n, b(b-1)/2), or (1, ...) with block_share:
the upper triangles of the skew-symmetric blocks. ``peft_version`` is written so that PEFT reads the
Cayley-Neumann form as its current one (PEFT warns for files older than 0.18).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from ..linear_targets import picked, targets_from_file, targets_to_file
from .config import OFTConfig

_SAME = ("coft", "eps", "block_share", "module_dropout", "use_cayley_neumann", "num_cayley_neumann_terms")
_UNSUPPORTED = {"bias": "none"}


def config_to_file(config: OFTConfig, model: nn.Module) -> dict[str, Any]:
    from . import KINDS

    names = picked(model, config, "OFT", KINDS)
    return {
        "r": config.rank,
        "oft_block_size": config.block_size,
        **targets_to_file(config, model, names),
        **{k: getattr(config, k) for k in _SAME},
        "init_weights": config.init == "identity",
        "bias": "none",
        "peft_version": "0.21.2",
    }


def config_from_file(data: Mapping[str, Any]) -> OFTConfig:
    for key, default in _UNSUPPORTED.items():
        if data.get(key, default) not in (default, None):
            raise ConfigError(
                f"{key}={data[key]!r} is not supported by adapterkit's OFT (supported: "
                f"{default!r}); re-save the adapter without it, or load it with PEFT."
            )
    if "oft_block_size" not in data:
        raise ConfigError(
            "adapter_config.json (OFT) has no oft_block_size: it was saved by PEFT before 0.14, "
            "whose OFT weights differ; retrain the adapter with a newer PEFT or adapterkit."
        )
    fields = targets_from_file(data)
    fields["rank"], fields["block_size"] = data.get("r") or 0, data.get("oft_block_size") or 0
    fields.update({k: data[k] for k in _SAME if data.get(k) is not None})
    if data.get("init_weights") is False:
        fields["init"] = "random"
    try:
        return OFTConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"adapter_config.json (OFT): {err}") from None


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    return {f"{PEFT_PREFIX}{module_name}.oft_R.weight": adapter.q}


FILES = FileFormat(
    peft_type="OFT", config_to_file=config_to_file, config_from_file=config_from_file, state_to_file=state_to_file
)
