"""LoReFT: Phi(h) = h + R^T (W h + b - R h) at the first / last real tokens of block outputs,
against plain torch (forward and gradients), orthonormal R under AdamW weight decay, parameter
counts, files, generate, merging refused, bad configs; AdapterHub as oracle where installed."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens


def _inputs(padding: bool = True) -> dict:
    ids = tokens(batch=3, length=7)
    mask = torch.ones_like(ids)
    if padding:
        mask[0, :2] = 0  # left padding
        mask[1, -3:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask}


def _attached(make, **fields):
    model = ak.attach(make(), ak.LoReFTConfig(**{"rank": 2, **fields}))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for unit in layer.adapters["default"].parts.values():
                unit.source.weight.normal_(generator=gen)
                unit.source.bias.normal_(generator=gen)
    return model


def _edit(unit, h):
    R = unit.rotation.weight
    W, b = unit.source.weight, unit.source.bias
    return h + R.T @ (W @ h + b - R @ h)  # the paper's equation, one hidden state at a time


def _reference_hook(adapter, mask):
    """The block's output with the paper's edit at the first p / last s real tokens, token by token."""
    config = adapter.config

    def hook(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        new = h.clone()
        for row in range(h.shape[0]):
            real = [t for t in range(h.shape[1]) if mask[row, t]]
            spots = [("first", t) for t in real[: config.first]] + [
                ("last", t) for t in real[-config.last :] if config.last
            ]
            for part, t in spots:
                unit = adapter.parts["both" if config.tied_weights else part]
                new[row, t] = _edit(unit, h[row, t])
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    return hook


@pytest.mark.parametrize(
    "make,fields",
    [
        (tiny_llama, {}),
        (tiny_gpt2, {"positions": "f2+l3", "tied_weights": True, "layers": [1]}),
        (tiny_bert, {"positions": "l2", "rank": 3}),
    ],
    ids=["llama-f1+l1", "gpt2-tied-f2+l3-layer1", "bert-l2"],
)
def test_forward_and_gradients_match_the_paper_equation(make, fields):
    model = _attached(make, **fields)
    reference = make()
    inputs = _inputs()
    for name, layer in adapter_layers(model):
        reference.get_submodule(name).register_forward_hook(
            _reference_hook(layer.adapters["default"], inputs["attention_mask"])
        )
    got, want = model(**inputs).logits, reference(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with ak.disabled(model):
        assert not torch.allclose(model(**inputs).logits, got, atol=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    for g, w in zip(torch.autograd.grad(got.pow(2).sum(), params), torch.autograd.grad(want.pow(2).sum(), params)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_rotation_keeps_orthonormal_rows_under_adamw_weight_decay():
    model = ak.attach(tiny_llama(), ak.LoReFTConfig(rank=4)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(**_inputs()).logits.pow(2).mean().backward()
        optimizer.step()
    for _, layer in adapter_layers(model):
        for unit in layer.adapters["default"].parts.values():
            R = unit.rotation.weight
            torch.testing.assert_close(R @ R.T, torch.eye(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fields,parts", [({}, 2), ({"tied_weights": True}, 1), ({"positions": "f5"}, 1)])
def test_trainable_parameters(fields, parts):
    config = ak.LoReFTConfig(rank=3, **fields)
    model = ak.attach(tiny_llama(), config)
    hidden, blocks = 32, 2
    assert ak.summary(model).trainable == blocks * parts * (2 * config.rank * hidden + config.rank)  # R, W, b


def test_save_load_round_trip(tmp_path):
    model = _attached(tiny_gpt2, positions="f2+l1")
    ak.save_adapter(model, tmp_path)
    assert "ADAPTERKIT_LOREFT" in (tmp_path / "adapter_config.json").read_text()
    fresh = ak.load_adapter(tiny_gpt2(), tmp_path)
    assert ak.adapter_config(fresh, "default") == ak.adapter_config(model, "default")
    loaded = dict(adapter_layers(fresh))
    for name, layer in adapter_layers(model):
        for part, unit in layer.adapters["default"].parts.items():
            other = loaded[name].adapters["default"].parts[part]
            assert torch.equal(unit.source.weight, other.source.weight) and torch.equal(
                unit.source.bias, other.source.bias
            )
            torch.testing.assert_close(other.rotation.weight, unit.rotation.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(fresh(**_inputs()).logits, model(**_inputs()).logits, atol=1e-5, rtol=1e-5)


def test_model_state_dict_and_save_pretrained(tmp_path):
    model = _attached(tiny_llama)
    other = ak.attach(tiny_llama(), ak.LoReFTConfig(rank=2))
    other.load_state_dict(model.state_dict())  # what a Trainer resume does
    assert torch.equal(other(**_inputs()).logits, model(**_inputs()).logits)
    model.save_pretrained(tmp_path)
    base = type(model).from_pretrained(tmp_path)
    assert torch.equal(base(**_inputs()).logits, tiny_llama()(**_inputs()).logits)


def test_a_rotation_without_orthonormal_rows_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    ak.save_adapter(_attached(tiny_llama), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith(".rotation"))
    tensors[key] = tensors[key] * 2
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    model = tiny_llama()
    with pytest.raises(ak.AdapterFileError, match="orthonormal"):
        ak.load_adapter(model, tmp_path)
    assert not list(adapter_layers(model))


def test_generate_edits_the_prompt_only():
    model = _attached(tiny_llama)
    inputs = _inputs(padding=False)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    # the same tokens from full forwards without a cache, editing the prompt's positions only
    seq = inputs["input_ids"]
    for _ in range(3):
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
        seq = torch.cat([seq, logits[:, -1:].argmax(-1)], dim=1)
    assert out.shape == seq.shape and torch.equal(out[:, :8], seq[:, :8])  # first new token: same prompt


def test_detach_removes_the_mask_hook():
    model = tiny_llama()
    hooks = len(model._forward_pre_hooks)
    ak.attach(model, ak.LoReFTConfig())
    assert len(model._forward_pre_hooks) > hooks
    ak.detach(model)
    assert len(model._forward_pre_hooks) == hooks


def test_merge_is_refused():
    model = _attached(tiny_llama)
    with pytest.raises(ak.MergeError):
        ak.merge(model)
    with pytest.raises(ak.MergeError):
        ak.merge_adapter(model)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"rank": 0}, "rank"),
        ({"positions": "x1"}, "positions"),
        ({"positions": "f0"}, "positions"),
        ({"positions": "l1+f1"}, "positions"),
        ({"dropout": 1.5}, "dropout"),
        ({"tied_weights": 1}, "True or False"),
        ({"layers": [-1]}, "layers"),
        ({"low_rank": 2}, "rank"),
    ],
)
def test_bad_configs_raise_config_error(fields, match):
    with pytest.raises(ak.ConfigError, match=match):
        ak.LoReFTConfig(**fields)


def test_layers_beyond_the_model_are_refused_at_attach():
    model = tiny_llama()
    with pytest.raises(ak.TargetError, match="layers"):
        ak.attach(model, ak.LoReFTConfig(layers=[7]))
    assert not list(adapter_layers(model)) and not model._forward_pre_hooks


def test_with_lora_on_the_same_blocks_files_keep_the_model_names(tmp_path):
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, targets=["q_proj"]), name="lora")
    ak.attach(model, ak.LoReFTConfig(), name="reft")
    ak.save_adapter(model, tmp_path, name="lora")
    from safetensors import safe_open

    with safe_open(tmp_path / "lora" / "adapter_model.safetensors", "pt") as f:
        keys = sorted(f.keys())
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def test_methods_attached_after_it_find_the_blocks_modules_by_their_names(tmp_path):
    model = ak.attach(tiny_llama(), ak.LoReFTConfig(), name="reft")
    ak.attach(model, ak.CompacterConfig(bottleneck_dim=8), name="compacter")
    ak.attach(model, ak.LoRAConfig(rank=2, targets=["q_proj"]), name="lora")
    names = {n: type(l).__name__ for n, l in adapter_layers(model)}
    assert names["model.layers.0"] == "LoReFTLayer"
    assert (
        names["model.layers.0.base.self_attn.o_proj"] == names["model.layers.1.base.mlp.down_proj"] == "CompacterLayer"
    )
    ak.save_adapter(model, tmp_path, name="lora")
    from safetensors import safe_open

    with safe_open(tmp_path / "lora" / "adapter_model.safetensors", "pt") as f:
        assert "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight" in f.keys()
    ak.detach(model)
    assert not list(adapter_layers(model)) and not model._forward_pre_hooks


def test_config_json_round_trip_and_yaml_method_name():
    config = ak.LoReFTConfig(rank=4, positions="f3+l2", layers=[0], dropout=0.05)
    assert ak.LoReFTConfig.from_dict(config.to_dict()) == config
    from adapterkit.training.config import build_adapter

    assert (
        build_adapter({"method": "loreft", "rank": 4, "positions": "f3+l2", "layers": [0], "dropout": 0.05}) == config
    )


# -- AdapterHub (`adapters`) as oracle: it needs transformers 4.x, so this runs only where it installs --


def test_adapterhub_end_to_end():
    adapters = pytest.importorskip("adapters")
    hub = tiny_bert()
    adapters.init(hub)
    hub.add_adapter("r", config=adapters.LoReftConfig(r=2, prefix_positions=1, suffix_positions=2, dropout=0.0))
    hub.set_active_adapters("r")
    model = ak.attach(tiny_bert(), ak.LoReFTConfig(rank=2, positions="f1+l2"))
    hub_count = sum(p.numel() for n, p in hub.named_parameters() if ".refts." in n)
    assert ak.summary(model).trainable == hub_count
    for i, block in enumerate(hub.bert.encoder.layer):
        parts = model.bert.encoder.layer[i].adapters["default"].parts
        with torch.no_grad():
            for part, unit in zip(("first", "last"), block.reft_layer.refts["r"].units):
                unit.learned_source.weight.normal_()
                unit.learned_source.bias.normal_()
                parts[part].rotation.weight = unit.projection.weight.detach().clone()
                parts[part].source.load_state_dict(unit.learned_source.state_dict())
    inputs = _inputs()
    want = hub(**inputs, output_hidden_states=True).hidden_states[-1]
    got = model(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_bf16_model_keeps_float32_interventions_and_a_cast_after_attach_is_named():
    model = ak.attach(tiny_llama().to(torch.bfloat16), ak.LoReFTConfig(rank=2))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    out = model(**_inputs()).logits
    out.float().pow(2).mean().backward()
    assert out.dtype == torch.bfloat16 and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    cast = ak.attach(tiny_llama(), ak.LoReFTConfig()).to(torch.bfloat16)
    with pytest.raises(ak.UnsupportedModuleError, match="float32"):
        cast(**_inputs())
