"""LoRA on nn.Conv1d / Conv3d / grouped Conv2d / nn.MultiheadAttention and DoRA on Embedding and
convolutions, against PEFT (tiny custom models as in PEFT's tests/test_custom_models.py): logits and
gradients, files both ways, merge equals unmerged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.io.state import entries
from tests.checks import assert_close_scaled


class Conv1dModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1, dilation=1)
        self.lin = nn.Linear(6 * 5, 3)

    def forward(self, x):  # (B, 4, 5)
        return self.lin(torch.relu(self.conv(x)).flatten(1))


class Conv3dModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.lin = nn.Linear(4 * 27, 3)

    def forward(self, x):  # (B, 2, 3, 3, 3)
        return self.lin(torch.relu(self.conv(x)).flatten(1))


class Conv2dModel(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=groups)
        self.lin = nn.Linear(8 * 16, 3)

    def forward(self, x):  # (B, 4, 4, 4)
        return self.lin(torch.relu(self.conv(x)).flatten(1))


class MHAModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lin = nn.Linear(8, 3)

    def forward(self, x):  # (B, T, 8)
        return self.lin(self.mha(x, x, x)[0])


class EmbModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lin = nn.Linear(8, 3)

    def forward(self, ids):  # (B, T)
        return self.lin(self.emb(ids))


def _input(name):
    g = torch.Generator().manual_seed(7)
    shapes = {
        "conv1d": (2, 4, 5),
        "conv3d": (2, 2, 3, 3, 3),
        "conv2d": (2, 4, 4, 4),
        "grouped": (2, 4, 4, 4),
        "mha": (2, 3, 8),
    }
    if name == "emb":
        return torch.randint(0, 10, (2, 5), generator=g)
    return torch.randn(*shapes[name], generator=g)


FACTORIES = {
    "conv1d": Conv1dModel,
    "conv3d": Conv3dModel,
    "conv2d": Conv2dModel,
    "grouped": lambda: Conv2dModel(groups=2),
    "mha": MHAModel,
    "emb": EmbModel,
}
TARGETS = {"conv1d": "conv", "conv3d": "conv", "conv2d": "conv", "grouped": "conv", "mha": "mha", "emb": "emb"}
CASES = [
    ("conv1d", False),
    ("conv1d", True),
    ("conv3d", False),
    ("conv3d", True),
    ("conv2d", True),
    ("grouped", False),
    ("mha", False),
    ("emb", True),
]
IDS = [f"{n}-{'dora' if d else 'lora'}" for n, d in CASES]


def _factory(name):
    def make():
        torch.manual_seed(0)
        return FACTORIES[name]().eval()

    return make


def _ours(name, dora):
    torch.manual_seed(1)
    cfg = ak.LoRAConfig(rank=4, alpha=6.0, init="random", dora=dora, targets=(TARGETS[name], "lin"))
    return ak.attach(_factory(name)(), cfg)


def _peft_params(theirs) -> dict:
    """PEFT's adapter parameters under their file keys."""
    out = {}
    for key, p in theirs.named_parameters():
        if ".default" in key:
            k = key.replace(".default", "")
            out[k[: -len(".weight")] if k.endswith("lora_magnitude_vector.weight") else k] = p
    return out


def _twins(name, dora):
    from peft import LoraConfig, get_peft_model

    ours = _ours(name, dora)
    if name == "mha":  # PEFT 0.21.2 adds the out_proj update twice (peft PR #3774): compared on in_proj here,
        with torch.no_grad():  # against a plain attention in test_mha_against_plain_attention
            ours.mha.adapters["default"].b_out.zero_()
    theirs = get_peft_model(
        _factory(name)(),
        LoraConfig(r=4, lora_alpha=6.0, use_dora=dora, init_lora_weights=False, target_modules=[TARGETS[name], "lin"]),
    )
    _, found = entries(ours, "default")
    ours_params = {k: t for e in found for k, t in e.tensors.items()}
    theirs_params = _peft_params(theirs)
    assert set(ours_params) == set(theirs_params)
    with torch.no_grad():
        for key, t in ours_params.items():
            theirs_params[key].copy_(t)
    return ours, theirs.eval(), ours_params, theirs_params


@pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd")
@pytest.mark.parametrize("name,dora", CASES, ids=IDS)
def test_logits_and_gradients_equal_peft(name, dora):
    ours, theirs, ours_params, theirs_params = _twins(name, dora)
    x = _input(name)
    got, want = ours(x), theirs(x)
    assert_close_scaled(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    for key, p in ours_params.items():
        assert_close_scaled(p.grad, theirs_params[key].grad)


@pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd")
@pytest.mark.parametrize("name,dora", CASES, ids=IDS)
def test_files_both_ways(tmp_path, name, dora):
    from peft import PeftModel

    ours, theirs, _, _ = _twins(name, dora)
    x = _input(name)
    ak.save_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        want = ours(x)
        assert_close_scaled(PeftModel.from_pretrained(_factory(name)(), tmp_path / "ours")(x), want)
        assert_close_scaled(ak.load_adapter(_factory(name)(), tmp_path / "peft")(x), want)


@pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd")
@pytest.mark.parametrize("name,dora", CASES, ids=IDS)
def test_merge_equals_unmerged(name, dora):
    ours = _ours(name, dora)
    x = _input(name)
    with torch.no_grad():
        want = ours(x)
        if name == "grouped":
            with pytest.raises(ak.MergeError, match="groups"):
                ak.merge(copy.deepcopy(ours))
            with pytest.raises(ak.MergeError, match="groups"):
                ak.merge_adapter(ours)
            torch.testing.assert_close(ours(x), want, atol=0, rtol=0)
            return
        if name == "mha":
            with pytest.raises(ak.MergeError, match="in place"):
                ak.merge_adapter(ours)
        else:
            ak.merge_adapter(ours)
            assert_close_scaled(ours(x), want)
            ak.unmerge_adapter(ours)
        merged = ak.merge(copy.deepcopy(ours))
        assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
        assert_close_scaled(merged(x), want)


def test_mha_against_plain_attention():
    """in_proj_weight + s B A and out_proj.weight + s Bo Ao, each once: logits and gradients against
    F.multi_head_attention_forward on those weights."""
    import torch.nn.functional as F

    ours = _ours("mha", False)
    ak.attach(ours, ak.LoRAConfig(rank=2, alpha=1.0, init="random", targets=("mha",)), name="two")
    ak.set_active(ours, ["default", "two"])
    x = _input("mha")
    base = ours.mha.base
    loras = [ours.mha.adapters[n] for n in ("default", "two")]
    leaves = [t.detach().clone().requires_grad_() for lo in loras for t in (lo.a, lo.b, lo.a_out, lo.b_out)]
    w_in, w_out = base.in_proj_weight, base.out_proj.weight
    for i, lo in enumerate(loras):
        a, b, a_out, b_out = leaves[4 * i : 4 * i + 4]
        w_in, w_out = w_in + b @ a * lo.scale, w_out + b_out @ a_out * lo.scale
    xt = x.transpose(0, 1)
    attn = F.multi_head_attention_forward(
        xt,
        xt,
        xt,
        8,
        2,
        w_in,
        base.in_proj_bias,
        None,
        None,
        False,
        0.0,
        w_out,
        base.out_proj.bias,
        training=False,
        need_weights=False,
    )[0]
    want = ours.lin(attn.transpose(0, 1))
    got = ours(x)
    assert_close_scaled(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    for lo_index, lo in enumerate(loras):
        for j, t in enumerate((lo.a, lo.b, lo.a_out, lo.b_out)):
            assert_close_scaled(t.grad, leaves[4 * lo_index + j].grad)


def test_two_adapters_compose_as_peft_on_a_dora_conv():
    """A LoRA then a DoRA adapter on one Conv1d: forward and ak.merge follow PEFT's order."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    ours = _factory("conv1d")()
    theirs = get_peft_model(
        _factory("conv1d")(),
        LoraConfig(r=2, lora_alpha=3.0, target_modules=["conv"], init_lora_weights=False),
        adapter_name="one",
    )
    theirs.add_adapter(
        "two", LoraConfig(r=4, lora_alpha=5.0, target_modules=["conv"], use_dora=True, init_lora_weights=False)
    )
    ak.attach(ours, ak.LoRAConfig(rank=2, alpha=3.0, targets=("conv",), init="random"), name="one")
    ak.attach(ours, ak.LoRAConfig(rank=4, alpha=5.0, targets=("conv",), init="random", dora=True), name="two")
    layer, peft_layer = ours.conv, theirs.base_model.model.conv
    with torch.no_grad():
        for n in ("one", "two"):
            peft_layer.lora_A[n].weight.copy_(layer.adapters[n].a)
            peft_layer.lora_B[n].weight.copy_(layer.adapters[n].b)
        peft_layer.lora_magnitude_vector["two"].weight.copy_(layer.adapters["two"].magnitude)
        ak.set_active(ours, ["one", "two"])
        theirs.base_model.set_adapter(["one", "two"])
        x = _input("conv1d")
        want = theirs.eval()(x)
        assert_close_scaled(ours.eval()(x), want)
        assert_close_scaled(ak.merge(ours)(x), want)


@pytest.mark.parametrize(
    "make,cfg,error,words",
    [
        (lambda: Conv2dModel(groups=2), dict(rank=3, targets=("conv",)), ak.UnsupportedModuleError, "multiple of 2"),
        (
            lambda: Conv2dModel(groups=2),
            dict(rank=4, targets=("conv",), dora=True),
            ak.UnsupportedModuleError,
            "groups=2",
        ),
        (MHAModel, dict(targets=("mha",), dora=True), ak.UnsupportedModuleError, "DoRA"),
        (
            lambda: nn.Sequential(nn.MultiheadAttention(8, 2, kdim=4, vdim=4)),
            dict(targets=("0",)),
            ak.UnsupportedModuleError,
            "kdim",
        ),
    ],
    ids=["grouped-rank", "grouped-dora", "mha-dora", "mha-kdim"],
)
def test_refused_layers_leave_the_model_unchanged(make, cfg, error, words):
    model = make()
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(error, match=words):
        ak.attach(model, ak.LoRAConfig(**cfg))
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert all(p.requires_grad for p in model.parameters())


def test_operations_that_do_not_handle_attention_refuse_it(tmp_path):
    model = _ours("mha", False)
    ak.attach(model, ak.LoRAConfig(rank=4, targets=("mha",)), name="two")
    for call in (
        lambda: ak.combine(model, ["default", "two"], "mix", how="svd"),
        lambda: ak.resize_rank(model, "default", 2),
        lambda: ak.prepare_hotswap(model, 8),
    ):
        with pytest.raises(ak.ConfigError, match="MultiheadAttention"):
            call()
    assert ak.adapter_names(model) == ["default", "two"] and model.mha.adapters["default"].a.shape[0] == 4
    ak.set_scale(model, "default", 0.5)  # the scale works as everywhere


def test_grouped_convolutions_refused_by_resize_and_hotswap():
    model = _ours("grouped", False)
    for call in (lambda: ak.resize_rank(model, "default", 2), lambda: ak.prepare_hotswap(model, 8)):
        with pytest.raises(ak.ConfigError, match="grouped"):
            call()
    assert model.conv.adapters["default"].a.shape[0] == 4


def test_mixed_batch_rows_on_dora_convolutions_and_refused_on_attention():
    model = _ours("conv1d", True)
    ak.attach(model, ak.LoRAConfig(rank=2, init="random", targets=("conv",)), name="two")
    x = _input("conv1d")
    with torch.no_grad():
        rows = []
        for i, name in enumerate(("two", "default")):
            ak.set_active(model, name)
            rows.append(model(x[i : i + 1]))
        torch.testing.assert_close(model(x, adapter_names=["two", "default"]), torch.cat(rows), atol=1e-6, rtol=1e-5)
        attention = _ours("mha", False)
        with pytest.raises(ak.InputError, match="mixed-adapter"):
            attention(_input("mha"), adapter_names=["default", "__base__"])
