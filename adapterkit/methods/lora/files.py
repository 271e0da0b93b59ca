"""LoRA / rsLoRA / DoRA on disk: PEFT's ``LoraConfig`` keys and tensor names.

Config (``adapter_config.json``, ``peft_type: "LORA"``):

=================  ======================  ==========================================
adapterkit         PEFT key                notes
=================  ======================  ==========================================
rank               r
alpha              lora_alpha
dropout            lora_dropout
targets            target_modules          "all-linear" is written as the full names of
                                           the modules it picked (as PEFT does); a regex
                                           stays a string
exclude            exclude_modules         null when empty
layers             layers_to_transform     with "all-linear" or a regex, the picked
                                           modules' names are written instead (PEFT
                                           applies layer indices to lists only)
rslora             use_rslora
dora               use_dora
init               init_lora_weights       kaiming: true, random: false, others by name
                                           ("gaussian", "pissa", "pissa_niter_4", "olora",
                                           "loftq", "eva"); a file's pissa / olora / loftq
                                           runs again on load, as PEFT does (init.py)
layer_replication  layer_replication       [[start, end], ...] block ranges (replicate.py)
loftq_iter         loftq_config            {"loftq_bits": 4, "loftq_iter": n} with loftq
rank_pattern       rank_pattern            {pattern: rank}, PEFT's matching (patterns.py)
alpha_pattern      alpha_pattern           {pattern: alpha}
bias               bias                    "none" | "all" | "lora_only" (bias.py)
lora_bias          lora_bias               a bias on B: ``....lora_B.bias`` (out,)
trainable_token_   trainable_token_        a list of ids (input embedding) or {module: ids};
indices            indices                 tensors ``<m>.token_adapter.trainable_tokens_delta``
target_parameters  target_parameters       null when empty; with no module targets,
                                           target_modules is null
(derived)          fan_in_fan_out          true when a base is a transformers Conv1D
=================  ======================  ==========================================

Trained base biases are written as ``base_model.model.<m>.base_layer.bias`` (a module wrapped by
LoRA) or ``base_model.model.<m>.bias`` (any other), as PEFT writes them.

Tensors (``adapter_model.safetensors``), per adapted module ``M`` (its name in the model):
``base_model.model.M.lora_A.weight`` (rank, in), ``....lora_B.weight`` (out, rank), for DoRA
``....lora_magnitude_vector`` (out,); an embedding writes ``....lora_embedding_A`` (rank, num) and
``....lora_embedding_B`` (dim, rank); a convolution's A is (rank, in, k..), B (out, rank / groups, 1..),
its DoRA magnitude (1, out, 1..); a module with target_parameters writes per parameter
``M[.base_layer...].lora_A.weight`` (rank * E, in) and ``lora_B.weight`` (out, rank * E) (params.py);
nn.MultiheadAttention adds ``....base_layer.out_proj.lora_A.weight``
and ``lora_B.weight`` (methods/lora/mha.py).

PEFT options adapterkit cannot honour (``use_qalora``, ``target_parameters``, ...) are refused on load
with a ConfigError naming the key; keys that do not change the adapter's math are ignored.
``ensure_weight_tying: true`` (PEFT ties the adapter of a tied output embedding to the input
embedding's: lm_head's A = B_emb^T, B = A_emb^T, and ties their modules_to_save copies) is read by
adapting the output embedding as well, filled from the file's tensors for it (``fit_to_model``):
the same outputs; training the result further does not keep the two tied.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from torch import Tensor, nn

from ... import bases
from ...errors import ConfigError
from ...registry import PEFT_PREFIX, FileFormat
from ...targets import resolve
from .bias import trained_biases
from .config import LoRAConfig
from .params import ParamLoRA
from .patterns import rank_alpha
from .tokens import tokens_to_file
from ...anatomy import base_module, unwrapped

# adapterkit field -> PEFT key (train_modules <-> modules_to_save is done by adapterkit.io)
KEYS = {
    "rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "targets": "target_modules",
    "exclude": "exclude_modules",
    "layers": "layers_to_transform",
    "rslora": "use_rslora",
    "dora": "use_dora",
    "init": "init_lora_weights",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "bias": "bias",
    "lora_bias": "lora_bias",
    "trainable_token_indices": "trainable_token_indices",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters",
}
_INIT_TO_FILE = {"kaiming": True, "random": False}  # any other init is written as its name
# PEFT keys whose non-default values change what the adapter computes, with that default.
_UNSUPPORTED = {
    "use_qalora": False,
    "alora_invocation_tokens": None,
    "use_bdlora": None,
}
# inits that rewrite the base weights as well and that adapterkit does not implement
_BASE_CHANGING_INITS = ("corda", "lora_ga")


def config_to_file(config: LoRAConfig, model: nn.Module) -> dict[str, Any]:
    """The PEFT ``LoraConfig`` fields for ``config`` as attached to ``model``."""
    picked = (
        resolve(model, config.targets, config.exclude, config.layers, config.train_modules)
        if config.targets != ()
        else []
    )
    targets: Any = config.targets if config.targets != () else None
    layers = list(config.layers) if config.layers is not None else None
    if targets == "all-linear" or (isinstance(targets, str) and layers is not None):
        targets, layers = sorted(picked), None  # the picked modules' full names, as PEFT writes them
    elif targets is not None:
        targets = targets if isinstance(targets, str) else list(targets)
    exclude = config.exclude if isinstance(config.exclude, str) else (list(config.exclude) or None)
    conv1d = any(bases.base_kind(base_module(model, n)) == "conv1d" for n in picked)
    return {
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "exclude_modules": exclude,
        "layers_to_transform": layers,
        "layers_pattern": None,
        "use_rslora": config.rslora,
        "use_dora": config.dora,
        "init_lora_weights": _INIT_TO_FILE.get(config.init, config.init),
        "fan_in_fan_out": conv1d,
        "bias": config.bias,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "lora_bias": config.lora_bias,
        "trainable_token_indices": _tokens_to_file(config.trainable_token_indices),
        "layer_replication": [list(r) for r in config.layer_replication] if config.layer_replication else None,
        **({"loftq_config": {"loftq_bits": 4, "loftq_iter": config.loftq_iter}} if config.init == "loftq" else {}),
        "target_parameters": list(config.target_parameters) or None,
    }


def _tokens_to_file(spec):
    if spec is None:
        return None
    if isinstance(spec[0], tuple):
        return {name: list(ids) for name, ids in spec}
    return list(spec)


def config_from_file(data: Mapping[str, Any]) -> LoRAConfig:
    """A LoRAConfig from a PEFT ``LoraConfig`` dict; refuses options adapterkit cannot honour."""
    for key, default in _UNSUPPORTED.items():
        value = data.get(key, default)
        if value not in (default, None) and not (isinstance(default, dict) and not value):
            raise ConfigError(
                f"{key}={value!r} is not supported by adapterkit's LoRA (supported: {default!r}); "
                f"re-save the adapter without it, or load it with PEFT."
            )
    fields: dict[str, Any] = {}
    for field, key in KEYS.items():
        if data.get(key) is not None:
            fields[field] = data[key]
    for key in ("rank_pattern", "alpha_pattern"):
        if fields.get(key) == {}:
            fields.pop(key)
    if "init" in fields:
        fields["init"] = _init_from_file(fields["init"])
    loftq = data.get("loftq_config") or {}
    if fields.get("init") == "loftq":
        if loftq.get("loftq_bits", 4) != 4:
            raise ConfigError(f"loftq_config={loftq!r}: adapterkit's LoftQ quantizes to 4 bits (NF4) only.")
        fields["loftq_iter"] = loftq.get("loftq_iter", 1)
    if fields.get("target_parameters") and not fields.get("targets"):
        fields["targets"] = ()  # only parameters: PEFT writes target_modules null (or [])
    elif isinstance(fields.get("targets"), list) and not fields["targets"]:
        fields.pop("targets")
    try:
        return LoRAConfig(**fields)
    except ConfigError as err:
        raise ConfigError(f"{_with_file_keys(str(err))}") from None


def _init_from_file(value: Any) -> str:
    if value is True:
        return "kaiming"
    if value is False:
        return "random"
    if value in ("gaussian", "olora", "loftq", "eva", "pissa") or (
        isinstance(value, str) and value.startswith("pissa_niter_")
    ):
        return value
    if isinstance(value, str) and value.lower().startswith(_BASE_CHANGING_INITS):
        raise ConfigError(
            f"init_lora_weights={value!r} also rewrites the base model's weights, which the adapter "
            f"file does not hold; convert it to a plain LoRA with PEFT first "
            f"(save_pretrained(..., path_initial_model_for_weight_conversion=...))."
        )
    return "kaiming"  # other inits only choose starting values; the file's tensors replace them


def _with_file_keys(message: str) -> str:
    """'LoRAConfig.rank must ...' -> 'LoRAConfig.rank (file key 'r') must ...'."""

    def name(match: re.Match) -> str:
        key = KEYS.get(match.group(1))
        return match.group(0) + (f" (file key {key!r})" if key else "")

    return re.sub(r"LoRAConfig\.(\w+)", name, message, count=1)


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    """One layer's LoRA tensors under PEFT's keys (the adapter's own parameters)."""
    if isinstance(adapter, ParamLoRA):
        return adapter.file_tensors(module_name)
    prefix = PEFT_PREFIX + module_name
    if adapter.kind == "mha":
        from .mha import state_to_file as mha_tensors

        return mha_tensors(prefix, adapter)
    if adapter.kind == "embedding":
        out = {f"{prefix}.lora_embedding_A": adapter.a, f"{prefix}.lora_embedding_B": adapter.b}
        if adapter.magnitude is not None:
            out[f"{prefix}.lora_magnitude_vector"] = adapter.magnitude
        return out
    out = {f"{prefix}.lora_A.weight": adapter.a, f"{prefix}.lora_B.weight": adapter.b}
    if adapter.bias is not None:
        out[f"{prefix}.lora_B.bias"] = adapter.bias
    if adapter.magnitude is not None:
        out[f"{prefix}.lora_magnitude_vector"] = adapter.magnitude
    return out


def sizes_from_file(config: LoRAConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """A: (r, in) / (r, in, k..), B: (out, r) / (out, r, k..): the file's r must be the config's
    (rank_pattern's for the module where a pattern matches it)."""
    problems = []
    for key, shape in shapes.items():
        module = key[len(PEFT_PREFIX) :].rsplit(".lora_", 1)[0]
        rank = rank_alpha(config, module)[0]
        part = key.rsplit(".", 2)
        axis = {"lora_A": 0, "lora_B": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}.get(
            part[-2] if part[-1] == "weight" else part[-1]
        )
        if axis is None or len(shape) <= axis:
            continue
        if config.target_parameters:  # LoRA on parameters holds rank * experts (params.py); checked on attach
            ranks = {config.rank, *(r for _, r in config.rank_pattern)}
            if any(shape[axis] % r == 0 for r in ranks):
                continue
        grouped = axis == 1 and len(shape) > 2 and shape[1] and rank % shape[1] == 0  # conv B: r / groups
        if shape[axis] != rank and not grouped:
            problems.append(f"{key!r} has shape {tuple(shape)}, rank {shape[axis]}, but the config says r={rank}")
    return problems


def fit_to_model(config: LoRAConfig, data: Mapping[str, Any], model: nn.Module) -> LoRAConfig:
    """PEFT's ``ensure_weight_tying`` on a model whose input and output embeddings share a weight:
    where the config adapts (or trains) the input embedding, the output embedding too."""
    from ...anatomy import logical_modules
    from ...targets import matches

    from ...anatomy import input_embedding, output_head

    if not data.get("ensure_weight_tying"):
        return config
    inner = [unwrapped(input_embedding(model)), unwrapped(output_head(model))]
    if inner[0] is None or inner[1] is None or getattr(inner[0], "weight", None) is not getattr(inner[1], "weight", 1):
        return config
    names = {id(m): n for n, m in logical_modules(model) if n}
    emb, out = names.get(id(inner[0])), names.get(id(inner[1]))
    if emb is None or out is None:
        return config
    changes: dict[str, Any] = {}
    if isinstance(config.targets, (list, tuple)) and matches(emb, config.targets) and not matches(out, config.targets):
        changes["targets"] = tuple(config.targets) + (out,)
    elif (
        isinstance(config.targets, str)
        and config.targets != "all-linear"
        and matches(emb, config.targets)
        and not matches(out, config.targets)
    ):
        changes["targets"] = f"(?:{config.targets})|{re.escape(out)}"
    if matches(emb, config.train_modules) and not matches(out, config.train_modules):
        changes["train_modules"] = tuple(config.train_modules) + (out,)
    return dataclasses.replace(config, **changes) if changes else config


def extra_to_file(model: nn.Module, config: LoRAConfig, name: str) -> dict[str, Tensor]:
    """Trained base biases (``bias``) and token rows (``trainable_token_indices``) under PEFT's keys."""
    return {**trained_biases(model, config, name), **tokens_to_file(model, name)}


FILES = FileFormat(
    peft_type="LORA",
    config_to_file=config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
    for_model=fit_to_model,
    extra_to_file=extra_to_file,
)
