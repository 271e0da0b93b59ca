"""Hot-swap: replace a loaded LoRA adapter's weights in place from a file (PEFT's ``hotswap_adapter``).

The adapter keeps its name, its modules and its Parameters (their storage is overwritten), so a
``torch.compile``'d model runs the new adapter without recompiling, as long as shapes and the scale
(a Python float the graph holds as a constant) stay the same:

- shapes: ``ak.prepare_hotswap(model, rank)`` before compiling pads every LoRA adapter with zeros to
  ``rank`` (A gets zero rows, B zero columns: B A is unchanged); an adapter of rank r <= that rank is
  then written into the first r rows / columns and the rest zeroed.
- scale: the layer keeps its scale s; the new adapter's B is stored as B_new s_new / s, so
  s B A_new = s_new B_new A_new. The config is rewritten to say so (same rank, alpha = s rank, or
  s sqrt(rank) with rsLoRA): ``save_adapter`` afterwards writes a file that computes the same.

A module the new file does not adapt gets A = B = 0 (DoRA: magnitude ||W||, the base's own output);
a file that adapts a module the adapter does not, holds other tensors, or differs in rsLoRA, dropout
or DoRA is refused (PEFT's checks), with the model unchanged. A rank above the padded one replaces
the Parameters (works, but a compiled model recompiles). Merged adapters must be unmerged first.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ... import bases
from ...errors import AdapterFileError, ConfigError, MergeError
from ...inject import adapter_layers, adapter_names, check_model, merged_adapters, refuse_while_merged
from .config import LoRAConfig
from .files import state_to_file
from . import dora_layouts
from .layers import LoRA, LoRALayer
from .patterns import refuse_patterns
from .scaling import loras, refuse_mha


def _config_for(config: LoRAConfig, rank: int, scale: float) -> LoRAConfig:
    """``config`` with ``rank`` and the alpha that gives ``scale``."""
    return dataclasses.replace(config, rank=rank, alpha=scale * (math.sqrt(rank) if config.rslora else rank))


def prepare_hotswap(model: nn.Module, rank: int, names: Union[str, Iterable[str], None] = None) -> nn.Module:
    """Pad LoRA adapters ``names`` (default: all) with zeros to ``rank``, before ``torch.compile``, so
    that ``hotswap_adapter`` can later swap in any adapter of rank <= ``rank`` without recompiling."""
    check_model(model, "prepare_hotswap")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"prepare_hotswap takes a positive int rank; got {rank!r}.")
    refuse_while_merged(model, "pad adapters for hot-swapping")
    if names is None:
        names = [
            n
            for n in adapter_names(model)
            if any(isinstance(layer, LoRALayer) and n in layer.adapters for _, layer in adapter_layers(model))
        ]
    names = [names] if isinstance(names, str) else list(names)
    found = {n: loras(model, n) for n in names}
    for modules in found.values():
        refuse_mha(modules, "prepare_hotswap", grouped=True)
    for n, modules in found.items():
        have = max(lora.a.shape[0] for lora in modules)
        if have > rank:
            raise ConfigError(
                f"prepare_hotswap: adapter {n!r} has rank {have}, above rank={rank}; pass at least "
                f"the largest rank of the adapters you will swap in."
            )
    for modules in found.values():
        for lora in modules:
            _set_factors(lora, _padded(lora.a.detach(), 0, rank), _padded(lora.b.detach(), 1, rank))
            lora.config = _config_for(lora.config, rank, lora.config.scale)
    return model


def hotswap_adapter(
    model: nn.Module, path: Union[str, Path], name: str = "default", allow_pickle: bool = False
) -> nn.Module:
    """Overwrite LoRA adapter ``name``'s weights with those of the adapter saved in ``path`` (by
    adapterkit or PEFT); ``name`` stays active or not as it was. Returns ``model``."""
    from ...io.read import method_and_config, find_folder, read_config, read_tensors

    check_model(model, "hotswap_adapter")
    modules, base_of = _modules(model, name)
    folder = find_folder(path)
    method, config = method_and_config(read_config(folder), folder)
    current = next(iter(modules.values())).config
    _check_config(config, current, folder)
    refuse_patterns(current, "hotswap_adapter")
    refuse_patterns(config, "hotswap_adapter")
    tensors = read_tensors(folder, allow_pickle=allow_pickle)
    plan = _plan(modules, tensors, config.rank, folder)
    rank = max(max(lora.a.shape[0] for lora in modules.values()), config.rank)
    for lora in modules.values():
        if lora.scale <= 0:
            raise ConfigError(
                f"hotswap_adapter: adapter {name!r} runs with scale {lora.scale} (ak.set_scale); the new "
                f"weights are stored against it, so it must be positive. ak.set_scale(model, {name!r}, 1) "
                f"first."
            )
    with torch.no_grad():
        for module_name, lora in modules.items():
            a, b, m = _new_values(lora, base_of[module_name], plan.get(module_name), rank, lora.scale / config.scale)
            _set_factors(lora, a, b)
            if lora.magnitude is not None:
                lora.magnitude.copy_(m)
            lora.config = _config_for(current, rank, lora.scale)
    return model


def _modules(model: nn.Module, name: str) -> tuple[dict[str, LoRA], dict[str, nn.Module]]:
    """{logical module name: adapter ``name``'s LoRA there}, {logical module name: its base}."""
    from ...io.state import logical_name

    found = loras(model, name)  # errors for unknown / non-LoRA names
    refuse_mha(found, "hotswap_adapter", grouped=True)
    if name in merged_adapters(model):
        raise MergeError(
            f"adapter {name!r} is merged into the base weights; swapping it would leave its old update "
            f"there. Call ak.unmerge_adapter(model) first."
        )
    held = [
        (logical_name(model, ln), layer)
        for ln, layer in adapter_layers(model)
        if isinstance(layer, LoRALayer) and name in layer.adapters
    ]
    assert len(held) == len(found)
    return {n: layer.adapters[name] for n, layer in held}, {n: layer.innermost() for n, layer in held}


def _check_config(config, current: LoRAConfig, folder: Path) -> None:
    if not isinstance(config, LoRAConfig):
        raise AdapterFileError(f"{str(folder)!r} holds a {type(config).__name__} adapter; hotswap_adapter swaps LoRA.")
    for field in ("rslora", "dropout", "dora"):
        if getattr(config, field) != getattr(current, field):
            raise ConfigError(
                f"hotswap_adapter: the file's {field}={getattr(config, field)!r} differs from the loaded "
                f"adapter's {getattr(current, field)!r}; a swap keeps the layers as they are, so these "
                f"must agree. Load it as a new adapter instead (ak.load_adapter)."
            )
    if config.train_modules:
        raise AdapterFileError(
            f"{str(folder)!r} also trains whole modules {list(config.train_modules)}; "
            f"hotswap_adapter swaps LoRA weights only. Load it with ak.load_adapter."
        )


def _plan(modules: dict[str, LoRA], tensors: dict[str, Tensor], rank: int, folder: Path) -> dict[str, dict]:
    """{module: {"a": A, "b": B, "m": magnitude?}} from the file, every key and shape checked."""
    where = {}
    for module_name, lora in modules.items():
        for key, live in state_to_file(module_name, lora).items():
            role = "a" if live is lora.a else "b" if live is lora.b else "m"
            where[key] = (module_name, role, live)
    unexpected = sorted(set(tensors) - set(where))
    if unexpected:
        raise AdapterFileError(
            f"hotswap_adapter: {str(folder)!r} holds tensors the loaded adapter has no place for, "
            f"e.g. {unexpected[:3]} (a module it does not adapt?); swapping cannot add modules. "
            f"Load it with ak.load_adapter instead."
        )
    plan: dict[str, dict] = {}
    for key, tensor in tensors.items():
        module_name, role, live = where[key]
        want = list(live.shape)
        if role == "a":
            want[0] = rank
        elif role == "b":
            want[1] = rank
        if list(tensor.shape) != want or not tensor.is_floating_point():
            raise AdapterFileError(
                f"hotswap_adapter: {key!r} in {str(folder)!r} has shape {tuple(tensor.shape)} "
                f"({tensor.dtype}); expected {tuple(want)} (rank {rank}) for this model."
            )
        plan.setdefault(module_name, {})[role] = tensor
    for module_name, parts in plan.items():
        if "a" not in parts or "b" not in parts or ("m" not in parts) != (modules[module_name].magnitude is None):
            raise AdapterFileError(f"hotswap_adapter: {str(folder)!r} holds only {sorted(parts)} for {module_name!r}.")
    return plan


def _new_values(lora: LoRA, base: nn.Module, parts: Optional[dict], rank: int, ratio: float):
    """(A, B, magnitude) for ``lora`` at ``rank``: the file's (B divided by ``ratio`` = s / s_new),
    or the identity where the file does not adapt this module."""
    place = dict(dtype=lora.a.dtype, device=lora.a.device)
    if parts is None:
        a = torch.zeros(rank, *lora.a.shape[1:], **place)
        b = torch.zeros(lora.b.shape[0], rank, *lora.b.shape[2:], **place)
        m = None
        if lora.magnitude is not None:
            m = dora_layouts.base_norm(lora.kind, bases.dense_weight(base))
        return a, b, m
    a = _padded(parts["a"].to(**place), 0, rank)
    b = _padded((parts["b"].to(torch.float64) / ratio).to(**place), 1, rank)
    return a, b, parts.get("m")


def _padded(t: Tensor, dim: int, size: int) -> Tensor:
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


@torch.no_grad()
def _set_factors(lora: LoRA, a: Tensor, b: Tensor) -> None:
    """Write A and B in place where the shapes stay (compiled graphs keep them), else new Parameters."""
    for attr, value in (("a", a), ("b", b)):
        live = getattr(lora, attr)
        if live.shape == value.shape:
            live.copy_(value)
        else:
            setattr(lora, attr, nn.Parameter(value.to(live.dtype).clone(), requires_grad=live.requires_grad))
