"""Classification heads saved whole (PEFT's modules_to_save) are never LoRA targets, nor anything
inside them, as in PEFT: RoBERTa's ``classifier`` (a module with ``dense`` and ``out_proj`` inside),
BERT's and DeBERTa-v2's ``classifier`` (a Linear). All-linear files go both ways with PEFT's
SEQ_CLS wrapper, with equal logits; a PEFT file saved without a task (LoRA in the head) too."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.methods.lora import LoRALayer
from tests.checks import assert_close_scaled

peft = pytest.importorskip("peft")

V = 53
TEXT = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=4,
    vocab_size=V,
    max_position_embeddings=40,
    num_labels=3,
)
MODELS = {
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", dict(pad_token_id=1)),
    "bert": ("BertConfig", "BertForSequenceClassification", {}),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", {}),
}


def _make(family):
    import transformers

    config_cls, model_cls, extra = MODELS[family]
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**TEXT, **extra)).eval()


def _logits(model):
    ids = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


@torch.no_grad()
def _perturb(model):
    gen = torch.Generator().manual_seed(2)
    for _name, p in model.named_parameters():
        if p.requires_grad:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _lora_inside_head(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, LoRALayer) and "classifier" in n]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_peft_saves_adapterkit_loads(family, tmp_path):
    base = _make(family)
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False),
    ).eval()
    _perturb(theirs)  # LoRA and the trained copy of the head
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(copy.deepcopy(base), tmp_path)
    assert not _lora_inside_head(ours)
    assert_close_scaled(_logits(ours), _logits(theirs))


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("train_head", [True, False])
def test_adapterkit_saves_peft_and_adapterkit_load(family, train_head, tmp_path):
    base = _make(family)
    config = ak.LoRAConfig(
        rank=2, alpha=4, targets="all-linear", init="random", train_modules=("classifier",) if train_head else ()
    )
    ours = ak.attach(copy.deepcopy(base), config).eval()
    assert not _lora_inside_head(ours)
    _perturb(ours)
    expected = _logits(ours)
    ak.save_adapter(ours, tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["modules_to_save"] == ["classifier"]
    assert not any(t.startswith("classifier") for t in data["target_modules"])
    from safetensors.torch import load_file

    keys = [k for k in load_file(tmp_path / "adapter_model.safetensors") if ".classifier." in k]
    assert keys and not any(part in k for k in keys for part in (".base.", ".adapters.", "lora_"))
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert_close_scaled(_logits(theirs), expected)
    again = ak.load_adapter(copy.deepcopy(base), tmp_path)
    assert_close_scaled(_logits(again), expected)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_a_peft_file_saved_without_a_task_keeps_lora_in_the_head(family, tmp_path):
    """PEFT without task_type adapts the head like any module; adapterkit reads the file as PEFT does,
    and saves it back without a task (so that both read it again the same way)."""
    base = _make(family)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False)
    ).eval()
    theirs.save_pretrained(tmp_path / "peft")
    expected = _logits(theirs)
    ours = ak.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert _lora_inside_head(ours)
    assert_close_scaled(_logits(ours), expected)
    ak.save_adapter(ours, tmp_path / "ak")
    data = json.loads((tmp_path / "ak" / "adapter_config.json").read_text())
    assert data["task_type"] is None and data["modules_to_save"] is None
    assert_close_scaled(_logits(peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ak")), expected)
    assert_close_scaled(_logits(ak.load_adapter(copy.deepcopy(base), tmp_path / "ak")), expected)


def test_targets_only_inside_a_saved_head_are_refused():
    model = _make("roberta")
    with pytest.raises(ak.TargetError, match="classifier.out_proj.*train_modules"):
        ak.attach(model, ak.LoRAConfig(targets=("out_proj",)))
    assert not any(isinstance(m, ak.AdapterLayer) for m in model.modules())


def test_a_trained_copy_holds_no_adapter_of_another_adapter(tmp_path):
    """Adapter x puts LoRA inside module "1"; adapter y trains "1" whole: y's copy is the module as
    the user built it, saved under its own keys, and loads back."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)))
    model = ak.attach(copy.deepcopy(base), ak.LoRAConfig(rank=2, targets="all-linear", init="random"), name="x")
    ak.attach(model, ak.LoRAConfig(rank=2, targets=("0",), train_modules=("1",), init="random"), name="y")
    copy_of_1 = model[1].adapters["y"]
    assert not any(isinstance(m, ak.AdapterLayer) for m in copy_of_1.modules())
    _perturb(model)
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = model(x)
    ak.save_adapter(model, tmp_path, name="y")
    loaded = ak.load_adapter(copy.deepcopy(base), tmp_path / "y", name="y")
    with torch.no_grad():
        assert_close_scaled(loaded(x), expected)
