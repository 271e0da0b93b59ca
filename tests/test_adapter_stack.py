"""Several adapters on one model against PEFT: deleting the active one, and several active DoRA
adapters on one layer (each rescales the output of those before it, as PEFT's forward does)."""

import pytest
import torch

import adapterkit as ak
from tests.models import tiny_gpt2, tiny_llama, tokens
from tests.peft_twin import copy_to_peft, named_twins


def _lora(**kw):
    return ak.LoRAConfig(**{"rank": 4, "alpha": 8, "targets": "all-linear", "init": "random", **kw})


def _logits(model, x):
    return model(input_ids=x).logits


@torch.no_grad()
def _scaled_twins(factory, configs, **extra):
    """PEFT twins whose DoRA magnitudes are moved off ||W + s B A|| (where they start, making every
    DoRA scale m / ||W + s B A|| exactly 1 and the order of adapters invisible)."""
    ours, theirs = named_twins(factory, configs, **extra)
    generator = torch.Generator().manual_seed(3)
    for _, layer in ak.inject.adapter_layers(ours):
        for lora in layer.adapters.values():
            if lora.magnitude is not None:
                lora.magnitude.mul_(1 + 0.5 * torch.rand(lora.magnitude.shape, generator=generator))
    for name in configs:
        copy_to_peft(ours, theirs, name)
    return ours, theirs


def _set_both(ours, theirs, names):
    ak.set_active(ours, names)
    theirs.base_model.set_adapter(names)


# -- delete_adapter ---------------------------------------------------------------------------------
def test_deleting_the_active_adapter_activates_the_first_remaining_by_name_as_peft():
    ours, theirs = named_twins(tiny_llama, {"z": _lora(), "x": _lora(rank=2), "y": _lora(rank=6)})
    assert ak.active_names(ours) == ["y"]
    with pytest.warns(UserWarning, match="'y' was active and is now deleted; 'x' is active now"):
        ak.delete_adapter(ours, "y")
    with pytest.warns(UserWarning):
        theirs.delete_adapter("y")
    assert ak.active_names(ours) == ["x"] == theirs.active_adapters
    x = tokens()
    with torch.no_grad():
        got = _logits(ours, x)
        torch.testing.assert_close(got, _logits(theirs, x), rtol=1e-5, atol=1e-5)
        with ak.disabled(ours):
            assert not torch.allclose(got, _logits(ours, x), atol=1e-3)  # not the base model


def test_deleting_one_of_two_active_adapters_leaves_the_other_as_peft():
    ours, theirs = named_twins(tiny_llama, {"x": _lora(), "y": _lora(rank=2), "z": _lora(rank=6)})
    _set_both(ours, theirs, ["x", "z"])
    ak.delete_adapter(ours, "x")
    theirs.delete_adapter("x")
    assert ak.active_names(ours) == ["z"] == theirs.active_adapters
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(_logits(ours, x), _logits(theirs, x), rtol=1e-5, atol=1e-5)


def test_deleting_an_inactive_adapter_or_the_last_one_changes_nothing_else():
    model = ak.attach(tiny_llama(), _lora(), name="x")
    ak.attach(model, _lora(), name="y")
    ak.delete_adapter(model, "x")
    assert ak.active_names(model) == ["y"]
    ak.delete_adapter(model, "y")
    assert ak.active_names(model) == [] and ak.adapter_names(model) == []


# -- several active DoRA adapters -------------------------------------------------------------------
STACKS = {
    "dora+dora": ({"dora": True}, {"dora": True, "rank": 2}),
    "lora+dora": ({}, {"dora": True, "rank": 2}),
    "dora+lora": ({"dora": True}, {"rank": 2}),
}


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("order", [("x", "y"), ("y", "x")])
def test_several_active_adapters_equal_peft(factory, stack, order):
    first, second = STACKS[stack]
    extra = {"fan_in_fan_out": True} if factory is tiny_gpt2 else {}
    ours, theirs = _scaled_twins(factory, {"x": _lora(**first), "y": _lora(**second)}, **extra)
    _set_both(ours, theirs, list(order))
    x = tokens()
    with torch.no_grad():
        got = _logits(ours, x)
        torch.testing.assert_close(got, _logits(theirs, x), rtol=1e-4, atol=1e-5)
        merged = _logits(ak.merge(ours), x)
    torch.testing.assert_close(merged, got, rtol=1e-4, atol=1e-5)  # merging composes the same way


def test_two_active_dora_adapters_train_as_peft():
    ours, theirs = _scaled_twins(tiny_llama, {"x": _lora(dora=True), "y": _lora(dora=True, rank=2)})
    _set_both(ours, theirs, ["x", "y"])
    ours.train(), theirs.train()  # dropout 0: PEFT's DoRA rescales the running output in training too
    x = tokens()
    _logits(ours, x).square().mean().backward()
    _logits(theirs, x).square().mean().backward()
    peft = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    checked = 0
    for layer_name, layer in ak.inject.adapter_layers(ours):
        prefix = f"base_model.model.{layer_name}"
        for name, lora in layer.adapters.items():
            pairs = [
                (lora.a, f"lora_A.{name}.weight"),
                (lora.b, f"lora_B.{name}.weight"),
                (lora.magnitude, f"lora_magnitude_vector.{name}.weight"),
            ]
            for ours_p, key in pairs:
                expected = peft[f"{prefix}.{key}"]
                scale = expected.abs().max().item()
                torch.testing.assert_close(ours_p.grad, expected, rtol=1e-4, atol=1e-4 * scale)
                checked += 1
    assert checked == 2 * 3 * 7 * 2  # 2 layers x 7 linears x 2 adapters x (A, B, m)
