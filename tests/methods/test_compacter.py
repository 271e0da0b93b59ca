"""Compacter: the PHM equation against plain torch (torch.kron), gradients, the paper's parameter
count, shared rules, files, merging refused, bad configs; AdapterHub as oracle where installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.compacter import Compacter
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens

ACT = {"gelu": F.gelu, "relu": F.relu}


def _attached(make, **fields):
    config = ak.CompacterConfig(**{"bottleneck_dim": 8, "phm_init_range": 0.2, **fields})
    model = ak.attach(make(), config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # biases start at zero: give them values
        for _, layer in adapter_layers(model):
            for p in layer.adapters["default"].parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _rule(rules) -> torch.Tensor:
    if hasattr(rules, "phm_rule"):
        return rules.phm_rule
    return torch.stack([rules.phm_rule_left[i] @ rules.phm_rule_right[i] for i in range(len(rules.phm_rule_left))])


def _H(phm) -> torch.Tensor:
    """The paper's H = sum_i A_i kron B_i, with torch.kron and B_i = s_i t_i^T."""
    A = _rule(phm.phm_rules())
    B = [phm.W_left[i] @ phm.W_right[i] for i in range(len(A))] if hasattr(phm, "W_left") else list(phm.W)
    return sum(torch.kron(A[i], B[i]) for i in range(len(A)))


def _reference(adapter: Compacter, o: torch.Tensor) -> torch.Tensor:
    """o + A(o) for a serial Compacter, written from the paper's equations."""
    down, up = adapter.down, adapter.up
    h = ACT[adapter.config.activation](o @ _H(down) + (down.b if down.b is not None else 0))
    return o + h @ _H(up) + (up.b if up.b is not None else 0)


@pytest.mark.parametrize(
    "make,fields",
    [
        (tiny_llama, {}),
        (tiny_gpt2, {"preset": "pfeiffer", "factorized_phm_rule": True, "phm_rank": 2}),
        (tiny_bert, {"shared_phm_rule": False, "factorized_phm_W": False, "activation": "relu"}),
    ],
    ids=["llama-houlsby", "gpt2-pfeiffer-factorized-rank2", "bert-own-rules-full-W"],
)
def test_forward_and_gradients_match_the_paper_equation(make, fields):
    model = _attached(make, **fields)
    reference = make()  # the same base, with o -> o + A(o) after each adapted module by hooks
    layers = dict(adapter_layers(model))
    for name, layer in layers.items():
        adapter = layer.adapters["default"]
        reference.get_submodule(name).register_forward_hook(lambda m, a, o, ad=adapter: _reference(ad, o))
    ids = tokens()
    got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads_got = torch.autograd.grad(got.pow(2).sum(), params)
    grads_want = torch.autograd.grad(want.pow(2).sum(), params)
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_rules_are_shared_by_every_phm_layer_or_owned():
    shared = ak.attach(tiny_llama(), ak.CompacterConfig(bottleneck_dim=8))
    rules = {id(l.adapters["default"].down.phm_rules()) for _, l in adapter_layers(shared)}
    rules |= {id(l.adapters["default"].up.phm_rules()) for _, l in adapter_layers(shared)}
    assert len(rules) == 1
    own = ak.attach(tiny_llama(), ak.CompacterConfig(bottleneck_dim=8, shared_phm_rule=False))
    assert len({id(l.adapters["default"].down.phm_rules()) for _, l in adapter_layers(own)}) == 4


@pytest.mark.parametrize(
    "fields", [{}, {"phm_rank": 3, "factorized_phm_rule": True}, {"factorized_phm_W": False, "shared_phm_rule": False}]
)
def test_trainable_parameters_follow_the_paper_count(fields):
    config = ak.CompacterConfig(bottleneck_dim=8, **fields)
    model = ak.attach(tiny_llama(), config)  # houlsby: 2 adapters in each of 2 blocks
    k, d, n, r, adapters = 32, 8, config.phm_dim, config.phm_rank, 4
    # Mahabadi et al. 2021, sec. 3: 2 r (k + d) per adapter with low-rank B_i (2 k d / n without),
    # plus biases d + k, plus the rules: n^3 (2 n^2 factorised), once when shared
    weights = 2 * r * (k + d) if config.factorized_phm_W else 2 * k * d // n
    rule = 2 * n * n if config.factorized_phm_rule else n**3
    rules = rule if config.shared_phm_rule else 2 * adapters * rule
    expected = adapters * (weights + d + k) + rules
    assert ak.summary(model).trainable == expected
    assert ak.summary(model).rows[0][2] == expected  # the shared rule counts once in its row


def test_save_load_round_trip_is_exact(tmp_path):
    model = _attached(tiny_llama)
    ak.save_adapter(model, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert [k for k in keys if "phm_rule" in k] == ["base_model.model.phm_rule"]  # stored once
    assert "ADAPTERKIT_COMPACTER" in (tmp_path / "adapter_config.json").read_text()
    fresh = ak.load_adapter(tiny_llama(), tmp_path)
    assert ak.adapter_config(fresh, "default") == ak.adapter_config(model, "default")
    assert torch.equal(fresh(input_ids=tokens()).logits, model(input_ids=tokens()).logits)
    loaded = {n: l for n, l in adapter_layers(fresh)}
    for name, layer in adapter_layers(model):
        want = dict(layer.adapters["default"].named_parameters())
        got = dict(loaded[name].adapters["default"].named_parameters())
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    shared = {id(l.adapters["default"].up.phm_rules()) for l in loaded.values()}
    assert len(shared) == 1  # still one shared rule after loading


def test_files_with_other_sizes_are_refused(tmp_path):
    ak.save_adapter(_attached(tiny_llama), tmp_path)
    config = (tmp_path / "adapter_config.json").read_text().replace('"phm_dim": 4', '"phm_dim": 2')
    (tmp_path / "adapter_config.json").write_text(config)
    with pytest.raises(ak.AdapterKitError, match="phm_dim"):
        ak.load_adapter(tiny_llama(), tmp_path)


def test_merge_is_refused_and_the_model_left_as_it_was():
    model = _attached(tiny_llama)
    before = model(input_ids=tokens()).logits
    with pytest.raises(ak.MergeError):
        ak.merge(model)
    with pytest.raises(ak.MergeError):
        ak.merge_adapter(model)
    assert torch.equal(model(input_ids=tokens()).logits, before)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"phm_dim": 0}, "phm_dim"),
        ({"phm_rank": -1}, "phm_rank"),
        ({"bottleneck_dim": 6}, "multiple of phm_dim"),
        ({"preset": "houlsbi"}, "houlsby"),
        ({"shared_phm_rule": "yes"}, "True or False"),
        ({"phm_init_range": 0}, "phm_init_range"),
        ({"phm_dims": 4}, "phm_dim"),
    ],
)
def test_bad_configs_raise_config_error(fields, match):
    with pytest.raises(ak.ConfigError, match=match):
        ak.CompacterConfig(**fields)


def test_sizes_that_phm_dim_does_not_divide_are_refused_at_attach():
    model = tiny_llama()
    with pytest.raises(ak.ConfigError, match="not a multiple of phm_dim"):
        ak.attach(model, ak.CompacterConfig(phm_dim=3, bottleneck_dim=6))
    assert not list(adapter_layers(model))  # all or nothing


def test_config_json_round_trip_and_yaml_method_name():
    config = ak.CompacterConfig(preset="pfeiffer", phm_rank=2, layers=[1])
    assert ak.CompacterConfig.from_dict(config.to_dict()) == config
    from adapterkit.training.config import build_adapter  # the `adapter:` section of a train YAML

    assert build_adapter({"method": "compacter", "phm_dim": 2, "bottleneck_dim": 8}) == ak.CompacterConfig(
        phm_dim=2, bottleneck_dim=8
    )


# -- AdapterHub (`adapters`) as oracle: it needs transformers 4.x, so this runs only where it installs --


def _adapterhub_bert(reduction_factor: int):
    adapters = pytest.importorskip("adapters")
    hub = tiny_bert()
    adapters.init(hub)
    hub.add_adapter("c", config=adapters.CompacterConfig(reduction_factor=reduction_factor))
    hub.train_adapter("c")
    return hub


def test_adapterhub_counts_and_numerics():
    hub = _adapterhub_bert(4)
    model = ak.attach(tiny_bert(), ak.CompacterConfig(reduction_factor=4))
    hub_count = sum(p.numel() for n, p in hub.named_parameters() if p.requires_grad and "classifier" not in n)
    assert ak.summary(model).trainable == hub_count
    rule = hub.base_model.shared_parameters["c"]["phm_rule"]
    x = torch.randn(2, 5, 32)
    for i, block in enumerate(hub.bert.encoder.layer):
        for hub_adapter, name in (
            (block.attention.output.adapters["c"], "attention.output.dense"),
            (block.output.adapters["c"], "output.dense"),
        ):
            mine = model.get_submodule(f"bert.encoder.layer.{i}.{name}").adapters["default"]
            with torch.no_grad():
                mine.down.phm_rules().phm_rule.copy_(rule)
                for side, phm in (("down", hub_adapter.adapter_down[0]), ("up", hub_adapter.adapter_up)):
                    for key in ("W_left", "W_right", "b"):
                        getattr(getattr(mine, side), key).copy_(getattr(phm, key))
                hub_adapter.adapter_up.b.normal_()
                mine.up.b.copy_(hub_adapter.adapter_up.b)
            from adapters.context import ForwardContext

            with ForwardContext(hub, input_ids=tokens()):
                want = hub_adapter.adapter_up(hub_adapter.adapter_down(x))
            torch.testing.assert_close(mine.branch(x), want, atol=1e-6, rtol=1e-5)


def test_model_state_dict_and_save_pretrained_hold_the_shared_rule_once(tmp_path):
    model = _attached(tiny_llama)
    state = model.state_dict()
    assert len([k for k in state if k.endswith("phm_rule")]) == 1
    other = ak.attach(tiny_llama(), ak.CompacterConfig(bottleneck_dim=8, phm_init_range=0.2))
    other.load_state_dict(state)  # what a Trainer resume does
    assert torch.equal(other(input_ids=tokens()).logits, model(input_ids=tokens()).logits)
    model.save_pretrained(tmp_path)
    base = type(model).from_pretrained(tmp_path)
    assert torch.equal(base(input_ids=tokens()).logits, tiny_llama()(input_ids=tokens()).logits)
