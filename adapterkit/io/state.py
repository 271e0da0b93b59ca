"""One adapter's tensors in a model, under their file keys, found by structure.

Each adapter layer that holds adapter ``name`` contributes the tensors its method's
``FileFormat.state_to_file`` gives; each ``TrainedModule`` copy (``train_modules``, PEFT's
``modules_to_save``) contributes its whole state dict as ``base_model.model.<module>.<key>``,
PEFT's key for a module to save. Layers nested by several methods are named after the module
the user sees (``...q_proj``, not ``...q_proj.base``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from ..errors import AdapterFileError
from ..inject import adapter_config, adapter_layers
from ..layer import AdapterLayer
from ..methods.trained_module import TrainedModule
from ..registry import PEFT_PREFIX, Method, method_for


@dataclasses.dataclass
class Entry:
    """One layer's share of an adapter: its live tensors under file keys, and how to fill them."""

    module: str
    adapter: nn.Module
    tensors: dict[str, Tensor]
    fill: Optional[Callable[[str, nn.Module, dict], None]]
    trained: bool = False  # a train_modules copy rather than a method layer


def logical_name(model: nn.Module, name: str) -> str:
    """``a.b.base.base`` -> ``a.b`` (and ``blocks.0.base.q`` -> ``blocks.0.q``) where those
    ``base``s are adapter layers' wrapped modules."""
    kept, module = [], model
    for part in name.split(".") if name else []:
        if not (part == "base" and isinstance(module, AdapterLayer)):
            kept.append(part)
        module = module.get_submodule(part)
    return ".".join(kept)


def entries(model: nn.Module, name: str) -> tuple[Method, list[Entry]]:
    """The method of adapter ``name`` and one entry per layer that holds it."""
    method = method_for(adapter_config(model, name))
    found = []
    for layer_name, layer in adapter_layers(model):
        if name not in layer.adapters:
            continue
        adapter = layer.adapters[name]
        module = logical_name(model, layer_name)
        if isinstance(layer, TrainedModule):
            prefix = method.files.trained_prefix if method.files is not None else PEFT_PREFIX
            tensors = {f"{prefix}{module}.{k}": v for k, v in adapter.state_dict(keep_vars=True).items()}
            found.append(Entry(module, adapter, tensors, None, trained=True))
        elif isinstance(layer, (method.layer, *method.more_layers)):
            files = method.files
            found.append(Entry(module, adapter, files.state_to_file(module, adapter), files.state_from_file))
    extra = method.files.extra_to_file if method.files is not None else None
    if extra is not None:
        for key, tensor in extra(model, adapter_config(model, name), name).items():
            found.append(Entry(key, None, {key: tensor}, None, trained=True))
    return method, found


def tensor_names(model: nn.Module) -> dict[int, list[str]]:
    """Every parameter and buffer of ``model`` by identity: ``id(tensor) -> its names`` (tied: several)."""
    out: dict[int, list[str]] = {}
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        out.setdefault(id(t), []).append(name)
    return out


def _from_state(state_dict, names: dict[int, list[str]], tensor: Tensor, key: str) -> Tensor:
    """``tensor``'s value in ``state_dict`` (found under its name in the model)."""
    for name in names.get(id(tensor), ()):
        if name in state_dict:
            return state_dict[name].detach()
    if id(tensor) in names:
        raise AdapterFileError(
            f"the state_dict given to save has no {names[id(tensor)][0]!r} (file key {key!r}); "
            "pass the model's whole state dict, e.g. accelerator.get_state_dict(model)."
        )
    return tensor.detach()  # a tensor computed from the parameters (prompt encoders): read live


def state_to_save(
    model: nn.Module, name: str, dtype: Optional[torch.dtype] = None, state_dict: Optional[Mapping[str, Tensor]] = None
) -> dict[str, Tensor]:
    """Detached CPU copies of adapter ``name``'s tensors, cast to ``dtype`` (floats only).

    ``state_dict`` (the model's tensors by name, whole: e.g. ``accelerator.get_state_dict(model)``
    under FSDP or DeepSpeed ZeRO-3): read each tensor from it instead of the live, sharded one.
    """
    _, found = entries(model, name)
    names = tensor_names(model) if state_dict is not None else None
    out: dict[str, Tensor] = {}
    for entry in found:
        for key, tensor in entry.tensors.items():
            t = tensor.detach() if names is None else _from_state(state_dict, names, tensor, key)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            t = t.to("cpu").contiguous()
            if names is not None:  # the caller's tensor, or a shard-free copy: take our own
                out[key] = t.clone()
            else:
                out[key] = t.clone() if t.data_ptr() == tensor.data_ptr() else t  # never the live tensor
    return out
