"""LN tuning against PEFT 0.21: the same copies (logits and gradients), the same merge, files both
ways; one adapter at a time; bad configs refused."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens

peft = pytest.importorskip("peft")

MODELS = [
    (tiny_llama, "CAUSAL_LM", ["input_layernorm", "post_attention_layernorm", "norm"]),
    (tiny_gpt2, "CAUSAL_LM", ["ln_1", "ln_2", "ln_f"]),
]


def _pair(make, task, targets, config=None):
    base = make()
    ours = ak.attach(copy.deepcopy(base), config or ak.LNTuningConfig())
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LNTuningConfig(task_type=task, target_modules=targets))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            twin = theirs.base_model.model.get_submodule(name).ln_tuning_layers["default"]
            for (_key, p), (_, q) in zip(layer.adapters["default"].norm.named_parameters(), twin.named_parameters()):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
                q.copy_(p)
    return base, ours, theirs


@pytest.mark.parametrize("make,task,targets", MODELS, ids=["llama", "gpt2"])
def test_auto_targets_logits_and_gradients_match_peft(make, task, targets):
    _, ours, theirs = _pair(make, task, targets)
    picked = {n.rsplit(".", 1)[-1] for n, _ in adapter_layers(ours)}
    assert picked == set(targets)  # "auto" picks what PEFT's mapping picks
    ids = tokens()
    out_ours, out_theirs = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    out_ours.pow(2).mean().backward()
    out_theirs.pow(2).mean().backward()
    for name, layer in adapter_layers(ours):
        twin = theirs.base_model.model.get_submodule(name).ln_tuning_layers["default"]
        for p, q in zip(layer.adapters["default"].norm.parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def test_merge_matches_peft_and_unmerged():
    _, ours, theirs = _pair(*MODELS[1])
    ids = tokens()
    with torch.no_grad():
        unmerged = ours(input_ids=ids).logits
        ak.merge_adapter(ours)
        torch.testing.assert_close(ours(input_ids=ids).logits, unmerged, atol=1e-5, rtol=1e-5)
        ak.unmerge_adapter(ours)
        torch.testing.assert_close(ours(input_ids=ids).logits, unmerged, atol=1e-5, rtol=1e-5)
        merged = ak.merge(ours)(input_ids=ids).logits
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.merge_and_unload()(input_ids=ids).logits, merged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make,task,targets", MODELS, ids=["llama", "gpt2"])
def test_files_both_ways(tmp_path, make, task, targets):
    from peft import PeftModel

    base, ours, theirs = _pair(make, task, targets)
    ids = tokens()
    theirs.save_pretrained(tmp_path / "peft")
    loaded = ak.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    ak.save_adapter(ours, tmp_path / "ak")
    back = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ak")
    with torch.no_grad():
        want = theirs(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_bert_layer_norms_and_one_adapter_at_a_time():
    model = ak.attach(tiny_bert(), ak.LNTuningConfig(), name="a")
    assert all(type(layer.base).__name__ == "LayerNorm" for _, layer in adapter_layers(model))
    ak.attach(model, ak.LNTuningConfig(targets=["output.LayerNorm"]), name="b")
    ak.set_active(model, ["a", "b"])
    with pytest.raises(ak.AdapterNameError, match="one adapter at a time"):
        model(input_ids=tokens())


@pytest.mark.parametrize(
    "bad", [{"targets": []}, {"targets": "("}, {"exclude": "auto"}, {"layers": [0]}, {"train_modules": [1]}]
)
def test_bad_configs_raise(bad):
    with pytest.raises(ak.ConfigError):
        ak.LNTuningConfig(**bad)


def test_non_leaf_target_is_refused():
    with pytest.raises(ak.UnsupportedModuleError, match="LN tuning"):
        ak.attach(tiny_llama(), ak.LNTuningConfig(targets=["self_attn"]))


def test_safe_merge_refuses_nan_and_changes_nothing():
    model = ak.attach(tiny_llama(), ak.IA3Config(), name="ia3")
    ak.attach(model, ak.LNTuningConfig(), name="ln")
    ak.set_active(model, ["ia3", "ln"])
    with torch.no_grad():
        next(layer for _, layer in adapter_layers(model) if "ln" in layer.adapters).adapters["ln"].norm.weight[0] = (
            float("nan")
        )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ak.MergeError, match="NaN"):
        ak.merge_adapter(model, safe=True)
    assert ak.merged_adapters(model) == []
    assert all(torch.equal(v.nan_to_num(), before[k].nan_to_num()) for k, v in model.state_dict().items())
