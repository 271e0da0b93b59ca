"""While adapters are merged in place: what works, what raises (and leaves the model as it was)."""

from __future__ import annotations

import warnings

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.checks import assert_close_scaled, token_logits
from tests.models import tiny_llama, tokens


def _random(**kw):
    return ak.LoRAConfig(**{"rank": 4, "alpha": 8, "init": "random", **kw})


@pytest.fixture
def merged(tmp_path):
    model = ak.attach(tiny_llama(), _random(targets=["q_proj", "v_proj"]), name="a")
    ak.save_adapter(model, tmp_path / "saved")
    ak.attach(model, _random(targets=["q_proj", "o_proj"]), name="b")
    ak.set_active(model, ["a", "b"])
    want = token_logits(model)
    ak.merge_adapter(model)
    return model, want, tmp_path / "saved"


@pytest.mark.parametrize(
    "call",
    [
        lambda m, p: ak.attach(m, ak.LoRAConfig(rank=2), name="c"),
        lambda m, p: ak.load_adapter(m, p / "a", name="c"),
        lambda m, p: ak.delete_adapter(m, "b"),
        lambda m, p: ak.set_active(m, "a"),
        lambda m, p: ak.detach(m),
        lambda m, p: ak.combine(m, ["a", "b"], name="c"),
        lambda m, p: ak.disabled(m).__enter__(),
    ],
    ids=["attach", "load_adapter", "delete_adapter", "set_active", "detach", "combine", "disabled"],
)
def test_changing_adapters_while_merged_raises_and_changes_nothing(merged, call):
    model, want, saved = merged
    layers = [type(m) for m in model.modules()]
    with pytest.raises(ak.MergeError, match=r"merged into the base weights.*ak.unmerge_adapter\(model\) first"):
        call(model, saved)
    assert [type(m) for m in model.modules()] == layers
    assert ak.merged_adapters(model) == ["a", "b"] and ak.active_names(model) == ["a", "b"]
    assert_close_scaled(token_logits(model), want)


def test_training_while_merged_raises_but_no_grad_forwards_work(merged):
    model, want, _ = merged
    model.train()
    with pytest.raises(ak.MergeError, match="would not reach them.*unmerge_adapter"):
        model(input_ids=tokens())
    model.eval()
    assert_close_scaled(token_logits(model), want)  # no_grad: fine in either mode
    ak.unmerge_adapter(model)
    model.train()
    model(input_ids=tokens(), labels=tokens()).loss.backward()  # trains again after unmerge


def test_frozen_merged_adapters_allow_gradient_forwards():
    model = ak.attach(tiny_llama(), _random(targets=["q_proj"]))
    model.requires_grad_(False)
    ak.merge_adapter(model)
    model(input_ids=tokens())  # nothing would train: no error


def test_merge_after_merge_in_place_gives_the_same_plain_model(merged):
    model, want, _ = merged
    plain = ak.merge(model)
    assert not any(isinstance(m, ak.AdapterLayer) for m in plain.modules())
    assert_close_scaled(token_logits(plain), want)


def test_set_active_with_the_same_names_and_save_work_while_merged(merged, tmp_path):
    model, want, _ = merged
    ak.set_active(model, ["b", "a"])
    ak.save_adapter(model, tmp_path / "again")
    fresh = ak.load_adapter(tiny_llama(), tmp_path / "again", name="a")
    assert fresh is not None


def test_merging_twice_warns_and_unmerging_nothing_warns(merged):
    model, want, _ = merged
    with pytest.warns(UserWarning, match="already merged"):
        ak.merge_adapter(model)
    ak.unmerge_adapter(model)
    with pytest.warns(UserWarning, match="nothing to unmerge"):
        ak.unmerge_adapter(model)
    assert_close_scaled(token_logits(model), want)


def test_merging_part_of_the_active_adapters_keeps_the_output():
    model = ak.attach(tiny_llama(), _random(targets=["q_proj", "v_proj"]), name="a")
    ak.attach(model, _random(targets=["q_proj", "o_proj"]), name="b")
    ak.set_active(model, ["a", "b"])
    want = token_logits(model)
    ak.merge_adapter(model, names="a")
    assert ak.merged_adapters(model) == ["a"]
    assert_close_scaled(token_logits(model), want)
    with pytest.raises(ak.MergeError, match="merged already"):
        ak.merge_adapter(model, names=["a", "b"])
    ak.unmerge_adapter(model)
    assert_close_scaled(token_logits(model), want)


@pytest.mark.parametrize(
    "names, error, match",
    [
        ("nope", ak.AdapterNameError, "no adapter named 'nope'"),
        ("b", ak.MergeError, "'b' is not active"),
        ([], ak.AdapterNameError, "non-empty list of names; got \\[\\]"),
        (3, ak.AdapterNameError, "an adapter name or a non-empty list"),
    ],
)
def test_unknown_or_inactive_names_are_refused(names, error, match):
    model = ak.attach(tiny_llama(), _random(), name="a")
    ak.attach(model, _random(), name="b")
    ak.set_active(model, "a")
    with pytest.raises(error, match=match):
        ak.merge_adapter(model, names=names)
    assert ak.merged_adapters(model) == []


def test_methods_that_cannot_merge_are_named():
    model = ak.attach(tiny_llama(), _random(targets=["q_proj"]), name="lora")
    ak.attach(model, ak.BottleneckConfig(preset="houlsby", reduction_factor=4), name="bottle")
    ak.set_active(model, ["lora", "bottle"])
    with pytest.raises(ak.MergeError, match="bottleneck adapters.*cannot be merged.*names="):
        ak.merge_adapter(model)
    want = token_logits(model)
    ak.merge_adapter(model, names=["lora"])  # the LoRA alone merges; the bottleneck keeps running
    assert_close_scaled(token_logits(model), want)


def test_a_dora_adapter_left_unmerged_next_to_merged_ones_is_refused():
    model = ak.attach(tiny_llama(), _random(targets=["q_proj"]), name="a")
    ak.attach(model, _random(targets=["q_proj"], dora=True), name="d")
    ak.set_active(model, ["a", "d"])
    with pytest.raises(ak.MergeError, match="DoRA adapter.*'d'.*unmerged"):
        ak.merge_adapter(model, names="a")
    want = token_logits(model)
    ak.merge_adapter(model)  # both together: fine
    assert_close_scaled(token_logits(model), want)


def test_lora_and_ia3_in_one_module_merge_together_or_not_at_all():
    model = ak.attach(tiny_llama(), _random(targets=["k_proj", "v_proj"]), name="lora")
    ak.attach(model, ak.IA3Config(init="random"), name="ia3")
    ak.set_active(model, ["lora", "ia3"])
    want = token_logits(model)
    with pytest.raises(ak.MergeError, match="several methods one inside the other"):
        ak.merge_adapter(model, names="lora")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    ak.merge_adapter(model)
    assert_close_scaled(token_logits(model), want)
    ak.unmerge_adapter(model)
    for name, tensor in model.state_dict().items():
        assert_close_scaled(tensor, before[name])


def test_merge_inside_disabled_is_refused():
    model = ak.attach(tiny_llama(), _random())
    with ak.disabled(model):
        with pytest.raises(ak.MergeError, match="inside ak.disabled"):
            ak.merge_adapter(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ak.merge_adapter(model)


def _perturb_magnitudes(model, seed=4):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for adapter in layer.adapters.values():
                if getattr(adapter, "magnitude", None) is not None:
                    adapter.magnitude.mul_(1 + 0.3 * torch.randn(adapter.magnitude.shape, generator=gen))


@pytest.mark.parametrize("order", [["a", "d"], ["d", "a"], ["d", "e"]])
def test_several_adapters_with_dora_merge_in_their_active_order_as_peft(order):
    """DoRA rescales the adapters before it (PEFT's rule, methods/lora/stack.py): merging in place
    composes them in the layer's active order, equal to the forward and to PEFT's merge."""
    peft = pytest.importorskip("peft")
    from tests.peft_twin import copy_to_peft, peft_lora_config

    configs = {
        "a": _random(targets=["q_proj", "v_proj"]),
        "d": _random(targets=["q_proj", "v_proj"], dora=True),
        "e": _random(targets=["q_proj"], dora=True, rank=2),
    }
    model = tiny_llama()
    theirs = None
    for name in order:
        ak.attach(model, configs[name], name=name)
    _perturb_magnitudes(model)
    base = tiny_llama()
    theirs = peft.get_peft_model(base, peft_lora_config(configs[order[0]]), adapter_name=order[0])
    for name in order[1:]:
        theirs.add_adapter(name, peft_lora_config(configs[name]))
    for name in order:
        copy_to_peft(model, theirs, name)
    ak.set_active(model, order)
    theirs.base_model.set_adapter(order)
    theirs.eval()
    want = token_logits(model)
    assert_close_scaled(token_logits(theirs), want)
    ak.merge_adapter(model)
    theirs.merge_adapter()
    assert_close_scaled(token_logits(model), want)
    for name, layer in adapter_layers(model):
        peft_weight = theirs.base_model.model.get_submodule(name).get_base_layer().weight
        assert_close_scaled(layer.innermost().weight, peft_weight)
    ak.unmerge_adapter(model)
    assert_close_scaled(token_logits(model), want)


def test_merging_a_dora_adapter_after_an_unmerged_one_is_refused():
    model = ak.attach(tiny_llama(), _random(targets=["q_proj"]), name="a")
    ak.attach(model, _random(targets=["q_proj"], dora=True), name="d")
    ak.set_active(model, ["a", "d"])
    with pytest.raises(ak.MergeError, match="leading run of that order"):
        ak.merge_adapter(model, names="d")
    assert ak.merged_adapters(model) == []
