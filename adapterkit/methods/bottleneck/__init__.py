"""Bottleneck adapters: houlsby, pfeiffer and parallel presets, placed by module names and types."""

from ... import bases
from ...anatomy import base_module, blocks, logical_modules, pick
from ...errors import TargetError, UnsupportedModuleError
from ...registry import Method, register
from ...targets import matches, resolve
from .config import BottleneckConfig
from .files import FILES, PEFT_TYPE
from .layers import Bottleneck, BottleneckLayer, Handover, Placement, Tap, build


def _placement(model, config: BottleneckConfig) -> list[tuple[str, Placement]]:
    if config.targets is not None:
        names = resolve(model, config.targets, (), config.layers, config.train_modules)
        return [(n, Placement("serial")) for n in names]
    if config.preset == "parallel":
        placed = []
        for tap, out in _parallel_pairs(model, config.layers):
            handover = Handover(tap, out)
            placed += [(tap, Placement("tap", handover)), (out, Placement("parallel", handover))]
        return placed
    names = pick(model, "ffn_out", config.layers)
    if config.preset == "houlsby":
        names = sorted(names + pick(model, "attention_out", config.layers), key=_order(model))
    return [(n, Placement("serial")) for n in names if not matches(n, config.train_modules)]


def _parallel_pairs(model, layers) -> list[tuple[str, str]]:
    """(FFN input, FFN output) of each chosen block, paired within the block; a block with one
    feed-forward linear has no pair and gets no parallel adapter."""
    chosen = [b for b in blocks(model) if layers is None or b.index in layers]
    pairs = [(b.ffn_in, b.ffn_out) for b in chosen if b.ffn_in and b.ffn_out]
    if not pairs:
        where = "".join(f"; {b.prefix} has {b.ffn or 'none'}" for b in chosen[:4]) or (
            f"; its blocks have indices {sorted({b.index for b in blocks(model)})}"
        )
        raise TargetError(
            f"preset='parallel' puts an adapter beside a block's feed-forward network, from its first "
            f"feed-forward linear (input) to its last (output), and no block of {type(model).__name__}"
            f"{'' if layers is None else f' with indices {list(layers)}'} has two feed-forward linears{where}. "
            "Use preset='pfeiffer' or 'houlsby', or explicit targets."
        )
    return pairs


def _order(model):
    index = {name: i for i, (name, _) in enumerate(logical_modules(model))}
    return lambda name: index[name]


def _where(model, config: BottleneckConfig) -> dict[str, Placement]:
    """{module name: placement}: a role ('serial', 'parallel' or 'tap'), and for the two sides of a
    parallel adapter the handover they share."""
    placed = _placement(model, config)
    for name, _ in placed:
        if bases.base_kind(base_module(model, name)) in (None, "mha"):
            raise UnsupportedModuleError(
                f"bottleneck adapters follow modules with a known output size (Linear, Conv1D, ...); "
                f"{name!r} is a {type(base_module(model, name)).__name__}. Pick other targets."
            )
    return dict(placed)


def _build(base, config: BottleneckConfig, placement: Placement):
    return build(base, config, placement)


METHOD = register(Method(config=BottleneckConfig, layer=BottleneckLayer, where=_where, build=_build, files=FILES))

__all__ = ["BottleneckConfig", "Bottleneck", "BottleneckLayer", "Handover", "Tap", "METHOD", "PEFT_TYPE"]
