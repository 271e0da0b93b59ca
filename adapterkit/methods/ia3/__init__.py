"""(IA)^3: learned scaling vectors on keys, values and the feed-forward input; mergeable."""
from ...errors import UnsupportedModuleError
from ...registry import Method, register
from ...targets import matches, resolve
from ..bottleneck.roles import pick
from .config import IA3Config
from .layers import IA3, IA3Layer

_KINDS = ("linear", "conv1d", "quant")


def _where(model, config: IA3Config) -> list[str]:
    if config.targets == "auto":
        names = pick(model, "key_value", config.layers) + pick(model, "ffn_out", config.layers)
        names = [n for n in names if not matches(n, config.exclude) and not matches(n, config.train_modules)]
    else:
        names = resolve(model, config.targets, config.exclude, config.layers, config.train_modules)
    from ... import bases

    for name in names:
        if bases.base_kind(_logical(model, name)) not in _KINDS:
            raise UnsupportedModuleError(
                f"IA3 scales Linear / Conv1D / quantized linear layers; {name!r} is a "
                f"{type(_logical(model, name)).__name__}. Exclude it or change targets."
            )
    _FEEDFORWARD.update({id(_logical(model, n)): _is_feedforward(model, n, config) for n in names})
    return names


def _logical(model, name):
    module = model.get_submodule(name)
    return module.innermost() if hasattr(module, "innermost") else module


def _is_feedforward(model, name: str, config: IA3Config) -> bool:
    if config.feedforward == "auto":
        return name in set(pick(model, "ffn_out"))
    return matches(name, config.feedforward)


# id(base module) -> feed-forward flag, written by _where just before attach builds each adapter
_FEEDFORWARD: dict[int, bool] = {}


def _build(base, config: IA3Config) -> IA3:
    return IA3(base, config, feedforward=_FEEDFORWARD.pop(id(base), False))


METHOD = register(Method(config=IA3Config, layer=IA3Layer, where=_where, build=_build))

__all__ = ["IA3Config", "IA3", "IA3Layer", "METHOD"]
