"""Bad input through the Python API: every case gives one AdapterKitError of the expected class
whose message names the offending field, adapter or module, and a failed call leaves the model
exactly as it was (structure, requires_grad, train/eval flags, active adapters, tensor values).
Config fuzzing (Hypothesis) asserts that only ConfigError ever comes out of a config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import adapterkit as ak
from adapterkit.transaction import Snapshot
from tests.models import TinyCNN, tiny_llama

E = ak
NAN, INF = float("nan"), float("inf")

# (id, config factory, error class, a fragment the message must hold)
CONFIGS = [
    ("lora-rank-0", lambda: ak.LoRAConfig(rank=0), E.ConfigError, "rank"),
    ("lora-rank-neg", lambda: ak.LoRAConfig(rank=-3), E.ConfigError, "rank"),
    ("lora-rank-float", lambda: ak.LoRAConfig(rank=2.5), E.ConfigError, "rank"),
    ("lora-rank-str", lambda: ak.LoRAConfig(rank="8"), E.ConfigError, "rank"),
    ("lora-rank-bool", lambda: ak.LoRAConfig(rank=True), E.ConfigError, "rank"),
    ("lora-rank-none", lambda: ak.LoRAConfig(rank=None), E.ConfigError, "rank"),
    ("lora-alpha-0", lambda: ak.LoRAConfig(alpha=0), E.ConfigError, "alpha"),
    ("lora-alpha-nan", lambda: ak.LoRAConfig(alpha=NAN), E.ConfigError, "alpha"),
    ("lora-alpha-inf", lambda: ak.LoRAConfig(alpha=INF), E.ConfigError, "alpha"),
    ("lora-alpha-str", lambda: ak.LoRAConfig(alpha="16"), E.ConfigError, "alpha"),
    ("lora-dropout-1", lambda: ak.LoRAConfig(dropout=1.0), E.ConfigError, "dropout"),
    ("lora-dropout-neg", lambda: ak.LoRAConfig(dropout=-0.1), E.ConfigError, "dropout"),
    ("lora-dropout-nan", lambda: ak.LoRAConfig(dropout=NAN), E.ConfigError, "dropout"),
    ("lora-dropout-str", lambda: ak.LoRAConfig(dropout="0.1"), E.ConfigError, "dropout"),
    ("lora-targets-int", lambda: ak.LoRAConfig(targets=5), E.ConfigError, "targets"),
    ("lora-targets-list-int", lambda: ak.LoRAConfig(targets=["q_proj", 3]), E.ConfigError, "targets"),
    ("lora-targets-regex", lambda: ak.LoRAConfig(targets="q_proj(["), E.ConfigError, "targets"),
    ("lora-targets-regex-2", lambda: ak.LoRAConfig(targets="*proj"), E.ConfigError, "regular expression"),
    ("lora-exclude-regex", lambda: ak.LoRAConfig(exclude="(["), E.ConfigError, "exclude"),
    ("lora-exclude-int", lambda: ak.LoRAConfig(exclude=1), E.ConfigError, "exclude"),
    ("lora-layers-neg", lambda: ak.LoRAConfig(layers=[-1]), E.ConfigError, "layers"),
    ("lora-layers-str", lambda: ak.LoRAConfig(layers="0"), E.ConfigError, "layers"),
    ("lora-layers-float", lambda: ak.LoRAConfig(layers=[0.5]), E.ConfigError, "layers"),
    ("lora-rslora-str", lambda: ak.LoRAConfig(rslora="yes"), E.ConfigError, "rslora"),
    ("lora-dora-int", lambda: ak.LoRAConfig(dora=1), E.ConfigError, "dora"),
    ("lora-init-typo", lambda: ak.LoRAConfig(init="kaimin"), E.ConfigError, "kaiming"),
    ("lora-train-modules-int", lambda: ak.LoRAConfig(train_modules=5), E.ConfigError, "train_modules"),
    ("lora-unknown-field", lambda: ak.LoRAConfig(r=8), E.ConfigError, "rank"),
    ("lora-unknown-field-2", lambda: ak.LoRAConfig(lora_alpha=8), E.ConfigError, "alpha"),
    ("lora-from-dict-method", lambda: ak.LoRAConfig.from_dict({"method": "ia3"}), E.ConfigError, "ia3"),
    ("bn-preset", lambda: ak.BottleneckConfig(preset="pfiefer"), E.ConfigError, "pfeiffer"),
    ("bn-reduction-0", lambda: ak.BottleneckConfig(reduction_factor=0), E.ConfigError, "reduction_factor"),
    ("bn-reduction-float", lambda: ak.BottleneckConfig(reduction_factor=1.5), E.ConfigError, "reduction_factor"),
    ("bn-dim-neg", lambda: ak.BottleneckConfig(bottleneck_dim=-1), E.ConfigError, "bottleneck_dim"),
    ("bn-activation", lambda: ak.BottleneckConfig(activation="rellu"), E.ConfigError, "relu"),
    ("bn-scale-nan", lambda: ak.BottleneckConfig(scale=NAN), E.ConfigError, "scale"),
    ("bn-init", lambda: ak.BottleneckConfig(init="zero"), E.ConfigError, "zeros"),
    ("bn-unknown", lambda: ak.BottleneckConfig(reduction=4), E.ConfigError, "reduction_factor"),
    ("prompt-n-0", lambda: ak.PromptTuningConfig(num_virtual_tokens=0), E.ConfigError, "num_virtual_tokens"),
    ("prompt-n-str", lambda: ak.PromptTuningConfig(num_virtual_tokens="8"), E.ConfigError, "num_virtual_tokens"),
    ("prompt-init", lambda: ak.PromptTuningConfig(init="txt"), E.ConfigError, "text"),
    ("prompt-text-missing", lambda: ak.PromptTuningConfig(init="text"), E.ConfigError, "init_text"),
    (
        "prompt-text-no-tokenizer",
        lambda: ak.PromptTuningConfig(init="text", init_text="hi"),
        E.ConfigError,
        "tokenizer",
    ),
    ("prompt-tokenizer-int", lambda: ak.PromptTuningConfig(tokenizer=3), E.ConfigError, "tokenizer"),
    ("prompt-text-bytes", lambda: ak.PromptTuningConfig(init_text=b"x"), E.ConfigError, "init_text"),
    ("ptuning-encoder", lambda: ak.PromptEncoderConfig(encoder="gru"), E.ConfigError, "encoder"),
    ("ptuning-hidden-0", lambda: ak.PromptEncoderConfig(encoder_hidden_size=0), E.ConfigError, "encoder_hidden_size"),
    ("ptuning-layers-0", lambda: ak.PromptEncoderConfig(encoder_num_layers=0), E.ConfigError, "encoder_num_layers"),
    ("ptuning-dropout-1", lambda: ak.PromptEncoderConfig(encoder_dropout=1), E.ConfigError, "encoder_dropout"),
    ("prefix-n-neg", lambda: ak.PrefixTuningConfig(num_virtual_tokens=-1), E.ConfigError, "num_virtual_tokens"),
    ("prefix-hidden-str", lambda: ak.PrefixTuningConfig(encoder_hidden_size="8"), E.ConfigError, "encoder_hidden_size"),
    ("ia3-targets-empty", lambda: ak.IA3Config(targets=()), E.ConfigError, "targets"),
    ("ia3-targets-regex", lambda: ak.IA3Config(targets="(k|v"), E.ConfigError, "targets"),
    ("ia3-ff-regex", lambda: ak.IA3Config(feedforward="[down"), E.ConfigError, "feedforward"),
    ("ia3-init", lambda: ak.IA3Config(init="one"), E.ConfigError, "ones"),
    ("ia3-layers", lambda: ak.IA3Config(layers=[1, -2]), E.ConfigError, "layers"),
]


@pytest.mark.parametrize("make,error,fragment", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_values_are_refused_when_the_config_is_built(make, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        make()


def _lora(**kw):
    return ak.LoRAConfig(**{"rank": 2, "targets": ("q_proj", "v_proj"), **kw})


def _adapted():
    model = ak.attach(tiny_llama(), _lora(), name="one")
    return ak.attach(model, _lora(rank=3), name="two")


def _frozen_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# (id, model factory, the failing call, error class, message fragment)
CALLS = [
    ("attach-none", tiny_llama, lambda m: ak.attach(None, _lora()), E.UnsupportedModuleError, "NoneType"),
    ("attach-object", tiny_llama, lambda m: ak.attach(object(), _lora()), E.UnsupportedModuleError, "object"),
    (
        "attach-str",
        tiny_llama,
        lambda m: ak.attach("meta-llama/Llama-3", _lora()),
        E.UnsupportedModuleError,
        "nn.Module",
    ),
    ("attach-config-none", tiny_llama, lambda m: ak.attach(m, None), E.AdapterKitError, "config"),
    ("attach-config-dict", tiny_llama, lambda m: ak.attach(m, {"rank": 8}), E.AdapterKitError, "config"),
    ("attach-name-int", tiny_llama, lambda m: ak.attach(m, _lora(), name=3), E.AdapterNameError, "3"),
    ("attach-name-dot", tiny_llama, lambda m: ak.attach(m, _lora(), name="a.b"), E.AdapterNameError, "a.b"),
    ("attach-name-empty", tiny_llama, lambda m: ak.attach(m, _lora(), name=""), E.AdapterNameError, "identifier"),
    (
        "attach-name-training",
        tiny_llama,
        lambda m: ak.attach(m, _lora(), name="training"),
        E.AdapterNameError,
        "training",
    ),
    (
        "attach-name-modules",
        tiny_llama,
        lambda m: ak.attach(m, _lora(), name="_modules"),
        E.AdapterNameError,
        "_modules",
    ),
    ("attach-name-update", tiny_llama, lambda m: ak.attach(m, _lora(), name="update"), E.AdapterNameError, "update"),
    ("attach-duplicate", _adapted, lambda m: ak.attach(m, _lora(), name="one"), E.AdapterNameError, "one"),
    ("attach-target-typo", tiny_llama, lambda m: ak.attach(m, _lora(targets=("q_prj",))), E.TargetError, "q_prj"),
    (
        "attach-target-regex-none",
        tiny_llama,
        lambda m: ak.attach(m, _lora(targets=r".*\.nothing")),
        E.TargetError,
        "nothing",
    ),
    (
        "attach-target-norm",
        tiny_llama,
        lambda m: ak.attach(m, _lora(targets=("input_layernorm",))),
        E.UnsupportedModuleError,
        "input_layernorm",
    ),
    (
        "attach-target-block",
        tiny_llama,
        lambda m: ak.attach(m, _lora(targets=("mlp",))),
        E.UnsupportedModuleError,
        "mlp",
    ),
    ("attach-layers-out-of-range", tiny_llama, lambda m: ak.attach(m, _lora(layers=[7])), E.TargetError, "7"),
    (
        "attach-exclude-all",
        tiny_llama,
        lambda m: ak.attach(m, _lora(exclude=("q_proj", "v_proj"))),
        E.TargetError,
        "exclude",
    ),
    (
        "attach-train-modules-typo",
        tiny_llama,
        lambda m: ak.attach(m, _lora(train_modules=("lm_hed",))),
        E.TargetError,
        "lm_hed",
    ),
    (
        "attach-bare-linear",
        lambda: nn.Linear(3, 3),
        lambda m: ak.attach(m, _lora(targets=".*")),
        E.TargetError,
        "Linear",
    ),
    (
        "attach-ia3-norm",
        tiny_llama,
        lambda m: ak.attach(m, ak.IA3Config(targets=("input_layernorm",), feedforward=())),
        E.UnsupportedModuleError,
        "IA3",
    ),
    (
        "attach-ia3-ff-typo",
        tiny_llama,
        lambda m: ak.attach(m, ak.IA3Config(targets=("k_proj", "down_proj"), feedforward=("down_projj",))),
        E.TargetError,
        "down_projj",
    ),
    (
        "attach-ia3-ff-regex",
        tiny_llama,
        lambda m: ak.attach(m, ak.IA3Config(targets=("k_proj", "down_proj"), feedforward=r".*\.up_proj")),
        E.TargetError,
        "up_proj",
    ),
    (
        "attach-prompt-t5",
        lambda: __import__("tests.models").models.tiny_t5(),
        lambda m: ak.attach(m, ak.PromptTuningConfig()),
        E.UnsupportedModuleError,
        "encoder-decoder",
    ),
    (
        "attach-prompt-cnn",
        TinyCNN,
        lambda m: ak.attach(m, ak.PromptTuningConfig()),
        E.UnsupportedModuleError,
        "get_input_embeddings",
    ),
    (
        "attach-prompt-bad-train-modules",
        tiny_llama,
        lambda m: ak.attach(m, ak.PromptTuningConfig(num_virtual_tokens=2, train_modules=("nope",))),
        E.TargetError,
        "nope",
    ),
    (
        "attach-dora-grouped-conv",
        lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)),
        lambda m: ak.attach(m, _lora(targets=("0",), dora=True)),
        E.UnsupportedModuleError,
        "DoRA",
    ),
    ("set-active-none", _adapted, lambda m: ak.set_active(m, None), E.AdapterNameError, "None"),
    ("set-active-int", _adapted, lambda m: ak.set_active(m, 1), E.AdapterNameError, "1"),
    ("set-active-unknown", _adapted, lambda m: ak.set_active(m, "thre"), E.AdapterNameError, "thre"),
    ("set-active-list-unknown", _adapted, lambda m: ak.set_active(m, ["one", "tow"]), E.AdapterNameError, "two"),
    ("set-active-list-int", _adapted, lambda m: ak.set_active(m, ["one", 2]), E.AdapterNameError, "2"),
    ("set-active-not-a-model", _adapted, lambda m: ak.set_active(None, "one"), E.UnsupportedModuleError, "set_active"),
    ("delete-unknown", _adapted, lambda m: ak.delete_adapter(m, "three"), E.AdapterNameError, "three"),
    ("delete-none", _adapted, lambda m: ak.delete_adapter(m, None), E.AdapterNameError, "None"),
    ("delete-not-a-model", _adapted, lambda m: ak.delete_adapter([], "one"), E.UnsupportedModuleError, "list"),
    ("detach-not-a-model", _adapted, lambda m: ak.detach(None), E.UnsupportedModuleError, "detach"),
    ("merge-not-a-model", _adapted, lambda m: ak.merge(3), E.UnsupportedModuleError, "merge"),
    (
        "combine-nan-weight",
        _adapted,
        lambda m: ak.combine(m, ["one", "two"], "mix", weights=[NAN, 1.0]),
        E.ConfigError,
        "finite",
    ),
    (
        "combine-inf-weight",
        _adapted,
        lambda m: ak.combine(m, ["one", "two"], "mix", weights=[1.0, INF]),
        E.ConfigError,
        "finite",
    ),
    (
        "combine-str-weight",
        _adapted,
        lambda m: ak.combine(m, ["one", "two"], "mix", weights=["1", 1]),
        E.ConfigError,
        "weights",
    ),
    (
        "combine-weight-count",
        _adapted,
        lambda m: ak.combine(m, ["one", "two"], "mix", weights=[1.0]),
        E.ConfigError,
        "weight",
    ),
    ("combine-how", _adapted, lambda m: ak.combine(m, ["one", "two"], "mix", how="svdd"), E.ConfigError, "svdd"),
    ("combine-unknown", _adapted, lambda m: ak.combine(m, ["one", "three"], "mix"), E.AdapterNameError, "three"),
    ("combine-names-str", _adapted, lambda m: ak.combine(m, "one", "mix"), E.AdapterNameError, "list"),
    ("combine-existing-name", _adapted, lambda m: ak.combine(m, ["one", "two"], "two"), E.AdapterNameError, "two"),
    (
        "combine-linear-ranks",
        _adapted,
        lambda m: ak.combine(m, ["one", "two"], "mix", how="linear"),
        E.ConfigError,
        "ranks",
    ),
    (
        "combine-nan-adapter",
        lambda: _with_nan(_adapted()),
        lambda m: ak.combine(m, ["one", "two"], "mix"),
        E.MergeError,
        "NaN",
    ),
    (
        "save-dtype-int8",
        _adapted,
        lambda m: ak.save_adapter(m, "unused-dir", name="one", dtype=torch.int8),
        E.AdapterFileError,
        "int8",
    ),
    (
        "save-dtype-bool",
        _adapted,
        lambda m: ak.save_adapter(m, "unused-dir", name="one", dtype=torch.bool),
        E.AdapterFileError,
        "bool",
    ),
    (
        "save-dtype-fp8-name",
        _adapted,
        lambda m: ak.save_adapter(m, "unused-dir", name="one", dtype="fp8"),
        E.AdapterFileError,
        "fp8",
    ),
    (
        "save-unknown-name",
        _adapted,
        lambda m: ak.save_adapter(m, "unused-dir", name="three"),
        E.AdapterNameError,
        "three",
    ),
    ("save-nothing", tiny_llama, lambda m: ak.save_adapter(m, "unused-dir"), E.AdapterNameError, "adapter"),
    (
        "load-missing-folder",
        tiny_llama,
        lambda m: ak.load_adapter(m, "no/such/folder"),
        E.AdapterFileError,
        "does not exist",
    ),
    (
        "load-not-a-model",
        tiny_llama,
        lambda m: ak.load_adapter(None, "no/such/folder"),
        E.UnsupportedModuleError,
        "load_adapter",
    ),
    ("load-name-bad", tiny_llama, lambda m: ak.load_adapter(m, "x", name="a-b"), E.AdapterNameError, "a-b"),
    ("quantize-bits", tiny_llama, lambda m: ak.quantize(m, bits=3), E.AdapterKitError, "bits"),
    ("quantize-type", tiny_llama, lambda m: ak.quantize(m, bits=4, quant_type="nf5"), E.AdapterKitError, "nf5"),
    ("quantize-block", tiny_llama, lambda m: ak.quantize(m, bits=4, block=48), E.AdapterKitError, "48"),
]


def _with_nan(model):
    layer = next(layer for _, layer in ak.inject.adapter_layers(model) if "one" in layer.adapters)
    with torch.no_grad():
        layer.adapters["one"].b.fill_(NAN)
    return model


@pytest.mark.parametrize("make,call,error,fragment", [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_bad_calls_raise_clearly_and_change_nothing(make, call, error, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = make()
    model.train()
    before, values = Snapshot(model).state(), _frozen_copy(model)
    with pytest.raises(error) as info:
        call(model)
    assert fragment in str(info.value), str(info.value)
    assert Snapshot(model).state() == before
    after = _frozen_copy(model)
    assert after.keys() == values.keys()
    assert all(torch.equal(after[k], values[k]) or (after[k].isnan() == values[k].isnan()).all() for k in values)
    assert not (tmp_path / "unused-dir").exists()  # nothing half-written


def test_a_failure_half_way_through_attach_rolls_everything_back(monkeypatch):
    """A build that fails at the third layer: the first two wraps, the freezing and the active
    adapters are undone; the model still computes exactly what it did."""
    from adapterkit.registry import method_for

    model = ak.attach(tiny_llama(), _lora(), name="one")
    model.train()
    ids = torch.randint(0, 97, (2, 5))
    for p in model.model.embed_tokens.parameters():
        p.requires_grad_(True)  # a user unfroze the embeddings on purpose
    before, values = Snapshot(model).state(), _frozen_copy(model)
    with torch.no_grad():
        expected = model.eval()(ids).logits
    model.train()
    method = method_for(_lora())
    calls = {"n": 0}
    real_build = method.build

    def failing_build(base, config, placement):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ak.UnsupportedModuleError("simulated failure in the third layer")
        return real_build(base, config, placement)

    failing = dataclasses.replace(method, build=failing_build)
    monkeypatch.setattr(ak.inject, "method_for", lambda config: failing)  # the test's stand-in method
    with pytest.raises(ak.UnsupportedModuleError, match="third layer"):
        ak.attach(model, _lora(targets="all-linear"), name="two")
    assert calls["n"] == 3
    assert Snapshot(model).state() == before
    assert all(torch.equal(v, _frozen_copy(model)[k]) for k, v in values.items())
    assert ak.active_names(model) == ["one"] and "two" not in ak.adapter_names(model)
    assert model.model.embed_tokens.weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, expected, rtol=0, atol=0)


def test_a_failed_prompt_attach_leaves_no_model_hook():
    model = tiny_llama()
    hooks = len(model._forward_pre_hooks)  # noqa: SLF001 - the test checks torch's own count
    with pytest.raises(ak.TargetError):
        ak.attach(model, ak.PromptTuningConfig(num_virtual_tokens=2, train_modules=("nope",)))
    assert len(model._forward_pre_hooks) == hooks  # noqa: SLF001


# -- Hypothesis: random configs ----------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**16), 10**16),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "all-linear",
            "auto",
            "([",
            "q_proj",
            ".*proj",
            "relu",
            "mlp",
            "lstm",
            "text",
            "pfeiffer",
            "kaiming",
            "zeros",
            "ones",
        ]
    ),
    st.lists(st.one_of(st.text(max_size=6), st.integers(-3, 9), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_CONFIGS = (
    ak.LoRAConfig,
    ak.BottleneckConfig,
    ak.PromptTuningConfig,
    ak.PromptEncoderConfig,
    ak.PrefixTuningConfig,
    ak.IA3Config,
)


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(st.sampled_from(_CONFIGS), st.data())
def test_random_config_fields_give_a_config_error_or_an_exact_round_trip(cls, data):
    names = [f.name for f in dataclasses.fields(cls)] + ["unknown_field"]
    fields = data.draw(st.dictionaries(st.sampled_from(names), _VALUES, max_size=4))
    try:
        config = cls(**fields)
    except ak.ConfigError:
        return
    text = json.dumps(config.to_dict())
    assert cls.from_dict(json.loads(text)) == config
