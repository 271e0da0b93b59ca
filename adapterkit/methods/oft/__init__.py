"""OFT: block-diagonal orthogonal rotations of a linear layer's input; mergeable."""

from ...registry import Method, register
from ..linear_targets import picked
from .config import OFTConfig
from .files import FILES
from .layers import OFT, OFTLayer

KINDS = ("linear", "quant")  # PEFT's OFT takes nn.Linear (and quantized linear), not Conv1D


def _where(model, config: OFTConfig) -> dict[str, None]:
    return dict.fromkeys(picked(model, config, "OFT", KINDS))


def _build(base, config: OFTConfig, placement: None) -> OFT:
    return OFT(base, config)


METHOD = register(Method(config=OFTConfig, layer=OFTLayer, where=_where, build=_build, files=FILES))

__all__ = ["OFTConfig", "OFT", "OFTLayer", "METHOD"]
