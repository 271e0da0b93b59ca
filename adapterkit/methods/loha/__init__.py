"""LoHa: dW = (w1_a @ w1_b) * (w2_a @ w2_b) * scale (FedPara, arXiv:2108.06098); mergeable."""

from ...registry import Method, register
from ..lycoris.layer import place
from .config import LoHaConfig
from .files import FILES
from .layers import LoHa, LoHaLayer


def _where(model, config: LoHaConfig) -> dict[str, None]:
    return place(model, config, "LoHa")


def _build(base, config: LoHaConfig, placement: None) -> LoHa:
    return LoHa(base, config)


METHOD = register(Method(config=LoHaConfig, layer=LoHaLayer, where=_where, build=_build, files=FILES))

__all__ = ["LoHaConfig", "LoHa", "LoHaLayer", "METHOD"]
