"""A merged model on disk: base model + adapter folder -> a plain transformers model folder.

The result (``config.json``, ``model.safetensors``, ``generation_config.json`` and the base's
tokenizer files) loads with ``transformers`` alone and gives the adapted model's outputs: the
adapter is folded into the weights (W' = W + scale B A, DoRA: W' = m (W + scale B A) / ||W + scale B A||)
and its trained modules (a classification head) replace the base's; no adapterkit module is left.

The base is the one given, or the one the adapter records (``train_config.yaml`` of a training
run, else ``base_model_name_or_path``); an offline alias or its hub id loads the alias
(``models.model_path``). The base is loaded for the adapter's task (``task_type``: a classifier with
``AutoModelForSequenceClassification`` and the adapter's number of labels, names from the run's
``labels.json``; seq2seq with ``AutoModelForSeq2SeqLM``; ...), and with the pad token id training
used. Base weights transformers had to initialise at random and the adapter does not replace
are refused rather than saved. The folder is written under a temporary name beside ``out`` and
renamed into place.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..errors import AdapterFileError, AdapterNameError, ConfigError, close_matches
from . import tasks
from .atomic import replace_folder, temp_name
from .load import load_adapter
from .read import CONFIG_NAME, WEIGHTS_NAME, adapter_folders, find_folder, read_config, tensor_header
from .save import as_dtype

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
_RUN_TASKS = {"classification": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM", "causal-lm": "CAUSAL_LM"}


def _run_config(folder: Path) -> dict:
    """The ``train_config.yaml`` adapterkit's training wrote beside the adapter ({} if none)."""
    import yaml

    file = folder / "train_config.yaml"
    data = yaml.safe_load(file.read_text(encoding="utf-8")) if file.is_file() else None
    return data if isinstance(data, dict) else {}


def recorded_base(folder: Path) -> str:
    """The base model an adapter folder records: its training run's model, else its config's."""
    name = (_run_config(folder).get("model") or {}).get("name") or read_config(folder).get("base_model_name_or_path")
    if not name:
        raise AdapterFileError(
            f"{str(folder / CONFIG_NAME)!r} does not record its base model (base_model_name_or_path is empty); "
            "pass the base model: --base MODEL (a folder, a hub name or an alias)."
        )
    return str(name)


def adapter_task(folder: Path) -> Optional[str]:
    """The adapter's PEFT task type: its ``task_type``, else its training run's task, else None."""
    task = read_config(folder).get("task_type")
    if task in tasks.TASK_TYPES:
        return task
    run = _run_config(folder)
    kind = (run.get("model") or {}).get("task") or (run.get("data") or {}).get("format")
    return _RUN_TASKS.get(kind)


def _labels(folder: Path) -> Optional[list[str]]:
    file = folder / "labels.json"
    names = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _num_labels(cls, config, folder: Path, prefix: str) -> Optional[int]:
    """The adapter's number of labels: its run's labels.json or num_labels, else the shape of the
    head tensor it saved (the head found by structure on a weightless copy of the model)."""
    names = _labels(folder)
    if names:
        return len(names)
    given = (_run_config(folder).get("model") or {}).get("num_labels")
    if given:
        return int(given)
    with torch.device("meta"):
        probe = cls.from_config(config)
    heads = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear) and m.out_features == config.num_labels]
    shape = tensor_header(folder / WEIGHTS_NAME).get(f"{prefix}{heads[-1]}.weight") if heads else None
    return shape[0][0] if shape else None


def _label_arguments(cls, config, folder: Path) -> dict:
    """``from_pretrained`` arguments for a classifier with the adapter's labels."""
    from ..registry import method_for_peft_type

    prefix = method_for_peft_type(read_config(folder).get("peft_type")).files.trained_prefix
    count = _num_labels(cls, config, folder, prefix) or config.num_labels
    extra: dict = {"num_labels": count}
    names = _labels(folder)
    if not names and count != config.num_labels:  # the base's label names do not fit
        names = [f"LABEL_{i}" for i in range(count)]
    if names and len(names) == count:
        extra.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if count != config.num_labels:
        extra["ignore_mismatched_sizes"] = True  # the base's own head has another size: a new one
    return extra


def _load_base(path: str, folder: Path, dtype: Optional[torch.dtype], allow_pickle: bool = False):
    """(model, dtype, names transformers initialised at random) for the adapter in ``folder``."""
    import transformers
    from safetensors import SafetensorError

    try:
        config = transformers.AutoConfig.from_pretrained(path)
        task = adapter_task(folder)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = tasks.auto_class(task) if task else (getattr(transformers, arch, None) if arch else None)
        cls = cls or transformers.AutoModelForCausalLM
        extra = _label_arguments(cls, config, folder) if task in ("SEQ_CLS", "TOKEN_CLS") else {}
        target = dtype or getattr(config, "dtype", None) or torch.float32
        target = getattr(torch, target) if isinstance(target, str) else target
        safe = {"weights_only": True} if allow_pickle else {"use_safetensors": True}
        model, info = cls.from_pretrained(path, dtype=target, output_loading_info=True, **extra, **safe)
        fresh = list(info.get("missing_keys", ())) + [
            k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", ())
        ]
        return model.eval(), target, fresh
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        # transformers' errors (often several lines), truncated weights, a pickle weights_only=True refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):  # torch's own words advise weights_only=False: never
            first = (
                "its pickle weights hold objects other than tensors, which are never unpickled "
                "(weights_only=True); convert them to safetensors where you trust them"
                if "GLOBAL" in str(err)
                else "its pickle weights are truncated or corrupt"
            )
        raise AdapterFileError(f"could not load the base model from {path!r}: {first}") from None


def _pad_token(model: nn.Module, path: str) -> None:
    """The pad token id training used (``models.load_model``): the tokenizer's, else its eos."""
    if getattr(model.config, "pad_token_id", None) is not None or not Path(path).is_dir():
        return
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _check_initialised(model: nn.Module, missing: list[str], path: str) -> None:
    """Weights the base lacked (random) must be replaced by the adapter's trained modules."""
    from ..methods.trained_module import TrainedModule

    trained = [n for n, m in model.named_modules() if isinstance(m, TrainedModule)]
    random = [k for k in missing if not any(k.startswith(n + ".") for n in trained)]
    if random:
        raise AdapterFileError(
            f"the base model in {path!r} has no weights for {', '.join(random[:3])}"
            f"{f' (and {len(random) - 3} more)' if len(random) > 3 else ''}, and the adapter does not hold them: "
            "the merged model would keep random values there. Give the base the adapter was trained on "
            "(--base), or save the adapter with that module in train_modules."
        )


def export_merged(
    adapter: Union[str, Path],
    base: Union[None, str, Path],
    out: Union[str, Path],
    dtype: Union[None, str, torch.dtype] = None,
    name: str = "default",
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """Merge adapter ``name`` of folder ``adapter`` into its base model; write folder ``out``.

    ``base``: a model folder, a hub name or an offline alias (None: the one the adapter records).
    ``dtype``: the saved weights' dtype ("bf16", "fp16", "fp32"; default: the base's own).
    The merge is computed in that dtype, as PEFT's ``merge_and_unload`` does. ``name``: an adapter
    the folder holds (an error lists them otherwise). A base with only pickle weights (``.bin``) is
    refused unless ``allow_pickle`` (then read with ``weights_only=True``). On any failure (a full
    disk too) nothing is left at ``out`` but what was there before.
    """
    from .. import inject
    from ..models import model_path
    from ..paths import check_output_folder

    out = Path(out)
    folder = _pick_adapter(adapter, name)
    given = str(base) if base is not None else recorded_base(folder)
    try:
        path = _base_path(model_path(given))
    except ConfigError as err:
        raise AdapterFileError(f"base model {given!r}: {err} Check --base.") from None
    _check_pickle(path, allow_pickle)
    if out.exists() and not overwrite:
        raise AdapterFileError(f"{str(out)!r} already exists; pass overwrite (--overwrite) or another --out.")
    check_output_folder(out, "--out")
    model, target, missing = _load_base(path, folder, as_dtype(dtype), allow_pickle)
    _pad_token(model, path)
    load_adapter(model, folder, name=name)
    _check_initialised(model, missing, path)
    inject.merge(model)
    model.to(target)
    tmp = temp_name(out)
    try:
        model.save_pretrained(str(tmp))
        for file in TOKENIZER_FILES:
            if (Path(path) / file).is_file():
                shutil.copy2(Path(path) / file, tmp / file)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _base_path(path: str) -> str:
    """A local base must be a transformers folder; a hub name is left to transformers."""
    local = Path(path)
    looks_local = local.is_absolute() or path.startswith(".") or local.exists()
    if looks_local and not local.is_dir():
        raise AdapterFileError(f"base model folder {path!r} does not exist; check --base.")
    if local.is_dir() and not (local / "config.json").is_file():
        raise AdapterFileError(
            f"base model folder {path!r} has no config.json; give a transformers model folder "
            f"(what save_pretrained writes)."
        )
    return path


def _check_pickle(path: str, allow_pickle: bool) -> None:
    """A local base with only pickle weights is refused unless asked for (never unpickled blindly)."""
    from ..models import pickle_only

    pickled = pickle_only(Path(path)) if Path(path).is_dir() else None
    if pickled and not allow_pickle:
        raise AdapterFileError(
            f"base model folder {path!r} holds only pickle weights ({', '.join(pickled)}), which can run "
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
