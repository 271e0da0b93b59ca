"""Every user error of the core is a clear AdapterKitError (and the builtin a caller would catch)."""

import json

import pytest
import torch
from torch import nn

import adapterkit as ak
from tests.models import tiny_gpt2, tiny_llama


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), "rank must be a positive integer"),
        (dict(rank=-2), "rank must be a positive integer"),
        (dict(rank=2.5), "rank must be a positive integer"),
        (dict(alpha=0), "alpha must be a positive number"),
        (dict(alpha=float("nan")), "alpha must be a positive number"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be a number in \[0, 1\)"),
        (dict(init="xavier"), "init must be one of"),
        (dict(layers=[-1]), "layers must be block indices"),
        (dict(targets=[]), "targets is empty"),
        (dict(rslora="yes"), "rslora must be true or false"),
        (dict(rnak=4), r"unknown field 'rnak' \(did you mean 'rank'\?\)"),
    ],
)
def test_invalid_config_values_raise_at_construction(kwargs, match):
    with pytest.raises(ak.ConfigError, match=match):
        ak.LoRAConfig(**kwargs)
    assert issubclass(ak.ConfigError, ValueError)


def test_config_json_round_trip_is_exact_and_from_dict_checks_keys():
    cfg = ak.LoRAConfig(
        rank=4, alpha=8.5, targets=["q_proj", "v_proj"], layers=[0, 2], dora=True, train_modules="lm_head"
    )
    again = ak.LoRAConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.targets == ("q_proj", "v_proj") and again.train_modules == ("lm_head",)
    with pytest.raises(ak.ConfigError, match="Valid fields: rank, alpha"):
        ak.LoRAConfig.from_dict({"rank": 4, "lora_alpha": 8})
    assert ak.LoRAConfig(rank=4, alpha=8).scale == 2.0
    assert ak.LoRAConfig(rank=16, alpha=8, rslora=True).scale == 2.0


@pytest.mark.parametrize("name", ["", "1st", "my adapter", "a.b", "x-y", None, "half", "to"])
def test_bad_adapter_names(name):
    with pytest.raises(ak.AdapterNameError, match="adapter name"):
        ak.attach(tiny_llama(), ak.LoRAConfig(), name=name)


def test_name_in_use_and_unknown_names():
    model = ak.attach(tiny_llama(), ak.LoRAConfig())
    with pytest.raises(ak.AdapterNameError, match="already attached"):
        ak.attach(model, ak.LoRAConfig())
    with pytest.raises(ak.AdapterNameError, match=r"no adapter named 'defualt' \(did you mean 'default'\?\)"):
        ak.set_active(model, "defualt")
    with pytest.raises(ak.AdapterNameError, match="this model has: 'default'"):
        ak.delete_adapter(model, "other")
    assert issubclass(ak.AdapterNameError, KeyError)


def test_targets_that_match_nothing_name_close_matches():
    with pytest.raises(ak.TargetError, match=r"'q_prj' matches no module \(did you mean 'q_proj'"):
        ak.attach(tiny_llama(), ak.LoRAConfig(targets=["q_prj"]))
    with pytest.raises(ak.TargetError, match="matches no module name"):
        ak.attach(tiny_llama(), ak.LoRAConfig(targets=r"model\.layers\.\d+\.attn\.q"))
    with pytest.raises(ak.TargetError, match="selects no targeted module; blocks here: \\[0, 1\\]"):
        ak.attach(tiny_llama(), ak.LoRAConfig(layers=[7]))
    with pytest.raises(ak.TargetError, match="train_modules entry 'clasifier'"):
        ak.attach(tiny_llama(), ak.LoRAConfig(train_modules=["clasifier"]))


def test_unsupported_module_type_names_supported_ones():
    with pytest.raises(
        ak.UnsupportedModuleError,
        match=r"LlamaMLP; LoRA adapts only nn.Linear.*"
        r"Adaptable modules inside it: .*gate_proj",
    ):
        ak.attach(tiny_llama(), ak.LoRAConfig(targets=["mlp"]))
    with pytest.raises(ak.UnsupportedModuleError, match="DoRA needs"):
        ak.attach(nn.Sequential(nn.MultiheadAttention(8, 2)), ak.LoRAConfig(targets=["0"], dora=True))
    assert issubclass(ak.UnsupportedModuleError, TypeError)


def test_model_unchanged_when_attach_fails():
    model = tiny_llama()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ak.TargetError):
        ak.attach(model, ak.LoRAConfig(targets=["q_proj", "nope"]))
    assert [type(m) for m in model.modules()] == before
    assert all(p.requires_grad for p in model.parameters())


def test_merge_onto_a_base_it_cannot_fold_into():
    import bitsandbytes as bnb

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            self.q = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
            self.q.load_state_dict(nn.Linear(64, 64).state_dict())

        def forward(self, x):
            return self.q(self.fc(x))

    model = ak.attach(Net(), ak.LoRAConfig(targets=["fc", "q"], init="random"))
    model(torch.randn(2, 64))  # the 8-bit base runs
    with pytest.raises(ak.MergeError, match="cannot fold adapters into a Linear8bitLt"):
        ak.merge(model)
    assert isinstance(model.fc, ak.AdapterLayer)  # nothing was merged half-way


def test_all_linear_excludes_output_head():
    model = ak.attach(tiny_gpt2(), ak.LoRAConfig())
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, ak.AdapterLayer)
    assert isinstance(model.transformer.h[0].attn.c_attn, ak.AdapterLayer)


def test_every_error_is_also_the_builtin_a_caller_would_catch(tmp_path):
    """What errors.py promises: ValueError / TypeError / KeyError, and FileNotFoundError for a
    missing adapter folder or config."""
    model = tiny_llama()
    with pytest.raises(ValueError):
        ak.LoRAConfig(rank=0)
    with pytest.raises(KeyError):
        ak.set_active(ak.attach(tiny_llama(), ak.LoRAConfig(rank=2)), "nope")
    with pytest.raises(TypeError):
        ak.attach(nn.Sequential(nn.ReLU()), ak.LoRAConfig(rank=2, targets=["0"]))
    for missing in (tmp_path / "absent", tmp_path):  # no folder; a folder without adapter_config.json
        with pytest.raises(FileNotFoundError) as info:
            ak.load_adapter(model, missing)
        assert isinstance(info.value, ak.AdapterFileError) and str(missing) in str(info.value)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ak.AdapterFileError) as info:
        ak.load_adapter(model, tmp_path)
    assert not isinstance(info.value, FileNotFoundError)


def test_a_method_config_from_data_with_a_non_name_key_is_a_config_error():
    """JSON / YAML allow numbers as keys; a config read from such data says which key, as the training config does."""
    from adapterkit.errors import ConfigError

    with pytest.raises(ConfigError, match="LoRAConfig: key 1 is not a name"):
        ak.LoRAConfig.from_dict({"rank": 4, 1: "x"})
