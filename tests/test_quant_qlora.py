"""QLoRA: adapters on QuantLinear bases train, match a dense twin, merge to a dense model, requantize."""

import copy
import warnings

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit import bases, checkpointing
from adapterkit.quant import QuantLinear, prepare_for_kbit_training, requantize
from adapterkit_kernels import ops
from tests.models import tiny_llama, tokens

LLAMA = dict(hidden_size=64, intermediate_size=128)


def _dense_twin(model: nn.Module) -> nn.Module:
    """The same model with each QuantLinear replaced by an nn.Linear holding its dequantized weight."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, QuantLinear):
            parent, attr = twin.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
            setattr(parent, attr, bases.folded(module, torch.zeros(module.out_features, module.in_features)))
    return twin


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _step(model, ids):
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss


@pytest.mark.parametrize("dora", [False, True])
def test_qlora_trains_and_merges_to_a_dense_model(dora):
    model = ak.quantize(tiny_llama(**LLAMA), bits=4, quant_type="nf4")
    model = ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets="all-linear", dora=dora))
    ids = tokens(4, 16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        losses.append(_step(model, ids).item())
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] - 0.2, losses
    model.eval()
    with torch.no_grad():
        want = model(ids).logits
        merged = ak.merge(model)
        got = merged(ids).logits
    assert not any(isinstance(m, (QuantLinear, ak.AdapterLayer)) for m in merged.modules())
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dora", [False, True])
def test_adapters_on_quant_base_equal_a_dense_twin(bits, dora):
    quant = ak.quantize(tiny_llama(**LLAMA), bits=bits)
    dense = _dense_twin(quant)
    config = ak.LoRAConfig(rank=4, alpha=8, dora=dora, init="random")
    torch.manual_seed(1)
    ak.attach(quant, config)
    torch.manual_seed(1)
    ak.attach(dense, config)
    ids = tokens(2, 8)
    loss_q, loss_d = _step(quant, ids), _step(dense, ids)
    assert torch.allclose(loss_q, loss_d, atol=1e-5)
    grads_q, grads_d = _lora_grads(quant), _lora_grads(dense)
    assert grads_q.keys() == grads_d.keys() and len(grads_q) > 0
    for name in grads_q:
        assert torch.allclose(grads_q[name], grads_d[name], atol=1e-5, rtol=1e-4), name


def test_ia3_on_quant_base_equals_a_dense_twin_and_merges_fully_dense():
    """Another mergeable method on QuantLinear; merge leaves no quantized layer, adapted or not."""
    quant = ak.quantize(tiny_llama(**LLAMA))
    dense = _dense_twin(quant)
    for model in (quant, dense):
        ak.attach(model, ak.IA3Config())  # k, v and down projections only
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(1 + 0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    ids = tokens(2, 8)
    loss_q, loss_d = _step(quant, ids), _step(dense, ids)
    assert torch.allclose(loss_q, loss_d, atol=1e-5)
    grads_d = _lora_grads(dense)
    for name, grad in _lora_grads(quant).items():
        assert torch.allclose(grad, grads_d[name], atol=1e-5, rtol=1e-4), name
    quant.eval()
    with torch.no_grad():
        want = quant(ids).logits
        merged = ak.merge(quant)
        assert not any(isinstance(m, (QuantLinear, ak.AdapterLayer)) for m in merged.modules())
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)


def test_summary_counts_quantized_weights():
    dense = tiny_llama(**LLAMA)
    total = sum(p.numel() for p in dense.parameters())
    quant = ak.attach(ak.quantize(copy.deepcopy(dense)), ak.LoRAConfig(rank=4))
    lora = sum(p.numel() for p in quant.parameters() if p.requires_grad)
    assert ak.summary(quant).total == total + lora


def test_triton_kernels_train_like_the_reference():
    """One QLoRA step with the Triton kernels (interpreter on CPU) equals the reference path."""
    pytest.importorskip("triton")
    model = ak.attach(ak.quantize(tiny_llama(**LLAMA)), ak.LoRAConfig(rank=4, alpha=8, init="random"))
    ids = tokens(2, 8)
    with ops.use_backend("reference"):
        loss_ref = _step(model, ids)
    grads_ref = _lora_grads(model)
    model.zero_grad()
    with ops.use_backend("triton"):
        loss = _step(model, ids)
    assert torch.allclose(loss, loss_ref, atol=1e-5)
    for name, grad in _lora_grads(model).items():
        assert torch.allclose(grad, grads_ref[name], atol=1e-5, rtol=1e-4), name


def test_requantize_after_merge_is_explicit_and_its_error_is_bounded():
    """Merging dequantizes; requantize is a separate, lossy call. Its error against the dense merge
    is of the size of quantizing the original model (one more rounding of the same kind)."""
    dense = tiny_llama(**LLAMA)
    ids = tokens(2, 12)
    with torch.no_grad():
        base_logits = dense(ids).logits
        quant = ak.quantize(copy.deepcopy(dense))
        quant_error = (quant(ids).logits - base_logits).abs().max().item()
        ak.attach(quant, ak.LoRAConfig(rank=4, alpha=8))
        for name, param in quant.named_parameters():
            if name.endswith(".b"):  # a trained-sized update (B starts at zero)
                param.normal_(std=0.02)
        merged = ak.merge(quant)
        merged_logits = merged(ids).logits
        again = requantize(copy.deepcopy(merged))
        requant_error = (again(ids).logits - merged_logits).abs().max().item()
    assert any(isinstance(m, QuantLinear) for m in again.modules())
    assert not any(isinstance(m, QuantLinear) for m in merged.modules())
    assert 0 < requant_error < 3 * quant_error, (requant_error, quant_error)


def test_prepare_for_kbit_training_keeps_dtypes_and_checkpoints():
    model = ak.quantize(tiny_llama(**LLAMA).to(torch.bfloat16))
    with warnings.catch_warnings():  # no deprecated transformers name (gradient_ -> activation_checkpointing)
        warnings.simplefilter("error", FutureWarning)
        prepare_for_kbit_training(model)
    assert not any(p.requires_grad for p in model.parameters())
    assert checkpointing.is_on(model) and model.config.use_cache is False
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # PEFT would make these fp32
    assert model.model.norm.weight.dtype == torch.bfloat16
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, init="random"))
    model.train()
    _step(model, tokens(2, 8))
    grads = _lora_grads(model)
    assert grads and all(g.abs().sum() > 0 for g in grads.values())
    upcast = prepare_for_kbit_training(tiny_llama().to(torch.bfloat16), upcast_norms=True)
    assert upcast.model.norm.weight.dtype == torch.float32
    assert upcast.model.embed_tokens.weight.dtype == torch.bfloat16


def test_prepare_for_kbit_training_refuses_checkpointing_it_cannot_do():
    plain = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ak.ConfigError, match="gradient_checkpointing=False"):
        prepare_for_kbit_training(plain)
    assert all(p.requires_grad for p in plain.parameters())  # refused before freezing anything
    assert prepare_for_kbit_training(nn.Sequential(nn.Linear(4, 4)), gradient_checkpointing=False)
