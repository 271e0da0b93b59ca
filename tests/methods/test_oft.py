"""OFT against PEFT 0.21: the same rotations (Cayley-Neumann, exact Cayley, COFT, shared blocks,
adjusted block sizes), logits and gradients, the same merge, files both ways; bad configs refused."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_llama, tokens

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "down_proj"]  # inputs 32, 32, 64
VARIANTS = {
    "neumann": dict(block_size=8),
    "cayley-rank": dict(rank=4, block_size=0, use_cayley_neumann=False),
    "coft-shared": dict(block_size=8, coft=True, eps=1e-2, block_share=True),
    "adjusted": dict(block_size=12, num_cayley_neumann_terms=3),
}


def _peft_config(cfg: ak.OFTConfig):
    return peft.OFTConfig(
        r=cfg.rank,
        oft_block_size=cfg.block_size,
        target_modules=list(cfg.targets),
        coft=cfg.coft,
        eps=cfg.eps,
        block_share=cfg.block_share,
        use_cayley_neumann=cfg.use_cayley_neumann,
        num_cayley_neumann_terms=cfg.num_cayley_neumann_terms,
    )


def _pair(**fields):
    base = tiny_llama()
    cfg = ak.OFTConfig(targets=TARGETS, **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = ak.attach(copy.deepcopy(base), cfg)
        theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(cfg))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            q = layer.adapters["default"].q
            q.copy_(0.1 * torch.randn(q.shape, generator=gen))
            theirs.base_model.model.get_submodule(name).oft_R["default"].weight.copy_(q)
    return base, ours, theirs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_gradients_match_peft(variant):
    _, ours, theirs = _pair(**VARIANTS[variant])
    ids = tokens()
    out_ours, out_theirs = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    out_ours.pow(2).mean().backward()
    out_theirs.pow(2).mean().backward()
    for name, layer in adapter_layers(ours):
        twin = theirs.base_model.model.get_submodule(name).oft_R["default"]
        q = layer.adapters["default"].q
        assert q.shape == twin.weight.shape
        torch.testing.assert_close(q, twin.weight.detach(), atol=1e-7, rtol=0)  # COFT projected both alike
        torch.testing.assert_close(q.grad, twin.weight.grad, atol=1e-5, rtol=1e-4)


def test_adjusted_block_size_warns_like_peft():
    with pytest.warns(UserWarning, match="block_size=12"):
        model = ak.attach(tiny_llama(), ak.OFTConfig(targets=["q_proj"], block_size=12))
    adapter = next(layer for _, layer in adapter_layers(model)).adapters["default"]
    assert (adapter.n, adapter.b) == (4, 8)


@pytest.mark.parametrize("variant", ["neumann", "cayley-rank"])
def test_merge_matches_peft_and_unmerged(variant):
    _, ours, theirs = _pair(**VARIANTS[variant])
    ids = tokens()
    with torch.no_grad():
        unmerged = ours(input_ids=ids).logits
        weights = {k: v.clone() for k, v in ours.state_dict().items()}
        ak.merge_adapter(ours)
        torch.testing.assert_close(ours(input_ids=ids).logits, unmerged, atol=1e-5, rtol=1e-5)
        ak.unmerge_adapter(ours)
        for k, v in ours.state_dict().items():
            torch.testing.assert_close(v, weights[k], atol=1e-6, rtol=0)
        merged = ak.merge(ours)(input_ids=ids).logits
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.merge_and_unload()(input_ids=ids).logits, merged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["neumann", "coft-shared"])
def test_files_both_ways(tmp_path, variant):
    from peft import PeftModel

    base, ours, theirs = _pair(**VARIANTS[variant])
    ids = tokens()
    theirs.save_pretrained(tmp_path / "peft")
    loaded = ak.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    got, want_cfg = ak.adapter_config(loaded, "default"), ak.adapter_config(ours, "default")
    assert got == dataclasses.replace(want_cfg, targets=got.targets) and set(got.targets) == set(TARGETS)
    ak.save_adapter(ours, tmp_path / "ak")
    back = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ak")
    with torch.no_grad():
        want = theirs(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_two_adapters_rotate_in_turn_and_merge_alike():
    model = tiny_llama()
    for name, seed in (("a", 1), ("b", 2)):
        ak.attach(model, ak.OFTConfig(targets=TARGETS, block_size=8 * seed, init="random"), name=name)
    ak.set_active(model, ["a", "b"])
    ids = tokens()
    with torch.no_grad():
        out = model(input_ids=ids).logits
        ak.merge_adapter(model)
        torch.testing.assert_close(model(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)
        ak.unmerge_adapter(model)
        torch.testing.assert_close(ak.merge(model)(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": 4},
        {"block_size": 0},
        {"rank": -1, "block_size": 0},
        {"block_size": 2.0},
        {"eps": 0},
        {"module_dropout": 1.0},
        {"num_cayley_neumann_terms": 0},
        {"coft": 1},
        {"init": "zeros"},
        {"targets": []},
        {"oft_block_size": 8},
    ],
)
def test_bad_configs_raise(bad):
    with pytest.raises(ak.ConfigError):
        ak.OFTConfig(**bad)


def test_conv1d_is_refused_as_peft_does():
    from tests.models import tiny_gpt2

    with pytest.raises(ak.UnsupportedModuleError, match="OFT"):
        ak.attach(tiny_gpt2(), ak.OFTConfig(targets=["c_attn"]))
