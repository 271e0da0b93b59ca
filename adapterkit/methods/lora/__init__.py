"""LoRA, rsLoRA and DoRA: config, math (functional.py), layers, LoRA on parameters (params.py) and
registration.

Options beside the layers: per-module rank / alpha (patterns.py), trained base biases and lora_bias
(bias.py), trainable token rows (tokens.py), base-reading inits (init.py) and EVA (eva.py).
"""

from torch import nn

from ... import bases
from ...errors import UnsupportedModuleError
from ...registry import Method, register
from ...targets import resolve
from .config import LoRAConfig
from .files import FILES
from .layers import LoRA, LoRALayer
from .params import ParamLoRA, ParamLoRALayer, ParamTargets, owners
from . import bias, init, patterns, replicate, tokens
from ...anatomy import unwrapped


_DORA_KINDS = ("linear", "conv1d", "quant", "embedding") + bases.CONV_KINDS


def _where(model, config: LoRAConfig) -> dict[str, tuple[int, float]]:
    """{module name: (rank, alpha)} of the modules to adapt."""
    if config.layer_replication is None:
        return _placed(model, config)
    # the blocks first, then the targets in them (replicate.py); attach's transaction puts the
    # modules back on an error, this the config's layer count
    before = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    replicate.replicate(model, config.layer_replication)
    try:
        return _placed(model, config)
    except Exception:
        if before is not None:
            model.config.num_hidden_layers = before
        raise


def _placed(model, config: LoRAConfig) -> dict[str, tuple[int, float]]:
    names = (
        resolve(model, config.targets, config.exclude, config.layers, config.train_modules)
        if config.targets != ()
        else []
    )
    params = owners(model, config, names)  # {owner: ParamTargets}: LoRA on parameters (params.py)
    patterns.warn_unmatched(config, names + [f"{o}.{p}" for o, t in params.items() for p in t.names])
    if config.lora_bias:
        for name in names:
            module = model.get_submodule(name)
            base = unwrapped(module)
            if bases.base_kind(base) == "embedding":
                raise UnsupportedModuleError(
                    f"lora_bias needs a Linear, Conv1D or Conv2d base; {name!r} is an "
                    f"Embedding (PEFT refuses it too). Exclude it, or use lora_bias=False."
                )
    if config.dora:
        for name in names:
            module = model.get_submodule(name)
            base = unwrapped(module)
            if bases.base_kind(base) not in _DORA_KINDS or not bases.foldable(base):
                grouped = f" with groups={base.groups}" if getattr(base, "groups", 1) > 1 else ""
                raise UnsupportedModuleError(
                    f"DoRA needs a dense or adapterkit-quantized Linear / Conv1D, an Embedding or an ungrouped "
                    f"Conv1d / Conv2d / Conv3d base; {name!r} is a {type(base).__name__}{grouped}. Exclude it, "
                    f"or use dora=False."
                )
    if init.changes_base(config.init):
        for name in names:
            module = model.get_submodule(name)
            init.check_base(name, unwrapped(module), config.init)
    placed: dict = {name: patterns.rank_alpha(config, name) for name in names}
    placed.update(params)
    return placed


def _build(base, config: LoRAConfig, placement) -> nn.Module:
    if isinstance(placement, ParamTargets):
        return ParamLoRA(base, placement, config)
    rank, alpha = placement
    return LoRA(base, config, rank=rank, alpha=alpha)


def _after_attach(model, config: LoRAConfig, name: str) -> None:
    bias.train_biases(model, config, name)
    tokens.attach_tokens(model, config, name)


METHOD = register(
    Method(
        config=LoRAConfig,
        layer=LoRALayer,
        where=_where,
        build=_build,
        files=FILES,
        more_layers=(ParamLoRALayer,),
        after_attach=_after_attach,
    )
)

__all__ = ["LoRAConfig", "LoRA", "LoRALayer", "ParamLoRA", "ParamLoRALayer", "METHOD"]
