"""VeRA against PEFT 0.21: the same random projections from the same key, the same math (logits and
gradients), the same merge, files both ways; bad configs refused."""

from __future__ import annotations

import copy

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_gpt2, tiny_llama, tokens

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "down_proj"]  # different in / out sizes: the projections are sliced


def _randomise(model, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in layer.adapters["default"].parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def _pair(make=tiny_llama, targets=TARGETS, **extra):
    base = make()
    cfg = ak.VeRAConfig(rank=8, targets=targets, **extra)
    ours = ak.attach(copy.deepcopy(base), cfg)
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.VeraConfig(
            r=8,
            target_modules=targets,
            projection_prng_key=cfg.projection_prng_key,
            d_initial=cfg.d_initial,
            save_projection=cfg.save_projection,
            fan_in_fan_out=make is tiny_gpt2,
        ),
    )
    _randomise(ours)
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            twin = theirs.base_model.model.get_submodule(name)
            adapter = layer.adapters["default"]
            twin.vera_lambda_b["default"].copy_(adapter.vera_lambda_b)
            twin.vera_lambda_d["default"].copy_(adapter.vera_lambda_d)
    return base, ours, theirs


def test_projections_are_peft_draws():
    _, ours, theirs = _pair()
    adapter = next(layer for _, layer in adapter_layers(ours)).adapters["default"]
    assert torch.equal(adapter.projections.vera_A, theirs.base_model.vera_A["default"])
    assert torch.equal(adapter.projections.vera_B, theirs.base_model.vera_B["default"])
    shared = {id(layer.adapters["default"].projections) for _, layer in adapter_layers(ours)}
    assert len(shared) == 1  # one pair for all layers


@pytest.mark.parametrize(
    "make,targets", [(tiny_llama, TARGETS), (tiny_gpt2, ["c_attn", "c_fc"])], ids=["llama", "gpt2"]
)
def test_logits_and_gradients_match_peft(make, targets):
    _, ours, theirs = _pair(make, targets)
    ids = tokens()
    out_ours, out_theirs = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    out_ours.pow(2).mean().backward()
    out_theirs.pow(2).mean().backward()
    for name, layer in adapter_layers(ours):
        twin = theirs.base_model.model.get_submodule(name)
        adapter = layer.adapters["default"]
        torch.testing.assert_close(adapter.vera_lambda_b.grad, twin.vera_lambda_b["default"].grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(adapter.vera_lambda_d.grad, twin.vera_lambda_d["default"].grad, atol=1e-5, rtol=1e-4)


def test_merge_matches_peft_and_unmerged():
    _, ours, theirs = _pair()
    ids = tokens()
    with torch.no_grad():
        unmerged = ours(input_ids=ids).logits
        ak.merge_adapter(ours)
        torch.testing.assert_close(ours(input_ids=ids).logits, unmerged, atol=1e-5, rtol=1e-5)
        ak.unmerge_adapter(ours)
        merged = ak.merge(ours)(input_ids=ids).logits
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.merge_and_unload()(input_ids=ids).logits, merged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("save_projection", [True, False])
def test_peft_file_loads_into_adapterkit(tmp_path, save_projection):
    base, _, theirs = _pair(save_projection=save_projection)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.3)
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(copy.deepcopy(base), tmp_path)
    assert ak.adapter_config(ours, "default").save_projection is save_projection
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("save_projection", [True, False])
def test_adapterkit_file_loads_into_peft(tmp_path, save_projection):
    from peft import PeftModel
    from safetensors.torch import load_file

    base, ours, _ = _pair(save_projection=save_projection)
    ak.save_adapter(ours, tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert ("base_model.vera_A" in keys) is save_projection
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_projections_follow_the_model_and_stay_shared():
    model = ak.attach(tiny_llama(), ak.VeRAConfig(rank=4, targets=TARGETS))
    model.to(torch.float64)
    shared = {id(layer.adapters["default"].projections.vera_A) for _, layer in adapter_layers(model)}
    assert (
        len(shared) == 1
        and next(iter(adapter_layers(model)))[1].adapters["default"].projections.vera_A.dtype == torch.float64
    )
    model(input_ids=tokens())


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": 0},
        {"rank": 2.5},
        {"dropout": 1.0},
        {"d_initial": 0},
        {"projection_prng_key": -1},
        {"projection_prng_key": True},
        {"save_projection": "yes"},
        {"init": "gaussian"},
        {"targets": []},
        {"exclude": "all-linear"},
        {"layers": [-1]},
        {"vera_dropout": 0.1},
    ],
)
def test_bad_configs_raise(bad):
    with pytest.raises(ak.ConfigError):
        ak.VeRAConfig(**bad)


def test_non_linear_target_is_refused():
    with pytest.raises(ak.UnsupportedModuleError, match="VeRA"):
        ak.attach(tiny_llama(), ak.VeRAConfig(rank=4, targets=["embed_tokens"]))
