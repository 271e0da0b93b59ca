"""Every PEFT task type, both ways: PEFT saves / adapterkit loads and adapterkit saves / PEFT loads
(with the PeftModel class the task type asks for), with equal outputs."""

import json

import pytest
import torch

import adapterkit as ak
from tests.models import VOCAB, tiny_bert, tiny_llama, tiny_t5, tokens
from tests.peft_twin import peft_reference

peft = pytest.importorskip("peft")

BERT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=VOCAB,
    max_position_embeddings=64,
)


def _bert(cls_name, **extra):
    def make():
        import transformers

        torch.manual_seed(0)
        return getattr(transformers, cls_name)(transformers.BertConfig(**BERT, **extra)).eval()

    return make


MODELS = {  # task_type: (factory, LoRA targets, PeftModel class)
    "CAUSAL_LM": (tiny_llama, ["q_proj", "v_proj"], "PeftModelForCausalLM"),
    "SEQ_2_SEQ_LM": (tiny_t5, ["q", "v"], "PeftModelForSeq2SeqLM"),
    "SEQ_CLS": (tiny_bert, ["query", "value"], "PeftModelForSequenceClassification"),
    "TOKEN_CLS": (
        _bert("BertForTokenClassification", num_labels=4),
        ["query", "value"],
        "PeftModelForTokenClassification",
    ),
    "QUESTION_ANS": (_bert("BertForQuestionAnswering"), ["query", "value"], "PeftModelForQuestionAnswering"),
    "FEATURE_EXTRACTION": (_bert("BertModel"), ["query", "value"], "PeftModelForFeatureExtraction"),
    "FEATURE_EXTRACTION-llama": (lambda: tiny_llama().model, ["q_proj", "v_proj"], "PeftModelForFeatureExtraction"),
}
METHODS = {  # name: (adapterkit config, PEFT config for a task)
    "lora": (
        lambda targets: ak.LoRAConfig(rank=2, targets=targets, init="random"),
        lambda task, targets: peft.LoraConfig(task_type=task, r=2, target_modules=targets, init_lora_weights=False),
    ),
    "prompt": (
        lambda targets: ak.PromptTuningConfig(num_virtual_tokens=3),
        lambda task, targets: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3),
    ),
    "p-tuning": (
        lambda targets: ak.PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=16),
        lambda task, targets: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=3, encoder_hidden_size=16),
    ),
    "prefix": (
        lambda targets: ak.PrefixTuningConfig(num_virtual_tokens=3),
        lambda task, targets: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=3),
    ),
}
GRID = [
    (t, m)
    for t in MODELS
    for m in METHODS
    if m == "lora" or (t != "SEQ_2_SEQ_LM" and (m == "prompt" or t.startswith("FEATURE")))
]


def _output(model):
    ids = tokens()
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if getattr(model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids[:, :4]
    with torch.no_grad():
        out = model(**kwargs)
    if "start_logits" in out:
        return torch.cat([out.start_logits, out.end_logits], dim=-1)
    return out.logits if "logits" in out else out.last_hidden_state


def _task(case):
    return case.split("-")[0]


@torch.no_grad()
def _perturb(model):
    for name, p in model.named_parameters():
        if p.requires_grad or "modules_to_save" in name or "prompt_encoder" in name:
            p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("case,method", GRID)
def test_peft_saves_adapterkit_loads(tmp_path, case, method):
    make, targets, _ = MODELS[case]
    theirs = peft.get_peft_model(make(), METHODS[method][1](_task(case), targets)).eval()
    _perturb(theirs)
    expected = peft_reference(lambda: _output(theirs), f"{method} on {case}")
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(make(), tmp_path)
    torch.testing.assert_close(_output(ours), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case,method", GRID)
def test_adapterkit_saves_peft_loads(tmp_path, case, method):
    make, targets, peft_class = MODELS[case]
    ours = ak.attach(make(), METHODS[method][0](targets))
    _perturb(ours)
    ak.save_adapter(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == _task(case)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    assert type(theirs).__name__ == peft_class
    expected = _output(ours)
    torch.testing.assert_close(
        peft_reference(lambda: _output(theirs), f"{method} on {case}"), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("case", ["SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"])
def test_heads_peft_expects_are_saved_even_when_not_trained(tmp_path, case):
    from safetensors.torch import load_file

    make, targets, _ = MODELS[case]
    ours = ak.attach(make(), ak.LoRAConfig(rank=2, targets=targets))
    ak.save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    head = "qa_outputs" if case == "QUESTION_ANS" else "classifier"
    assert config["modules_to_save"] == [head]
    assert f"base_model.model.{head}.weight" in load_file(tmp_path / "adapter_model.safetensors")
    again = ak.load_adapter(make(), tmp_path)  # the saved head is the base's own: same outputs
    torch.testing.assert_close(_output(again), _output(ours), atol=0, rtol=0)
