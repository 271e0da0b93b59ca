"""Every error adapter files can raise: what was given, what was expected, what to do."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterkit as ak
from adapterkit.errors import AdapterFileError, AdapterNameError, ConfigError
from tests.models import tiny_gpt2, tiny_llama, tokens


@pytest.fixture
def saved(tmp_path):
    """A LoRA adapter of tiny Llama saved by adapterkit; returns its folder."""
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random"))
    ak.save_adapter(model, tmp_path / "adapter")
    return tmp_path / "adapter"


def _edit_config(folder, **changes):
    file = folder / "adapter_config.json"
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=tokens()).logits


def test_missing_folder(tmp_path):
    with pytest.raises(AdapterFileError, match="does not exist"):
        ak.load_adapter(tiny_llama(), tmp_path / "nope")


def test_path_is_a_file(saved):
    with pytest.raises(AdapterFileError, match="is a file"):
        ak.load_adapter(tiny_llama(), saved / "adapter_config.json")


def test_missing_config_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="no adapter_config.json"):
        ak.load_adapter(tiny_llama(), tmp_path / "empty")


def test_missing_config_names_sub_folders(tmp_path):
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2), name="task_a")
    ak.save_adapter(model, tmp_path)
    with pytest.raises(AdapterFileError, match="task_a"):
        ak.load_adapter(tiny_llama(), tmp_path, name="task_b")


def test_missing_weights_file(saved):
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors.*missing"):
        ak.load_adapter(tiny_llama(), saved)


def test_config_not_json(saved):
    (saved / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        ak.load_adapter(tiny_llama(), saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_the_file(saved, damage):
    file = saved / "adapter_model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors.*(truncated or corrupt)") as err:
        ak.load_adapter(tiny_llama(), saved)
    assert str(file) in str(err.value)


def test_adapter_for_another_base_model_names_module_and_shapes(saved):
    wider = tiny_llama(hidden_size=48)
    before = _logits(wider)
    with pytest.raises(AdapterFileError) as err:
        ak.load_adapter(wider, saved)
    tensors = load_file(saved / "adapter_model.safetensors")
    module = next(n for n, _ in wider.named_modules() if f"base_model.model.{n}.lora_A.weight" in tensors)
    file_shape = tuple(tensors[f"base_model.model.{module}.lora_A.weight"].shape)  # first in model order
    model_shape = (file_shape[0], wider.get_submodule(module).in_features)
    message = str(err.value)
    assert module in message and str(file_shape) in message and str(model_shape) in message
    assert ak.adapter_names(wider) == []  # the model is left as it was
    torch.testing.assert_close(_logits(wider), before, atol=0, rtol=0)


def test_adapter_for_another_architecture(saved):
    with pytest.raises(AdapterFileError, match="does not fit this GPT2LMHeadModel"):
        ak.load_adapter(tiny_gpt2(), saved)


def test_missing_tensor_keys(saved):
    file = saved / "adapter_model.safetensors"
    tensors = load_file(file)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, file)
    with pytest.raises(AdapterFileError, match="1 missing") as err:
        ak.load_adapter(tiny_llama(), saved)
    assert dropped in str(err.value)


def test_unexpected_tensor_keys(saved):
    file = saved / "adapter_model.safetensors"
    tensors = load_file(file)
    tensors["base_model.model.model.norm.bias"] = torch.zeros(3)
    save_file(tensors, file)
    model = tiny_llama()
    with pytest.raises(AdapterFileError, match="'model.norm'.*modules_to_save.*1 unexpected.*norm.bias"):
        ak.load_adapter(model, saved)
    assert ak.adapter_names(model) == []


def test_a_base_embedding_of_another_shape_is_refused(saved):
    file = saved / "adapter_model.safetensors"
    tensors = load_file(file)
    tensors["base_model.model.model.embed_tokens.weight"] = torch.zeros(3)
    save_file(tensors, file)
    model = tiny_llama()
    with pytest.raises(AdapterFileError, match="base weight .*embed_tokens.* another model"):
        ak.load_adapter(model, saved)
    assert ak.adapter_names(model) == []


def test_unknown_peft_type_lists_supported(saved):
    _edit_config(saved, peft_type="FOURIERFT")
    with pytest.raises(AdapterFileError, match=r"'FOURIERFT' is not supported; adapterkit reads: .*LORA"):
        ak.load_adapter(tiny_llama(), saved)


def test_config_without_peft_type(saved):
    file = saved / "adapter_config.json"
    data = json.loads(file.read_text())
    del data["peft_type"]
    file.write_text(json.dumps(data))
    with pytest.raises(AdapterFileError, match="no 'peft_type'"):
        ak.load_adapter(tiny_llama(), saved)


@pytest.mark.parametrize(
    "key, value, field",
    [
        ("r", 0, "rank"),
        ("lora_alpha", -1, "alpha"),
        ("lora_dropout", 1.5, "dropout"),
        ("use_dora", "yes", "dora"),
    ],
)
def test_invalid_config_names_field_and_reason(saved, key, value, field):
    _edit_config(saved, **{key: value})
    with pytest.raises(ConfigError) as err:
        ak.load_adapter(tiny_llama(), saved)
    message = str(err.value)
    assert f"LoRAConfig.{field}" in message and f"file key {key!r}" in message
    assert repr(value) in message and "adapter_config.json" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("use_qalora", True),
        ("use_bdlora", {"x": 1}),
        ("init_lora_weights", "corda"),
    ],
)
def test_unsupported_peft_option_is_refused(saved, key, value):
    _edit_config(saved, **{key: value})
    with pytest.raises(ConfigError, match=key):
        ak.load_adapter(tiny_llama(), saved)


def test_pickle_file_refused_unless_asked(tmp_path):
    from peft import LoraConfig, get_peft_model

    theirs = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    theirs.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    with pytest.raises(AdapterFileError, match="pickle.*allow_pickle=True"):
        ak.load_adapter(tiny_llama(), tmp_path)
    ours = ak.load_adapter(tiny_llama(), tmp_path, allow_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(_logits(ours), theirs(input_ids=tokens()).logits, atol=1e-5, rtol=0)


def test_existing_adapter_not_overwritten(saved):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    other = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, init="random"))
    with pytest.raises(AdapterFileError, match="overwrite=True"):
        ak.save_adapter(other, saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    ak.save_adapter(other, saved, overwrite=True)
    assert json.loads((saved / "adapter_config.json").read_text())["r"] == 2


def test_save_errors(tmp_path):
    with pytest.raises(AdapterNameError, match="no adapter to save"):
        ak.save_adapter(tiny_llama(), tmp_path / "a")
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2))
    with pytest.raises(AdapterNameError, match="did you mean 'default'"):
        ak.save_adapter(model, tmp_path / "a", name="defualt")
    with pytest.raises(AdapterFileError, match="dtype 'fp8'"):
        ak.save_adapter(model, tmp_path / "a", dtype="fp8")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterFileError, match="is a file"):
        ak.save_adapter(model, tmp_path / "file")


def test_load_under_a_name_in_use(saved):
    model = ak.load_adapter(tiny_llama(), saved)
    with pytest.raises(AdapterNameError, match="already attached"):
        ak.load_adapter(model, saved)
    ak.load_adapter(model, saved, name="second")
    assert ak.adapter_names(model) == ["default", "second"]
