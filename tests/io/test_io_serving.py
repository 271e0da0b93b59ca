"""vLLM's LoRA loader rules (adapterkit/io/serving.py): each rule alone, then what save_adapter's
model card and `adapterkit inspect` say about real folders."""

import json
import re

import pytest

import adapterkit as ak
from adapterkit.cli import main
from adapterkit.io.serving import vllm_notes, vllm_reasons
from tests.models import TinyCNN, tiny_bert, tiny_llama

LORA = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj"],
    "bias": "none",
    "use_dora": False,
    "modules_to_save": None,
}
Q = "base_model.model.model.layers.0.self_attn.q_proj"
TENSORS = {f"{Q}.lora_A.weight": (8, 32), f"{Q}.lora_B.weight": (32, 8)}


def _reasons(config=None, tensors=None, **changes):
    return vllm_reasons({**(LORA if config is None else config), **changes}, TENSORS if tensors is None else tensors)


def test_a_plain_lora_loads():
    assert _reasons() == []
    assert _reasons(use_rslora=True, target_modules="all-linear") == []


@pytest.mark.parametrize("key", ["r", "lora_alpha", "target_modules"])
def test_required_config_fields(key):
    config = {k: v for k, v in LORA.items() if k != key}
    assert any(key in r and "requires" in r for r in _reasons(config))


def test_dora_is_refused():
    tensors = {**TENSORS, f"{Q}.lora_magnitude_vector": (32,)}
    assert [r for r in _reasons(tensors=tensors, use_dora=True) if "DoRA" in r] and len(
        _reasons(tensors=tensors, use_dora=True)
    ) == 1


@pytest.mark.parametrize("saved", [["lm_head"], ["classifier"], ["embed_tokens"]])
def test_any_modules_to_save_is_refused(saved):
    assert any("modules_to_save" in r for r in _reasons(modules_to_save=saved))


def test_bias_is_refused():
    assert any("bias='all'" in r for r in _reasons(bias="all"))
    assert any("lora_B.bias" in r for r in _reasons(tensors={**TENSORS, f"{Q}.lora_B.bias": (32,)}))


@pytest.mark.parametrize("peft_type", ["PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "IA3", "ADAPTERKIT_BOTTLENECK"])
def test_other_methods_are_refused(peft_type):
    [reason] = vllm_reasons({"peft_type": peft_type}, {"prompt_embeddings": (3, 32)})
    assert "LoRA adapters only" in reason and peft_type in reason


def test_module_kinds():
    emb = "base_model.model.model.embed_tokens"
    ok = {
        f"{emb}.lora_embedding_A": (8, 97),
        f"{emb}.lora_embedding_B": (32, 8),
        f"{emb}.base_layer.weight": (97, 32),
        "base_model.model.lm_head.lora_A.weight": (8, 32),
        "base_model.model.lm_head.lora_B.weight": (97, 8),
    }
    assert _reasons(tensors=ok) == []  # PEFT's saved base embeddings are skipped by vLLM
    conv = {"base_model.model.conv.lora_A.weight": (8, 3, 3, 3), "base_model.model.conv.lora_B.weight": (6, 8, 1, 1)}
    assert any("convolution 'conv'" in r for r in _reasons(tensors=conv))
    other = {"base_model.model.embed.lora_embedding_A": (8, 97), "base_model.model.embed.lora_embedding_B": (8, 8)}
    assert any("embedding 'embed'" in r for r in _reasons(tensors=other))
    assert any("not a LoRA weight" in r for r in _reasons(tensors={**TENSORS, f"{Q}.ia3_l": (32, 1)}))


def test_rank_above_the_server_default_is_a_note_not_a_refusal():
    assert _reasons(r=64) == []
    assert vllm_notes({**LORA, "r": 64}) == [
        "rank 64 is above vLLM's default --max-lora-rank 16: start vLLM with --max-lora-rank 64 or more"
    ]
    assert vllm_notes(LORA) == []


CASES = {  # what save_adapter / inspect say for real adapters
    "lora": (tiny_llama, ak.LoRAConfig(rank=4, targets=["q_proj", "v_proj"]), "yes"),
    "rslora-r32": (tiny_llama, ak.LoRAConfig(rank=32, rslora=True), "yes (rank 32"),
    "dora": (tiny_llama, ak.LoRAConfig(rank=4, dora=True), "no: it is a DoRA adapter"),
    "lm_head": (tiny_llama, ak.LoRAConfig(rank=4, train_modules=["lm_head"]), "no: it trains whole modules"),
    "classifier": (tiny_bert, ak.LoRAConfig(rank=4, targets=["query"]), "no: it trains whole modules"),
    "conv": (TinyCNN, ak.LoRAConfig(rank=2, targets=["conv", "fc"]), "no: LoRA on the convolution 'conv'"),
    "prompt": (tiny_llama, ak.PromptTuningConfig(num_virtual_tokens=3), "no: vLLM's loader reads LoRA adapters only"),
    "prefix": (tiny_llama, ak.PrefixTuningConfig(num_virtual_tokens=3), "no: vLLM's loader reads LoRA adapters only"),
    "ia3": (
        tiny_llama,
        ak.IA3Config(),
        "no: vLLM's loader reads LoRA adapters only; this one is peft_type 'IA3'; merge it",
    ),
    "bottleneck": (tiny_llama, ak.BottleneckConfig(), "no: vLLM's loader reads LoRA"),
}


@pytest.mark.parametrize("case", CASES)
def test_save_adapter_card_and_inspect_say_whether_vllm_loads_it(tmp_path, case, capsys):
    make, config, expected = CASES[case]
    ak.save_adapter(ak.attach(make(), config), tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert f"| loads in vLLM | {expected}" in card
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    [info] = json.loads(capsys.readouterr().out)
    assert info["vllm"]["loads"] is expected.startswith("yes") and info["vllm"]["summary"].startswith(expected)
    assert main(["inspect", str(tmp_path)]) == 0
    assert re.search(rf"\n  vLLM +{re.escape(expected)}", capsys.readouterr().out)
