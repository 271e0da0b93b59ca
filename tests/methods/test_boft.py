"""BOFT against PEFT 0.21: the same butterfly (permutations, Cayley blocks, scale), logits and
gradients, the same merge, files both ways; bad configs refused. PEFT runs several butterfly factors
only through its CUDA extension; a stand-in for that extension (plain torch.block_diag) lets it run
them here."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.boft.butterfly import permutation_matrices
from tests.models import tiny_bert, tiny_llama, tokens

peft = pytest.importorskip("peft")
boft_layer = pytest.importorskip("peft.tuners.boft.layer")

TARGETS = ["q_proj", "v_proj", "down_proj"]


class _BlockDiag:
    """What PEFT's CUDA extension computes: (N, D, H, H) -> (N, D H, D H) block-diagonals."""

    @staticmethod
    def forward(x):
        return [torch.stack([torch.block_diag(*blocks) for blocks in x])]

    @staticmethod
    def backward(grad, x):
        _, d, h, _ = x.shape
        return [
            torch.stack([torch.stack([g[i * h : (i + 1) * h, i * h : (i + 1) * h] for i in range(d)]) for g in grad])
        ]


@pytest.fixture
def peft_factors(monkeypatch):
    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: _BlockDiag)


def _pair(make=tiny_llama, targets=TARGETS, **fields):
    base = make()
    cfg = ak.BOFTConfig(targets=targets, **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = ak.attach(copy.deepcopy(base), cfg)
        theirs = peft.get_peft_model(
            copy.deepcopy(base),
            peft.BOFTConfig(
                boft_block_size=cfg.block_size,
                boft_block_num=cfg.block_num,
                target_modules=targets,
                boft_n_butterfly_factor=cfg.butterfly_factor,
            ),
        )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            twin = theirs.base_model.model.get_submodule(name)
            adapter = layer.adapters["default"]
            adapter.boft_R.copy_(0.2 * torch.randn(adapter.boft_R.shape, generator=gen))
            adapter.boft_s.copy_(1 + 0.2 * torch.randn(adapter.boft_s.shape, generator=gen))
            twin.boft_R["default"].copy_(adapter.boft_R)
            twin.boft_s["default"].copy_(adapter.boft_s)
    return base, ours, theirs


def _check(ours, theirs, ids):
    out_ours, out_theirs = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    out_ours.pow(2).mean().backward()
    out_theirs.pow(2).mean().backward()
    for name, layer in adapter_layers(ours):
        twin = theirs.base_model.model.get_submodule(name)
        adapter = layer.adapters["default"]
        torch.testing.assert_close(adapter.boft_R.grad, twin.boft_R["default"].grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(adapter.boft_s.grad, twin.boft_s["default"].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fields", [dict(block_size=4), dict(block_size=0, block_num=4)], ids=["size", "num"])
def test_one_factor_matches_peft(fields):
    _, ours, theirs = _pair(**fields)
    _check(ours, theirs, tokens())


def test_bias_is_not_rescaled_as_in_peft():
    _, ours, theirs = _pair(tiny_bert, ["query", "value", "output.dense"], block_size=8)
    _check(ours, theirs, tokens())


@pytest.mark.parametrize("factors", [2, 3])
def test_butterfly_factors_match_peft(peft_factors, factors):
    n, blocks, size = 32, 8, 4
    theirs = torch.stack(
        [
            boft_layer.BOFTLayer.perm2mat(
                None, boft_layer.BOFTLayer.block_butterfly_perm(None, n, blocks // 2**i, size // 2, factors - 1)
            )
            for i in range(factors)
        ]
    )
    assert torch.equal(permutation_matrices(n, blocks, size, factors), theirs)
    _, ours, theirs = _pair(block_size=size, butterfly_factor=factors)
    _check(ours, theirs, tokens())


@pytest.mark.parametrize("factors", [1, 2])
def test_merge_matches_peft_and_unmerged(peft_factors, factors):
    _, ours, theirs = _pair(block_size=4, butterfly_factor=factors)
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


def test_files_both_ways(tmp_path, peft_factors):
    from peft import PeftModel

    base, ours, theirs = _pair(block_size=4, butterfly_factor=2)
    ids = tokens()
    theirs.save_pretrained(tmp_path / "peft")
    loaded = ak.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    ak.save_adapter(ours, tmp_path / "ak")
    back = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ak")
    with torch.no_grad():
        want = theirs(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_dropout_replaces_blocks_by_identity_in_training_only():
    model = ak.attach(tiny_llama(), ak.BOFTConfig(targets=["q_proj"], block_size=4, dropout=0.5, init="random"))
    adapter = next(layer for _, layer in adapter_layers(model)).adapters["default"]
    eye = torch.eye(4)
    assert not any(torch.equal(q, eye) for q in adapter.blocks()[0])  # eval: no dropout
    adapter.train()
    assert sum(torch.equal(q, eye) for q in adapter.blocks()[0]) == 4  # half of the 8 blocks


@pytest.mark.parametrize(
    "bad",
    [
        {"block_size": 0},
        {"block_num": 4},
        {"block_size": -4},
        {"butterfly_factor": 0},
        {"dropout": 1.0},
        {"block_size": 3, "butterfly_factor": 2},
        {"init": "zeros"},
        {"targets": []},
        {"boft_block_size": 4},
    ],
)
def test_bad_configs_raise(bad):
    with pytest.raises(ak.ConfigError):
        ak.BOFTConfig(**bad)


def test_block_size_that_does_not_divide_a_layer_is_refused_and_nothing_changes():
    model = tiny_llama()
    before = dict(model.named_modules())
    with pytest.raises(ak.ConfigError, match="block_size=8 with butterfly_factor=4"):
        ak.attach(model, ak.BOFTConfig(targets=["q_proj", "down_proj"], block_size=8, butterfly_factor=4))
    assert dict(model.named_modules()) == before and all(p.requires_grad for p in model.parameters())
