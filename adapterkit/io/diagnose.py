"""Why an adapter file's tensors do not match what its config builds on a model: one specific reason.

``load_adapter`` builds the adapter its ``adapter_config.json`` describes, then compares the
tensor keys that adapter needs with the file's. When they differ, ``explain`` names the first
cause it recognises, in this order:

1. the task: the file's ``task_type`` is not this model's (a ``SEQ_CLS`` adapter, saved from
   ``BertForSequenceClassification`` with keys under ``bert.``, loaded into a bare ``BertModel``);
2. a tensor of a PEFT feature adapterkit does not implement, named by its key:
   ``.lora_B.bias`` (``lora_bias=True``), ``.token_adapter.`` (``trainable_token_indices``),
   ``.base_layer.`` of a module the adapter does not wrap (PEFT's saved base layers),
   ``.lora_magnitude_vector`` without ``use_dora``, another PEFT method's tensors (``hada_``,
   ``lokr_``, ``ia3_l``, ...), LoRA tensors of a kind that does not fit the module
   (``lora_embedding_A`` on a Linear), LoRA tensors for a module ``target_modules`` does not
   select, a whole module not listed in ``modules_to_save``;
3. tensors the config needs that the file lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..registry import PEFT_PREFIX
from . import tasks
from ..anatomy import unwrapped

# leaf-name prefixes of other PEFT methods' tensors (each tuner's ``prefix`` in peft/tuners/*/model.py)
_OTHER_METHODS = (
    ("hada_", "LoHa"),
    ("lokr_", "LoKr"),
    ("oft_", "OFT"),
    ("boft_", "BOFT"),
    ("vera_lambda_", "VeRA"),
    ("fourierft_", "FourierFT"),
    ("vblora_", "VB-LoRA"),
    ("lora_E", "AdaLoRA"),
    ("ranknum", "AdaLoRA"),
    ("ia3_l", "IA3"),
    ("randlora_", "RandLoRA"),
    ("adapter_down", "adapterkit's bottleneck adapter"),
    ("adapter_up", "adapterkit's bottleneck adapter"),
    ("prompt_embeddings", "prompt / prefix / P-tuning"),
)
_LORA_LEAVES = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
# the other methods adapterkit reads: their per-module leaves ("oft_R.weight" has two parts) and peft_type
_MORE_LEAVES = {
    "oft_R": "OFT",
    "ln_tuning_layers": "LN_TUNING",
    "boft_R": "BOFT",
    "boft_s": "BOFT",
    "vera_lambda_b": "VERA",
    "vera_lambda_d": "VERA",
}


def _module_and_leaf(key: str) -> tuple[str, str]:
    """``base_model.model.M.lora_A.weight`` -> (``M``, ``lora_A.weight``)."""
    body = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key.removeprefix("base_model.")
    for marker in (".base_layer.", ".token_adapter."):
        if marker in body:
            module, _, rest = body.partition(marker)
            return module, marker.strip(".") + "." + rest
    parts = body.split(".")
    if len(parts) >= 2 and (parts[-2] in _LORA_LEAVES or parts[-2] in ("oft_R", "ln_tuning_layers")):
        return ".".join(parts[:-2]), ".".join(parts[-2:])
    return ".".join(parts[:-1]), parts[-1]


def feature(key: str, data: dict[str, Any], model: nn.Module, adapted: dict[str, str]) -> str:
    """What one unexpected tensor is (a PEFT feature, another method, another model) and what to do.

    ``adapted``: {module: base kind} of the layers the adapter wraps on this model."""
    module, leaf = _module_and_leaf(key)
    names = dict(model.named_modules())
    if leaf.endswith(".bias") and leaf.split(".")[0] in _LORA_LEAVES:
        return (
            f"{key!r} is a LoRA bias (PEFT's lora_bias=True), which adapterkit's LoRA does not have; "
            "load this adapter with PEFT, or re-train it without lora_bias"
        )
    if leaf.startswith("token_adapter."):
        return (
            f"{key!r} holds trainable token rows (PEFT's trainable_token_indices / TRAINABLE_TOKENS), "
            "which adapterkit does not implement; load it with PEFT, or train the embedding as a "
            "train_modules entry instead"
        )
    if leaf.startswith("base_layer.") and module in adapted:
        return (
            f"{key!r} is a base-layer tensor PEFT saved for {module!r}, but this model's {module} has no "
            f"parameter {leaf.removeprefix('base_layer.')!r}; the file was saved from another model"
        )
    if leaf.startswith("base_layer."):
        return (
            f"{key!r} is a base-layer weight PEFT saved (save_embedding_layers) for {module!r}, a module "
            "this adapter does not wrap here; the file's target_modules and tensors disagree, or it was "
            "saved from another model"
        )
    if leaf == "lora_magnitude_vector" and not data.get("use_dora"):
        return (
            f"{key!r} is a DoRA magnitude, but the config has use_dora={data.get('use_dora')!r}; set "
            "\"use_dora\": true in adapter_config.json if the adapter is DoRA"
        )
    for prefix, method in _OTHER_METHODS:
        if leaf.split(".")[0].startswith(prefix) and _MORE_LEAVES.get(leaf.split(".")[0]) != data.get("peft_type"):
            return (
                f"{key!r} is a tensor of PEFT's {method} method, but the config's peft_type is "
                f"{data.get('peft_type')!r}; the config and the weights come from different adapters"
            )
    return _placement(key, module, leaf, data, names, adapted)


def _placement(key: str, module: str, leaf: str, data: dict, names: dict, adapted: dict[str, str]) -> str:
    """An unexpected tensor of a known kind: on the wrong module, or on a module not selected."""
    kind = leaf.split(".")[0]
    if module in adapted and kind in _LORA_LEAVES:
        wanted = "lora_embedding_A/B" if adapted[module] == "embedding" else "lora_A/lora_B.weight"
        inner = unwrapped(names[module])
        return (
            f"{key!r} is a {kind} tensor, but {module!r} here is a {type(inner).__name__} whose "
            f"LoRA tensors are {wanted}; the file was saved from another architecture"
        )
    if module in names and (kind in _LORA_LEAVES or _MORE_LEAVES.get(kind) == data.get("peft_type")):
        return (
            f"{key!r} adapts {module!r}, which the config's target_modules={data.get('target_modules')!r} "
            "does not select on this model; the config was edited, or the file is for another model"
        )
    if module in names:
        return (
            f"{key!r} is a weight of the whole module {module!r} (PEFT's modules_to_save), but the config's "
            f"modules_to_save={data.get('modules_to_save')!r} does not list it; add it there"
        )
    return (
        f"{key!r} is for module {module!r}, which this model does not have; the file was saved from "
        "another model (compare its base_model_name_or_path)"
    )


def explain(
    folder: Path,
    model: nn.Module,
    data: dict[str, Any],
    missing: list[str],
    unexpected: list[str],
    adapted: dict[str, str],
) -> str:
    """The error message for a file whose keys do not match what the config builds on ``model``."""
    from .read import WEIGHTS_NAME

    counts = []
    if missing:
        counts.append(f"{len(missing)} missing, e.g. {missing[0]!r}")
    if unexpected:
        counts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    head = f"{str(folder / WEIGHTS_NAME)!r} does not fit this {type(model).__name__}"
    tail = f" (tensors: {'; '.join(counts)})."
    task = tasks.mismatch(data.get("task_type"), model)
    if task:
        return f"{head}: {task}{tail}"
    if unexpected:
        return f"{head}: {feature(unexpected[0], data, model, adapted)}{tail}"
    module, _ = _module_and_leaf(missing[0])
    return (
        f"{head}: the config builds an adapter on {module!r} but the file has no tensor {missing[0]!r}; "
        f"the file is incomplete, or its adapter_config.json was edited{tail}"
    )
