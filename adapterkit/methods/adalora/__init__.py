"""AdaLoRA: SVD-shaped LoRA whose rank budget is allocated during training (PEFT's ADALORA).

config.py (the fields and schedule), layers.py (the forward), allocator.py (budget and masks),
regulariser.py (orthogonality penalty), files.py (PEFT's layout).
"""

from ... import bases
from ...errors import UnsupportedModuleError
from ...registry import Method, register
from ...targets import resolve
from .allocator import RankAllocator
from .config import AdaLoRAConfig
from .files import FILES
from .layers import AdaLoRA, AdaLoRALayer
from .regulariser import orthogonality
from ...anatomy import unwrapped

_KINDS = ("linear", "conv1d", "quant")


def _where(model, config: AdaLoRAConfig) -> dict[str, int]:
    """{module name: the triplets its adapter holds (init_r, or the rank pattern's kept count)}."""
    names = resolve(model, config.targets, config.exclude, config.layers, config.train_modules)
    for name in names:
        module = model.get_submodule(name)
        base = unwrapped(module)
        if bases.base_kind(base) not in _KINDS:
            raise UnsupportedModuleError(
                f"AdaLoRA adapts Linear / Conv1D / quantized linear layers; {name!r} is a "
                f"{type(base).__name__}. Exclude it or change targets."
            )
    return {name: config.rank(name) for name in names}


def _build(base, config: AdaLoRAConfig, rank: int) -> AdaLoRA:
    return AdaLoRA(base, config, rank)


METHOD = register(Method(config=AdaLoRAConfig, layer=AdaLoRALayer, where=_where, build=_build, files=FILES))

__all__ = ["AdaLoRAConfig", "AdaLoRA", "AdaLoRALayer", "RankAllocator", "orthogonality", "METHOD"]
