"""IA3 against PEFT 0.21: same math (weights copied structurally), same merge, files both ways."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterkit as ak
from adapterkit import bases
from adapterkit.inject import adapter_layers
from adapterkit.methods.ia3 import IA3Layer
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens

peft = pytest.importorskip("peft")

# (model factory, PEFT task, explicit targets, feed-forward targets) as PEFT's defaults pick them
MODELS = [
    (tiny_llama, "CAUSAL_LM", ["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    (tiny_gpt2, "CAUSAL_LM", ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    (
        tiny_bert,
        "SEQ_CLS",
        ["key", "value", "layer.0.output.dense", "layer.1.output.dense"],
        ["layer.0.output.dense", "layer.1.output.dense"],
    ),
]
IDS = [m[0].__name__ for m in MODELS]


def _randomise(model, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))


def _pair(make, task, targets, feedforward):
    base = make()
    ours = ak.attach(copy.deepcopy(base), ak.IA3Config(targets=targets, feedforward=feedforward))
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=feedforward)
    )
    _randomise(ours)
    mine = {n: layer.adapters["default"].ia3_l for n, layer in adapter_layers(ours)}
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if hasattr(module, "ia3_l") and "default" in module.ia3_l:
                key = name.removeprefix("base_model.model.")
                module.ia3_l["default"].copy_(mine.pop(key))
    assert not mine  # every adapted module has its PEFT twin
    return base, ours, theirs.eval()


@pytest.mark.parametrize("make,task,targets,feedforward", MODELS, ids=IDS)
def test_forward_matches_peft(make, task, targets, feedforward):
    _, ours, theirs = _pair(make, task, targets, feedforward)
    ids = tokens()
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make,task,targets,feedforward", MODELS, ids=IDS)
def test_merge_matches_peft_merge(make, task, targets, feedforward):
    _, ours, theirs = _pair(make, task, targets, feedforward)
    ids = tokens()
    merged_theirs = theirs.merge_and_unload()
    torch.testing.assert_close(ak.merge(ours)(ids).logits, merged_theirs(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_bert], ids=lambda f: f.__name__)
def test_auto_placement_scales_keys_values_and_ffn_input(make):
    model = ak.attach(make(), ak.IA3Config())
    kinds = {
        n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1]: layer.adapters["default"].feedforward
        for n, layer in adapter_layers(model)
    }
    expected = {
        "tiny_llama": {"self_attn.k_proj": False, "self_attn.v_proj": False, "mlp.down_proj": True},
        "tiny_gpt2": {"attn.c_attn": False, "mlp.c_proj": True},
        "tiny_bert": {"self.key": False, "self.value": False, "output.dense": True},
    }[make.__name__]
    assert kinds == expected
    # one vector per output (keys, values) or per input (feed-forward) feature
    for _, layer in adapter_layers(model):
        adapter, base = layer.adapters["default"], layer.innermost()
        n_in, n_out = bases.features(base)
        assert adapter.ia3_l.shape == ((1, n_in) if adapter.feedforward else (n_out, 1))


@pytest.mark.parametrize("make,task,targets,feedforward", MODELS, ids=IDS)
def test_peft_files_load_with_identical_logits(make, task, targets, feedforward, tmp_path):
    base, _, theirs = _pair(make, task, targets, feedforward)
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(copy.deepcopy(base), tmp_path)
    ids = tokens()
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("make,task,targets,feedforward", MODELS, ids=IDS)
def test_adapterkit_files_load_in_peft(make, task, targets, feedforward, tmp_path):
    base = make()
    train = ("classifier",) if task == "SEQ_CLS" else ()
    ours = ak.attach(copy.deepcopy(base), ak.IA3Config(train_modules=train))  # placement by names and types
    _randomise(ours)
    ak.save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    n_peft = sum(1 for m in theirs.modules() if hasattr(m, "ia3_l") and "default" in m.ia3_l)
    assert n_peft == sum(1 for _, layer in adapter_layers(ours) if isinstance(layer, IA3Layer))
    ids = tokens()
    torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)


def test_several_active_adapters_multiply():
    model = ak.attach(tiny_llama(), ak.IA3Config(targets=["k_proj"]), name="a")
    ak.attach(model, ak.IA3Config(targets=["k_proj"]), name="b")
    layer = model.model.layers[0].self_attn.k_proj
    with torch.no_grad():
        layer.adapters["a"].ia3_l.fill_(2.0)
        layer.adapters["b"].ia3_l.fill_(3.0)
    x = torch.randn(3, 32)
    ak.set_active(model, ["a", "b"])
    torch.testing.assert_close(layer(x), 6.0 * layer.base(x))


def test_bad_targets_are_user_errors():
    with pytest.raises(ak.ConfigError, match="targets is empty"):
        ak.IA3Config(targets=[])
    with pytest.raises(ak.ConfigError, match="init"):
        ak.IA3Config(init="zeros")
    with pytest.raises(ak.UnsupportedModuleError, match="IA3 scales"):
        ak.attach(tiny_llama(), ak.IA3Config(targets=["embed_tokens"]))


def test_on_a_4bit_base_merging_dequantizes():
    model = ak.quantize(tiny_llama(hidden_size=64, intermediate_size=128), bits=4)
    ak.attach(model, ak.IA3Config(init="random"))
    ids = tokens()
    with torch.no_grad():
        expected = model(ids).logits
        merged = ak.merge(model)
        assert type(merged.model.layers[0].self_attn.k_proj) is torch.nn.Linear
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
