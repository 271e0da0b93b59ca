"""Tied weights (lm_head and embed_tokens holding one Parameter): never silently wrong.

attach warns, ak.merge gives the folded module a weight of its own (exact, with a warning),
ak.merge_adapter refuses and leaves the model as it was.
"""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.anatomy import tied_parameters
from tests.checks import assert_close_scaled, token_logits
from tests.models import tiny_llama

TARGETS = {"lm_head": ["lm_head"], "embed_tokens": ["embed_tokens"], "both": ["embed_tokens", "lm_head"]}


def _tied():
    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _attach(model, targets, **kw):
    with pytest.warns(UserWarning, match=r"shares its weight with .*\(tied weights\)") as record:
        ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, init="random", targets=targets, **kw))
    text = " ".join(str(w.message) for w in record)
    assert "lm_head" in text and "model.embed_tokens" in text
    return model


def _inner(module):
    return module.innermost() if isinstance(module, ak.AdapterLayer) else module


def test_tied_parameters_are_found_by_identity():
    assert list(tied_parameters(_tied()).values()) == [["model.embed_tokens", "lm_head"]]
    assert tied_parameters(tiny_llama()) == {}
    model = _attach(_tied(), ["lm_head"])  # an adapter layer stands for the module it wraps
    assert list(tied_parameters(model).values()) == [["model.embed_tokens", "lm_head"]]


@pytest.mark.parametrize("which", TARGETS)
def test_merge_unties_and_equals_the_unmerged_model(which, tmp_path):
    model = _attach(_tied(), TARGETS[which])
    original = _inner(model.model.embed_tokens).weight.detach().clone()
    want = token_logits(model)
    with pytest.warns(UserWarning, match=r"ak.merge: .*(lm_head|embed_tokens) \(shared with .*no longer tied"):
        merged = ak.merge(model)
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight
    assert not merged.config.tie_word_embeddings
    if which == "lm_head":
        assert torch.equal(merged.model.embed_tokens.weight, original)  # the other module is untouched
    assert_close_scaled(token_logits(merged), want)
    merged.save_pretrained(tmp_path)  # and it stays so through save_pretrained / from_pretrained
    again = type(merged).from_pretrained(tmp_path).eval()
    assert_close_scaled(token_logits(again), want)


@pytest.mark.parametrize("which", TARGETS)
def test_merge_in_place_of_a_tied_weight_is_refused_and_changes_nothing(which):
    model = _attach(_tied(), TARGETS[which])
    want = token_logits(model)
    with pytest.raises(ak.MergeError, match=r"shares its weight with .*tied weights.*exclude"):
        ak.merge_adapter(model)
    assert ak.merged_adapters(model) == []
    assert _inner(model.lm_head).weight is _inner(model.model.embed_tokens).weight  # still tied
    assert torch.equal(token_logits(model), want)


def test_untied_targets_do_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ak.attach(_tied(), ak.LoRAConfig(rank=4, targets="all-linear"))  # all-linear leaves lm_head out
        ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, targets=["lm_head", "embed_tokens"]))
        ak.attach(_tied(), ak.PromptTuningConfig(num_virtual_tokens=2))  # wraps embeddings, never folds


def test_peft_merge_of_a_tied_head_is_what_we_avoid():
    """The bug this guards against: PEFT's merge_and_unload folds into the shared weight, and the
    merged logits differ from the unmerged ones; ours equal them."""
    peft = pytest.importorskip("peft")
    from tests.peft_twin import copy_to_peft, peft_lora_config

    config = ak.LoRAConfig(rank=4, alpha=8, init="random", targets=["lm_head"])
    ours = _attach(_tied(), ["lm_head"])
    with pytest.warns(UserWarning):
        theirs = peft.get_peft_model(_tied(), peft_lora_config(config)).eval()
    copy_to_peft(ours, theirs)
    want = token_logits(theirs)
    assert_close_scaled(token_logits(ours), want)
    with pytest.warns(UserWarning):
        assert not torch.allclose(token_logits(theirs.merge_and_unload()), want, atol=1e-3)
        assert_close_scaled(token_logits(ak.merge(ours)), want)
