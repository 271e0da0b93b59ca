"""One specific reason when a file's tensors do not match its config on a model: the PEFT feature a
tensor belongs to, a task-type mismatch, a module the config does not select; the model unchanged."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterkit as ak
from adapterkit.errors import AdapterFileError
from adapterkit.transaction import Snapshot
from tests.models import tiny_bert, tiny_llama

peft = pytest.importorskip("peft")
Q = "base_model.model.model.layers.0.self_attn.q_proj"


def _peft_save(folder, model, **fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(model, peft.LoraConfig(r=2, init_lora_weights=False, **fields)).save_pretrained(folder)
    return folder


def _edit(folder, config=None, tensors=None):
    if config:
        data = json.loads((folder / "adapter_config.json").read_text())
        data.update(config)
        (folder / "adapter_config.json").write_text(json.dumps(data))
    if tensors:
        file = folder / "adapter_model.safetensors"
        save_file(tensors(load_file(file)), file, metadata={"format": "pt"})


def _refused(folder, model, *fragments):
    before = Snapshot(model).state()
    with pytest.raises(AdapterFileError) as info:
        ak.load_adapter(model, folder)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert Snapshot(model).state() == before
    return str(info.value)


def test_lora_bias_tensors_name_the_peft_option(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"], lora_bias=True)
    _edit(folder, config={"lora_bias": False})  # a config that does not admit it
    _refused(folder, tiny_llama(), f"{Q}.lora_B.bias", "lora_bias=True")


def test_trainable_token_rows_name_the_peft_option(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"], trainable_token_indices=[1, 2])
    _edit(folder, config={"trainable_token_indices": None})
    _refused(folder, tiny_llama(), "token_adapter", "trainable_token_indices")


def test_dora_magnitude_without_use_dora(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"], use_dora=True)
    _edit(folder, config={"use_dora": False})
    _refused(folder, tiny_llama(), "lora_magnitude_vector", "use_dora")


def test_base_layer_of_a_module_the_adapter_does_not_wrap(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj", "embed_tokens"])
    _edit(
        folder,
        config={"target_modules": ["q_proj"]},
        tensors=lambda t: {k: v for k, v in t.items() if "lora_embedding" not in k},
    )
    _refused(folder, tiny_llama(), "embed_tokens.base_layer.weight", "save_embedding_layers")


def test_tensors_of_another_method(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"])
    _edit(folder, tensors=lambda t: {**t, f"{Q}.ia3_l": torch.ones(32, 1)})
    _refused(folder, tiny_llama(), "ia3_l", "IA3", "'LORA'")


def test_lora_tensors_of_the_wrong_kind_for_the_module(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"])
    _edit(folder, tensors=lambda t: {k.replace("lora_A.weight", "lora_embedding_A"): v for k, v in t.items()})
    _refused(folder, tiny_llama(), "lora_embedding_A", "Linear", "another architecture")


def test_lora_tensors_for_a_module_the_config_does_not_select(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj", "k_proj"])
    _edit(folder, config={"target_modules": ["q_proj"]})
    _refused(folder, tiny_llama(), "k_proj", "target_modules=['q_proj']")


def test_missing_tensors(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"])
    _edit(folder, tensors=lambda t: {k: v for k, v in t.items() if "layers.1." not in k})
    _refused(folder, tiny_llama(), "2 missing", "layers.1.self_attn.q_proj")


def test_classifier_adapter_on_a_bare_encoder_names_both_tasks(tmp_path):
    from transformers import BertModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(
            tiny_bert(), peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])
        ).save_pretrained(tmp_path)
    bare = BertModel(tiny_bert().config).eval()
    _refused(
        tmp_path, bare, "task_type is SEQ_CLS", "BertModel (FEATURE_EXTRACTION", "AutoModelForSequenceClassification"
    )


def test_causal_lm_adapter_on_the_bare_decoder(tmp_path):
    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"], task_type="CAUSAL_LM")
    _refused(folder, tiny_llama().model, "task_type is CAUSAL_LM", "LlamaModel", "AutoModelForCausalLM")


def test_a_causal_lm_adapter_still_loads_into_a_classifier_of_the_same_body(tmp_path):
    from transformers import LlamaForSequenceClassification

    folder = _peft_save(tmp_path, tiny_llama(), target_modules=["q_proj"], task_type="CAUSAL_LM")
    model = LlamaForSequenceClassification(tiny_llama().config)
    ak.load_adapter(model, folder)  # same module names: the adapter fits, whatever the head
    assert ak.adapter_names(model) == ["default"]
