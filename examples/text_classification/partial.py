"""Fine-tuning without an adapter: only the parameters a predicate picks train (the head, the last
blocks, or everything), with the same data, batches, optimizer, schedule and metrics as
``ak.train`` (adapterkit.training's own pieces), so the comparison with adapters is like for like.

Each optimizer step: mean cross-entropy over a batch, backward, clip the gradient norm, AdamW
step, schedule step (warmup then decay, as ``optim.schedule`` says).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

import adapterkit as ak
from adapterkit.training import TrainConfig
from adapterkit.training.batches import BatchPlan
from adapterkit.training.data import collate, tokenize
from adapterkit.training.evaluate import batch_loss, classify
from adapterkit.training.metrics import accuracy, macro_f1
from adapterkit.training.optim import build_optimizer, build_schedule
from adapterkit.training.setup import read_data


def last_blocks(model: torch.nn.Module, n: int) -> list[str]:
    """Parameter-name prefixes of the last ``n`` transformer blocks of a BERT-family encoder."""
    blocks = model.base_model.encoder.layer
    prefix = f"{model.base_model_prefix}.encoder.layer"
    return [f"{prefix}.{i}." for i in range(len(blocks) - n, len(blocks))]


def evaluate(model, examples: list[dict], batch_size: int, pad_id: int) -> dict:
    model.eval()
    preds, refs = [], []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i : i + batch_size], pad_id)
            preds += classify(model, batch)[1].tolist()
            refs += batch["labels"].tolist()
    model.train()
    return {"accuracy": accuracy(preds, refs), "macro_f1": macro_f1(preds, refs)}


def train_partial(
    config: TrainConfig, trains: Callable[[torch.nn.Module], Callable[[str], bool]], out: Path
) -> tuple[dict, torch.nn.Module]:
    """Train the parameters ``trains(model)(name)`` picks; returns (metrics, counts, file size and
    time; the trained model)."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    set_seed(config.optim.seed)  # as ak.train: the new head starts from the same weights
    train_records, eval_records, names, num_labels = read_data(config)
    model, tokenizer = ak.load_model(config.model.name, task="classification", num_labels=num_labels)
    pick = trains(model)
    for name, p in model.named_parameters():
        p.requires_grad_(pick(name))
    d, o = config.data, config.optim
    train_set = tokenize(train_records, tokenizer, d, d.train, names)
    eval_set = tokenize(eval_records, tokenizer, d, d.eval, names)
    plan = BatchPlan(len(train_set), o.batch_size, 1, o.grad_accum, o.seed)
    plan.check()
    total = o.max_steps or plan.steps_per_epoch * o.epochs
    optimizer = build_optimizer(model, o)
    schedule = build_schedule(optimizer, o, total)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for step in range(total):
        micro = plan.micro_batches(step, 0)
        for idx in micro:
            loss, _ = batch_loss(model, collate([train_set[i] for i in idx], tokenizer.pad_token_id), "classification")
            (loss / len(micro)).backward()
        if o.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    metrics = evaluate(model, eval_set, config.eval.batch_size or o.batch_size, tokenizer.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    file = out / "trained.safetensors"  # what this variant has to ship: the tensors it changed
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(file))
    row = dict(
        metrics,
        steps=total,
        trainable=sum(p.numel() for p in params),
        total=sum(p.numel() for p in model.parameters()),
        file_bytes=file.stat().st_size,
        seconds=time.perf_counter() - started,
    )
    return row, model
