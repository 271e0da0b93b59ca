"""One optimizer step: the token mean of the global batch, however it is split.

For each of the step's micro-batches: loss_k = (summed token NLL, or cross-entropy, of micro-batch k)
/ (target tokens of the whole global batch, on every process) x processes, so that after DDP's /
FSDP's gradient mean the step's gradient is the full batch's token-mean gradient (what transformers'
Trainer since 4.46 and torchtune compute), whatever the micro-batches' lengths; backward, with
gradients synchronised on the last micro-batch only; clip the global norm; step the optimizer and
the schedule. Tested against one full-batch step in tests/training/test_train_token_mean.py.
"""

from __future__ import annotations

import contextlib

import torch

from . import sharding
from .evaluate import batch_loss_sum, targets_in


def optimizer_step(
    accelerator, model, optimizer, scheduler, batches: list[dict], task: str, max_norm, hooks=None, step: int = 0
) -> tuple[float, int]:
    """One optimizer step over this process's micro-batches; (mean loss, tokens) of the global batch.

    The loss is the mean over every target token of the global batch (every example for
    classification), whatever the micro-batches' lengths: each micro-batch's summed loss is divided
    by the step's count of targets on all processes, times the number of processes because DDP and
    FSDP average gradients across them. So accumulation gives the full batch's loss and gradient.
    ``hooks`` (adaptive.py): a penalty added to each micro-batch's objective (trained on, not
    logged) and a call after the optimizer step (AdaLoRA's orthogonality term and rank allocator).
    """
    device = accelerator.device
    counts = torch.tensor(
        [sum(targets_in(b, task) for b in batches), sum(int(b["attention_mask"].sum()) for b in batches)],
        dtype=torch.float64,
        device=device,
    )
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    targets, tokens = max(float(counts[0]), 1.0), int(counts[1])
    norm = targets / accelerator.num_processes
    total = torch.zeros((), dtype=torch.float64, device=device)
    for k, batch in enumerate(batches):
        last = k == len(batches) - 1
        sync = contextlib.nullcontext() if last else sharding.no_sync(accelerator, model)
        with sync:
            loss = batch_loss_sum(model, batch, task)
            penalty = hooks.penalty() if hooks is not None else None  # trained on, not logged
            objective = loss / norm if penalty is None else loss / norm + penalty / len(batches)
            accelerator.backward(objective)
        total += loss.detach().double()
    if max_norm:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    optimizer.step()
    scheduler.step()
    if hooks is not None:
        hooks.after_step(step)
    optimizer.zero_grad(set_to_none=True)
    if accelerator.num_processes > 1:  # the summed loss of the global batch
        total = accelerator.reduce(total, reduction="sum")
    return float(total) / targets, tokens
