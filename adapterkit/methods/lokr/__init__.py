"""LoKr: dW = kron(w1, w2) * scale (LyCORIS, arXiv:2309.14859); mergeable."""

from ...registry import Method, register
from ..lycoris.layer import place
from .config import LoKrConfig
from .files import FILES
from .layers import LoKr, LoKrLayer


def _where(model, config: LoKrConfig) -> dict[str, None]:
    return place(model, config, "LoKr")


def _build(base, config: LoKrConfig, placement: None) -> LoKr:
    return LoKr(base, config)


METHOD = register(Method(config=LoKrConfig, layer=LoKrLayer, where=_where, build=_build, files=FILES))

__all__ = ["LoKrConfig", "LoKr", "LoKrLayer", "METHOD"]
