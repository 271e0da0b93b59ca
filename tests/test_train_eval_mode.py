"""New adapter modules follow the train / eval mode of the module they wrap (dropout off in eval)."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_llama, tokens

DROPPY = dict(rank=4, alpha=8, dropout=0.5, init="random", targets="all-linear")


def _modes(model):
    """The training flag of every adapter layer and every module inside its adapters."""
    flags = set()
    for _, layer in adapter_layers(model):
        flags.add(layer.training)
        flags.update(m.training for m in layer.adapters.modules())
    return flags


def test_load_adapter_into_an_eval_model_runs_without_dropout(tmp_path):
    trained = ak.attach(tiny_llama(), ak.LoRAConfig(**DROPPY))
    ak.save_adapter(trained, tmp_path)
    model = ak.load_adapter(tiny_llama().eval(), tmp_path)
    assert _modes(model) == {False}
    with torch.no_grad():
        first, second = model(input_ids=tokens()).logits, model(input_ids=tokens()).logits
    assert torch.equal(first, second)  # deterministic: no dropout at inference
    model.train()
    assert _modes(model) == {True}  # and model.train() reaches them as usual


@pytest.mark.parametrize("training", [False, True])
def test_attach_follows_the_models_mode(training):
    model = tiny_llama().train(training)
    ak.attach(model, ak.LoRAConfig(**DROPPY), name="a")
    ak.attach(model, ak.IA3Config(), name="b")  # a second layer around some of the same modules
    ak.attach(model, ak.PromptTuningConfig(num_virtual_tokens=2), name="c")
    ak.combine(model, ["a"], name="d")
    assert _modes(model) == {training}
    assert {m.training for m in model.modules()} == {training}


def test_a_module_in_eval_inside_a_training_model_keeps_its_mode():
    model = tiny_llama().train()
    model.model.layers[0].eval()
    ak.attach(model, ak.LoRAConfig(**DROPPY))
    for name, layer in adapter_layers(model):
        want = not name.startswith("model.layers.0.")
        assert layer.training is want and layer.adapters["default"].training is want
