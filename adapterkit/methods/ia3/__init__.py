"""(IA)^3: learned scaling vectors on keys, values and the feed-forward input; mergeable."""

from ... import bases
from ...errors import TargetError, UnsupportedModuleError, close_matches
from ...registry import Method, register
from ...targets import matches, resolve
from .config import IA3Config
from .files import FILES
from .layers import IA3, IA3Layer
from ...anatomy import base_module, pick

_KINDS = ("linear", "conv1d", "quant")


def placement(model, config: IA3Config) -> list[tuple[str, bool]]:
    """(module name, scales its input) for each module the adapter goes into."""
    if config.targets == "auto":
        names = pick(model, "key_value", config.layers) + pick(model, "ffn_out", config.layers)
        names = [n for n in names if not matches(n, config.exclude) and not matches(n, config.train_modules)]
    else:
        names = resolve(model, config.targets, config.exclude, config.layers, config.train_modules, check_kinds=False)
    for name in names:
        if bases.base_kind(base_module(model, name)) not in _KINDS:
            raise UnsupportedModuleError(
                f"IA3 scales Linear / Conv1D / quantized linear layers; {name!r} is a "
                f"{type(base_module(model, name)).__name__}. Exclude it or change targets."
            )
    _check_feedforward(config.feedforward, names)
    ffn_out = _ffn_out(model) if config.feedforward == "auto" else set()
    return [(n, n in ffn_out if config.feedforward == "auto" else matches(n, config.feedforward)) for n in names]


def _check_feedforward(feedforward, names: list[str]) -> None:
    """Every feed-forward entry must name one of the targets (a typo would silently scale outputs)."""
    if feedforward == "auto":
        return
    entries = [feedforward] if isinstance(feedforward, str) else list(feedforward)
    for entry in entries:
        if not any(matches(n, entry if isinstance(feedforward, str) else (entry,)) for n in names):
            tails = {n.rsplit(".", 1)[-1] for n in names}
            raise TargetError(
                f"IA3Config.feedforward entry {entry!r} matches none of the targets"
                f"{close_matches(entry, tails)}; targets end in: {', '.join(sorted(tails))}. "
                "feedforward must be a subset of targets."
            )


def _ffn_out(model) -> set:
    try:
        return set(pick(model, "ffn_out"))
    except TargetError:  # no transformer blocks: nothing is a feed-forward output by default
        return set()


def _where(model, config: IA3Config) -> dict[str, bool]:
    """{module name: whether it scales its input (a feed-forward output projection)}."""
    return dict(placement(model, config))


def _build(base, config: IA3Config, feedforward: bool) -> IA3:
    return IA3(base, config, feedforward=feedforward)


METHOD = register(Method(config=IA3Config, layer=IA3Layer, where=_where, build=_build, files=FILES))

__all__ = ["IA3Config", "IA3", "IA3Layer", "METHOD"]
