"""Bottleneck adapters: houlsby, pfeiffer and parallel presets, placed by module names and types."""

from ... import bases
from ...anatomy import base_module, logical_modules, pick
from ...errors import UnsupportedModuleError
from ...registry import Method, register
from ...targets import matches, resolve
from .config import BottleneckConfig
from .files import FILES, PEFT_TYPE
from .layers import Bottleneck, BottleneckLayer, Tap, build


def _placement(model, config: BottleneckConfig) -> list[tuple[str, str]]:
    if config.targets is not None:
        names = resolve(model, config.targets, (), config.layers, config.train_modules)
        return [(n, "serial") for n in names]
    if config.preset == "parallel":
        taps, outs = pick(model, "ffn_in", config.layers), pick(model, "ffn_out", config.layers)
        return [pair for t, o in zip(taps, outs) for pair in ((t, "tap"), (o, "parallel"))]
    names = pick(model, "ffn_out", config.layers)
    if config.preset == "houlsby":
        names = sorted(names + pick(model, "attention_out", config.layers), key=_order(model))
    return [(n, "serial") for n in names if not matches(n, config.train_modules)]


def _order(model):
    index = {name: i for i, (name, _) in enumerate(logical_modules(model))}
    return lambda name: index[name]


def _where(model, config: BottleneckConfig) -> dict[str, str]:
    """{module name: role}, a role being 'serial', 'parallel' or 'tap'."""
    placed = _placement(model, config)
    for name, _ in placed:
        if bases.base_kind(base_module(model, name)) in (None, "mha"):
            raise UnsupportedModuleError(
                f"bottleneck adapters follow modules with a known output size (Linear, Conv1D, ...); "
                f"{name!r} is a {type(base_module(model, name)).__name__}. Pick other targets."
            )
    return dict(placed)


def _build(base, config: BottleneckConfig, role: str):
    return build(base, config, role)


METHOD = register(Method(config=BottleneckConfig, layer=BottleneckLayer, where=_where, build=_build, files=FILES))

__all__ = ["BottleneckConfig", "Bottleneck", "BottleneckLayer", "Tap", "METHOD", "PEFT_TYPE"]
