"""FSDP2 on two CPU processes through `accelerate launch` with an Accelerate FSDP config (gloo).

Accelerate 1.15 would run such a config as DDP on a CPU; adapterkit shards the model itself there
(training/sharding.py). Checked: each process holds half of what trains; the adapter saved from
the shards, the checkpoints and the evaluations equal one process's that sees the same global
batches (grad_accum = 2); checkpoints resume across the two (FSDP -> one process, one process ->
FSDP); a 4-bit base trains sharded too.
"""

import json
import os
import shutil
import signal
import subprocess
import types
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.errors import ConfigError
from adapterkit.training import checkpoint, sharding
from adapterkit.training.launch import launch_command
from tests.training.helpers import close_under_adam, eval_losses, memorise_records, tiny_folder, write_jsonl

FSDP_CONFIG = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "FSDP",
    "mixed_precision": "no",
    "num_machines": 1,
    "num_processes": 2,
    "fsdp_config": {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "fsdp_reshard_after_forward": True,
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
    },
}


def _setup(tmp_path: Path, **sections) -> tuple[dict, Path]:
    """A train config on a tiny Llama (an eval set of 5: the processes hold 3 and 2 examples), and
    the FSDP config file."""
    model = tiny_folder(tmp_path / "model")
    config = {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 4, "alpha": 8},
        "data": {
            "train": write_jsonl(tmp_path / "train.jsonl", memorise_records(12)),
            "eval": write_jsonl(tmp_path / "eval.jsonl", memorise_records(5)),
        },
        "optim": {"lr": 1e-2, "batch_size": 2, "grad_accum": 1, "max_steps": 4, "seed": 3},
        "eval": {"every": 2},
        "output": {
            "dir": str(tmp_path / "fsdp"),
            "progress": False,
            "plot": False,
            "trackers": "none",
            "save_every": 2,
        },
    }
    config.update(sections)
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text(yaml.safe_dump(FSDP_CONFIG))
    return config, fsdp


def _one_process(config: dict, folder: Path):
    """The same global batches on one process: grad_accum 2 instead of 2 processes."""
    return ak.train(
        dict(config, optim=dict(config["optim"], grad_accum=2), output=dict(config["output"], dir=str(folder)))
    )


def _assert_files_close(got: Path, want: Path) -> None:
    a, b = load_file(str(got)), load_file(str(want))
    assert a.keys() == b.keys() and a, got
    for key in a:
        close_under_adam(a[key], b[key], f"{got.name}: {key}")


def _launch(cmd: list[str], env: dict, timeout: int = 300) -> str:
    """Run a launch in its own session; on a timeout end the whole group (the launcher's children too)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    return out


def _rewound(src: Path, dst: Path) -> None:
    """``dst``: the run in ``src`` as a crash after its next-to-last checkpoint would leave it."""
    shutil.copytree(src, dst)
    shutil.rmtree(checkpoint.latest(dst / "checkpoints"))
    for file in ("adapter_model.safetensors", "adapter_config.json"):
        (dst / file).unlink()


def test_cli_fsdp_config_trains_sharded_and_saves_whole(tmp_path, capfd):
    """`adapterkit train c.yaml --config-file fsdp.yaml`: sharded training; the adapter, checkpoints
    and evaluations match one process; its checkpoint resumes on one process (optimizer state by names)."""
    from adapterkit.cli import main

    config, fsdp = _setup(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    capfd.readouterr()
    assert main(["train", str(path), "--config-file", str(fsdp)]) == 0
    shown = capfd.readouterr().out
    assert "FSDP2 through adapterkit's fully_shard (CPU): 2 processes; this process holds 2048 of 4096" in shown

    out, one = tmp_path / "fsdp", tmp_path / "one"
    _one_process(config, one)
    _assert_files_close(out / "adapter_model.safetensors", one / "adapter_model.safetensors")
    for step in ("step-0000002", "step-0000004"):
        _assert_files_close(
            out / "checkpoints" / step / "trainable.safetensors", one / "checkpoints" / step / "trainable.safetensors"
        )
    assert json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())["optimizer"] == "names"
    torch.testing.assert_close(torch.tensor(eval_losses(out)), torch.tensor(eval_losses(one)), atol=1e-5, rtol=1e-5)
    trained = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in trained.items())  # B left zero

    _rewound(out, tmp_path / "back")
    ak.train(
        dict(
            config, optim=dict(config["optim"], grad_accum=2), output=dict(config["output"], dir=str(tmp_path / "back"))
        ),
        resume=True,
    )
    _assert_files_close(tmp_path / "back" / "adapter_model.safetensors", one / "adapter_model.safetensors")


def test_fsdp_resumes_a_one_process_checkpoint_on_a_4bit_base(tmp_path):
    """A 4-bit base: its float weights and the adapter are sharded, its packed codes (buffers) stay
    whole on each process; resumed with FSDP from one process's checkpoint, the adapter matches."""
    config, fsdp = _setup(tmp_path, quantization={"bits": 4})
    one = _one_process(config, tmp_path / "one")
    assert sum(type(m).__name__ == "QuantLinear" for m in one.model.modules()) == 14
    out = tmp_path / "fsdp"
    _rewound(tmp_path / "one", out)
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps(config))
    runner = str(Path(__file__).with_name("fsdp_run.py"))
    _launch(*launch_command([runner, str(path), "--resume"], 2, str(fsdp), cuda=False))
    reports = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for report in reports:  # every trained tensor a DTensor, each process holding part of it
        assert report["sharded"] and report["dtensors"] == report["trained"] > 0, report
        assert report["frozen_dtensors"] == report["frozen"] > 0 and report["buffers"], report
        assert 0 < report["local"] < report["whole"]
    assert sum(r["local"] for r in reports) == reports[0]["whole"]
    _assert_files_close(out / "adapter_model.safetensors", tmp_path / "one" / "adapter_model.safetensors")
    assert eval_losses(out)[-1] == pytest.approx(eval_losses(tmp_path / "one")[-1], abs=1e-5)  # at step 4


def test_optimizer_state_by_names_and_back():
    from tests.models import tiny_llama

    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params[:3]}, {"params": params[3:], "lr": 0.5}])
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    by_names = sharding.state_by_names(model, optimizer, saved)
    assert list(by_names["state"])[0] == "model.layers.0.self_attn.q_proj.adapters.default.a"
    back = sharding.state_by_indices(model, optimizer, by_names)
    assert back["param_groups"] == saved["param_groups"] and back["state"].keys() == saved["state"].keys()
    assert all(torch.equal(back["state"][k]["exp_avg"], saved["state"][k]["exp_avg"]) for k in saved["state"])


def _accelerator(mixed_precision="no"):
    from accelerate.utils import DistributedType

    return types.SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision=mixed_precision)


@pytest.mark.parametrize(
    "env, sections, mixed, message",
    [
        ({"FSDP_VERSION": "1"}, {}, "no", "fsdp_version: 2"),
        ({}, {"stages": [{"train": "adapters", "steps": 2}]}, "no", "stages: with FSDP"),
        ({}, {"eval": {"generate": True}}, "no", "eval.generate with FSDP"),
        ({"FSDP_OFFLOAD_PARAMS": "true"}, {}, "no", "fsdp_offload_params"),
        ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, {}, "no", "model.gradient_checkpointing"),
        ({}, {}, "bf16", "mixed_precision 'bf16'"),
        ({"ACCELERATE_USE_FSDP": "false", "ACCELERATE_USE_DEEPSPEED": "true"}, {}, "no", "does not run: its loop"),
    ],
)
def test_what_fsdp_on_a_cpu_and_deepspeed_cannot_run_is_refused(tmp_path, monkeypatch, env, sections, mixed, message):
    from adapterkit.training import TrainConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = write_jsonl(tmp_path / "d.jsonl", memorise_records(4))
    config = TrainConfig.from_dict(
        {"model": {"name": "m"}, "adapter": {"method": "lora"}, "data": {"train": data, "eval": data}, **sections}
    )
    with pytest.raises(ConfigError, match=message):
        sharding.check(config, _accelerator(mixed))


def test_a_plain_config_passes_and_use_cpu_or_a_missing_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    from adapterkit.training import TrainConfig

    data = write_jsonl(tmp_path / "d.jsonl", memorise_records(4))
    sharding.check(
        TrainConfig.from_dict({"model": {"name": "m"}, "adapter": {"method": "lora"}, "data": {"train": data}}),
        _accelerator(),
    )
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text(yaml.safe_dump(FSDP_CONFIG))
    cmd, env = launch_command(["x.py"], None, str(fsdp), cuda=False)
    assert cmd[cmd.index("--config_file") + 1] == str(fsdp) and "--main_process_port" in cmd
    assert env["OMP_NUM_THREADS"] and "ACCELERATE_USE_CPU" not in env
    fsdp.write_text(yaml.safe_dump(dict(FSDP_CONFIG, use_cpu=True)))
    with pytest.raises(ConfigError, match="use_cpu: true"):
        launch_command(["x.py"], None, str(fsdp), cuda=False)
    with pytest.raises(ConfigError, match="is not a readable Accelerate YAML config"):
        launch_command(["x.py"], None, str(tmp_path / "missing.yaml"), cuda=False)
