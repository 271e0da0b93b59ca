"""Which modules an adapter goes into: targets, exclusions and transformer-block indices.

Names are the model's own module names. A module already wrapped by an adapter layer is seen
as the module it wraps (same name, the innermost base's type), so a second adapter can target it.

Forms of ``targets`` (and ``exclude``):
- ``"all-linear"``: every Linear / Conv1D / quantized linear layer except the output head
  (``model.get_output_embeddings()``), as PEFT chooses them;
- a list of name suffixes: ``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``;
- a string: a regular expression that must match the whole module name.
"""
from __future__ import annotations

import re
from typing import Iterator, Optional, Sequence, Union

from torch import nn

from . import bases
from .errors import TargetError, UnsupportedModuleError, close_matches
from .layer import AdapterLayer

Spec = Union[str, Sequence[str]]


def logical_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for the model as the user built it: adapter layers show as their base."""
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, AdapterLayer):
            skip.append(name + ".")
            yield name, module.innermost()
        else:
            yield name, module


def matches(name: str, spec: Spec) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def block_index(model: nn.Module, name: str) -> Optional[int]:
    """The index of the transformer block that holds module ``name``: the number after the
    first ``nn.ModuleList`` on its path (``model.layers.3.mlp`` -> 3), or None."""
    module = model
    parts = name.split(".") if name else []
    for i, part in enumerate(parts[:-1]):
        module = getattr(module, part)
        if isinstance(module, nn.ModuleList) and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def output_head_name(model: nn.Module) -> Optional[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head or (isinstance(module, AdapterLayer) and module.innermost() is head):
            return name
    return None


def resolve(
    model: nn.Module,
    targets: Spec,
    exclude: Spec = (),
    layers: Optional[Sequence[int]] = None,
    also_exclude: Sequence[str] = (),
    check_kinds: bool = True,
) -> list[str]:
    """Names of the modules to adapt; raises TargetError / UnsupportedModuleError.

    ``check_kinds``: refuse targets LoRA cannot wrap (a method with its own kinds checks them)."""
    modules = [(n, m) for n, m in logical_modules(model) if n]
    names = [n for n, _ in modules]
    if not names:
        raise TargetError(
            f"adapterkit replaces a model's sub-modules, and this {type(model).__name__} has none; "
            f"put it in a container (e.g. nn.Sequential(layer)) and target its name ('0')."
        )
    if targets == "all-linear":
        head = output_head_name(model)
        picked = [n for n, m in modules if bases.is_linear_like(m) and n != head]
        if not picked:
            raise TargetError(f"targets='all-linear' found no linear layer in {type(model).__name__}.")
    else:
        picked = [n for n in names if matches(n, targets)]
        _check_found(targets, picked, names)
        for name, module in modules:
            if check_kinds and name in picked and bases.base_kind(module) is None:
                inner = [n for n, m in modules if n.startswith(name + ".") and bases.base_kind(m)]
                hint = f" Adaptable modules inside it: {', '.join(inner[:4])}." if inner else ""
                raise UnsupportedModuleError(
                    f"target {name!r} is a {type(module).__name__}; LoRA adapts only "
                    f"{', '.join(bases.SUPPORTED)}.{hint}"
                )
    picked = [n for n in picked if not matches(n, exclude) and not matches(n, tuple(also_exclude))]
    if layers is not None:
        wanted = set(layers)
        picked = [n for n in picked if block_index(model, n) in wanted]
        if not picked:
            found = sorted({i for i in (block_index(model, n) for n in names) if i is not None})
            raise TargetError(f"layers={list(layers)} selects no targeted module; blocks here: {found}.")
    if not picked:
        raise TargetError(f"targets={targets!r} minus exclude={exclude!r} leaves no module to adapt.")
    return picked


def _check_found(targets: Spec, picked: list[str], names: list[str]) -> None:
    suffixes = {n.rsplit(".", 1)[-1] for n in names}
    if isinstance(targets, str):
        if not picked:
            raise TargetError(
                f"target regex {targets!r} matches no module name (it must match the whole name, "
                f"e.g. {names[-1]!r}){close_matches(targets, suffixes | set(names))}."
            )
        return
    for suffix in targets:
        if not any(n == suffix or n.endswith("." + suffix) for n in picked):
            raise TargetError(
                f"target {suffix!r} matches no module{close_matches(suffix, suffixes)}. "
                f"Module names end in: {', '.join(sorted(suffixes)[:20])}."
            )


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding ``name`` and the attribute it is held under."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child
