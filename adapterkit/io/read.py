"""Reading adapter folders: find the files, parse the config, load the tensors, with clear errors.

Nothing here touches a model. A folder holds ``adapter_config.json`` and
``adapter_model.safetensors``; a folder written with several adapters holds the ``default`` one at
its root and each other one in a sub-folder named after it (PEFT's layout).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Union

import torch

from ..config import AdapterConfig
from ..errors import AdapterFileError, AdapterFileMissing, ConfigError
from ..registry import Method, method_for_peft_type

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
CARD_NAME = "README.md"


def adapter_folders(path: Union[str, Path]) -> dict[str, Path]:
    """{adapter name: folder} for the adapters under ``path``: its root and its sub-folders."""
    path = Path(path)
    found = {}
    if (path / CONFIG_NAME).is_file():
        found["default"] = path
    if path.is_dir():
        for sub in sorted(path.iterdir()):
            if sub.is_dir() and (sub / CONFIG_NAME).is_file():
                found[sub.name] = sub
    return found


def find_folder(path: Union[str, Path], name: str = "default") -> Path:
    """The folder holding adapter ``name``: ``path/name`` if ``name`` is not "default" and that
    sub-folder holds an adapter (PEFT's layout for several adapters), else ``path`` itself."""
    path = Path(path)
    if not path.exists():
        raise AdapterFileMissing(f"adapter folder {str(path)!r} does not exist; check the path.")
    if not path.is_dir():
        raise AdapterFileError(f"{str(path)!r} is a file; give the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}.")
    if name != "default" and (path / name / CONFIG_NAME).is_file():
        return path / name  # where save_adapter (and PEFT) put a non-default adapter
    if (path / CONFIG_NAME).is_file():
        return path
    subs = [n for n in adapter_folders(path) if n != "default"]
    hint = (
        f" It holds adapters in sub-folders: {', '.join(subs)}; pass the sub-folder, or name=<one of them>."
        if subs
        else ""
    )
    raise AdapterFileMissing(f"no {CONFIG_NAME} in {str(path)!r}.{hint}")


def read_config(folder: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of ``folder``."""
    file = folder / CONFIG_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterFileMissing(f"{str(file)!r} is missing; an adapter folder needs {CONFIG_NAME}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFileError(f"{str(file)!r} is not valid JSON ({err}); re-save the adapter.") from None
    if not isinstance(data, dict):
        raise AdapterFileError(f"{str(file)!r} holds a {type(data).__name__}, not a JSON object.")
    if "peft_type" not in data:
        raise AdapterFileError(f"{str(file)!r} has no 'peft_type'; it is not an adapter config.")
    return data


def file_method(data: dict[str, Any], folder: Path) -> Method:
    """The registered method that reads a config with this ``peft_type``."""
    try:
        return method_for_peft_type(data.get("peft_type"))
    except ConfigError as err:
        raise AdapterFileError(f"{str(folder / CONFIG_NAME)!r}: {err}") from None


def method_and_config(data: dict[str, Any], folder: Path) -> tuple[Method, AdapterConfig]:
    """(method, adapterkit config) for a parsed ``adapter_config.json``."""
    method = file_method(data, folder)
    try:
        config = method.files.config_from_file(data)
        fields = {f.name for f in dataclasses.fields(config)}
        saved = data.get("modules_to_save")
        if "train_modules" in fields and saved:
            if isinstance(saved, str) or not isinstance(saved, list):
                raise ConfigError(f"modules_to_save must be a list of module names; got {saved!r}.")
            config = dataclasses.replace(config, train_modules=tuple(saved))
    except ConfigError as err:
        raise ConfigError(f"{str(folder / CONFIG_NAME)!r}: {err}") from None
    return method, config


def read_tensors(folder: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The adapter's tensors: safetensors, or (only with ``allow_pickle``) a ``.bin`` file."""
    file = folder / WEIGHTS_NAME
    if file.is_file():
        return _load_safetensors(file)
    pickled = folder / PICKLE_NAME
    if pickled.is_file():
        if not allow_pickle:
            raise AdapterFileError(
                f"{str(folder)!r} holds only {PICKLE_NAME}, a pickle file, which can run code when "
                f"loaded; adapterkit reads {WEIGHTS_NAME}. Convert it, or pass allow_pickle=True "
                f"if you trust its source (it is then read with weights_only=True)."
            )
        try:
            return torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
            raise AdapterFileError(f"{str(pickled)!r} could not be read: {err}") from None
    raise AdapterFileError(f"{str(file)!r} is missing; an adapter folder needs {WEIGHTS_NAME}.")


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise AdapterFileError(f"{str(file)!r} is truncated or corrupt ({err}); re-save or re-download it.") from None


_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def tensor_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            out = {}
            for key in f.keys():
                part = f.get_slice(key)
                out[key] = (tuple(part.get_shape()), _DTYPE_NAMES.get(part.get_dtype(), part.get_dtype()))
            return out
    except Exception as err:  # noqa: BLE001
        raise AdapterFileError(f"{str(file)!r} is truncated or corrupt ({err}); re-save or re-download it.") from None
