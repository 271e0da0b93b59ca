"""merge_adapter / unmerge_adapter: the output stays, the weights come back, PEFT agrees."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import TinyCNN, tiny_gpt2, tiny_llama, tokens

EPS = torch.finfo(torch.float32).eps


def _random(**kw):
    return ak.LoRAConfig(**{"rank": 4, "alpha": 8, "init": "random", **kw})


def _perturb(model, seed=3):
    """IA3 vectors away from 1, DoRA magnitudes away from the norm: the adapters change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))


def _image_inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 4, 4, generator=gen), torch.randint(0, 97, (2,), generator=gen)


# (id, model factory, config, how to call the model)
CASES = [
    ("lora-linear", tiny_llama, _random(targets="all-linear"), "lm"),
    ("lora-conv1d", tiny_gpt2, _random(targets=["c_attn", "c_proj", "c_fc"]), "lm"),
    ("lora-embedding", tiny_llama, _random(targets=["embed_tokens", "q_proj"]), "lm"),
    ("lora-conv2d", TinyCNN, _random(targets=["conv", "embed", "fc"]), "cnn"),
    ("dora-linear", tiny_llama, _random(dora=True, targets=["q_proj", "v_proj", "down_proj"]), "lm"),
    ("dora-conv1d", tiny_gpt2, _random(dora=True, targets=["c_attn", "c_fc"]), "lm"),
    ("ia3-llama", tiny_llama, ak.IA3Config(), "lm"),
    ("ia3-gpt2", tiny_gpt2, ak.IA3Config(), "lm"),
]


def _run(model, how):
    with torch.no_grad():
        return model(*_image_inputs()) if how == "cnn" else model(input_ids=tokens()).logits


def _close(got, want, ulps=64):
    """Equal up to rounding: a tolerance that scales with the values (ulps of the largest)."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=ulps * EPS * scale, rtol=ulps * EPS)


def _base_weights(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items() if ".adapters." not in n}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_merge_keeps_the_output_and_unmerge_restores_weights_and_output(case):
    _, factory, config, how = case
    model = ak.attach(factory(), config)
    _perturb(model)
    before, want = _base_weights(model), _run(model, how)
    ak.merge_adapter(model)
    assert ak.merged_adapters(model) == ["default"]
    merged = _base_weights(model)
    assert any(not torch.equal(merged[n], before[n]) for n in before)  # the weights did change
    _close(_run(model, how), want)
    ak.unmerge_adapter(model)
    assert ak.merged_adapters(model) == []
    for name, tensor in before.items():
        _close(_base_weights(model)[name], tensor, ulps=8)
    _close(_run(model, how), want)


def test_many_cycles_do_not_drift_in_fp32():
    model = ak.attach(tiny_llama(), _random(targets="all-linear"))
    before, want = _base_weights(model), _run(model, "lm")
    for _ in range(20):
        ak.merge_adapter(model)
        ak.unmerge_adapter(model)
    for name, tensor in before.items():
        _close(_base_weights(model)[name], tensor, ulps=8)
    _close(_run(model, "lm"), want)


def _peft_pair(factory, cfg):
    from tests.peft_twin import twins

    ours, theirs = twins(factory, cfg)
    return ours, theirs.eval()


PEFT_CASES = [c for c in CASES if not c[0].startswith("ia3")]


@pytest.mark.parametrize("case", PEFT_CASES, ids=[c[0] for c in PEFT_CASES])
def test_merged_and_unmerged_weights_equal_peft(case):
    pytest.importorskip("peft")
    _, factory, config, how = case
    ours, theirs = _peft_pair(factory, config)
    if config.dora:  # magnitudes away from the norm, the same in both
        from tests.peft_twin import copy_to_peft

        _perturb(ours)
        copy_to_peft(ours, theirs)
    want = _run(theirs, how)
    ak.merge_adapter(ours)
    theirs.merge_adapter()
    _compare_bases(ours, theirs)
    _close(_run(ours, how), _run(theirs, how))
    _close(_run(ours, how), want)
    ak.unmerge_adapter(ours)
    theirs.unmerge_adapter()
    _compare_bases(ours, theirs)


def _compare_bases(ours, theirs):
    inner = theirs.base_model.model
    for name, layer in adapter_layers(ours):
        mine = layer.innermost().weight
        peft_weight = inner.get_submodule(name).get_base_layer().weight
        _close(mine, peft_weight, ulps=16)


def test_ia3_merge_equals_peft():
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    targets, ff = ["k_proj", "v_proj", "down_proj"], ["down_proj"]
    ours = ak.attach(copy.deepcopy(base), ak.IA3Config(targets=targets, feedforward=ff))
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=ff)
    ).eval()
    _perturb(ours)
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            theirs.base_model.model.get_submodule(name).ia3_l["default"].copy_(layer.adapters["default"].ia3_l)
    ak.merge_adapter(ours)
    theirs.merge_adapter()
    _compare_bases(ours, theirs)
    ak.unmerge_adapter(ours)
    theirs.unmerge_adapter()
    _compare_bases(ours, theirs)


def test_safe_merge_refuses_nan_and_leaves_the_model_untouched():
    model = ak.attach(tiny_llama(), _random(targets="all-linear"))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.adapters["default"].b[0, 0] = float("nan")
    before = _base_weights(model)
    with pytest.raises(ak.MergeError, match="NaN or Inf.*nothing was merged"):
        ak.merge_adapter(model, safe=True)
    assert ak.merged_adapters(model) == []
    assert all(torch.equal(t, before[n]) for n, t in _base_weights(model).items())


def test_safe_merge_of_sound_adapters_equals_the_plain_merge():
    plain = ak.attach(tiny_llama(), _random(dora=True, targets=["q_proj", "o_proj"]))
    _perturb(plain)
    safe = copy.deepcopy(plain)
    ak.merge_adapter(plain)
    ak.merge_adapter(safe, safe=True)
    assert all(torch.equal(t, _base_weights(plain)[n]) for n, t in _base_weights(safe).items())


def test_a_4bit_base_is_refused_and_left_as_it_was():
    model = ak.attach(ak.quantize(tiny_llama(), bits=4), _random(targets="all-linear"))
    before, want = _base_weights(model), _run(model, "lm")
    with pytest.raises(ak.MergeError, match="QuantLinear.*re-quantize"):
        ak.merge_adapter(model)
    assert ak.merged_adapters(model) == []
    assert all(torch.equal(t, before[n]) for n, t in _base_weights(model).items())
    assert torch.equal(_run(model, "lm"), want)


def test_a_scale_that_cannot_be_undone_is_refused():
    model = ak.attach(tiny_llama(), ak.IA3Config())
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.adapters["default"].ia3_l[3] = 0.0
    with pytest.raises(ak.MergeError, match="zero or a non-finite value"):
        ak.merge_adapter(model)
    assert ak.merged_adapters(model) == []


def test_generate_while_merged_equals_generate_unmerged():
    model = ak.attach(tiny_llama(), _random(targets="all-linear"))
    ids = tokens(1, 5)
    want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ak.merge_adapter(model)
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), want)


def _bf16_step(x):
    """One bf16 step at |x| (2^(e - 8) for |x| = m 2^e, m in [0.5, 1))."""
    _, exponent = torch.frexp(x.float())
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), exponent - 8)


@pytest.mark.parametrize("case", [c for c in CASES if c[3] == "lm"], ids=[c[0] for c in CASES if c[3] == "lm"])
def test_bf16_round_trip_is_within_one_and_a_half_steps(case):
    """The bound README and inplace.py state: merge rounds once (half a step at W merged), unmerge
    once (half a step at W restored): at most 1.5 bf16 steps at the larger of |W| and |W merged|."""
    _, factory, config, how = case
    model = ak.attach(factory(), config)
    _perturb(model)
    with torch.no_grad():  # LoRA updates 10% of W (rms), as after training
        for _, layer in adapter_layers(model):
            lora = layer.adapters["default"]
            if hasattr(lora, "update"):
                rms_w = layer.innermost().weight.pow(2).mean().sqrt()
                lora.b.mul_(0.1 * rms_w / lora.update(torch.float32).pow(2).mean().sqrt())
    model.to(torch.bfloat16)
    before, unmerged = _base_weights(model), _run(model, how).float()
    ak.merge_adapter(model)
    merged_weights, merged = _base_weights(model), _run(model, how).float()
    ak.unmerge_adapter(model)
    exact = total = 0
    for name, want in before.items():
        got = _base_weights(model)[name]
        at = torch.maximum(want.float().abs(), merged_weights[name].float().abs())
        assert ((got.float() - want.float()).abs() <= 1.5 * _bf16_step(at)).all(), name
        exact, total = exact + int((got == want).sum()), total + want.numel()
    assert exact / total > 0.8  # most weights come back bit for bit
    scale = unmerged.abs().max().item()  # logits: within bf16's own reach of the unmerged ones
    torch.testing.assert_close(merged, unmerged, atol=0.05 * scale, rtol=0)


def test_state_dict_while_merged_loads_into_a_plain_model_as_the_merged_one():
    """The RL sync: the merged model's state_dict, adapter tensors left out, is a plain model's."""
    model = ak.attach(tiny_llama(), _random(targets="all-linear"))
    want = _run(model, "lm")
    ak.merge_adapter(model)
    state = {k: v for k, v in model.state_dict().items() if ".adapters." not in k}
    generator = tiny_llama()
    generator.load_state_dict(state, strict=True)  # same keys as the plain model: nothing renamed
    _close(_run(generator, "lm"), want)
