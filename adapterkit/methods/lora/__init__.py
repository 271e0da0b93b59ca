"""LoRA, rsLoRA and DoRA: config, math (functional.py), layers, LoRA on parameters (params.py) and
registration."""
from torch import nn

from ... import bases
from ...errors import UnsupportedModuleError
from ...registry import Method, register
from ...targets import resolve
from .config import LoRAConfig
from .files import FILES
from .layers import LoRA, LoRALayer
from .params import ParamLoRA, ParamLoRALayer, ParamTargets, owners


_DORA_KINDS = ("linear", "conv1d", "quant", "embedding") + bases.CONV_KINDS


def _where(model, config: LoRAConfig) -> dict:
    names = resolve(model, config.targets, config.exclude, config.layers, config.train_modules) \
        if config.targets != () else []
    if config.dora:
        for name in names:
            module = model.get_submodule(name)
            base = module.innermost() if isinstance(module, LoRALayer) else module
            if bases.base_kind(base) not in _DORA_KINDS or not bases.foldable(base):
                grouped = f" with groups={base.groups}" if getattr(base, "groups", 1) > 1 else ""
                raise UnsupportedModuleError(
                    f"DoRA needs a dense or adapterkit-quantized Linear / Conv1D, an Embedding or an ungrouped "
                    f"Conv1d / Conv2d / Conv3d base; {name!r} is a {type(base).__name__}{grouped}. Exclude it, "
                    f"or use dora=False."
                )
    placed: dict = dict.fromkeys(names)
    placed.update(owners(model, config, names))
    return placed


def _build(base, config: LoRAConfig, placement) -> nn.Module:
    if isinstance(placement, ParamTargets):
        return ParamLoRA(base, placement, config)
    return LoRA(base, config)


METHOD = register(Method(config=LoRAConfig, layer=LoRALayer, where=_where, build=_build, files=FILES,
                         more_layers=(ParamLoRALayer,)))

__all__ = ["LoRAConfig", "LoRA", "LoRALayer", "ParamLoRA", "ParamLoRALayer", "METHOD"]
