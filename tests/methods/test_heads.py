"""Task heads over a frozen backbone and partial fine-tuning."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_bert, tiny_llama, tiny_vit, tokens


@pytest.mark.parametrize("make,head", [(tiny_bert, "classifier"), (tiny_vit, "classifier")], ids=["bert", "vit"])
def test_replace_head_changes_the_number_of_labels(make, head):
    model = make()
    old = model.get_submodule(head)
    name = ak.replace_head(model, 7)
    new = model.get_submodule(name)
    assert name == head and new is not old and new.in_features == old.in_features and new.out_features == 7
    assert model.config.num_labels == 7 and len(model.config.id2label) == 7
    x = tokens() if make is tiny_bert else torch.randn(2, 3, 16, 16)
    assert model(x).logits.shape == (2, 7)


def test_new_head_trains_and_saves_with_an_adapter(tmp_path):
    model = tiny_bert()
    head = ak.replace_head(model, 4)
    ak.attach(model, ak.LoRAConfig(rank=2, targets=["query", "value"], train_modules=[head]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("classifier.") for n in trainable)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([1, 3])
    for _ in range(3):
        optimizer.zero_grad()
        model(tokens(), labels=labels).loss.backward()
        optimizer.step()
    expected = model(tokens()).logits
    ak.save_adapter(model, tmp_path)
    fresh = tiny_bert()
    ak.replace_head(fresh, 4)
    ak.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(tokens()).logits, expected)


def test_replace_head_errors():
    with pytest.raises(ak.TargetError, match="positive integer"):
        ak.replace_head(tiny_bert(), 0)
    with pytest.raises(ak.TargetError, match="did you mean"):
        ak.replace_head(tiny_bert(), 2, name="clasifier")
    with pytest.raises(ak.TargetError, match="before attaching"):
        model = ak.attach(tiny_bert(), ak.IA3Config(train_modules=["classifier"]))
        ak.replace_head(model, 2, name="classifier")


def test_unfreeze_last_blocks_alongside_an_adapter():
    model = ak.attach(tiny_llama(num_hidden_layers=3), ak.LoRAConfig(rank=2, targets=["q_proj"]))
    lora = {id(p) for _, layer in adapter_layers(model) for p in layer.adapters.parameters()}
    names = ak.unfreeze(model, last=1, modules=["norm"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and id(p) not in lora}
    assert trainable == set(names)
    assert all(n.startswith("model.layers.2.") or n == "model.norm.weight" for n in trainable)
    expected_block = {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.2.") and ".adapters." not in n
    }
    assert expected_block <= trainable and "model.norm.weight" in trainable
    assert all(p.requires_grad for p in model.parameters() if id(p) in lora)


def test_unfreeze_instead_of_adapters_and_errors():
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    names = ak.unfreeze(model, layers=[0])
    assert names and all(n.startswith("model.layers.0.") for n in names)
    with pytest.raises(ak.TargetError, match="needs"):
        ak.unfreeze(model)
    with pytest.raises(ak.TargetError, match="matches no module"):
        ak.unfreeze(model, modules=["nothing_here"])
