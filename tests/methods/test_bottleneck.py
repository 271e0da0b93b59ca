"""Bottleneck adapters: placement on Llama, GPT-2, BERT and ViT from names and types, the
equations against plain torch, identity at init, sizes, files, and combining with LoRA."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.bottleneck import Bottleneck, Tap
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tiny_vit, tokens

MODELS = [tiny_llama, tiny_gpt2, tiny_bert, tiny_vit]


def _inputs(make):
    if make is tiny_vit:
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))}
    return {"input_ids": tokens()}


def _placed(model) -> dict[str, str]:
    """{module name: 'serial' | 'parallel' | 'tap'} for the default adapter."""
    out = {}
    for name, layer in adapter_layers(model):
        adapter = layer.adapters["default"]
        out[name] = "tap" if isinstance(adapter, Tap) else ("parallel" if adapter.parallel else "serial")
    return out


# the module names each preset must pick in block 0 of each model (the model's own names)
EXPECTED = {
    "tiny_llama": ("model.layers.0.", "self_attn.o_proj", "mlp.down_proj", "mlp.gate_proj"),
    "tiny_gpt2": ("transformer.h.0.", "attn.c_proj", "mlp.c_proj", "mlp.c_fc"),
    "tiny_bert": ("bert.encoder.layer.0.", "attention.output.dense", "output.dense", "intermediate.dense"),
}


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_bert], ids=lambda f: f.__name__)
def test_presets_place_adapters_by_names_and_types(make):
    prefix, attn_out, ffn_out, ffn_in = EXPECTED[make.__name__]
    block0 = lambda placed: {k[len(prefix) :]: v for k, v in placed.items() if k.startswith(prefix)}  # noqa: E731
    houlsby = ak.attach(make(), ak.BottleneckConfig(preset="houlsby"))
    assert block0(_placed(houlsby)) == {attn_out: "serial", ffn_out: "serial"}
    pfeiffer = ak.attach(make(), ak.BottleneckConfig(preset="pfeiffer"))
    assert block0(_placed(pfeiffer)) == {ffn_out: "serial"}
    parallel = ak.attach(make(), ak.BottleneckConfig(preset="parallel"))
    assert block0(_placed(parallel)) == {ffn_in: "tap", ffn_out: "parallel"}
    assert len(_placed(pfeiffer)) == 2  # one per block of the two


@pytest.mark.parametrize("make", MODELS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("preset", ["houlsby", "pfeiffer", "parallel"])
def test_identity_at_init(make, preset):
    base = make()
    with torch.no_grad():
        expected = base(**_inputs(make)).logits
    model = ak.attach(make(), ak.BottleneckConfig(preset=preset, reduction_factor=4))
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs(make)).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2, tiny_bert], ids=lambda f: f.__name__)
def test_houlsby_has_more_parameters_than_pfeiffer(make):
    counts = {}
    for preset in ("houlsby", "pfeiffer"):
        model = ak.attach(make(), ak.BottleneckConfig(preset=preset, reduction_factor=4))
        counts[preset] = ak.summary(model).trainable
    hidden = 32
    d = hidden // 4
    per_adapter = 2 * hidden * d + d + hidden  # down (d, h) + b_down + up (h, d) + b_up
    assert counts["pfeiffer"] == 2 * per_adapter  # two blocks
    assert counts["houlsby"] > counts["pfeiffer"] and counts["houlsby"] == 2 * counts["pfeiffer"]


def _random_up(model, name="default"):
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            adapter = layer.adapters[name] if name in layer.adapters else None
            if isinstance(adapter, Bottleneck):
                adapter.up.weight.normal_()
                adapter.up.bias.normal_()


def test_serial_equation_against_plain_torch():
    model = ak.attach(tiny_llama(), ak.BottleneckConfig(preset="pfeiffer", bottleneck_dim=3, activation="tanh"))
    _random_up(model)
    layer = model.model.layers[0].mlp.down_proj
    adapter = layer.adapters["default"]
    h = torch.randn(2, 5, 64)
    o = h @ layer.base.weight.t()
    expected = o + torch.tanh(o @ adapter.down.weight.t() + adapter.down.bias) @ adapter.up.weight.t() + adapter.up.bias
    torch.testing.assert_close(layer(h), expected)


def test_parallel_equation_against_plain_torch():
    """y = FFN(x) + scale * A(x) for the MLP's input x (He et al. 2022)."""
    model = ak.attach(tiny_llama(), ak.BottleneckConfig(preset="parallel", scale=4.0, activation="gelu"))
    _random_up(model)
    mlp = model.model.layers[1].mlp
    adapter = mlp.down_proj.adapters["default"]
    x = torch.randn(2, 5, 32)
    with ak.disabled(model):
        ffn = mlp(x)
    branch = F.gelu(x @ adapter.down.weight.t() + adapter.down.bias) @ adapter.up.weight.t() + adapter.up.bias
    torch.testing.assert_close(mlp(x), ffn + 4.0 * branch)


def test_bottleneck_size_and_activation_options():
    model = ak.attach(tiny_llama(), ak.BottleneckConfig(reduction_factor=8))
    assert model.model.layers[0].mlp.down_proj.adapters["default"].down.weight.shape == (4, 32)
    model = ak.attach(tiny_llama(), ak.BottleneckConfig(reduction_factor=8, bottleneck_dim=7))
    assert model.model.layers[0].mlp.down_proj.adapters["default"].down.weight.shape == (7, 32)
    model = ak.attach(tiny_llama(), ak.BottleneckConfig(targets=["q_proj"], layers=[1]))
    assert list(_placed(model)) == ["model.layers.1.self_attn.q_proj"]


@pytest.mark.parametrize("preset", ["houlsby", "parallel"])
def test_save_load_round_trip(preset, tmp_path):
    model = ak.attach(tiny_gpt2(), ak.BottleneckConfig(preset=preset, reduction_factor=4))
    _random_up(model)
    ids = tokens()
    expected = model(ids).logits
    ak.save_adapter(model, tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peft_type"] == "ADAPTERKIT_BOTTLENECK" and data["preset"] == preset
    loaded = ak.load_adapter(tiny_gpt2(), tmp_path)
    assert ak.adapter_config(loaded, "default") == ak.BottleneckConfig(preset=preset, reduction_factor=4)
    torch.testing.assert_close(loaded(ids).logits, expected, atol=0, rtol=0)


def test_bottleneck_and_lora_side_by_side():
    """Two methods on one model, each under its own name, on the same module."""
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, targets=["down_proj"], init="random"), name="lora")
    ak.attach(model, ak.BottleneckConfig(), name="adapter")
    _random_up(model, "adapter")
    ids = tokens()
    ak.set_active(model, ["lora", "adapter"])
    both = model(ids).logits
    ak.set_active(model, "lora")
    lora_only = model(ids).logits
    assert not torch.allclose(both, lora_only)
    assert {row[1] for row in ak.summary(model).rows} == {"lora", "bottleneck"}
    ak.delete_adapter(model, "adapter")
    torch.testing.assert_close(model(ids).logits, lora_only)


def test_config_errors_name_the_problem():
    with pytest.raises(ak.ConfigError, match="preset"):
        ak.BottleneckConfig(preset="houlsbi")
    with pytest.raises(ak.ConfigError, match="activation"):
        ak.BottleneckConfig(activation="swish")
    with pytest.raises(ak.ConfigError, match="serial"):
        ak.BottleneckConfig(preset="parallel", targets=["o_proj"])
    with pytest.raises(ak.TargetError, match="transformer blocks"):
        ak.attach(torch.nn.Sequential(torch.nn.Linear(3, 3)), ak.BottleneckConfig())


class _Block(torch.nn.Module):
    """A block with one feed-forward Linear (``fc``) or two (``fc1`` -> gelu -> ``fc2``)."""

    def __init__(self, hidden: int, linears: int):
        super().__init__()
        if linears == 1:
            self.fc = torch.nn.Linear(hidden, hidden)
        else:
            self.fc1, self.fc2 = torch.nn.Linear(hidden, 3 * hidden), torch.nn.Linear(3 * hidden, hidden)

    def forward(self, h):
        return self.fc(h) if hasattr(self, "fc") else self.fc2(F.gelu(self.fc1(h)))


class _Stack(torch.nn.Module):
    def __init__(self, *linears: int, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(_Block(hidden, n) for n in linears)

    def forward(self, h):
        for block in self.layers:
            h = block(h)
        return h


def test_parallel_adapter_reads_its_own_blocks_ffn_input():
    """Block 0 has one feed-forward Linear, block 1 two: only block 1 takes a parallel adapter, and
    it reads block 1's FFN input (not block 0's, which a pairing across blocks would hand it)."""
    model = ak.attach(
        _Stack(1, 2), ak.BottleneckConfig(preset="parallel", bottleneck_dim=3, scale=2.0, activation="tanh")
    )
    assert _placed(model) == {"layers.1.fc1": "tap", "layers.1.fc2": "parallel"}
    _random_up(model)
    block0, block1 = model.layers
    adapter = block1.fc2.adapters["default"]
    x = torch.randn(2, 5, 8)
    h = F.linear(x, block0.fc.weight, block0.fc.bias)  # block 1's FFN input
    fc1, fc2 = block1.fc1.base, block1.fc2.base
    base = F.linear(F.gelu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    down = torch.tanh(F.linear(h, adapter.down.weight, adapter.down.bias))
    expected = base + 2.0 * F.linear(down, adapter.up.weight, adapter.up.bias)  # y = base(h) + s * up(f(down(h)))
    torch.testing.assert_close(model(x), expected)


def test_parallel_pairs_stay_within_a_copy_and_need_a_block_with_two_ffn_linears():
    import copy

    model = ak.attach(_Stack(2, 2), ak.BottleneckConfig(preset="parallel"))
    _random_up(model)
    twin = copy.deepcopy(model)
    x = torch.randn(3, 8)
    torch.testing.assert_close(twin(x), model(x), atol=0, rtol=0)
    for block, copied in zip(model.layers, twin.layers):
        handover = copied.fc1.adapters["default"].handover
        assert handover is copied.fc2.adapters["default"].handover
        assert handover is not block.fc1.adapters["default"].handover
    with pytest.raises(ak.TargetError, match=r"layers\.0 has \['layers\.0\.fc'\].*pfeiffer"):
        ak.attach(_Stack(1, 1), ak.BottleneckConfig(preset="parallel"))
    with pytest.raises(ak.InputError, match=r"'layers\.0\.fc1'.*did not run"):
        model.layers[0].fc2(torch.randn(3, 24))
