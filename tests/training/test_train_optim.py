"""Schedules against transformers' own; LoRA+ parameter groups; the batch plan."""

import pytest
import torch

import adapterkit as ak
from adapterkit.training.batches import BatchPlan
from adapterkit.training.optim import build_optimizer, build_schedule
from adapterkit.training.sections import OptimConfig
from tests.models import tiny_llama


def _lrs(schedule, steps=20):
    lrs = []
    for _ in range(steps):
        lrs.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    return lrs


@pytest.mark.parametrize("name", ["constant", "linear", "cosine"])
def test_schedules_match_transformers(name):
    import transformers

    reference = {
        "constant": transformers.get_constant_schedule_with_warmup,
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
    }[name]
    cfg = OptimConfig(schedule=name, warmup_steps=5, lr=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    ours = build_schedule(torch.optim.SGD([param], lr=0.1), cfg, total=20)
    args = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 5)
    theirs = reference(*args) if name == "constant" else reference(*args, 20)
    # transformers' warmup starts at 0 (step / warmup); ours at 1 / warmup ((step + 1) / warmup)
    expected = _lrs(theirs)
    got = _lrs(ours)
    assert got[5:] == pytest.approx(expected[5:])
    assert got[:5] == pytest.approx([0.1 * (i + 1) / 5 for i in range(5)])


def test_loraplus_puts_b_in_its_own_group():
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, targets=["q_proj", "v_proj"]))
    opt = build_optimizer(model, OptimConfig(lr=1e-3, loraplus_ratio=16))
    rest, b = opt.param_groups
    assert b["lr"] == pytest.approx(16e-3) and rest["lr"] == pytest.approx(1e-3)
    layers = [layer for _, layer in ak.inject.adapter_layers(model)]
    assert {id(p) for p in b["params"]} == {id(layer.adapters["default"].b) for layer in layers}
    assert {id(p) for p in rest["params"]} == {id(layer.adapters["default"].a) for layer in layers}


def test_adamw8bit_builds_when_bitsandbytes_is_there():
    pytest.importorskip("bitsandbytes")
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2))
    opt = build_optimizer(model, OptimConfig(optimizer="adamw8bit"))
    assert type(opt).__name__ == "AdamW8bit"


def test_batch_plan_one_process_with_accumulation_equals_two_processes():
    one = BatchPlan(n=37, batch_size=3, processes=1, grad_accum=2, seed=5)
    two = BatchPlan(n=37, batch_size=3, processes=2, grad_accum=1, seed=5)
    assert one.steps_per_epoch == two.steps_per_epoch == 6
    for step in range(15):  # across epochs
        a = one.micro_batches(step, 0)
        b = two.micro_batches(step, 0) + two.micro_batches(step, 1)
        assert a == b
    epoch0 = [i for s in range(6) for mb in one.micro_batches(s, 0) for i in mb]
    assert len(set(epoch0)) == 36  # each example at most once per epoch
