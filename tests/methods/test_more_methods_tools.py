"""VeRA, LN tuning, OFT and BOFT through the tools: `adapterkit train` from YAML, `adapterkit
inspect`, `adapterkit merge`, and ak.summary."""

from __future__ import annotations

import json

import pytest
import torch

import adapterkit as ak
from adapterkit.cli import main
from tests.checks import assert_close_scaled
from tests.models import tiny_llama
from tests.training.helpers import memorise_records, tiny_folder, write_jsonl

METHODS = {
    "vera": ({"rank": 8, "d_initial": 0.5}, "VERA"),
    "ln_tuning": ({}, "LN_TUNING"),
    "oft": ({"block_size": 8}, "OFT"),
    "boft": ({"block_size": 4, "butterfly_factor": 2}, "BOFT"),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("llama") / "model")


@pytest.mark.parametrize("method", list(METHODS))
def test_train_from_yaml_then_inspect(tmp_path, llama_dir, capsys, method):
    import yaml

    fields, peft_type = METHODS[method]
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(4))
    cfg = {
        "model": {"name": llama_dir},
        "adapter": {"method": method, **fields},
        "data": {"train": data, "eval": data},
        "optim": {"lr": 1e-2, "batch_size": 4, "max_steps": 3, "schedule": "constant", "seed": 0},
        "eval": {"every": 0},
        "output": {"dir": str(tmp_path / "out"), "progress": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    info = info[0] if isinstance(info, list) else info
    assert info["method"] == method and info["peft_type"] == peft_type and info["parameters"] > 0
    assert not info["vllm"]["loads"] and "merge it" in info["vllm"]["reasons"][0]
    assert main(["merge", str(tmp_path / "out"), "--base", llama_dir, "--out", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    adapted = ak.load_adapter(AutoModelForCausalLM.from_pretrained(llama_dir), tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert_close_scaled(merged(input_ids=ids).logits, adapted(input_ids=ids).logits)  # large logits here


@pytest.mark.parametrize(
    "config",
    [ak.VeRAConfig(rank=4), ak.LNTuningConfig(), ak.OFTConfig(block_size=8), ak.BOFTConfig()],
    ids=lambda c: c.method,
)
def test_summary_shows_the_method(config):
    model = ak.attach(tiny_llama(), config)
    text = str(ak.summary(model))
    assert f"| default * | {config.method} |" in text


@pytest.mark.parametrize(
    "config",
    [ak.VeRAConfig(rank=4), ak.OFTConfig(block_size=8), ak.BOFTConfig(block_size=4, butterfly_factor=2)],
    ids=lambda c: c.method,
)
def test_quantized_base_trains_and_merges(config):
    from adapterkit.inject import adapter_layers
    from tests.models import tokens

    model = ak.attach(ak.quantize(tiny_llama(), bits=4, quant_type="nf4"), config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in layer.adapters["default"].parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    out = model(input_ids=tokens()).logits
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        assert_close_scaled(ak.merge(model)(input_ids=tokens()).logits, out.detach())
