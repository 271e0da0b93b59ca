"""LoRA on a QuantLinear base runs through the fused op and equals base + branch computed apart."""

import torch
from torch import nn

import adapterkit as ak
from adapterkit_kernels import ops


def test_fused_quant_lora_equals_separate_base_and_branch(monkeypatch):
    model = nn.Sequential(nn.Linear(64, 48))
    ak.quantize(model, bits=4, quant_type="nf4")
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets=["0"], init="random"))
    layer, lora = model[0], model[0].adapters["default"]
    calls = []
    original = ops.qlora_matmul
    monkeypatch.setattr(ops, "qlora_matmul", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = model(x)
    assert calls, "the fused op was not used"
    expected = layer.base(x) + (x @ lora.a.t()) @ lora.b.t() * lora.scale
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(y.square().sum(), (x, lora.a, lora.b))
    want = torch.autograd.grad(expected.square().sum(), (x, lora.a, lora.b))
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_dropout_in_training_takes_the_unfused_path(monkeypatch):
    model = nn.Sequential(nn.Linear(64, 48))
    ak.quantize(model, bits=4)
    ak.attach(model, ak.LoRAConfig(rank=4, targets=["0"], dropout=0.2))
    monkeypatch.setattr(ops, "qlora_matmul", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fused")))
    model.train()
    model(torch.randn(2, 64)).sum().backward()
