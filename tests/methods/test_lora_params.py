"""LoRA on parameters (target_parameters) against PEFT's ParamWrapper as the oracle: the fused
experts and router of tiny Mixtral / Qwen2-MoE / Qwen3-MoE models; logits and gradients on the
same weights, files both ways, merge, init, and bad inputs."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.io.state import entries
from tests.checks import assert_close_scaled
from tests.peft_twin import copy_by_file_keys

peft = pytest.importorskip("peft")

V = 61
TEXT = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=V,
    max_position_embeddings=32,
)
MODELS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=3, num_experts_per_tok=2)),
    "qwen2-moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16),
    ),
    "qwen3-moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16, head_dim=8),
    ),
}
PARAMS = ("experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight")
CONFIG = ak.LoRAConfig(rank=2, alpha=6, targets=("q_proj",), target_parameters=PARAMS, init="random")


def _make(family):
    import transformers

    config_cls, model_cls, extra = MODELS[family]
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**TEXT, **extra)).eval()


def _ids():
    return torch.randint(1, V, (2, 6), generator=torch.Generator().manual_seed(1))


def _peft_config(cfg: ak.LoRAConfig):
    return peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.targets) or None,
        target_parameters=list(cfg.target_parameters),
        init_lora_weights=False,
    )


def _twins(family, cfg=CONFIG):
    base = _make(family)
    ours = ak.attach(copy.deepcopy(base), cfg).eval()
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(cfg)).eval()
    copy_by_file_keys(ours, theirs)
    return base, ours, theirs


def _grads_by_key(ours, theirs):
    """{file key: (our grad, PEFT's grad)} for every LoRA tensor."""
    params = dict(theirs.named_parameters())
    out = {}
    for entry in entries(ours, "default")[1]:
        for key, tensor in entry.tensors.items():
            peft_key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            out[key] = (tensor.grad, params[peft_key].grad)
    return out


@pytest.mark.parametrize("family", sorted(MODELS))
def test_logits_and_gradients_equal_peft(family):
    _, ours, theirs = _twins(family)
    ids = _ids()
    logits = ours(input_ids=ids, labels=ids)
    reference = theirs(input_ids=ids, labels=ids)
    assert_close_scaled(logits.logits, reference.logits)
    logits.loss.backward()
    reference.loss.backward()
    grads = _grads_by_key(ours, theirs)
    assert any(".experts.base_layer.lora_A" in k for k in grads) and any(".gate.lora_B" in k for k in grads)
    for key, (mine, want) in grads.items():
        assert mine is not None and want is not None, key
        assert_close_scaled(mine, want)


@pytest.mark.parametrize("family", ["mixtral", "qwen2-moe"])
def test_files_both_ways(family, tmp_path):
    base, ours, theirs = _twins(family)
    ids = _ids()
    with torch.no_grad():
        expected = ours(input_ids=ids).logits
        theirs.save_pretrained(tmp_path / "peft")  # PEFT saves -> adapterkit loads
        loaded = ak.load_adapter(copy.deepcopy(base), tmp_path / "peft").eval()
        assert_close_scaled(loaded(input_ids=ids).logits, expected)
        assert set(loaded.model.layers[0].mlp.experts.adapters["default"].config.target_parameters) == set(PARAMS)
        ak.save_adapter(ours, tmp_path / "ak")  # adapterkit saves -> PEFT loads, and adapterkit
        saved = json.loads((tmp_path / "ak" / "adapter_config.json").read_text())
        assert saved["target_parameters"] == list(PARAMS) and saved["target_modules"] == ["q_proj"]
        again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ak").eval()
        assert_close_scaled(again(input_ids=ids).logits, expected)
        back = ak.load_adapter(copy.deepcopy(base), tmp_path / "ak").eval()
        assert_close_scaled(back(input_ids=ids).logits, expected)


@pytest.mark.parametrize("family", ["mixtral", "qwen3-moe"])
def test_peft_all_linear_file_on_a_transformers_5_moe_goes_both_ways(family, tmp_path):
    """PEFT's all-linear on these models also targets the router and the fused experts, with twice the
    rank (and alpha) on the fused gate_up_proj (rank_pattern / alpha_pattern in the file)."""
    base = _make(family)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=6, target_modules="all-linear", init_lora_weights=False)
    ).eval()
    ids = _ids()
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        theirs.save_pretrained(tmp_path / "peft")
        ours = ak.load_adapter(copy.deepcopy(base), tmp_path / "peft").eval()
        lora = ours.model.layers[0].mlp.experts.adapters["default"]
        assert lora.ranks == {"gate_up_proj": 4, "down_proj": 2}
        assert_close_scaled(ours(input_ids=ids).logits, expected)
        ak.save_adapter(ours, tmp_path / "ak")
        data = json.loads((tmp_path / "ak" / "adapter_config.json").read_text())
        assert data["rank_pattern"] == {r".*\.gate_up_proj": 4}
        again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ak").eval()
        assert_close_scaled(again(input_ids=ids).logits, expected)


def test_only_parameters_no_module_targets(tmp_path):
    """targets=() adapts only the parameters; PEFT writes and reads target_modules null then."""
    cfg = dataclasses.replace(CONFIG, targets=(), target_parameters=("experts.down_proj",))
    base, ours, theirs = _twins("mixtral", cfg)
    assert [n for n, _ in ak.inject.adapter_layers(ours)] == ["model.layers.0.mlp.experts"]
    ids = _ids()
    with torch.no_grad():
        assert_close_scaled(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)
        theirs.save_pretrained(tmp_path)
        loaded = ak.load_adapter(copy.deepcopy(base), tmp_path).eval()
        assert_close_scaled(loaded(input_ids=ids).logits, ours(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["mixtral", "qwen3-moe"])
def test_merge_equals_unmerged_and_peft_merge(family):
    _, ours, theirs = _twins(family)
    ids = _ids()
    with torch.no_grad():
        expected = ours(input_ids=ids).logits
        merged = ak.merge(copy.deepcopy(ours))
        assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
        assert_close_scaled(merged(input_ids=ids).logits, expected)
        reference = theirs.merge_and_unload().state_dict()
        for key, value in merged.state_dict().items():
            assert_close_scaled(value, reference[key])
        with pytest.raises(ak.MergeError):
            ak.merge_adapter(ours)


def test_default_init_starts_unchanged_with_peft_bounds():
    base = _make("mixtral")
    ids = _ids()
    model = ak.attach(copy.deepcopy(base), ak.LoRAConfig(rank=4, targets=(), target_parameters=PARAMS[:2]))
    lora = model.model.layers[0].mlp.experts.adapters["default"]
    for name, n_in in (("gate_up_proj", 32), ("down_proj", 48)):
        assert lora.a[name].shape == (4 * 3, n_in) and not lora.b[name].any()
        assert lora.a[name].abs().max() <= n_in**-0.5  # Kaiming-uniform (a=sqrt(5)) over fan-in `in`
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)


class _Transposed(nn.Module):
    """Experts stored as (E, in, out) and marked ``is_transposed``, as some MoE layers are."""

    is_transposed = True

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 8, 5))

    def forward(self, x):  # x (E, T, in) -> (E, T, out)
        return torch.bmm(x, self.w)


def test_transposed_expert_layout_equals_peft():
    torch.manual_seed(0)
    base = nn.Sequential(_Transposed())
    cfg = ak.LoRAConfig(rank=2, alpha=4, targets=(), target_parameters=("0.w",), init="random")
    ours = ak.attach(copy.deepcopy(base), cfg)
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(cfg))
    copy_by_file_keys(ours, theirs)
    x = torch.randn(3, 4, 8)
    assert_close_scaled(ours(x), theirs(x))


def test_two_adapters_add_up_and_disable():
    base = _make("qwen3-moe")
    model = ak.attach(copy.deepcopy(base), CONFIG, name="x")
    ak.attach(model, dataclasses.replace(CONFIG, rank=3), name="y")
    model.eval()
    ids = _ids()
    with torch.no_grad():
        ak.set_active(model, ["x", "y"])
        both = model(input_ids=ids).logits
        assert_close_scaled(ak.merge(copy.deepcopy(model))(input_ids=ids).logits, both)
        with ak.disabled(model):
            torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)


def test_config_round_trip_and_bad_configs():
    assert ak.LoRAConfig.from_dict(json.loads(json.dumps(CONFIG.to_dict()))) == CONFIG
    with pytest.raises(ak.ConfigError, match="dropout"):
        ak.LoRAConfig(target_parameters=PARAMS, dropout=0.1)
    with pytest.raises(ak.ConfigError, match="dora"):
        ak.LoRAConfig(target_parameters=PARAMS, dora=True)
    with pytest.raises(ak.ConfigError, match="target_parameters"):
        ak.LoRAConfig(target_parameters=[3])
    with pytest.raises(ak.ConfigError, match="targets is empty"):
        ak.LoRAConfig(targets=())
    ranked = dataclasses.replace(CONFIG, rank_pattern={r".*\.gate_up_proj": 4}, alpha_pattern=[("down", 3)])
    assert ak.LoRAConfig.from_dict(json.loads(json.dumps(ranked.to_dict()))) == ranked
    assert ranked.parameter_rank_and_scale("model.layers.0.mlp.experts.gate_up_proj") == (4, 6 / 4)
    with pytest.raises(ak.ConfigError, match="positive integers"):
        ak.LoRAConfig(target_parameters=PARAMS, rank_pattern={"x": 0})


@pytest.mark.parametrize(
    "params,error,match",
    [
        (("experts.gate_up",), ak.TargetError, "matches no parameter.*experts.gate_up_proj"),
        (("experts",), ak.TargetError, "names a module, not a parameter.*experts.gate_up_proj"),
        (("input_layernorm.weight",), ak.UnsupportedModuleError, "1-D"),
        (("q_proj.weight",), ak.TargetError, "both a module target"),
    ],
)
def test_bad_targets_are_refused_and_leave_the_model_alone(params, error, match):
    model = _make("mixtral")
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(error, match=match):
        ak.attach(model, ak.LoRAConfig(targets=("q_proj",), target_parameters=params))
    assert [(n, type(m)) for n, m in model.named_modules()] == before


def test_mixed_batch_is_refused():
    model = ak.attach(_make("mixtral"), CONFIG).eval()
    with pytest.raises(ak.AdapterKitError):
        model(input_ids=_ids(), adapter_names=["default", "default"])
