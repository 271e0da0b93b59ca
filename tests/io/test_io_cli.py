"""`adapterkit inspect` and `adapterkit merge`: facts read from files; a merged folder transformers loads."""

import json
import re
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.cli import main
from tests.models import VOCAB, tiny_llama, tokens


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0")


@pytest.fixture
def peft_adapter(tmp_path):
    """A base model folder (with a tokenizer) and a DoRA + modules_to_save adapter PEFT saved for it."""
    from peft import LoraConfig, get_peft_model

    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    _tokenizer().save_pretrained(base)
    theirs = get_peft_model(
        tiny_llama(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            use_dora=True,
            init_lora_weights=False,
            modules_to_save=["lm_head"],
        ),
    )
    with torch.no_grad():
        theirs.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    theirs.save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter", theirs


def test_inspect_reports_what_the_files_hold(peft_adapter, capsys):
    _, adapter, theirs = peft_adapter
    assert main(["inspect", str(adapter), "--json"]) == 0
    [info] = json.loads(capsys.readouterr().out)
    tensors = load_file(adapter / "adapter_model.safetensors")
    peft_config = theirs.peft_config["default"]
    assert info["method"] == "lora" and info["peft_type"] == "LORA"
    assert info["config"]["rank"] == peft_config.r and info["config"]["alpha"] == peft_config.lora_alpha
    assert set(info["config"]["targets"]) == set(peft_config.target_modules)
    assert info["config"]["dora"] is True and info["config"]["train_modules"] == ["lm_head"]
    assert info["tensors"] == len(tensors)
    assert info["parameters"] == sum(t.numel() for t in tensors.values())
    assert info["dtypes"] == ["float32"]
    assert info["file_bytes"] == os.path.getsize(adapter / "adapter_model.safetensors")
    assert main(["inspect", str(adapter)]) == 0
    text = capsys.readouterr().out
    assert re.search(rf"\n  rank +{peft_config.r}\n", text) and f"{info['file_bytes']:,} bytes" in text


def test_inspect_lists_every_adapter_of_a_folder(tmp_path, capsys):
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4))
    ak.attach(model, ak.LoRAConfig(rank=2, targets=["q_proj"]), name="other")
    ak.save_adapter(model, tmp_path)
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [(i["name"], i["config"]["rank"]) for i in infos] == [("default", 4), ("other", 2)]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["inspect", "{tmp}/missing"], "does not exist"),
        (["merge", "{tmp}/missing", "--base", "{tmp}", "--out", "{tmp}/out"], "does not exist"),
        (["merge", "{adapter}", "--base", "{tmp}/nobase", "--out", "{tmp}/out"], "--base"),
        (["merge", "{adapter}", "--base", "{adapter}", "--out", "{tmp}/out"], "no config.json"),
        (["merge", "{adapter}", "--base", "{base}", "--out", "{base}"], "already exists"),
        (["merge", "{adapter}", "--base", "{tmp}/noweights", "--out", "{tmp}/out"], "could not load the base model"),
        (["merge", "{adapter}", "--out", "{tmp}/out"], "does not record its base model"),
        (["merge", "{adapter}", "--base", "{base}", "--out", "{tmp}/out", "--dtype", "fp8"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line(peft_adapter, capsys, argv, expected):
    base, adapter, _ = peft_adapter
    (base.parent / "noweights").mkdir()
    (base.parent / "noweights" / "config.json").write_text((base / "config.json").read_text())
    argv = [a.format(tmp=base.parent, adapter=adapter, base=base) for a in argv]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_merge_writes_a_folder_plain_transformers_loads(peft_adapter, tmp_path):
    base, adapter, theirs = peft_adapter
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--base", str(base), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    with torch.no_grad():
        expected = theirs.merge_and_unload()(input_ids=tokens()).logits
    torch.save({"ids": tokens(), "logits": expected}, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "sys.modules['adapterkit'] = None  # the merged folder must not need it\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"ref = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "with torch.no_grad():\n"
        "    got = model(input_ids=ref['ids']).logits\n"
        "torch.testing.assert_close(got, ref['logits'], atol=1e-5, rtol=0)\n"
        "assert not any('adapterkit' in type(m).__module__ for m in model.modules())\n"
        "print('ok')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_merge_dtype_and_overwrite(peft_adapter, tmp_path):
    base, adapter, _ = peft_adapter
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--base", str(base), "--out", str(out), "--dtype", "bf16"]) == 0
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert main(["merge", str(adapter), "--base", str(base), "--out", str(out), "--dtype", "fp32", "--overwrite"]) == 0
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
