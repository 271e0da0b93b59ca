"""ak.hotswap_adapter / ak.prepare_hotswap: new weights in place, no recompilation of a compiled model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.transaction import Snapshot
from tests.checks import assert_close_scaled


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin0, self.lin1, self.lin2 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


X = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))


def _cfg(rank, alpha, targets=("lin0", "lin1"), **kw):
    return ak.LoRAConfig(rank=rank, alpha=alpha, targets=targets, init="random", **kw)


def _saved(tmp_path, tag, cfg, seed):
    torch.manual_seed(seed)
    model = ak.attach(MLP(), cfg)
    ak.save_adapter(model, tmp_path / tag)
    with torch.no_grad():
        return tmp_path / tag, model(X)


def _peft_saved(tmp_path, seed):
    """An adapter PEFT made and saved: rank 3, lin0 only."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    theirs = get_peft_model(MLP(), LoraConfig(r=3, lora_alpha=7, target_modules=["lin0"], init_lora_weights=False))
    theirs.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        return tmp_path / "peft", theirs(X)


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given (each compile or recompile)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_swaps_in_place_without_recompiling(tmp_path):
    first, first_out = _saved(tmp_path, "first", _cfg(4, 8.0), seed=1)
    second, second_out = _saved(tmp_path, "second", _cfg(2, 3.0), seed=2)
    peft_dir, peft_out = _peft_saved(tmp_path, seed=3)
    model = ak.load_adapter(MLP(), first)
    ak.prepare_hotswap(model, rank=6)
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        assert_close_scaled(compiled(X), first_out)
        graphs = backend.graphs
        assert graphs >= 1
        ak.hotswap_adapter(model, second)
        assert_close_scaled(compiled(X), second_out)
        ak.hotswap_adapter(model, peft_dir)  # PEFT's file; lin1 is not in it: zeroed
        assert_close_scaled(compiled(X), peft_out)
        ak.hotswap_adapter(model, first)
        assert_close_scaled(compiled(X), first_out)
    assert backend.graphs == graphs
    ak.hotswap_adapter(model, second)
    ak.save_adapter(model, tmp_path / "again")  # the swapped adapter's file computes the same
    with torch.no_grad():
        assert_close_scaled(ak.load_adapter(MLP(), tmp_path / "again")(X), second_out)


def test_growing_rank_without_padding_and_dora(tmp_path):
    small, _ = _saved(tmp_path, "small", _cfg(2, 4.0, dora=True), seed=4)
    big, big_out = _saved(tmp_path, "big", _cfg(5, 4.0, dora=True), seed=5)
    only0, only0_out = _saved(tmp_path, "only0", _cfg(3, 2.0, targets=("lin0",), dora=True), seed=6)
    model = ak.load_adapter(MLP(), small)
    ak.hotswap_adapter(model, big)
    lora = model.lin0.adapters["default"]
    assert lora.a.shape == (5, 16) and not lora.a.requires_grad and ak.adapter_config(model, "default").rank == 5
    with torch.no_grad():
        assert_close_scaled(model(X), big_out)
        ak.hotswap_adapter(model, only0)
        assert_close_scaled(model(X), only0_out)


@pytest.mark.parametrize(
    "case,error,words",
    [
        ("dropout", ak.ConfigError, "dropout"),
        ("rslora", ak.ConfigError, "rslora"),
        ("extra-module", ak.AdapterFileError, "lin2"),
        ("ia3", ak.AdapterFileError, "IA3"),
        ("merged", ak.MergeError, "unmerge"),
        ("unknown", ak.AdapterNameError, "nope"),
    ],
)
def test_refusals_leave_the_model_unchanged(tmp_path, case, error, words):
    configs = {
        "dropout": _cfg(2, 2.0, dropout=0.1),
        "rslora": _cfg(2, 2.0, rslora=True),
        "extra-module": _cfg(2, 2.0, targets=("lin0", "lin2")),
    }
    if case == "ia3":
        torch.manual_seed(0)
        path = tmp_path / "ia3"
        ak.save_adapter(ak.attach(MLP(), ak.IA3Config(targets=("lin0",), feedforward=())), path)
    else:
        path, _ = _saved(tmp_path, "file", configs.get(case, _cfg(2, 2.0)), seed=7)
    model = ak.attach(MLP(), _cfg(4, 8.0))
    if case == "merged":
        ak.merge_adapter(model)
    before, tensors = Snapshot(model).state(), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=words):
        ak.hotswap_adapter(model, path, name="nope" if case == "unknown" else "default")
    assert Snapshot(model).state() == before
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, tensors[key], atol=0, rtol=0)


def test_prepare_refuses_a_rank_below_the_adapters():
    model = ak.attach(MLP(), _cfg(4, 8.0))
    with pytest.raises(ak.ConfigError, match="rank 4"):
        ak.prepare_hotswap(model, rank=3)
    assert model.lin0.adapters["default"].a.shape == (4, 16)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c0, self.c1 = nn.Conv1d(3, 4, 3, padding=1), nn.Conv1d(4, 2, 1)

    def forward(self, x):  # (B, 3, 5)
        return self.c1(torch.relu(self.c0(x)))


def test_dora_convolutions_swap_and_zero_a_module_the_file_lacks(tmp_path):
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    ak.save_adapter(ak.attach(ConvNet(), _cfg(2, 3.0, targets=("c0",), dora=True)), tmp_path / "c0")
    model = ak.attach(ConvNet(), _cfg(4, 8.0, targets=("c0", "c1"), dora=True))
    ak.prepare_hotswap(model, rank=4)
    ak.hotswap_adapter(model, tmp_path / "c0")
    with torch.no_grad():
        assert_close_scaled(model(x), ak.load_adapter(ConvNet(), tmp_path / "c0")(x))
