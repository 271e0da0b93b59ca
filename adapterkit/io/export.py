"""A merged model on disk: base folder + adapter folder -> a plain transformers model folder.

The result (``config.json``, ``model.safetensors``, ``generation_config.json`` and the base's
tokenizer files) loads with ``transformers`` alone: the adapter is folded into the weights
(W' = W + scale B A, DoRA: W' = m (W + scale B A) / ||W + scale B A||), no adapterkit module is
left. The folder is written under a temporary name beside ``out`` and renamed into place.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import AdapterFileError, AdapterNameError, close_matches
from .atomic import replace_folder, temp_name
from .load import load_adapter
from .read import adapter_folders, find_folder
from .save import as_dtype

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
)


def _check_base(base: Path, allow_pickle: bool) -> None:
    from ..models import pickle_only

    if not base.is_dir():
        raise AdapterFileError(f"base model folder {str(base)!r} does not exist; check --base.")
    if not (base / "config.json").is_file():
        raise AdapterFileError(
            f"base model folder {str(base)!r} has no config.json; give a transformers model folder "
            f"(what save_pretrained writes)."
        )
    pickled = pickle_only(base)
    if pickled and not allow_pickle:
        raise AdapterFileError(
            f"base model folder {str(base)!r} holds only pickle weights ({', '.join(pickled)}), which can run "
            f"code when loaded; convert them to safetensors, or pass allow_pickle (--allow-pickle) if you "
            f"trust their source (they are then read with weights_only=True)."
        )


def _pick_adapter(adapter: Union[str, Path], name: str) -> Path:
    """The folder of adapter ``name``; an error naming the adapters there if it holds no such one."""
    folders = adapter_folders(adapter)
    if name in folders:
        return folders[name]
    folder = find_folder(adapter)  # raises the errors for a missing or empty folder
    if name != "default" and list(folders) == ["default"] and folder.name == name:
        return folder  # the sub-folder of adapter ``name`` itself
    raise AdapterNameError(
        f"{str(adapter)!r} holds no adapter named {name!r}{close_matches(name, folders)}; it holds: "
        f"{', '.join(folders)}. Pass --name (name=) one of those."
    )


def _load_base(base: Path, dtype: Optional[torch.dtype], allow_pickle: bool = False):
    import transformers
    from safetensors import SafetensorError

    try:
        config = transformers.AutoConfig.from_pretrained(str(base))
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModelForCausalLM
        target = dtype or getattr(config, "dtype", None) or torch.float32
        if isinstance(target, str):
            target = getattr(torch, target)
        safe = {"weights_only": True} if allow_pickle else {"use_safetensors": True}
        return cls.from_pretrained(str(base), dtype=target, **safe).eval(), target
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        # transformers' errors, truncated weights, a pickle that weights_only=True refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):  # torch's own words advise weights_only=False: never
            first = ("its pickle weights hold objects other than tensors, which are never unpickled "
                     "(weights_only=True); convert them to safetensors where you trust them"
                     if "GLOBAL" in str(err) else "its pickle weights are truncated or corrupt")
        raise AdapterFileError(f"could not load the base model from {str(base)!r}: {first}") from None


def export_merged(adapter: Union[str, Path], base: Union[str, Path], out: Union[str, Path],
                  dtype: Union[None, str, torch.dtype] = None, name: str = "default",
                  overwrite: bool = False, allow_pickle: bool = False) -> Path:
    """Merge adapter ``name`` of folder ``adapter`` into the model in folder ``base``; write ``out``.

    ``dtype``: the saved weights' dtype ("bf16", "fp16", "fp32"; default: the base's own).
    The merge is computed in that dtype, as PEFT's ``merge_and_unload`` does. ``name``: an adapter
    the folder holds (an error lists them otherwise). A base with only pickle weights (``.bin``) is
    refused unless ``allow_pickle`` (then read with ``weights_only=True``). On any failure (a full
    disk too) nothing is left at ``out`` but what was there before.
    """
    from .. import inject
    from ..paths import check_output_folder

    base, out = Path(base), Path(out)
    folder = _pick_adapter(adapter, name)
    _check_base(base, allow_pickle)
    if out.exists() and not overwrite:
        raise AdapterFileError(f"{str(out)!r} already exists; pass overwrite (--overwrite) or another --out.")
    check_output_folder(out, "--out")
    model, target = _load_base(base, as_dtype(dtype), allow_pickle)
    load_adapter(model, folder, name=name)
    inject.merge(model)
    model.to(target)
    tmp = temp_name(out)
    try:
        model.save_pretrained(str(tmp))
        for file in TOKENIZER_FILES:
            if (base / file).is_file():
                shutil.copy2(base / file, tmp / file)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
