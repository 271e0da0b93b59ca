"""The adapted model keeps working with generate, gradient checkpointing, torch.compile and Trainer."""

import os

import pytest
import torch

import adapterkit as ak
from adapterkit import checkpointing
from tests.models import VOCAB, tiny_llama, tokens


def _adapted(**kw):
    return ak.attach(tiny_llama(), ak.LoRAConfig(**{"rank": 4, "alpha": 8, "init": "random", **kw}))


def test_generate_runs_and_uses_the_adapter():
    model = _adapted()
    x = tokens(1, 5)
    out = model.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)
    merged_out = ak.merge(model).generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, merged_out)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_still_trains_adapters(reentrant):
    model = _adapted(dropout=0.1)
    reference = _adapted(dropout=0.1)
    reference.load_state_dict(model.state_dict())
    checkpointing.enable(model, use_reentrant=reentrant)
    model.train(), reference.train()
    x = tokens()
    for m in (model, reference):
        torch.manual_seed(5)
        m(input_ids=x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    for n, p in reference.named_parameters():  # the same dropout masks in the recomputed forward
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile(tmp_path, backend):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path)
    model = _adapted()
    x = tokens()
    expected = model(input_ids=x).logits
    compiled = torch.compile(model, backend=backend)
    got = compiled(input_ids=x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    compiled(input_ids=x, labels=x).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_transformers_trainer_trains_only_the_adapter(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _adapted(init="kaiming")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, VOCAB, (16, 8))]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trained.items())
