"""ak.combine against PEFT's add_weighted_adapter: every combination type, negative weights, DoRA."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.transaction import Snapshot
from tests.checks import assert_close_scaled, token_logits
from tests.models import TinyCNN, tiny_llama
from tests.peft_twin import named_twins

WEIGHTS = [0.7, -1.3]


def _cfg(rank=4, **kw):
    kw.setdefault("targets", ("q_proj", "v_proj"))
    return ak.LoRAConfig(rank=rank, alpha=2.0 * rank, init="random", **kw)


def _pair(rank_b=4, factory=tiny_llama, **kw):
    torch.manual_seed(3)
    return named_twins(factory, {"one": _cfg(**kw), "two": _cfg(rank=rank_b, **kw)})


CASES = [
    ("cat", {}),
    ("linear", {}),
    ("svd", {}),
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.6, "majority_sign_method": "frequency"}),
    ("ties_svd", {"density": 0.5}),
    ("magnitude_prune", {"density": 0.4}),
    ("magnitude_prune_svd", {"density": 0.4}),
    ("dare_linear", {"density": 1.0}),
    ("dare_ties", {"density": 1.0}),
    ("dare_linear_svd", {"density": 1.0}),
    ("dare_ties_svd", {"density": 1.0, "majority_sign_method": "frequency"}),
]


@pytest.mark.filterwarnings("ignore:The density")
@pytest.mark.parametrize("how,options", CASES, ids=[f"{h}-{i}" for i, (h, _) in enumerate(CASES)])
def test_combine_matches_peft(how, options):
    ours, theirs = _pair()
    ak.combine(ours, ["one", "two"], "mix", weights=WEIGHTS, how=how, **options)
    theirs.add_weighted_adapter(["one", "two"], WEIGHTS, "mix", combination_type=how, **options)
    theirs.set_adapter("mix")
    assert ak.active_names(ours) == ["mix"]
    assert_close_scaled(token_logits(ours), token_logits(theirs))


def test_cat_and_svd_with_different_ranks_rank_and_clamp():
    ours, theirs = _pair(rank_b=2)
    ak.combine(ours, ["one", "two"], "cat", weights=WEIGHTS, how="cat")
    ak.combine(ours, ["one", "two"], "low", weights=WEIGHTS, how="svd", rank=3, svd_clamp=0.9)
    theirs.add_weighted_adapter(["one", "two"], WEIGHTS, "cat", combination_type="cat")
    theirs.add_weighted_adapter(["one", "two"], WEIGHTS, "low", combination_type="svd", svd_rank=3, svd_clamp=0.9)
    assert ak.adapter_config(ours, "cat").rank == 6 and ak.adapter_config(ours, "low").rank == 3
    for name in ("cat", "low"):
        ak.set_active(ours, name)
        theirs.set_adapter(name)
        assert_close_scaled(token_logits(ours), token_logits(theirs))


def test_cat_is_the_exact_weighted_sum():
    ours, _ = _pair(rank_b=2)
    x = torch.randn(3, 32)
    layer = ours.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        deltas = []
        for name in ("one", "two"):
            ak.set_active(ours, name)
            deltas.append(layer(x) - layer.base(x))
        ak.combine(ours, ["one", "two"], "mix", weights=WEIGHTS, how="cat")
        torch.testing.assert_close(
            layer(x) - layer.base(x), WEIGHTS[0] * deltas[0] + WEIGHTS[1] * deltas[1], atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("how", ["svd", "cat", "magnitude_prune"])
def test_embedding_and_conv2d_match_peft(how):
    configs = {
        n: ak.LoRAConfig(rank=3, alpha=5.0, init="random", targets=("embed", "conv", "fc")) for n in ("one", "two")
    }
    torch.manual_seed(4)
    ours, theirs = named_twins(TinyCNN, configs)
    options = {"density": 0.5} if how == "magnitude_prune" else {}
    ak.combine(ours, ["one", "two"], "mix", weights=WEIGHTS, how=how, **options)
    theirs.add_weighted_adapter(["one", "two"], WEIGHTS, "mix", combination_type=how, **options)
    theirs.set_adapter("mix")
    image, ids = torch.randn(2, 3, 4, 4), torch.tensor([3, 5])
    with torch.no_grad():
        assert_close_scaled(ours(image, ids), theirs(image, ids))


@pytest.mark.parametrize("how", ["dare_linear", "dare_ties", "dare_ties_svd"])
def test_dare_draws_as_peft_does(how):
    """Same seed: each layer's A' / B' (or low-rank update) equal PEFT's merge functions drawn in PEFT's order."""
    from peft.utils import merge_utils

    ours, theirs = _pair()
    torch.manual_seed(11)
    ak.combine(ours, ["one", "two"], "mix", weights=WEIGHTS, how=how, density=0.5)
    torch.manual_seed(11)
    peft_fn = getattr(merge_utils, how.removesuffix("_svd"))
    for name, layer in adapter_layers(ours):
        if "mix" not in layer.adapters:
            continue
        peft_layer = theirs.base_model.model.get_submodule(name)
        got = layer.adapters["mix"]
        if how.endswith("_svd"):
            deltas = [peft_layer.get_delta_weight(n) for n in ("one", "two")]
            want = peft_fn(deltas, torch.tensor(WEIGHTS), 0.5)
            u, s, vh = torch.linalg.svd(want)
            want = (u[:, :4] * s[:4]) @ vh[:4]
            torch.testing.assert_close(got.b @ got.a, want, atol=1e-5, rtol=1e-5)
            continue
        coef = [w * peft_layer.scaling[n] for n, w in zip(("one", "two"), WEIGHTS)]
        wa = torch.tensor([abs(c) ** 0.5 * (1 if c >= 0 else -1) for c in coef])
        wb = torch.tensor([abs(c) ** 0.5 for c in coef])
        want_a = peft_fn([peft_layer.lora_A[n].weight.detach() for n in ("one", "two")], wa, 0.5)
        want_b = peft_fn([peft_layer.lora_B[n].weight.detach() for n in ("one", "two")], wb, 0.5)
        torch.testing.assert_close(got.a, want_a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got.b, want_b, atol=1e-6, rtol=1e-6)


def test_combining_dora_adapters_is_refused_and_changes_nothing():
    """Each DoRA adapter learned its own magnitude vector; no combination rule merges them (PEFT
    0.21 reset it to ||W||, PEFT 0.22 refuses), so combine refuses, naming the adapter."""
    torch.manual_seed(5)
    model = tiny_llama()
    ak.attach(model, _cfg(), name="plain")
    ak.attach(model, _cfg(dora=True), name="dora")
    before = Snapshot(model).state()
    for names in (["dora", "plain"], ["plain", "dora"]):
        with pytest.raises(ak.ConfigError, match="'dora' is a DoRA adapter"):
            ak.combine(model, names, "mix", how="svd")
    assert Snapshot(model).state() == before and ak.adapter_names(model) == ["plain", "dora"]


def test_unequal_ranks_refused_for_factored_types():
    ours, _ = _pair(rank_b=2)
    before = Snapshot(ours).state()
    with pytest.raises(ak.ConfigError, match="equal ranks"):
        ak.combine(ours, ["one", "two"], "mix", how="ties", density=0.5)
    assert Snapshot(ours).state() == before
