"""ak.set_scale / scale_active / unscale_active / rescaled against PEFT's set_scale, scale_layer,
unscale_layer and rescale_adapter_scale; ak.freeze_adapter / unfreeze_adapter against set_requires_grad."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.transaction import Snapshot
from tests.checks import assert_close_scaled, token_logits
from tests.models import tiny_llama, tokens
from tests.peft_twin import named_twins


def _twins():
    torch.manual_seed(2)
    cfg = dict(targets=("q_proj", "v_proj"), init="random")
    ours, theirs = named_twins(
        tiny_llama,
        {"one": ak.LoRAConfig(rank=4, alpha=8.0, **cfg), "two": ak.LoRAConfig(rank=2, alpha=3.0, dora=True, **cfg)},
    )
    ak.set_active(ours, ["one", "two"])
    theirs.base_model.set_adapter(["one", "two"])
    return ours, theirs


def _peft_layers(theirs):
    from peft.tuners.lora import LoraLayer

    return [m for m in theirs.modules() if isinstance(m, LoraLayer)]


def _grads(model, params):
    loss = model(input_ids=tokens()).logits.square().mean()
    return torch.autograd.grad(loss, params)


def test_a_weight_per_active_adapter_and_scale_changes_match_peft():
    ours, theirs = _twins()
    ak.set_scale(ours, {"one": 0.5, "two": -2.0})
    for layer in _peft_layers(theirs):
        layer.set_scale("one", 0.5)
        layer.set_scale("two", -2.0)
    assert_close_scaled(token_logits(ours), token_logits(theirs))
    q = ours.model.layers[0].self_attn.q_proj.adapters
    pq = theirs.base_model.model.model.layers[0].self_attn.q_proj
    got = _grads(ours, [q["one"].a, q["two"].b, q["two"].magnitude])
    want = _grads(theirs, [pq.lora_A["one"].weight, pq.lora_B["two"].weight, pq.lora_magnitude_vector["two"].weight])
    for g, w in zip(got, want):
        assert_close_scaled(g, w)
    for ak_call, peft_call in [
        (lambda: ak.scale_active(ours, 1.5), lambda m: m.scale_layer(1.5)),
        (lambda: ak.unscale_active(ours, 3.0), lambda m: m.unscale_layer(3.0)),
        (lambda: ak.unscale_active(ours), lambda m: m.unscale_layer(None)),
    ]:
        ak_call()
        for layer in _peft_layers(theirs):
            peft_call(layer)
        assert_close_scaled(token_logits(ours), token_logits(theirs))
    assert q["one"].scale == 2.0 and q["two"].scale == 1.5


def test_rescaled_block_matches_peft_and_restores():
    from peft.helpers import rescale_adapter_scale

    ours, theirs = _twins()
    before = token_logits(ours)
    with ak.rescaled(ours, 0.3), rescale_adapter_scale(theirs, 0.3):
        assert_close_scaled(token_logits(ours), token_logits(theirs))
        assert not torch.allclose(token_logits(ours), before)
    torch.testing.assert_close(token_logits(ours), before, atol=0, rtol=0)


def test_set_scale_one_restores_and_merge_uses_the_current_scale():
    ours, _ = _twins()
    before = token_logits(ours)
    ak.set_scale(ours, "one", 0.25)
    scaled = token_logits(ours)
    ak.merge_adapter(ours)
    assert_close_scaled(token_logits(ours), scaled)
    with pytest.raises(ak.MergeError, match="scale"):
        ak.set_scale(ours, "one", 1.0)
    ak.unmerge_adapter(ours)
    ak.set_scale(ours, "one", 1)
    assert_close_scaled(token_logits(ours), before)


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda m: ak.set_scale(m, "thre", 1.0), ak.AdapterNameError, "thre"),
        (lambda m: ak.set_scale(m, "ia3", 1.0), ak.ConfigError, "not a LoRA"),
        (lambda m: ak.set_scale(m, "one", float("nan")), ak.ConfigError, "finite"),
        (lambda m: ak.set_scale(m, {"one": 2.0, "two": "x"}), ak.ConfigError, "finite"),
        (lambda m: ak.set_scale(m, {}), ak.ConfigError, "empty"),
        (lambda m: ak.scale_active(m, True), ak.ConfigError, "finite"),
        (lambda m: ak.unscale_active(m, 0), ak.ConfigError, "zero"),
        (lambda m: ak.freeze_adapter(m, "thre"), ak.AdapterNameError, "thre"),
        (lambda m: ak.unfreeze_adapter(m, ["one", 3]), ak.AdapterNameError, "3"),
    ],
    ids=["unknown", "ia3", "nan", "dict-str", "empty", "bool", "zero", "freeze-unknown", "unfreeze-int"],
)
def test_bad_inputs_change_nothing(call, error, words):
    ours, _ = _twins()
    ak.attach(ours, ak.IA3Config(targets=("k_proj",), feedforward=()), name="ia3")
    ak.set_active(ours, ["one", "two"])
    before, logits = Snapshot(ours).state(), token_logits(ours)
    with pytest.raises(error, match=words):
        call(ours)
    assert Snapshot(ours).state() == before
    torch.testing.assert_close(token_logits(ours), logits, atol=0, rtol=0)


def _trainable(model, adapter_word):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad and adapter_word(n))


def test_freeze_and_unfreeze_one_adapter_like_peft_set_requires_grad():
    ours, theirs = _twins()
    ak.attach(ours, ak.LoRAConfig(rank=2, targets=("k_proj",), train_modules=("lm_head",)), name="three")
    assert all(p.requires_grad for n, p in ours.named_parameters() if ".one." in n or ".two." in n)
    ak.freeze_adapter(ours, "one")
    theirs.set_requires_grad("one", requires_grad=False)
    theirs.set_requires_grad("two", requires_grad=True)
    ours_on = {n.split(".adapters.")[1].split(".")[0] for n, p in ours.named_parameters() if p.requires_grad}
    peft_on = {n for n in ("one", "two") for k, p in theirs.named_parameters() if p.requires_grad and f".{n}." in k}
    assert ours_on - {"three"} == peft_on == {"two"}
    ak.freeze_adapter(ours, ["two", "three"])
    assert not any(p.requires_grad for p in ours.parameters())
    ak.unfreeze_adapter(ours, "three")
    names = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert names and all(".three." in n for n in names) and any("lm_head" in n for n in names)
