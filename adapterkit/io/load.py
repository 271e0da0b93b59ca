"""load_adapter: an adapter folder (adapterkit's or PEFT's) into a model, checked key by key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .. import bases
from ..config import AdapterConfig, check_adapter_name
from ..errors import AdapterFileError, TargetError, UnsupportedModuleError
from ..inject import adapter_layers, attach, check_model
from ..transaction import unchanged_on_error
from ..targets import file_task, logical_modules, matches
from . import base_layers, diagnose, tasks
from .read import CONFIG_NAME, WEIGHTS_NAME, method_and_config, find_folder, read_config, read_tensors
from .state import Entry, entries
from ..anatomy import base_module


def _present_train_modules(model: nn.Module, config: AdapterConfig) -> AdapterConfig:
    """Drop ``train_modules`` entries that match no module of ``model``.

    PEFT adds its task's usual heads (``classifier`` and ``score`` for SEQ_CLS) whether the model
    has them or not; an entry that matches nothing has no tensors in the file either.
    """
    wanted = getattr(config, "train_modules", ())
    if not wanted:
        return config
    names = [n for n, _ in logical_modules(model) if n]
    keep = tuple(s for s in wanted if any(matches(n, (s,)) for n in names))
    return config if keep == tuple(wanted) else dataclasses.replace(config, train_modules=keep)


def _shape(t) -> tuple:
    return tuple(t.shape)


def _check_state(
    model: nn.Module, found: list[Entry], tensors: dict[str, torch.Tensor], folder: Path, data: dict, prefix: str
) -> list[base_layers.BaseTensor]:
    """Shapes first (an adapter for another base model), then missing / unexpected keys; returns
    the base-layer weights PEFT saved beside the adapter (``base_layers.py``)."""
    file = str(folder / WEIGHTS_NAME)
    expected: dict[str, tuple] = {}
    for entry in found:
        for key, live in entry.tensors.items():
            expected[key] = (entry.module, _shape(live))
            if key in tensors and _shape(tensors[key]) != _shape(live):
                raise AdapterFileError(
                    f"{file!r} does not fit this model: module {entry.module!r} tensor "
                    f"{key.rsplit(entry.module + '.', 1)[-1]!r} has shape {_shape(tensors[key])} in the file, "
                    f"but this model needs {_shape(live)}. Was the adapter trained on another base model?"
                )
    adapted = {e.module: bases.base_kind(base_module(model, e.module)) for e in found if not e.trained}
    unexpected = {k: t for k, t in tensors.items() if k not in expected}
    base = base_layers.split(model, list(adapted), unexpected, prefix)
    missing = [k for k in expected if k not in tensors]
    others = [k for k in unexpected if k not in {b.key for b in base}]
    if missing or others:
        raise AdapterFileError(diagnose.explain(folder, model, data, missing, others, adapted))
    return base


@torch.no_grad()
def _fill(found: list[Entry], tensors: dict[str, torch.Tensor]) -> None:
    for entry in found:
        mine = {k: tensors[k] for k in entry.tensors}
        if entry.fill is not None:
            entry.fill(entry.module, entry.adapter, mine)
            continue
        for key, live in entry.tensors.items():
            live.copy_(mine[key])


def load_adapter(
    model: nn.Module, path: Union[str, Path], name: str = "default", trainable: bool = False, allow_pickle: bool = False
) -> nn.Module:
    """Attach the adapter saved in ``path`` (by adapterkit or PEFT) as ``name``; returns ``model``.

    ``path`` is the adapter's folder; for a ``name`` other than "default", ``path/name`` is read
    instead when it holds an adapter (where ``save_adapter`` and PEFT put it). The
    adapter becomes active. Its parameters are frozen unless ``trainable``. Its modules take the
    train / eval mode of the modules they wrap (a model in eval mode runs them without dropout);
    unlike PEFT, the model's own modules keep their mode. Only safetensors are
    read unless ``allow_pickle`` (then ``adapter_model.bin`` is read with ``weights_only=True``).
    Base-model weights PEFT saved beside the adapter are copied into the base where they differ
    from the model's, with a warning (``base_layers.py``). A file that does not fit raises
    ``AdapterFileError`` with one specific reason (``diagnose.py``). On any error the model is left
    as it was.
    """
    check_model(model, "load_adapter")
    check_adapter_name(name)
    folder = find_folder(path, name)
    data = read_config(folder)
    method, config = method_and_config(data, folder)
    tensors = read_tensors(folder, allow_pickle=allow_pickle)
    _check_dtypes(tensors, folder)
    _check_sizes(method, config, tensors, folder)
    config = _present_train_modules(model, _for_model(method, config, data, model))
    with unchanged_on_error(model):
        try:
            with file_task(data.get("task_type")):  # heads saved whole are those of the file's task
                attach(model, config, name)
        except (TargetError, UnsupportedModuleError) as err:
            task = tasks.mismatch(data.get("task_type"), model)
            raise AdapterFileError(
                f"the adapter in {str(folder)!r} does not fit this {type(model).__name__}: {task or err}"
            ) from None
        _, found = entries(model, name)
        base = _check_state(model, found, tensors, folder, data, method.files.trained_prefix)
        differ = base_layers.check(model, base, folder)
        _fill(found, tensors)
        base_layers.apply(model, differ, folder)
        if not trainable:
            for _, layer in adapter_layers(model):
                if name in layer.adapters:
                    layer.adapters[name].requires_grad_(False)
            for entry in found:  # tensors held outside the method's layers (LoRA's trained base biases)
                if entry.adapter is None:
                    for tensor in entry.tensors.values():
                        tensor.requires_grad_(False)
    return model


def _for_model(method, config: AdapterConfig, data: dict, model: nn.Module) -> AdapterConfig:
    """The file's config fitted to ``model`` by its method (e.g. PEFT's ensure_weight_tying)."""
    fit = method.files.for_model if method.files is not None else None
    return fit(config, data, model) if fit is not None else config


def _check_sizes(method, config: AdapterConfig, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """The config's sizes against the file's tensors, before anything is allocated."""
    check = method.files.sizes_from_file if method.files is not None else None
    problems = check(config, {k: tuple(t.shape) for k, t in tensors.items()}) if check else []
    if problems:
        raise AdapterFileError(
            f"{str(folder)!r}: {CONFIG_NAME} and {WEIGHTS_NAME} disagree: {problems[0]}"
            f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}. One of the two files was "
            "edited or comes from another adapter; re-save the adapter."
        )


def _check_dtypes(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Adapter weights are floating point; an integer or boolean tensor would be cast silently."""
    bad = {k: t.dtype for k, t in tensors.items() if not t.is_floating_point()}
    if bad:
        key, dtype = next(iter(bad.items()))
        raise AdapterFileError(
            f"{str(folder / WEIGHTS_NAME)!r} holds {len(bad)} non-floating tensor(s) (e.g. {key!r}: {dtype}); "
            "adapter weights are float16 / bfloat16 / float32 / float64. The file is not an adapter "
            "saved by adapterkit or PEFT, or it was converted wrongly."
        )
