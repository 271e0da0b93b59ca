"""The loop on tiny local models: learning, exact resume, PEFT-readable output, classification, CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import adapterkit as ak
from tests.training.helpers import eval_losses, memorise_records, tiny_folder, whole_and_resumed, write_jsonl


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("llama") / "model")


def _config(tmp_path, model, **changes):
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(8))
    cfg = {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 4, "alpha": 8},
        "data": {"train": data, "eval": data},
        "optim": {"lr": 1e-2, "batch_size": 4, "max_steps": 30, "schedule": "constant", "seed": 0},
        "eval": {"every": 0},
        "output": {"dir": str(tmp_path / "out"), "progress": False},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        cfg[section][field] = value
    return cfg


def test_loss_falls_on_a_memorisation_task(tmp_path, llama_dir):
    result = ak.train(_config(tmp_path, llama_dir))
    assert result.steps == 30
    assert result.last_eval["loss"] < 0.25 * result.first_eval["loss"]
    assert result.last_eval["perplexity"] == pytest.approx(torch.tensor(result.last_eval["loss"]).exp().item())
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and "eval_loss" in lines[0] and lines[-1]["step"] == 30


def test_saved_adapter_loads_in_peft_with_the_same_outputs(tmp_path, llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = ak.train(_config(tmp_path, llama_dir, optim__max_steps=5))
    ids = torch.randint(3, 99, (2, 11), generator=torch.Generator().manual_seed(0))
    result.model.eval()
    with torch.no_grad():
        ours = result.model(input_ids=ids).logits
        with ak.disabled(result.model):
            base_out = result.model(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), str(tmp_path / "out"))
        theirs = peft_model.eval()(input_ids=ids).logits
    assert not torch.allclose(ours, base_out, atol=1e-4)  # the adapter changed the model
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("optimizer, loraplus", [("adamw", None), ("adamw8bit", 4.0)])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, llama_dir, optimizer, loraplus):
    if optimizer != "adamw":
        pytest.importorskip("bitsandbytes")
    changes = dict(
        optim__max_steps=6,
        optim__schedule="cosine",
        optim__batch_size=2,
        optim__optimizer=optimizer,
        optim__loraplus_ratio=loraplus,
        output__save_every=3,
        eval__every=2,
    )
    cfg = _config(tmp_path, llama_dir, **changes)
    cfg["adapter"]["dropout"] = 0.2  # the dropout RNG must be restored too
    result = whole_and_resumed(cfg, tmp_path, crash_at=4)
    assert result.steps == 6
    whole = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "split" / "adapter_model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    checkpoints = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000003", "step-0000006"]


def test_early_stopping_stops_when_eval_stops_improving(tmp_path, llama_dir):
    cfg = _config(
        tmp_path, llama_dir, optim__lr=1e-9, optim__max_steps=20, eval__every=1, eval__patience=2, eval__min_delta=1.0
    )
    result = ak.train(cfg)
    assert result.stopped_early and result.steps == 3  # first eval sets the best; two more fail


def test_classification_trains_the_head_and_reports_accuracy_and_f1(tmp_path):
    folder = tiny_folder(tmp_path / "bert", kind="bert", num_labels=2)
    rows = [
        {"text": t, "label": "pos" if t.startswith("a") else "neg"}
        for t in ["aaa", "abc", "azz", "bbb", "bcd", "bzz", "aab", "bba"]
    ]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    cfg = {
        "model": {"name": folder},
        "adapter": {"method": "lora", "rank": 4, "targets": ["query", "value"]},
        "data": {"train": data, "eval": data, "format": "classification"},
        "optim": {"lr": 5e-2, "batch_size": 4, "max_steps": 25, "schedule": "constant"},
        "output": {"dir": str(tmp_path / "out"), "progress": False},
    }
    result = ak.train(cfg)
    assert set(result.last_eval) == {"loss", "accuracy", "macro_f1"}
    assert result.last_eval["loss"] < result.first_eval["loss"]
    assert result.last_eval["accuracy"] == 1.0
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == ["neg", "pos"]
    saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert any("classifier" in k for k in saved)  # the new head is saved with the adapter


def test_cli_train_then_generate(tmp_path, llama_dir, capsys):
    import yaml

    from adapterkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, llama_dir)))
    assert main(["train", str(path), "--set", "optim.max_steps=3", "--set", "output.log_every=1"]) == 0
    out = capsys.readouterr().out
    assert "eval before: loss" in out and "3 steps" in out
    assert (tmp_path / "out" / "train_config.yaml").is_file()
    assert main(["generate", str(tmp_path / "out"), "--compare", "--max-new-tokens", "3", "q1?", "q2?"]) == 0
    out = capsys.readouterr().out
    assert out.count("base:") == 2 and out.count("adapter:") == 2


def test_launch_command_asks_accelerate_for_ddp_on_cpu(tmp_path):
    from adapterkit.training.launch import launch_command

    cmd, env = launch_command(["-m", "adapterkit.cli", "train", "c.yaml"], 2, None, cuda=False)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    assert env["ACCELERATE_USE_CPU"] == "true" and cmd[-4:] == ["-m", "adapterkit.cli", "train", "c.yaml"]
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\nnum_processes: 2\n")
    cmd, env = launch_command(["s.py"], None, str(fsdp), cuda=True)
    assert cmd[cmd.index("--config_file") + 1] == str(fsdp) and "--multi_gpu" not in cmd


def test_quantized_base_trains(tmp_path, llama_dir):
    """quantization: 4-bit nf4 base layers (ak.quantize) under the LoRA adapter; the loss still falls."""
    from adapterkit.quant import QuantLinear

    cfg = _config(tmp_path, llama_dir, optim__max_steps=15)
    cfg["quantization"] = {"bits": 4, "quant_type": "nf4", "block": 32}
    result = ak.train(cfg)
    assert any(isinstance(m, QuantLinear) for m in result.model.modules())
    assert result.last_eval["loss"] < 0.6 * result.first_eval["loss"]


def test_gradient_checkpointing_gives_the_same_adapter(tmp_path, llama_dir):
    plain = ak.train(_config(tmp_path, llama_dir, optim__max_steps=4, output__dir=str(tmp_path / "a")))
    ckpt = _config(tmp_path, llama_dir, optim__max_steps=4, output__dir=str(tmp_path / "b"))
    ckpt["model"]["gradient_checkpointing"] = True
    checkpointed = ak.train(ckpt)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    assert checkpointed.last_eval["loss"] == pytest.approx(plain.last_eval["loss"], rel=1e-5)


def test_packed_text_and_generation_scores(tmp_path, llama_dir):
    """format text with packing trains; eval.generate adds BLEU and chrF of greedy answers."""
    import sacrebleu

    from adapterkit.training.data import prompt_ids
    from adapterkit.training.evaluate import generate_texts
    from adapterkit.training.sections import DataConfig

    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"line {i} says {i * 3}"} for i in range(12)])
    cfg = _config(tmp_path, llama_dir, optim__max_steps=3)
    cfg["data"] = {"train": text, "format": "text", "packing": True, "max_length": 16}
    assert ak.train(cfg).steps == 3

    cfg = _config(tmp_path, llama_dir, optim__max_steps=2, eval__generate=True, eval__max_new_tokens=4)
    result = ak.train(cfg)
    records = memorise_records(8)
    prompts = [prompt_ids(result.tokenizer, r["prompt"], DataConfig(train="x")) for r in records]
    hyps = generate_texts(result.model.eval(), result.tokenizer, prompts, 4, "cpu")
    refs = [r["response"] for r in records]
    assert result.last_eval["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert result.last_eval["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, llama_dir):
    """In its own process, as ``adapterkit train`` runs it: Accelerate fixes the precision per process."""
    cfg = _config(tmp_path, llama_dir, optim__max_steps=10, optim__mixed_precision="bf16")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-m", "adapterkit", "train", str(tmp_path / "run.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = eval_losses(tmp_path / "out")
    assert losses[-1] < losses[0]


def test_another_precision_in_the_same_process_is_a_clear_error(tmp_path, llama_dir):
    from adapterkit.errors import ConfigError

    ak.train(_config(tmp_path, llama_dir, optim__max_steps=1, eval__every=0))
    bf16 = _config(tmp_path, llama_dir, optim__max_steps=1, optim__mixed_precision="bf16")
    bf16["output"]["dir"] = str(tmp_path / "bf16")
    with pytest.raises(ConfigError, match="new process"):
        ak.train(bf16)
    assert not (tmp_path / "bf16").exists()  # refused before anything was written


def test_evaluation_without_held_out_data_is_an_error(tmp_path, llama_dir):
    from adapterkit.errors import ConfigError

    cfg = _config(tmp_path, llama_dir, eval__every=5)
    cfg["data"].pop("eval")
    with pytest.raises(ConfigError, match="no held-out data; set data.eval"):
        ak.train(cfg)
    cfg["data"]["eval_split"] = 0.25  # 2 of the 8 records held out
    cfg["optim"].update(max_steps=2)
    result = ak.train(cfg)
    assert result.first_eval is not None and result.steps == 2
