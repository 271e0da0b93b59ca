"""LN tuning: trainable copies of the normalization layers; mergeable (the copy's values go in)."""

from torch import nn

from ...errors import TargetError, UnsupportedModuleError
from ...registry import Method, register
from ...anatomy import logical_modules
from ...targets import matches, resolve
from .config import LNTuningConfig
from .files import FILES
from .layers import LNTuningLayer, NormCopy


def is_norm(module: nn.Module) -> bool:
    """A normalization layer with parameters: torch's LayerNorm / RMSNorm or a model's ``*Norm``."""
    named = isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")
    return named and any(True for _ in module.parameters(recurse=False)) and not any(True for _ in module.children())


def placement(model, config: LNTuningConfig) -> list[str]:
    if config.targets == "auto":
        names = [
            n
            for n, m in logical_modules(model)
            if n and is_norm(m) and not matches(n, config.exclude) and not matches(n, config.train_modules)
        ]
        if not names:
            raise TargetError(
                f"LNTuningConfig(targets='auto') found no normalization layer in "
                f"{type(model).__name__}; give targets explicitly."
            )
        return names
    names = resolve(model, config.targets, config.exclude, None, config.train_modules, check_kinds=False)
    modules = dict(logical_modules(model))
    for name in names:
        module = modules[name]
        if any(True for _ in module.children()) or not any(True for _ in module.parameters()):
            raise UnsupportedModuleError(
                f"LN tuning copies leaf modules with parameters (norms); {name!r} is a {type(module).__name__}"
                f"{' with sub-modules' if any(True for _ in module.children()) else ' without parameters'}. "
                "Target the norm layers themselves."
            )
    return names


def _where(model, config: LNTuningConfig) -> dict[str, None]:
    return dict.fromkeys(placement(model, config))


def _build(base, config: LNTuningConfig, placement: None) -> NormCopy:
    return NormCopy(base, config)


METHOD = register(Method(config=LNTuningConfig, layer=LNTuningLayer, where=_where, build=_build, files=FILES))

__all__ = ["LNTuningConfig", "LNTuningLayer", "METHOD"]
