"""Loss of a batch, and evaluation over a held-out set split across processes.

Causal LM: token t predicts token t + 1; nll summed over target tokens (labels != -100).
Classification: cross-entropy of the head's logits; predictions are their argmax.
Seq2seq: the encoder reads input_ids; decoder position t predicts labels[t] (the model builds
its decoder inputs by shifting the labels right); nll summed over the target tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import metrics, sharding
from .batches import eval_shards
from .data import IGNORE, collate


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    import inspect

    inner = getattr(model, "module", model)  # DDP wraps the model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def causal_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token nll, number of target tokens) for a padded batch.

    Logits are computed only at positions where some row has a target (``logits_to_keep``):
    with loss on responses only, the output head skips the prompt tokens.
    """
    targets = batch["labels"][:, 1:]  # (B, T-1)
    kwargs = {}
    if _keeps_logits(model):
        keep = (targets != IGNORE).any(0).nonzero().squeeze(1)  # (K,) positions predicting a target
        targets = targets[:, keep]
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
    if not kwargs:
        logits = logits[:, :-1]
    logits = logits.float()  # (B, K, V)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (targets != IGNORE).sum()


def seq2seq_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of target-token nll, number of target tokens) for an encoder-decoder batch."""
    targets = batch["labels"]  # (B, L)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=targets).logits
    logits = logits.float()  # (B, L, V)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (targets != IGNORE).sum()


def token_nll(model, batch: dict, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    return seq2seq_nll(model, batch) if task == "seq2seq" else causal_nll(model, batch)


def classify(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy over the batch, predicted classes (B,))."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return F.cross_entropy(logits, batch["labels"], reduction="sum"), logits.argmax(-1)


def targets_in(batch: dict, task: str) -> int:
    """How many terms the batch's loss sums: target tokens, or examples for classification."""
    if task == "classification":
        return int(batch["labels"].shape[0])
    labels = batch["labels"] if task == "seq2seq" else batch["labels"][:, 1:]  # causal: t predicts t + 1
    return int((labels != IGNORE).sum())


def batch_loss_sum(model, batch: dict, task: str) -> torch.Tensor:
    """The batch's loss summed over its ``targets_in`` terms (the mean is taken over the whole step)."""
    if task == "classification":
        return classify(model, batch)[0]
    return token_nll(model, batch, task)[0]


def batch_loss(model, batch: dict, task: str) -> tuple[torch.Tensor, int]:
    """(mean loss of the batch, the tokens it holds) for training."""
    return (batch_loss_sum(model, batch, task) / max(targets_in(batch, task), 1), int(batch["attention_mask"].sum()))


@torch.no_grad()
def evaluate(
    accelerator,
    model,
    task: str,
    examples: list[dict],
    batch_size: int,
    pad_id: int,
    max_batches: Optional[int] = None,
    generation: Optional[dict] = None,
) -> dict:
    """Metrics over ``examples``, each process taking its share; every process gets the result."""
    from accelerate.utils import gather_object

    was_training = model.training
    model.eval()
    device = accelerator.device
    shards = eval_shards(len(examples), batch_size, accelerator.num_processes, accelerator.process_index)
    if max_batches is not None:
        shards = shards[:max_batches]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # nll sum, count
    preds, refs = [], []
    for j in range(
        sharding.eval_passes(model, shards, len(examples), batch_size, accelerator.num_processes, max_batches)
    ):
        idx = shards[j] if j < len(shards) else None  # None: a forward all processes join, result dropped
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx or [0]], pad_id).items()}
        if idx is None:
            _ = classify(model, batch) if task == "classification" else token_nll(model, batch, task)
        elif task == "classification":
            loss_sum, p = classify(model, batch)
            total += torch.stack([loss_sum.double(), torch.tensor(len(idx), device=device).double()])
            preds += p.tolist()
            refs += batch["labels"].tolist()
        else:
            nll, n = token_nll(model, batch, task)
            total += torch.stack([nll.double(), n.double()])
    total = accelerator.reduce(total, reduction="sum")
    out = {"loss": metrics.loss(float(total[0]), int(total[1]))}
    if task == "classification":
        preds, refs = gather_object(preds), gather_object(refs)
        out.update(accuracy=metrics.accuracy(preds, refs), macro_f1=metrics.macro_f1(preds, refs))
    else:
        out["perplexity"] = metrics.perplexity(out["loss"])
    if generation is not None:
        out.update(generation_scores(accelerator, model, **generation))
    model.train(was_training)
    return out


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device) -> list[str]:
    """Greedy continuations of tokenized prompts, one at a time (no padding questions)."""
    texts = []
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        y = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        start = 0 if getattr(model.config, "is_encoder_decoder", False) else len(ids)  # decoders echo the prompt
        texts.append(tokenizer.decode(y[0, start:], skip_special_tokens=True).strip())
    return texts


def generation_scores(accelerator, model, tokenizer, prompts, references, max_new_tokens) -> dict:
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(prompts), world))
    model = accelerator.unwrap_model(model)
    hyps = generate_texts(model, tokenizer, [prompts[i] for i in mine], max_new_tokens, accelerator.device)
    hyps = gather_object(hyps)
    order = gather_object(mine)
    refs = [references[i] for i in order]
    return {"bleu": metrics.bleu(hyps, refs), "chrf": metrics.chrf(hyps, refs)}
