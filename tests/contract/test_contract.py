"""The contract every adapter method keeps, checked for each (config, model) case.

A case gives a config factory, a model factory and inputs. Adapters are perturbed after attach
(noise on their trainable tensors) so that they change the output; "identity at init" is checked
before that, for the methods whose init promises it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tiny_vit, tokens


@dataclasses.dataclass
class Case:
    id: str
    config: Callable[[], ak.AdapterConfig]
    model: Callable[[], nn.Module]
    identity: bool  # the adapted model equals the base at init
    mergeable: bool

    def inputs(self) -> dict:
        if self.model is tiny_vit:
            return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))}
        ids = tokens()
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # left padding in the first row
        return {"input_ids": ids, "attention_mask": mask}


CASES = [
    Case("lora-llama", lambda: ak.LoRAConfig(rank=4), tiny_llama, True, True),
    Case("rslora-gpt2", lambda: ak.LoRAConfig(rank=4, rslora=True), tiny_gpt2, True, True),
    Case("dora-llama", lambda: ak.LoRAConfig(rank=4, dora=True, targets=["q_proj", "v_proj"]), tiny_llama, True, True),
    Case("adalora-llama", lambda: ak.AdaLoRAConfig(init_r=4, target_r=2, total_step=10), tiny_llama, True, True),
    Case("adalora-gpt2", lambda: ak.AdaLoRAConfig(init_r=3, target_r=2, total_step=10), tiny_gpt2, True, True),
    Case("ia3-llama", ak.IA3Config, tiny_llama, True, True),
    Case("loha-llama", lambda: ak.LoHaConfig(rank=4), tiny_llama, True, True),
    Case(
        "loha-conv-vit",
        lambda: ak.LoHaConfig(rank=2, targets=["q_proj", "projection"], use_effective_conv2d=True),
        tiny_vit,
        True,
        True,
    ),
    Case("lokr-llama", lambda: ak.LoKrConfig(rank=2, decompose_both=True, decompose_factor=4), tiny_llama, True, True),
    Case("lokr-conv-gpt2", lambda: ak.LoKrConfig(rank=4, init="lycoris"), tiny_gpt2, True, True),
    Case("ia3-gpt2", ak.IA3Config, tiny_gpt2, True, True),
    Case("ia3-bert", ak.IA3Config, tiny_bert, True, True),
    Case(
        "vera-llama", lambda: ak.VeRAConfig(rank=4, targets=["q_proj", "v_proj", "down_proj"]), tiny_llama, True, True
    ),
    Case("vera-gpt2", lambda: ak.VeRAConfig(rank=4, save_projection=False), tiny_gpt2, True, True),
    Case("ln-tuning-llama", ak.LNTuningConfig, tiny_llama, True, True),
    Case("ln-tuning-bert", lambda: ak.LNTuningConfig(targets=["attention.output.LayerNorm"]), tiny_bert, True, True),
    Case("oft-llama", lambda: ak.OFTConfig(block_size=8), tiny_llama, True, True),
    Case(
        "oft-cayley-bert", lambda: ak.OFTConfig(rank=4, block_size=0, use_cayley_neumann=False), tiny_bert, True, True
    ),
    Case("boft-llama", lambda: ak.BOFTConfig(block_size=4), tiny_llama, True, True),
    Case("boft-butterfly-bert", lambda: ak.BOFTConfig(block_size=4, butterfly_factor=2), tiny_bert, True, True),
    Case("houlsby-llama", lambda: ak.BottleneckConfig(preset="houlsby", reduction_factor=4), tiny_llama, True, False),
    Case("pfeiffer-bert", lambda: ak.BottleneckConfig(preset="pfeiffer", bottleneck_dim=5), tiny_bert, True, False),
    Case("parallel-gpt2", lambda: ak.BottleneckConfig(preset="parallel", scale=2.0), tiny_gpt2, True, False),
    Case("parallel-vit", lambda: ak.BottleneckConfig(preset="parallel", activation="gelu"), tiny_vit, True, False),
    Case("compacter-llama", lambda: ak.CompacterConfig(bottleneck_dim=8, phm_init_range=0.2), tiny_llama, False, False),
    Case(
        "compacterpp-bert",
        lambda: ak.CompacterConfig(preset="pfeiffer", reduction_factor=4, phm_init_range=0.2),
        tiny_bert,
        False,
        False,
    ),
    Case(
        "compacter-parallel-gpt2",
        lambda: ak.CompacterConfig(preset="parallel", bottleneck_dim=8, phm_init_range=0.2),
        tiny_gpt2,
        False,
        False,
    ),
    Case("loreft-llama", lambda: ak.LoReFTConfig(rank=2), tiny_llama, False, False),
    Case(
        "loreft-tied-gpt2",
        lambda: ak.LoReFTConfig(rank=2, positions="f2+l2", tied_weights=True),
        tiny_gpt2,
        False,
        False,
    ),
    Case("loreft-bert", lambda: ak.LoReFTConfig(rank=1, positions="f3", layers=[1]), tiny_bert, False, False),
    Case("prompt-llama", lambda: ak.PromptTuningConfig(num_virtual_tokens=3), tiny_llama, False, False),
    Case("prompt-bert", lambda: ak.PromptTuningConfig(num_virtual_tokens=3, init="vocab"), tiny_bert, False, False),
    Case("ptuning-mlp-gpt2", lambda: ak.PromptEncoderConfig(num_virtual_tokens=3), tiny_gpt2, False, False),
    Case(
        "ptuning-lstm-llama",
        lambda: ak.PromptEncoderConfig(num_virtual_tokens=3, encoder="lstm"),
        tiny_llama,
        False,
        False,
    ),
    Case("prefix-llama", lambda: ak.PrefixTuningConfig(num_virtual_tokens=3), tiny_llama, False, False),
    Case(
        "prefix-mlp-gpt2", lambda: ak.PrefixTuningConfig(num_virtual_tokens=3, projection=True), tiny_gpt2, False, False
    ),
]


def _out(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _perturb(model: nn.Module, name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            if name in layer.adapters:
                for p in layer.adapters[name].parameters():
                    p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.2)


def _attached(case: Case, name: str = "default", seed: int = 1, model=None) -> nn.Module:
    model = case.model() if model is None else model
    ak.attach(model, case.config(), name=name)
    _perturb(model, name, seed)
    return model


def _adapter_params(model: nn.Module) -> set[int]:
    return {id(p) for _, layer in adapter_layers(model) for p in layer.adapters.parameters()}


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)


cases = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


@cases
def test_attach_trains_only_adapter_parameters(case):
    model = case.model()
    ak.attach(model, case.config())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable and trainable == _adapter_params(model)


@cases
def test_identity_at_init_where_promised(case):
    base = case.model()
    model = ak.attach(case.model(), case.config())
    same = _close(_out(model, case.inputs()), _out(base, case.inputs()), atol=1e-6)
    assert same == case.identity


@cases
def test_disabled_gives_the_base_output(case):
    base_out = _out(case.model(), case.inputs())
    model = _attached(case)
    assert not _close(_out(model, case.inputs())[..., -base_out.shape[-1] :], base_out)
    with ak.disabled(model):
        assert _close(_out(model, case.inputs()), base_out, atol=1e-6)
    assert not _close(_out(model, case.inputs())[..., -base_out.shape[-1] :], base_out)


@cases
def test_detach_restores_modules_hooks_and_outputs(case):
    model = case.model()
    before = dict(model.named_modules())
    hooks = len(model._forward_pre_hooks)
    base_out = _out(model, case.inputs())
    _attached(case, model=model)
    assert ak.detach(model) is model
    after = dict(model.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert len(model._forward_pre_hooks) == hooks
    assert _close(_out(model, case.inputs()), base_out, atol=1e-6)


@cases
def test_two_adapters_side_by_side(case):
    model = _attached(case, "a", seed=1)
    out_a = _out(model, case.inputs())
    _attached(case, "b", seed=2, model=model)
    out_b = _out(model, case.inputs())
    assert ak.adapter_names(model) == ["a", "b"] and ak.active_names(model) == ["b"]
    assert not _close(out_a, out_b)
    ak.set_active(model, "a")
    assert _close(_out(model, case.inputs()), out_a)
    ak.set_active(model, "b")
    assert _close(_out(model, case.inputs()), out_b)


@cases
def test_delete_adapter(case):
    model = case.model()
    before = dict(model.named_modules())
    base_out = _out(model, case.inputs())
    _attached(case, "a", seed=1, model=model)
    _attached(case, "b", seed=2, model=model)
    out_b = _out(model, case.inputs())
    ak.delete_adapter(model, "a")
    assert ak.adapter_names(model) == ["b"]
    assert _close(_out(model, case.inputs()), out_b)
    with pytest.raises(ak.AdapterNameError):
        ak.set_active(model, "a")
    ak.delete_adapter(model, "b")
    assert all(dict(model.named_modules())[k] is v for k, v in before.items())
    assert not list(adapter_layers(model)) and not model._forward_pre_hooks
    assert _close(_out(model, case.inputs()), base_out, atol=1e-6)


@cases
def test_training_step_changes_only_adapter_parameters(case):
    model = _attached(case).train()
    for module in model.modules():  # keep the base deterministic: no dropout
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    adapter = _adapter_params(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)  # steps of ~lr, whatever the gradient scale
    model(**case.inputs()).logits.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in params)
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    ids = {n: id(p) for n, p in model.named_parameters()}
    assert changed and all(ids[n] in adapter for n in changed)


@cases
def test_merge_equals_unmerged_or_is_refused(case):
    model = _attached(case)
    out = _out(model, case.inputs())
    if not case.mergeable:
        with pytest.raises(ak.MergeError):
            ak.merge(model)
        assert list(adapter_layers(model)) and _close(_out(model, case.inputs()), out)
        return
    merged = ak.merge(model)
    assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
    assert _close(_out(merged, case.inputs()), out, atol=1e-5)


@cases
def test_merge_in_place_keeps_the_output_and_undoes_or_is_refused(case):
    model = _attached(case)
    out = _out(model, case.inputs())
    before = {n: t.clone() for n, t in model.state_dict().items()}
    if not case.mergeable:
        with pytest.raises(ak.MergeError):
            ak.merge_adapter(model)
    else:
        ak.merge_adapter(model)
        assert ak.merged_adapters(model) == ["default"]
        assert _close(_out(model, case.inputs()), out)
        ak.unmerge_adapter(model)
    assert ak.merged_adapters(model) == []
    assert all(_close(t, before[n], atol=1e-6) for n, t in model.state_dict().items())
    assert _close(_out(model, case.inputs()), out)


@cases
def test_summary_counts(case):
    model = case.model()
    total = sum(p.numel() for p in model.parameters())
    ak.attach(model, case.config())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    s = ak.summary(model)
    assert s.rows == (("default", case.config().method, trainable, trainable),)
    assert s.trainable == trainable and s.total == total + trainable
    assert case.config().method in str(s)


@cases
def test_save_load_round_trip(case, tmp_path):
    model = _attached(case)
    out = _out(model, case.inputs())
    ak.save_adapter(model, tmp_path)
    fresh = ak.load_adapter(case.model(), tmp_path)
    assert _close(_out(fresh, case.inputs()), out, atol=1e-6)


@cases
def test_state_dict_keeps_the_base_names_and_round_trips(case):
    """Base tensors under the base's own keys (what from_pretrained reads), adapters beside them;
    load_state_dict(state_dict()) restores the adapted model (what a Trainer resume does)."""
    from adapterkit.io.trainer import adapter_prefixes

    base = case.model().state_dict()
    model = _attached(case)
    state = model.state_dict()
    assert all(k in state and torch.equal(state[k], v) for k, v in base.items())
    assert all(k.startswith(adapter_prefixes(model)) for k in set(state) - set(base))
    other = _attached(case, seed=2)
    assert not _close(_out(other, case.inputs()), _out(model, case.inputs()))
    other.load_state_dict(state)
    assert _close(_out(other, case.inputs()), _out(model, case.inputs()), atol=0)


@cases
def test_config_is_frozen_and_round_trips_through_json(case):
    import json

    config = case.config()
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method_field = 1  # frozen: no attribute can be set
    with pytest.raises(ak.ConfigError, match="unknown field"):
        type(config).from_dict({**config.to_dict(), "no_such_field": 1})
