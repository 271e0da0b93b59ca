"""adapterkit.checkpointing: transformers' activation checkpointing under its 5.23+ name, or the old one."""

import warnings

import pytest
from torch import nn

import adapterkit as ak
from adapterkit import checkpointing
from tests.models import tiny_llama, tokens


def test_a_transformers_model_is_checkpointed_without_deprecation_warnings():
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random")).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert checkpointing.supported(model) and not checkpointing.is_on(model)
        checkpointing.enable(model)
        assert checkpointing.is_on(model) and model.config.use_cache is False
        ids = tokens()
        model(input_ids=ids, labels=ids).loss.backward()  # recomputed blocks still give adapter gradients
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


class _OldTransformersModel(nn.Module):
    """The switch as transformers before 5.23 named it (gradient_checkpointing_enable only)."""

    def __init__(self):
        super().__init__()
        self.kwargs = None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.kwargs = gradient_checkpointing_kwargs

    @property
    def is_gradient_checkpointing(self):
        return self.kwargs is not None


def test_older_transformers_names_are_used_where_the_new_ones_are_missing():
    model = _OldTransformersModel()
    assert checkpointing.supported(model) and not checkpointing.is_on(model)
    checkpointing.enable(model, use_reentrant=True)
    assert model.kwargs == {"use_reentrant": True} and checkpointing.is_on(model)


def test_a_module_without_the_switch_is_refused_clearly():
    plain = nn.Linear(4, 4)
    assert not checkpointing.supported(plain) and not checkpointing.is_on(plain)
    with pytest.raises(ak.ConfigError, match="torch.utils.checkpoint"):
        checkpointing.enable(plain)
