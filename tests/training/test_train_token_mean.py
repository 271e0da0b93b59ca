"""With gradient accumulation over micro-batches of uneven lengths, a training step's loss and
gradient are those of the whole batch: the mean over all its target tokens (or examples), as
transformers' Trainer computes it since 4.46, not the mean of per-micro-batch means."""

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.training.data import IGNORE, collate
from adapterkit.training.step import optimizer_step
from tests.checks import assert_close_scaled as assert_close
from tests.models import tiny_bert, tiny_llama


def _examples(lengths, prompt, vocab=60):
    g = torch.Generator().manual_seed(1)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})  # loss on the tail only
    return out


def _adapted(model):
    model.double()  # so that the SGD update (parameter before minus after) is the gradient to fp32 accuracy
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"], init="random"))
    return model.train()


def _reference_causal(model, examples):
    """Mean token NLL over the whole batch, written out with plain torch."""
    total, count = 0.0, 0
    for e in examples:
        ids = torch.tensor([e["input_ids"]])
        logits = model(input_ids=ids).logits[0, :-1]  # (T-1, V): position t predicts t + 1
        target = torch.tensor(e["labels"][1:])
        total = total + F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
        count += int((target != IGNORE).sum())
    return total / count


def _oneoptimizer_step(model, micro_batches, task):
    from accelerate import Accelerator

    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)  # so the update is minus the gradient
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loss, _ = optimizer_step(Accelerator(cpu=True), model, optimizer, scheduler, micro_batches, task, None)
    return loss, [b - p.detach() for b, p in zip(before, params)]


@pytest.mark.parametrize("split", [[[0, 1], [2]], [[0], [1, 2]], [[0], [1], [2]]])
def test_accumulated_step_equals_the_whole_batch_causal(split):
    examples = _examples([5, 17, 9], prompt=2)  # 3, 15 and 7 target tokens
    model = _adapted(tiny_llama(vocab_size=60))
    expected = _reference_causal(model, examples)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(expected, params)

    micro = [collate([examples[i] for i in idx], pad_id=0) for idx in split]
    loss, updates = _oneoptimizer_step(model, micro, "causal")
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for g, u in zip(grads, updates):
        assert_close(u, g, rtol=1e-4)


def test_the_mean_of_micro_batch_means_would_differ():
    """The case above is one where the old rule (mean of per-micro-batch means) gives another loss."""
    examples = _examples([5, 17, 9], prompt=2)
    model = _adapted(tiny_llama(vocab_size=60))
    means = [_reference_causal(model, part).item() for part in ([examples[0]], examples[1:])]
    whole = _reference_causal(model, examples).item()
    assert abs(sum(means) / 2 - whole) > 1e-3 * abs(whole)


def test_accumulated_step_equals_the_whole_batch_classification():
    model = tiny_bert(num_labels=3, vocab_size=60).double()
    ak.attach(model, ak.LoRAConfig(rank=4, targets=["query", "value"], init="random", train_modules=["classifier"]))
    model.train()
    g = torch.Generator().manual_seed(2)
    examples = [
        {"input_ids": torch.randint(3, 60, (n,), generator=g).tolist(), "labels": k % 3}
        for k, n in enumerate([4, 11, 7])
    ]
    model.eval()  # no dropout: the reference and the step see the same function
    logits = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits for e in examples])
    expected = F.cross_entropy(logits, torch.tensor([e["labels"] for e in examples]))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(expected, params)

    loss, updates = _oneoptimizer_step(model, [collate(examples[:1], 0), collate(examples[1:], 0)], "classification")
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for g_, u in zip(grads, updates):
        assert_close(u, g_, rtol=1e-4)
