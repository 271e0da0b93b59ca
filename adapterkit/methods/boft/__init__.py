"""BOFT: butterfly products of orthogonal blocks on a linear layer's input, a scale on its output."""

from ...registry import Method, register
from ..linear_targets import picked
from .config import BOFTConfig
from .files import FILES
from .layers import BOFT, BOFTLayer

KINDS = ("linear", "quant")  # PEFT's BOFT takes nn.Linear (and quantized linear), not Conv1D


def _where(model, config: BOFTConfig) -> dict[str, None]:
    return dict.fromkeys(picked(model, config, "BOFT", KINDS))


def _build(base, config: BOFTConfig, placement: None) -> BOFT:
    return BOFT(base, config)


METHOD = register(Method(config=BOFTConfig, layer=BOFTLayer, where=_where, build=_build, files=FILES))

__all__ = ["BOFTConfig", "BOFT", "BOFTLayer", "METHOD"]
