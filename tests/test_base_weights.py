"""ak.base_state_dict: the un-adapted model's names; values of ak.merge on a copy; the model unchanged."""

import copy

import pytest
import torch

import adapterkit as ak
from tests.models import tiny_gpt2, tiny_llama, tokens


def _random(**kw):
    return ak.LoRAConfig(**{"rank": 4, "alpha": 8, "init": "random", **kw})


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_merged_pairs(model, fresh):
    """Names: the fresh model's state_dict keys, in order; values: ak.merge of a copy, exactly."""
    before = _snapshot(model)
    pairs = list(ak.base_state_dict(model, merged=True))
    expected = ak.merge(copy.deepcopy(model)).state_dict()
    assert [name for name, _ in pairs] == list(fresh.state_dict()) == list(expected)
    for name, tensor in pairs:
        assert not tensor.requires_grad, name
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)
    after = model.state_dict()  # the model is not changed
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    return dict(pairs)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("dora", [False, True])
def test_merged_names_and_values(factory, dora):
    model = ak.attach(factory(), _random(dora=dora, targets="all-linear"))
    pairs = _assert_merged_pairs(model, factory())
    changed = [k for k, v in pairs.items() if not torch.equal(v, factory().state_dict()[k])]
    assert changed  # the adapters are folded in


def test_merged_ia3_and_train_modules():
    model = ak.attach(tiny_llama(), ak.IA3Config())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    ak.attach(model, _random(targets=["q_proj"], train_modules=["lm_head"]), name="two")
    ak.set_active(model, ["default", "two"])
    _assert_merged_pairs(model, tiny_llama())


@pytest.mark.parametrize("adapted", ["embed_tokens", "lm_head"])
def test_tied_weights_are_sent_as_merge_leaves_them_with_a_warning(adapted):
    """ak.merge unties: the adapted module's entry merged, the other's unmerged. A receiver that does
    not tie them (tie_word_embeddings=False) then computes the adapted model exactly."""
    with pytest.warns(UserWarning, match="tied weights"):
        model = ak.attach(tiny_llama(tie_word_embeddings=True), _random(targets=[adapted, "q_proj"]))
    with pytest.warns(UserWarning, match=r"base_state_dict: .*tied to .*must not tie them again"):
        pairs = _assert_merged_pairs(model, tiny_llama(tie_word_embeddings=True))
    assert not torch.equal(pairs["lm_head.weight"], pairs["model.embed_tokens.weight"])
    receiver = tiny_llama(tie_word_embeddings=False)
    receiver.load_state_dict(pairs)
    with torch.no_grad():
        torch.testing.assert_close(receiver(tokens()).logits, model(tokens()).logits, atol=1e-5, rtol=1e-5)


def test_quantized_base_is_sent_dense():
    model = ak.quantize(tiny_llama(), bits=4)
    ak.attach(model, _random(targets="all-linear"))
    pairs = _assert_merged_pairs(model, tiny_llama())
    x = tokens()
    plain = tiny_llama()
    plain.load_state_dict(pairs)
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)


def test_unmerged_is_the_base():
    fresh = tiny_llama()
    model = ak.attach(tiny_llama(), _random(targets="all-linear"))
    pairs = list(ak.base_state_dict(model, merged=False))
    assert [n for n, _ in pairs] == list(fresh.state_dict())
    for name, tensor in pairs:
        torch.testing.assert_close(tensor, fresh.state_dict()[name], atol=0, rtol=0)


def test_unmergeable_adapter_fails_before_anything_is_produced():
    model = ak.attach(tiny_llama(), ak.PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ak.MergeError, match="cannot be folded"):
        ak.base_state_dict(model)  # raised at the call, not at the first item
    assert len(list(ak.base_state_dict(model, merged=False))) == len(tiny_llama().state_dict())
