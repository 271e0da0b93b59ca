"""attach / set_active / disabled / merge / detach / delete_adapter / combine on real model classes."""

import copy

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import TinyCNN, tiny_bert, tiny_gpt2, tiny_llama, tiny_t5, tiny_vit, tokens

FACTORIES = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}


def _out(model, x):
    return model(input_ids=x).logits


def _random(**kw):
    return ak.LoRAConfig(**{"rank": 4, "alpha": 8, "init": "random", **kw})


@pytest.mark.parametrize("name", FACTORIES)
def test_identity_at_init_and_model_keeps_class(name):
    base = FACTORIES[name]()
    x = tokens()
    expected = _out(base, x)
    cls = type(base)
    model = ak.attach(base, ak.LoRAConfig(rank=4, alpha=8, targets="all-linear"))
    assert type(model) is cls and model is base
    torch.testing.assert_close(_out(model, x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("dora", [False, True])
def test_merge_equals_unmerged_and_leaves_no_adapterkit_module(name, dora):
    model = ak.attach(FACTORIES[name](), _random(dora=dora))
    x = tokens()
    with torch.no_grad():
        expected = _out(model, x)
        merged = ak.merge(model)
        got = _out(merged, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any(type(m).__module__.startswith("adapterkit") for m in merged.modules())


@pytest.mark.parametrize("name", FACTORIES)
def test_disabled_equals_base_and_detach_restores(name):
    base = FACTORIES[name]()
    reference = copy.deepcopy(base)
    x = tokens()
    model = ak.attach(base, _random())
    with torch.no_grad():
        assert not torch.allclose(_out(model, x), _out(reference, x))
        with ak.disabled(model):
            torch.testing.assert_close(_out(model, x), _out(reference, x), atol=0, rtol=0)
        assert not torch.allclose(_out(model, x), _out(reference, x))  # re-enabled on exit
    ak.detach(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    torch.testing.assert_close(_out(model, x), _out(reference, x), atol=0, rtol=0)


@pytest.mark.parametrize("name", FACTORIES)
def test_gradients_reach_only_adapters(name):
    model = ak.attach(FACTORIES[name](), _random())
    model.train()
    _out(model, tokens()).sum().backward()
    for pname, p in model.named_parameters():
        is_adapter = ".adapters." in pname
        assert p.requires_grad == is_adapter, pname
        assert (p.grad is not None) == is_adapter, pname


def test_several_active_adapters_add_up():
    base = tiny_llama()
    x = tokens()
    with torch.no_grad():
        y0 = _out(base, x)
        model = ak.attach(base, _random())
        ak.attach(model, _random(rank=2), name="other")
        ak.set_active(model, "default")
        ya = _out(model, x)
        ak.set_active(model, "other")
        yb = _out(model, x)
        ak.set_active(model, ["default", "other"])
        both = _out(model, x)
    # the logits are not linear in the adapters, so compare one layer's output instead
    layer = model.model.layers[0].self_attn.q_proj
    h = torch.randn(3, layer.base.in_features)
    with torch.no_grad():
        outs = {}
        for active in (["default"], ["other"], ["default", "other"]):
            ak.set_active(model, active)
            outs[tuple(active)] = layer(h)
        base_h = layer.base(h)
    torch.testing.assert_close(
        outs[("default", "other")] - base_h,
        (outs[("default",)] - base_h) + (outs[("other",)] - base_h),
        atol=1e-6,
        rtol=0,
    )
    assert not torch.allclose(ya, yb) and not torch.allclose(both, ya) and not torch.allclose(ya, y0)


def test_merge_of_several_dora_and_lora_adapters_is_exact():
    model = ak.attach(tiny_llama(), _random(dora=True))
    ak.attach(model, _random(dora=True, rank=2), name="second")
    ak.attach(model, _random(), name="plain")
    ak.set_active(model, ["default", "second", "plain"])
    x = tokens()
    with torch.no_grad():
        expected = _out(model, x)
        torch.testing.assert_close(_out(ak.merge(model), x), expected, atol=1e-5, rtol=1e-5)


def test_delete_adapter_unwraps_layers_left_empty():
    base = tiny_llama()
    x = tokens()
    reference = _out(base, x)
    model = ak.attach(base, _random(targets=("q_proj",)))
    ak.attach(model, _random(targets=("v_proj",)), name="other")
    ak.delete_adapter(model, "default")
    assert ak.adapter_names(model) == ["other"]
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    ak.delete_adapter(model, "other")
    assert not list(adapter_layers(model))
    torch.testing.assert_close(_out(model, x), reference, atol=0, rtol=0)


def test_combine_cat_is_exact_and_linear_matches_for_one_adapter():
    model = ak.attach(tiny_llama(), _random(targets=("q_proj", "v_proj")))
    ak.attach(model, _random(rank=2, targets=("q_proj",)), name="other")
    x = tokens()
    layer = model.model.layers[1].self_attn.q_proj
    h = torch.randn(3, layer.base.in_features)
    with torch.no_grad():
        ak.set_active(model, "default")
        da = layer(h) - layer.base(h)
        ak.set_active(model, "other")
        db = layer(h) - layer.base(h)
        ak.combine(model, ["default", "other"], name="mix", weights=[0.5, 2.0], how="cat")
        torch.testing.assert_close(layer(h) - layer.base(h), 0.5 * da + 2.0 * db, atol=1e-6, rtol=0)
        assert ak.adapter_config(model, "mix").rank == 6
        ak.combine(model, ["default"], name="halved", weights=[0.5], how="linear")
        torch.testing.assert_close(layer(h) - layer.base(h), 0.5 * da, atol=1e-6, rtol=0)
        _out(model, x)  # v_proj holds "mix" too, with "other"'s block left zero
    with pytest.raises(ak.ConfigError, match="equal ranks"):
        ak.combine(model, ["default", "other"], name="bad", how="linear")


def test_plain_module_with_every_base_kind():
    model = TinyCNN()
    image, ids = torch.randn(2, 3, 4, 4), torch.tensor([3, 5])
    with torch.no_grad():
        expected = model(image, ids)
    ak.attach(model, ak.LoRAConfig(rank=2, alpha=4, targets=("conv", "embed", "fc", "head")))
    torch.testing.assert_close(model(image, ids), expected, atol=0, rtol=0)  # identity at init
    for _, layer in adapter_layers(model):
        with torch.no_grad():
            layer.adapters["default"].b.normal_()
            layer.adapters["default"].a.normal_()
    with torch.no_grad():
        unmerged = model(image, ids)
        assert not torch.allclose(unmerged, expected)
        scale = unmerged.abs().max().item()  # rounding grows with the values: tolerances scale with them
        torch.testing.assert_close(ak.merge(model)(image, ids), unmerged, atol=1e-4 * scale, rtol=1e-4)


def test_t5_and_vit_attach_train_merge():
    pixels = torch.randn(2, 3, 16, 16)
    for factory, inputs in (
        (tiny_t5, lambda: dict(input_ids=tokens(), decoder_input_ids=tokens(2, 3))),
        (tiny_vit, lambda: dict(pixel_values=pixels)),
    ):
        model = ak.attach(factory(), _random(targets="all-linear"))
        with torch.no_grad():
            expected = model(**inputs()).logits
        model.train()
        model(**inputs()).logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        model.eval()
        with torch.no_grad():
            got = ak.merge(model)(**inputs()).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_layers_and_exclude_select_blocks():
    model = ak.attach(
        tiny_llama(num_hidden_layers=3), ak.LoRAConfig(targets="all-linear", layers=[1], exclude=("o_proj",))
    )
    names = [n for n, _ in adapter_layers(model)]
    assert names and all(".layers.1." in n for n in names)
    assert not any(n.endswith("o_proj") for n in names)


def test_a_base_with_methods_of_adapter_layer_names_is_not_called():
    """A base module that happens to define ``release`` / ``merged``: the adapter layer answers
    unknown attributes from its base, but detach, merge and merge_adapter use only the layer's own
    methods (before, detach called the base's ``release`` and merge took the base's ``merged``)."""
    from adapterkit.layer import AdapterLayer, own_method

    calls = []

    class Odd(nn.Linear):
        def release(self, *args):
            calls.append("release")

        def merged(self):
            calls.append("merged")
            return self

    model = nn.Sequential(Odd(4, 4), nn.ReLU(), nn.Linear(4, 2))
    ak.attach(model, ak.LoRAConfig(rank=2, targets=["0"], init="random"))
    layer = model[0]
    assert own_method(layer, "release") is None and own_method(layer, "merged") is not None
    assert own_method(AdapterLayer(Odd(2, 2)), "merged") is None  # a layer class without merged
    x = torch.randn(3, 4)
    want = model(x)
    merged = ak.merge(copy.deepcopy(model))
    torch.testing.assert_close(merged(x), want)
    ak.detach(model)
    assert calls == [] and type(model[0]) is Odd
