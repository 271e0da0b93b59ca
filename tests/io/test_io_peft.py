"""Adapter files against PEFT 0.21 in both directions: PEFT saves / adapterkit loads, and back."""

import json

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.trained_module import TrainedModule
from tests.models import TinyCNN, tiny_gpt2, tiny_llama, tokens

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
VARIANTS = {
    "lora": dict(),
    "rslora": dict(rslora=True),
    "dora": dict(dora=True),
    "modules_to_save": dict(train_modules=("lm_head",)),
}


def _peft_config(variant: dict, **extra):
    from peft import LoraConfig

    train = list(variant.get("train_modules", ())) or None
    return LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        init_lora_weights=False,
        use_rslora=variant.get("rslora", False),
        use_dora=variant.get("dora", False),
        modules_to_save=train,
        **extra,
    )


@torch.no_grad()
def _perturb_peft_copies(peft_model):
    from peft.utils import ModulesToSaveWrapper

    for module in peft_model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for copy in module.modules_to_save.values():
                for p in copy.parameters():
                    p.add_(torch.randn_like(p))


@torch.no_grad()
def _perturb_our_copies(model):
    for _, layer in adapter_layers(model):
        if isinstance(layer, TrainedModule):
            for p in layer.adapters.parameters():
                p.add_(torch.randn_like(p))


def _logits(model, x=None):
    with torch.no_grad():
        return model(input_ids=tokens() if x is None else x).logits


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_saves_adapterkit_loads(tmp_path, model_name, variant):
    from peft import get_peft_model

    factory = MODELS[model_name]
    theirs = get_peft_model(factory(), _peft_config(VARIANTS[variant]))
    _perturb_peft_copies(theirs)
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(factory(), tmp_path)
    expected = _logits(theirs)
    torch.testing.assert_close(_logits(ours), expected, atol=1e-5, rtol=0)
    assert (_logits(ours) - _logits(factory())).abs().max() > 1e-3  # the adapter does change the output


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_adapterkit_saves_peft_loads(tmp_path, model_name, variant):
    from peft import PeftModel

    factory = MODELS[model_name]
    ours = ak.attach(factory(), ak.LoRAConfig(rank=4, alpha=8, init="random", **VARIANTS[variant]))
    _perturb_our_copies(ours)
    ak.save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(factory(), tmp_path)
    torch.testing.assert_close(_logits(theirs), _logits(ours), atol=1e-5, rtol=0)
    assert type(theirs).__name__ == "PeftModelForCausalLM"


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_same_keys_shapes_and_config_as_peft(tmp_path, model_name, variant):
    from peft import get_peft_model

    factory = MODELS[model_name]
    get_peft_model(factory(), _peft_config(VARIANTS[variant])).save_pretrained(tmp_path / "peft")
    ours = ak.attach(factory(), ak.LoRAConfig(rank=4, alpha=8, **VARIANTS[variant]))
    ak.save_adapter(ours, tmp_path / "ours")
    theirs_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    ours_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours_t.items()} == {k: v.shape for k, v in theirs_t.items()}
    theirs_c = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ours_c = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "modules_to_save", "fan_in_fan_out"):
        assert ours_c[key] == theirs_c[key], key
    assert set(ours_c["target_modules"]) == set(theirs_c["target_modules"])


def test_lora_only_export_holds_only_lora_tensors(tmp_path):
    ours = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, targets=["q_proj", "v_proj"], dora=True))
    ak.save_adapter(ours, tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    suffixes = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")
    assert keys and all(k.startswith("base_model.model.") and k.endswith(suffixes) for k in keys)
    base_keys = set(tiny_llama().state_dict())
    assert not any(k.removeprefix("base_model.model.") in base_keys for k in keys)


@pytest.mark.parametrize(
    "spec",
    [
        dict(targets=("q_proj", "v_proj"), layers=(1,)),
        dict(targets=r".*\.(k|o)_proj"),
        dict(targets=r"model\.layers\.\d+\.mlp\.(up|down)_proj", layers=(0,)),
        dict(targets="all-linear", exclude=("gate_proj", "o_proj")),
    ],
)
def test_target_specs_select_the_same_modules_in_peft(tmp_path, spec):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    ours = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random", **spec))
    ak.save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    peft_names = {n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if isinstance(m, LoraLayer)}
    assert peft_names == {n for n, _ in adapter_layers(ours)}
    torch.testing.assert_close(_logits(theirs), _logits(ours), atol=1e-5, rtol=0)
    again = ak.load_adapter(tiny_llama(), tmp_path)
    assert {n for n, _ in adapter_layers(again)} == peft_names


def test_several_adapters_saved_at_once_in_peft_layout(tmp_path):
    from peft import PeftModel

    ours = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random"))
    ak.attach(ours, ak.LoRAConfig(rank=2, targets=["q_proj"], init="random", rslora=True), name="other")
    ak.save_adapter(ours, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "other" / "adapter_config.json").is_file()
    assert (tmp_path / "README.md").is_file()
    for name in ("default", "other"):
        ak.set_active(ours, name)
        expected = _logits(ours)
        theirs = PeftModel.from_pretrained(tiny_llama(), tmp_path, subfolder=None if name == "default" else name)
        torch.testing.assert_close(_logits(theirs), expected, atol=1e-5, rtol=0)
        mine = ak.load_adapter(tiny_llama(), tmp_path, name=name)
        torch.testing.assert_close(_logits(mine), expected, atol=1e-5, rtol=0)


def test_peft_non_default_adapter_in_sub_folder_loads(tmp_path):
    from peft import get_peft_model

    theirs = get_peft_model(tiny_gpt2(), _peft_config({}), adapter_name="task_a")
    theirs.save_pretrained(tmp_path)  # PEFT writes it to tmp_path/task_a
    ours = ak.load_adapter(tiny_gpt2(), tmp_path, name="task_a")
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)


def test_embedding_conv_and_linear_bases_round_trip_with_peft(tmp_path):
    from peft import PeftModel

    ours = ak.attach(TinyCNN(), ak.LoRAConfig(rank=2, targets=["embed", "conv", "fc"], init="random"))
    ak.save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(TinyCNN(), tmp_path)
    image, ids = torch.randn(3, 3, 4, 4), torch.tensor([1, 5, 9])
    with torch.no_grad():
        torch.testing.assert_close(theirs(image, ids), ours(image, ids), atol=1e-5, rtol=0)
        again = ak.load_adapter(TinyCNN(), tmp_path)
        torch.testing.assert_close(again(image, ids), ours(image, ids), atol=0, rtol=0)


def test_dtype_and_trainable_flags(tmp_path):
    ours = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random"))
    ak.save_adapter(ours, tmp_path, dtype="bf16")
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    frozen = ak.load_adapter(tiny_llama(), tmp_path)
    assert ak.summary(frozen).trainable == 0
    live = ak.load_adapter(tiny_llama(), tmp_path, trainable=True)
    assert ak.summary(live).trainable == sum(t.numel() for t in tensors.values())
    for _, layer in adapter_layers(live):  # values are the bf16 file values, held in the model's fp32
        key = f"base_model.model.{_}.lora_A.weight"
        torch.testing.assert_close(layer.adapters["default"].a, tensors[key].float(), atol=0, rtol=0)


def test_sequence_classification_heads_both_ways(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from tests.models import tiny_bert

    theirs = get_peft_model(
        tiny_bert(), LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False)
    )
    _perturb_peft_copies(theirs)  # PEFT trains the head ("classifier"; it also lists "score")
    theirs.save_pretrained(tmp_path / "peft")
    ours = ak.load_adapter(tiny_bert(), tmp_path / "peft")
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
    ak.save_adapter(ours, tmp_path / "ours")
    again = PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours")
    assert type(again).__name__ == "PeftModelForSequenceClassification"
    torch.testing.assert_close(_logits(again), _logits(ours), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "extra",
    [
        dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1], layers_pattern="layers"),
        dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[0]),
        dict(target_modules="all-linear", exclude_modules=["o_proj", "up_proj"]),
        dict(target_modules=r".*\.mlp\.(gate|down)_proj"),
    ],
)
def test_peft_target_specs_load_on_the_same_modules(tmp_path, extra):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    theirs = get_peft_model(tiny_llama(), LoraConfig(r=4, init_lora_weights=False, **extra))
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(tiny_llama(), tmp_path)
    peft_names = {n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if isinstance(m, LoraLayer)}
    assert {n for n, _ in adapter_layers(ours)} == peft_names
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
