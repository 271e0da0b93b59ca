"""Everything a run needs before its first step: the model with its adapter, and the data."""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

from .. import checkpointing, inject
from ..anatomy import classifier_heads
from ..errors import ConfigError
from . import data as data_mod
from .config import TrainConfig


def build_model(config: TrainConfig, task: str, num_labels: Optional[int]):
    """(model with the adapter attached, tokenizer); the base is frozen, quantized if asked."""
    import adapterkit as ak
    from ..models import load_model

    m = config.model
    model, tokenizer = load_model(m.name, task=task, num_labels=num_labels, dtype=m.dtype)
    if config.quantization is not None:
        q = config.quantization
        ak.quantize(
            model, bits=q.bits, quant_type=q.quant_type, double_quant=q.double_quant, block=q.block, skip=q.skip
        )
    adapter = config.adapter
    if adapter is None:  # no adapter: the stages choose which weights train
        for p in model.parameters():
            p.requires_grad_(False)
        return _checkpointing(model, m), tokenizer
    if task == "classification" and not getattr(adapter, "train_modules", ("x",)):
        # a new head is random: train it with the adapter (as PEFT does for SEQ_CLS)
        adapter = dataclasses.replace(adapter, train_modules=classifier_heads(model))
    inject.attach(model, adapter)
    return _checkpointing(model, m), tokenizer


def _checkpointing(model, m):
    if m.gradient_checkpointing:
        if not checkpointing.supported(model):
            raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not support it.")
        checkpointing.enable(model)
    return model


def model_task(config: TrainConfig) -> str:
    from ..models import default_task

    if config.model.task:
        return config.model.task
    if config.data.format in ("classification", "seq2seq"):
        return config.data.format
    return default_task(config.model.name)


def read_data(config: TrainConfig) -> tuple[list[dict], list[dict], Optional[list[str]], int]:
    """(train records, eval records, class names or None, num_labels or 0)."""
    d = config.data
    train = data_mod.read_records(d.train, d.format)
    held = data_mod.read_records(d.eval, d.format) if d.eval else []
    if not d.eval and d.eval_split > 0:
        order = list(range(len(train)))
        random.Random(config.optim.seed).shuffle(order)
        cut = max(1, int(len(train) * d.eval_split))
        held = [train[i] for i in order[:cut]]
        train = [train[i] for i in order[cut:]]
    if not train:
        held_out = f" once data.eval_split {d.eval_split} is held out" if held else ""
        raise ConfigError(f"data.train {d.train!r} holds no records{held_out}.")
    e = config.eval
    if not held and (e.every or e.patience or e.generate):
        raise ConfigError(
            "the eval section asks for evaluations (every, patience or generate) but there is "
            "no held-out data; set data.eval to a file or data.eval_split to a fraction."
        )
    names, num_labels = None, 0
    if d.format == "classification":
        names = data_mod.label_names(train, d, d.train)
        if names:
            num_labels = config.model.num_labels or len(names)
        else:
            num_labels = config.model.num_labels or 1 + max(data_mod.label_ids(train, d, d.train))
            _check_label_range(train, d.train, d, num_labels)
            _check_label_range(held, d.eval or d.train, d, num_labels)
    return train, held, names, num_labels


def _check_label_range(records: list[dict], path: str, d, num_labels: int) -> None:
    """Integer labels index the head's outputs: each must be below num_labels."""
    for i, (r, label) in enumerate(zip(records, data_mod.label_ids(records, d, path))):
        if label >= num_labels:
            where = getattr(r, "where", "") or f"{path}: record {i + 1}"
            raise ConfigError(
                f"{where}: label {label} is out of range for {num_labels} classes (0 to "
                f"{num_labels - 1}); raise model.num_labels or fix the label."
            )


def generation_set(config: TrainConfig, tokenizer, records: list[dict]) -> Optional[dict]:
    """Prompts and reference responses for BLEU / chrF, when eval.generate is on."""
    d = config.data
    if not config.eval.generate or not records:
        return None
    if d.format == "seq2seq":
        prompts = [data_mod.source_ids(tokenizer, str(r[d.source_field]), d) for r in records]
        refs = [str(r[d.target_field]) for r in records]
    elif d.format == "instruction":
        prompts = [data_mod.prompt_ids(tokenizer, str(r[d.prompt_field]), d) for r in records]
        refs = [str(r[d.response_field]) for r in records]
    else:
        raise ConfigError(f"eval.generate needs data.format 'instruction' or 'seq2seq'; got {d.format!r}.")
    return {
        "tokenizer": tokenizer,
        "prompts": prompts,
        "references": refs,
        "max_new_tokens": config.eval.max_new_tokens,
    }
