"""An adapted model's state_dict keeps the base's own key names: save_pretrained / from_pretrained
load the real base weights, and load_state_dict(state_dict()) restores base and adapters."""

import pytest
import torch

import adapterkit as ak
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens


def _lora_llama():
    return ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, alpha=8, init="random", targets="all-linear"))


def _two_methods_llama():
    """LoRA on every linear layer and IA3 on q/v: two adapter layers nested on q_proj and v_proj."""
    model = _lora_llama()
    ak.attach(model, ak.IA3Config(targets=["q_proj", "v_proj"]), name="ia3")
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ak.set_active(model, ["default", "ia3"])
    return model


CASES = {
    "llama-lora": (tiny_llama, _lora_llama),
    "llama-lora-ia3": (tiny_llama, _two_methods_llama),
    "gpt2-lora": (
        tiny_gpt2,
        lambda: ak.attach(tiny_gpt2(), ak.LoRAConfig(rank=4, init="random", targets=["c_attn", "c_fc"])),
    ),
    "bert-lora-head": (
        tiny_bert,
        lambda: ak.attach(
            tiny_bert(), ak.LoRAConfig(rank=4, init="random", targets=["query", "value"], train_modules=("classifier",))
        ),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_base_tensors_keep_their_own_keys(case):
    plain, adapted = CASES[case]
    base = plain().state_dict()
    state = adapted().state_dict()
    for key, value in base.items():
        assert key in state, key
        assert torch.equal(state[key], value), key
    extra = set(state) - set(base)
    assert extra and all(".adapters." in k for k in extra)


@pytest.mark.parametrize("case", CASES)
def test_save_pretrained_reloads_the_real_base_and_load_adapter_the_rest(case, tmp_path):
    plain, adapted = CASES[case]
    model = adapted().eval()
    model.save_pretrained(tmp_path / "full")
    ak.save_adapter(model, tmp_path / "adapter")
    cls = type(model)
    fresh, info = cls.from_pretrained(tmp_path / "full", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    base = plain().state_dict()
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, base[key], rtol=0, atol=0, msg=key)
    for name in ("default", "ia3")[: len(ak.adapter_names(model))]:  # in the order they were attached
        ak.load_adapter(fresh, tmp_path / "adapter", name=name)
    ak.set_active(fresh, ak.active_names(model))
    fresh.eval()
    x = tokens()
    torch.testing.assert_close(fresh(x).logits, model(x).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_load_state_dict_of_state_dict_restores_everything(case):
    _, adapted = CASES[case]
    model = adapted().eval()
    other = adapted().eval()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    assert not other.load_state_dict(model.state_dict(), strict=True).missing_keys
    x = tokens()
    torch.testing.assert_close(other(x).logits, model(x).logits, rtol=0, atol=0)


def test_inner_form_keys_still_load():
    """State dicts saved before the hooks named base tensors `<layer>.base.<key>`: they still load."""
    model = _two_methods_llama()
    inner = {}
    for name, tensor in model.named_parameters():  # parameter names are the inner form
        inner[name] = tensor.detach().clone()
    assert any(".base.base." in k for k in inner)
    other = _two_methods_llama()
    result = other.load_state_dict(inner, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, p in other.named_parameters():
        assert torch.equal(p, inner[name]), name


def test_missing_and_unexpected_keys_are_named_as_state_dict_names_them():
    model = _lora_llama()
    state = model.state_dict()
    del state["model.layers.0.self_attn.q_proj.weight"]
    del state["model.layers.0.self_attn.q_proj.adapters.default.a"]
    state["model.layers.0.self_attn.q_proj.extra"] = torch.zeros(1)
    result = _lora_llama().load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == [
        "model.layers.0.self_attn.q_proj.adapters.default.a",
        "model.layers.0.self_attn.q_proj.weight",
    ]
    assert result.unexpected_keys == ["model.layers.0.self_attn.q_proj.extra"]
    with pytest.raises(RuntimeError, match=r"q_proj\.weight"):
        _lora_llama().load_state_dict(state)


def test_detach_gives_back_the_plain_state_dict():
    model = ak.detach(_two_methods_llama())
    assert list(model.state_dict()) == list(tiny_llama().state_dict())
