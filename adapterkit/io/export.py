"""A merged model on disk: base folder + adapter folder -> a plain transformers model folder.

The result (``config.json``, ``model.safetensors``, ``generation_config.json`` and the base's
tokenizer files) loads with ``transformers`` alone: the adapter is folded into the weights
(W' = W + scale B A, DoRA: W' = m (W + scale B A) / ||W + scale B A||), no adapterkit module is
left. The folder is written under a temporary name beside ``out`` and renamed into place.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import AdapterFileError
from .atomic import replace_folder, temp_name
from .load import load_adapter
from .read import find_folder
from .save import as_dtype

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
)


def _load_base(base: Path, dtype: Optional[torch.dtype]):
    import transformers

    if not (base / "config.json").is_file():
        raise AdapterFileError(
            f"base model folder {str(base)!r} has no config.json; give a transformers model folder "
            f"(what save_pretrained writes)."
        )
    try:
        config = transformers.AutoConfig.from_pretrained(str(base))
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModelForCausalLM
        target = dtype or getattr(config, "dtype", None) or torch.float32
        if isinstance(target, str):
            target = getattr(torch, target)
        return cls.from_pretrained(str(base), dtype=target).eval(), target
    except (OSError, ValueError, KeyError) as err:  # transformers' own errors, often several lines
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterFileError(f"could not load the base model from {str(base)!r}: {first}") from None


def export_merged(adapter: Union[str, Path], base: Union[str, Path], out: Union[str, Path],
                  dtype: Union[None, str, torch.dtype] = None, name: str = "default",
                  overwrite: bool = False) -> Path:
    """Merge adapter ``name`` of folder ``adapter`` into the model in folder ``base``; write ``out``.

    ``dtype``: the saved weights' dtype ("bf16", "fp16", "fp32"; default: the base's own).
    The merge is computed in that dtype, as PEFT's ``merge_and_unload`` does.
    """
    from .. import inject

    base, out = Path(base), Path(out)
    if not base.is_dir():
        raise AdapterFileError(f"base model folder {str(base)!r} does not exist; check --base.")
    folder = find_folder(adapter, name)
    if out.exists() and not overwrite:
        raise AdapterFileError(f"{str(out)!r} already exists; pass overwrite (--overwrite) or another --out.")
    model, target = _load_base(base, as_dtype(dtype))
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
