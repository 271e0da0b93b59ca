"""Two processes, real DDP over gloo through `accelerate launch`: both ranks end with the same
adapter, equal to one process that sees the same global batches (grad_accum = 2)."""

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.training.launch import launch_command
from tests.training.helpers import close_under_adam, eval_losses, memorise_records, tiny_folder, write_jsonl


def test_two_processes_match_each_other_and_one_process(tmp_path):
    model = tiny_folder(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(12))
    config = {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 4, "alpha": 8},
        "data": {"train": data, "eval": data},
        "optim": {"lr": 1e-2, "batch_size": 2, "grad_accum": 1, "max_steps": 4, "seed": 3},
        "eval": {"every": 2},
        "output": {"dir": str(tmp_path / "ddp"), "progress": False},
    }
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config))
    cmd, env = launch_command([str(Path(__file__).with_name("ddp_run.py")), str(path)], 2, None, cuda=False)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    rank0 = load_file(str(tmp_path / "ddp" / "rank-0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank-1.safetensors"))
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    single = dict(
        config, optim=dict(config["optim"], grad_accum=2), output=dict(config["output"], dir=str(tmp_path / "one"))
    )
    result = ak.train(single)
    for name, p in result.model.named_parameters():
        if p.requires_grad:
            close_under_adam(p.detach(), rank0[name], name)
    ddp_file = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    one_file = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    assert ddp_file.keys() == one_file.keys()
    assert any(k.endswith(".b") and v.abs().sum() > 0 for k, v in rank0.items())  # B left zero: trained
    torch.testing.assert_close(
        torch.tensor(eval_losses(tmp_path / "ddp")), torch.tensor(eval_losses(tmp_path / "one")), atol=1e-5, rtol=1e-5
    )


def test_cli_num_processes_launches_two_processes(tmp_path):
    """`adapterkit train CONFIG --num-processes 2` goes through accelerate launch and saves once."""
    import yaml

    from adapterkit.cli import main

    model = tiny_folder(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(8))
    config = {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 4},
        "data": {"train": data, "eval": data},
        "optim": {"lr": 1e-2, "batch_size": 2, "max_steps": 4},
        "output": {"dir": str(tmp_path / "out"), "save_every": 2, "progress": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--num-processes", "2"]) == 0
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-0000004").glob("rng-*.json")) == [
        "rng-0.json",
        "rng-1.json",
    ]  # one random state per process
    evals = eval_losses(out)
    assert len(evals) == 2 and evals[-1] < evals[0]


def test_stages_on_two_processes_match_one_process(tmp_path):
    """DDP is rebuilt at each stage: the second stage trains a block the first left frozen."""
    model = tiny_folder(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(8))
    config = {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 4},
        "data": {"train": data},
        "optim": {"lr": 1e-2, "batch_size": 2, "seed": 1},
        "stages": [{"train": "adapters", "steps": 2}, {"train": "adapters", "top_blocks": 1, "steps": 2, "lr": 5e-3}],
        "output": {"dir": str(tmp_path / "ddp"), "progress": False, "plot": False},
    }
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config))
    cmd, env = launch_command([str(Path(__file__).with_name("ddp_run.py")), str(path)], 2, None, cuda=False)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = dict(
        config, optim=dict(config["optim"], grad_accum=2), output=dict(config["output"], dir=str(tmp_path / "one"))
    )
    ak.train(single)
    for file in ("adapter_model.safetensors", "trained.safetensors"):
        ddp, one = (load_file(str(tmp_path / d / file)) for d in ("ddp", "one"))
        assert ddp.keys() == one.keys() and ddp, file
        for key in ddp:
            close_under_adam(ddp[key], one[key], f"{file}: {key}")
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(model).named_parameters())
    trained = load_file(str(tmp_path / "one" / "trained.safetensors"))
    assert trained and all(not torch.equal(v, base[k.replace(".base.", ".")]) for k, v in trained.items())
