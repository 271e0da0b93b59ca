"""save_adapter: adapters to disk in PEFT's layout, atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..errors import AdapterFileError, AdapterNameError
from ..inject import adapter_config, adapter_names
from ..registry import method_for
from . import base_layers, tasks
from .atomic import staged
from .card import Saved, model_card
from .read import CARD_NAME, CONFIG_NAME, PICKLE_NAME, WEIGHTS_NAME
from .serving import vllm_summary
from .state import entries, state_to_save

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def as_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """A floating dtype to save in (None: as the tensors are); anything else is refused."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise AdapterFileError(
        f"cannot save adapter weights as dtype {dtype!r}: a cast to a non-floating or unknown dtype would destroy "
        f"them; use one of: {', '.join(DTYPES)}, or a floating torch.dtype."
    )


def base_model_name(model: nn.Module) -> Optional[str]:
    """The base to record: an offline alias's hub id, else the model's ``name_or_path`` as loaded."""
    from ..models import portable_name

    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(model, "name_or_path", None)
    return portable_name(str(name)) if name else None


def _task(model: nn.Module, name: str) -> Optional[str]:
    """The ``task_type`` to write: the model's, unless adapter ``name`` adapts a module inside a head
    that PEFT's wrapper for that task saves whole (an adapter loaded from a PEFT file saved without a
    task): then none, as in that file, so that PEFT and adapterkit read it as it was trained."""
    from ..targets import within

    task = tasks.task_type(model)
    heads = tasks.PEFT_HEADS.get(task, ())
    if heads and any(within(e.module, heads) for e in entries(model, name)[1] if not e.trained):
        return None
    return task


def _heads(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """Heads PEFT's task wrapper expects in the file that the adapter does not train (tasks.py)."""
    config = adapter_config(model, name)
    if method_for(config).files.peft_type.startswith("ADAPTERKIT_"):
        return {}  # PEFT does not read these files
    return tasks.heads_to_save(model, _task(model, name), tuple(getattr(config, "train_modules", ())))


def adapter_json(model: nn.Module, name: str) -> dict[str, Any]:
    """The ``adapter_config.json`` object for adapter ``name``."""
    config = adapter_config(model, name)
    method = method_for(config)
    if method.files is None:
        raise AdapterFileError(f"adapter {name!r} is a {config.method} adapter, which has no file format yet.")
    data: dict[str, Any] = {
        "peft_type": method.files.peft_type,
        "base_model_name_or_path": base_model_name(model),
        "task_type": _task(model, name),
        "inference_mode": True,
    }
    if "train_modules" in {f.name for f in dataclasses.fields(config)}:
        data["modules_to_save"] = list(config.train_modules) + list(_heads(model, name)) or None
    data.update(method.files.config_to_file(config, model))
    return data


def _base_tensors(model: nn.Module, name: str, dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    """Base weights saved beside the adapter, as PEFT does (copies): the untrained task heads of
    ``_heads`` under modules_to_save keys; the embeddings of a resized vocabulary (base_layers.py)."""
    prefix = method_for(adapter_config(model, name)).files.trained_prefix
    found: dict[str, torch.Tensor] = {}
    for module_name, module in _heads(model, name).items():
        found.update({f"{prefix}{module_name}.{k}": t for k, t in module.state_dict().items()})
    _, layers = entries(model, name)
    found.update(
        base_layers.resized_embeddings(
            model, [e.module for e in layers if not e.trained], [e.module for e in layers if e.trained], prefix
        )
    )
    return {
        k: t.detach().to("cpu", dtype or t.dtype).contiguous().clone()
        for k, t in found.items()
        if t.is_floating_point()
    }


def _folders(model: nn.Module, path: Path, name: Optional[str]) -> dict[str, Path]:
    names = adapter_names(model)
    if not names:
        raise AdapterNameError("this model has no adapter to save; attach or load one first.")
    if name is not None and name not in names:
        adapter_config(model, name)  # raises the unknown-name error with suggestions
    chosen = [name] if name is not None else names
    return {n: path if n == "default" else path / n for n in chosen}


def _check_target(path: Path, folders: dict[str, Path], overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise AdapterFileError(f"{str(path)!r} is a file; save_adapter writes a folder. Pick another path.")
    if overwrite:
        return
    for folder in folders.values():
        for file in (CONFIG_NAME, WEIGHTS_NAME, PICKLE_NAME) + ((CARD_NAME,) if folder == path else ()):
            if (folder / file).exists():
                raise AdapterFileError(
                    f"{str(folder)!r} already holds {file}; pass overwrite=True to replace the "
                    f"adapter files there, or save to another folder."
                )


def save_adapter(
    model: nn.Module,
    path: Union[str, Path],
    name: Optional[str] = None,
    overwrite: bool = False,
    dtype: Union[None, str, torch.dtype] = None,
    state_dict: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Write adapter ``name`` (default: every adapter) to folder ``path``; returns ``path``.

    PEFT's layout: ``adapter_config.json`` + ``adapter_model.safetensors``; the ``default`` adapter
    at ``path``, any other in ``path/<name>``; a ``README.md`` model card at ``path``. Tensors are
    only the adapters' (no base weights), optionally cast to ``dtype`` ("bf16", "fp16", "fp32"). The
    card says whether vLLM's LoRA loader takes each adapter, and if not, why (``serving.py``).
    All files land together or not at all; an existing adapter is replaced only with ``overwrite``.
    ``state_dict``: the model's whole tensors by name, for a sharded model (FSDP, DeepSpeed ZeRO-3),
    as PEFT's ``save_pretrained(state_dict=...)``: on every process ``sd = accelerator.get_state_dict(model)``,
    then on the main one ``save_adapter(accelerator.unwrap_model(model), path, state_dict=sd)``.
    """
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    dtype = as_dtype(dtype)
    folders = _folders(model, path, name)
    _check_target(path, folders, overwrite)
    saved = []
    with staged() as stage:
        for adapter, folder in folders.items():
            data = adapter_json(model, adapter)
            tensors = {**state_to_save(model, adapter, dtype, state_dict), **_base_tensors(model, adapter, dtype)}
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            stage(folder / CONFIG_NAME, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
            stage(folder / WEIGHTS_NAME, lambda tmp, t=tensors: save_file(t, str(tmp), metadata={"format": "pt"}))
            rel = "." if folder == path else folder.name
            count = sum(1 for e in entries(model, adapter)[1] if not e.trained)
            vllm = vllm_summary(data, {k: tuple(t.shape) for k, t in tensors.items()})
            saved.append(Saved(adapter, rel, data["peft_type"], adapter_config(model, adapter), tensors, count, vllm))
        card = model_card(saved, base_model_name(model), __version__)
        stage(path / CARD_NAME, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    return path
