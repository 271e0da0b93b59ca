"""attach / detach / set_active / disabled / delete_adapter / merge: adapters in and out of a model.

The model keeps its class; adapterkit only replaces modules by adapter layers that wrap them,
and ``detach`` puts the originals back. All adapter state is found by structure.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Iterator, Union

import torch
from torch import nn

from . import anatomy, bases
from .config import AdapterConfig, check_adapter_name
from .errors import AdapterNameError, MergeError, TargetError, UnsupportedModuleError, close_matches
from .layer import AdapterLayer, own_method
from .methods.trained_module import TrainedModule, trainable_copy
from .registry import method_for
from .anatomy import logical_modules
from .targets import get_parent, matches
from .transaction import unchanged_on_error
from .rows import install_hooks, release_hooks


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """Every adapter layer in the model, outermost first, with its module name."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters in the model, in the order they were attached."""
    names: dict[str, None] = {}
    for _, layer in adapter_layers(model):
        names.update(dict.fromkeys(layer.adapters.keys()))
    return list(names)


def adapter_config(model: nn.Module, name: str) -> AdapterConfig:
    """The config an adapter was attached with."""
    for _, layer in adapter_layers(model):
        if name in layer.adapters and not isinstance(layer, TrainedModule):
            return layer.adapters[name].config
    raise _unknown(model, name)


def active_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for _, layer in adapter_layers(model):
        names.update(dict.fromkeys(layer.active))
    return list(names)


def merged_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters merged into the base weights in place (``ak.merge_adapter``)."""
    names: dict[str, None] = {}
    for _, layer in adapter_layers(model):
        names.update(dict.fromkeys(layer.merged_names))
    return list(names)


def refuse_while_merged(model: nn.Module, doing: str) -> None:
    """MergeError when adapters are merged in place: ``doing`` would act on weights that hold them."""
    merged = merged_adapters(model)
    if merged:
        raise MergeError(
            f"cannot {doing} while adapters {merged} are merged into the base weights "
            f"(ak.merge_adapter); call ak.unmerge_adapter(model) first."
        )


def _unknown(model: nn.Module, name: str) -> AdapterNameError:
    have = adapter_names(model)
    return AdapterNameError(
        f"no adapter named {name!r}{close_matches(name, have)}; this model has: {', '.join(map(repr, have)) or 'none'}."
    )


def _wrap(model: nn.Module, name: str, layer_cls: type[AdapterLayer]) -> AdapterLayer:
    """The adapter layer of ``layer_cls`` at ``name``, wrapping the module there if needed."""
    module = model.get_submodule(name)
    if isinstance(module, layer_cls):
        return module
    layer = layer_cls(module)
    layer.training = layer.adapters.training = module.training  # new modules follow the wrapped one
    parent, attr = get_parent(model, name)
    setattr(parent, attr, layer)
    return layer


def attach(model: nn.Module, config: AdapterConfig, name: str = "default") -> nn.Module:
    """Add an adapter to ``model`` in place and make it the active one; returns ``model``.

    Every parameter that is not an adapter's is frozen; the new adapter's parameters train. New
    modules take the train / eval mode of the module they wrap (no dropout in an eval model).
    A target whose weight another module shares (tied embeddings) is adapted with a warning.
    """
    check_model(model, "attach")
    check_adapter_name(name)
    method = method_for(config)
    refuse_while_merged(model, "attach an adapter")
    if name in adapter_names(model):
        raise AdapterNameError(
            f"an adapter named {name!r} is already attached; pick another name, or "
            f"delete_adapter(model, {name!r}) first."
        )
    copies = _resolve_train_modules(model, tuple(getattr(config, "train_modules", ())))
    with unchanged_on_error(model):
        placed = method.where(model, config)
        if hasattr(method.layer, "merged"):
            _warn_tied(model, placed)
        _freeze_base(model)
        for target, placement in placed.items():
            layer = _wrap(model, target, getattr(placement, "layer", None) or method.layer)
            layer.add(name, method.build(layer.innermost(), config, placement))
        for target in copies:
            layer = _wrap(model, target, TrainedModule)
            layer.add(name, trainable_copy(layer.innermost()))
        if method.after_attach is not None:
            method.after_attach(model, config, name)
        set_active(model, name)
    install_hooks(model)  # takes `adapter_names=` out of the model's calls (rows.py)
    return model


def check_model(model, call: str) -> None:
    """The calls that take a model refuse anything that is not a torch module, clearly."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModuleError(
            f"ak.{call} takes a torch.nn.Module (e.g. a transformers model); got {type(model).__name__} {model!r:.60}."
        )


def _warn_tied(model: nn.Module, targets) -> None:
    """A warning for each target whose weight another module shares (tied embeddings)."""
    tied = anatomy.tied_parameters(model)
    for target in targets:
        base = anatomy.base_module(model, target)
        others = anatomy.tied_with(base, target, tied)
        if others:
            warnings.warn(
                f"{target} shares its weight with {', '.join(others)} (tied weights). The adapter trains "
                f"and runs correctly, but its update cannot be folded into that one weight: ak.merge gives "
                f"{target} a weight of its own (untying them), ak.merge_adapter refuses. To keep the "
                f"weights tied, leave {target} out of the targets.",
                stacklevel=3,
            )


def _resolve_train_modules(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    if not suffixes:
        return []
    names = [n for n, _ in logical_modules(model) if n]
    picked = [n for n in names if matches(n, suffixes)]
    for suffix in suffixes:
        if not any(matches(n, (suffix,)) for n in picked):
            tails = {n.rsplit(".", 1)[-1] for n in names}
            raise TargetError(f"train_modules entry {suffix!r} matches no module{close_matches(suffix, tails)}.")
    # the outermost match only: training a head trains everything inside it
    return [n for n in picked if not any(n.startswith(p + ".") for p in picked)]


def _freeze_base(model: nn.Module) -> None:
    adapter_params = set()
    for _, layer in adapter_layers(model):
        adapter_params.update(id(p) for p in layer.adapters.parameters())
    for p in model.parameters():
        if id(p) not in adapter_params:
            p.requires_grad_(False)


def set_active(model: nn.Module, names: Union[str, Iterable[str]]) -> None:
    """Make ``names`` (one name or several) the active adapters; several add up."""
    check_model(model, "set_active")
    is_list = isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    if not isinstance(names, str) and not is_list:
        raise AdapterNameError(
            f"set_active takes an adapter name or a list of names; got {names!r}. "
            f"This model has: {', '.join(map(repr, adapter_names(model))) or 'none'}."
        )
    wanted = [names] if isinstance(names, str) else list(names)
    if set(wanted) != set(active_names(model)):
        refuse_while_merged(model, f"set the active adapters to {wanted}")
    have = adapter_names(model)
    for name in wanted:
        if name not in have:
            raise _unknown(model, name)
    for _, layer in adapter_layers(model):
        layer.set_active(wanted)


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Inside the block the model computes exactly its base output."""
    refuse_while_merged(model, "disable the adapters")
    layers = [layer for _, layer in adapter_layers(model)]
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, before):
            layer.disabled = flag


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove one adapter everywhere; layers left without adapters give back their base.

    Deleting an active adapter leaves the other active ones active; when none is left, the first
    remaining adapter in sorted order becomes active, with a warning (PEFT's rule).
    """
    check_model(model, "delete_adapter")
    if not isinstance(name, str) or name not in adapter_names(model):
        raise _unknown(model, str(name))
    refuse_while_merged(model, f"delete adapter {name!r}")
    with unchanged_on_error(model):
        active = active_names(model)
        for layer_name, layer in reversed(list(adapter_layers(model))):
            layer.remove(name)
            if not layer.adapters:
                _unwrap(model, layer_name, layer)
        if name in active and not active_names(model):
            _activate_first_remaining(model, name)
    release_hooks(model)


def _activate_first_remaining(model: nn.Module, deleted: str) -> None:
    remaining = sorted(adapter_names(model))
    if remaining:
        warnings.warn(
            f"adapter {deleted!r} was active and is now deleted; {remaining[0]!r} is active now (the first "
            f"remaining adapter by name, as PEFT chooses). Call ak.set_active to pick another.",
            stacklevel=3,
        )
        set_active(model, remaining[0])


def detach(model: nn.Module) -> nn.Module:
    """Every adapter dropped and the original modules put back; returns ``model``."""
    check_model(model, "detach")
    refuse_while_merged(model, "detach the adapters")
    for layer_name, layer in reversed(list(adapter_layers(model))):
        _unwrap(model, layer_name, layer)
    release_hooks(model)
    return model


def _unwrap(model: nn.Module, layer_name: str, layer: AdapterLayer) -> None:
    """Put ``layer``'s base back; a layer that set up model-level hooks removes them (``release``)."""
    parent, attr = get_parent(model, layer_name)
    setattr(parent, attr, layer.base)
    release = own_method(layer, "release")
    if release is not None:
        release(model)


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights; no adapterkit module is left.

    Returns ``model`` (changed in place). Inactive adapters are dropped; adapters merged in place
    by ``ak.merge_adapter`` stay in the weights. A module whose weight is tied to another module's
    (SmolLM2's ``lm_head`` and ``embed_tokens``) gets a weight of its own, with a warning: folding
    into the shared one would change the other module too.
    """
    check_model(model, "merge")
    layers = list(adapter_layers(model))
    for layer_name, layer in layers:  # check everything before changing anything
        if own_method(layer, "merged") is None:
            raise MergeError(f"{layer_name}: {type(layer).__name__} adapters cannot be merged into the base.")
        if (
            layer.active_adapters()
            and not isinstance(layer, TrainedModule)
            and not getattr(type(layer), "merges_params", False)
        ):  # LoRA on parameters folds into its module
            base = layer.innermost()
            if not bases.foldable(base) and own_method(layer, "merge_in_place") is None:  # LN tuning writes values
                grouped = getattr(base, "groups", 1) > 1 and bases.base_kind(base) in bases.CONV_KINDS
                raise MergeError(
                    f"{layer_name}: cannot fold adapters into a {type(base).__name__} "
                    + (
                        f"with groups={base.groups}: LoRA's update of a grouped convolution is not grouped "
                        f"(PEFT refuses too). Keep the adapters unmerged."
                        if grouped
                        else "whose weight is not a dense float tensor. Quantize with ak.quantize (merging "
                        "dequantizes), or keep the adapters unmerged."
                    )
                )
    _untie_for_merge(model, layers)
    for layer_name, layer in reversed(layers):
        parent, attr = get_parent(model, layer_name)
        setattr(parent, attr, layer.merged())
    for name, module in list(model.named_modules()):  # quantized layers no adapter touched: dense too
        if bases.base_kind(module) == "quant":
            parent, attr = get_parent(model, name)
            setattr(parent, attr, bases.folded(module, torch.zeros(())))
    release_hooks(model)
    from .quant.bnb_format import record_quantization

    record_quantization(model)  # no 4-bit layer is left: config.quantization_config goes too
    return model


def _untie_for_merge(model: nn.Module, layers: list[tuple[str, AdapterLayer]]) -> None:
    """Give each base that ``merge`` folds into and that shares a weight its own copy, and say so."""
    tied = anatomy.tied_parameters(model)
    untie: dict[str, tuple[nn.Module, list[str]]] = {}
    for layer_name, layer in layers:
        base = layer.innermost()
        if layer.active_adapters() and not isinstance(layer, TrainedModule) and bases.base_kind(base) != "quant":
            others = anatomy.tied_with(base, layer_name, tied)
            if others and not any(base is b for b, _ in untie.values()):
                untie[layer_name] = (base, others)
    if not untie:
        return
    anatomy.untie(model, [base for base, _ in untie.values()])
    pairs = "; ".join(f"{n} (shared with {', '.join(o)})" for n, (_, o) in untie.items())
    warnings.warn(
        f"ak.merge: {pairs}: the adapter's update is folded into a copy of the shared weight, so these "
        f"modules are no longer tied (config.tie_word_embeddings is set to False where it was True, so "
        f"save_pretrained keeps both). The merged model computes what the adapted one did.",
        stacklevel=2,
    )
