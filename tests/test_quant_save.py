"""Quantized models save and reload: ``save_pretrained`` writes bitsandbytes' 4-bit format.

The oracle is transformers + bitsandbytes: the folder transformers writes for a model it loaded with
``BitsAndBytesConfig(load_in_4bit=True)``, and ``bitsandbytes.functional.dequantize_4bit`` of the
layers ``from_pretrained`` builds from our folder.
"""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.errors import AdapterFileError
from adapterkit.layer import AdapterLayer
from adapterkit.quant import QuantLinear
from tests.checks import assert_close_scaled
from tests.models import tiny_gpt2, tiny_llama, tokens

bnb = pytest.importorskip("bitsandbytes")

# hidden sizes that are multiples of the block: bitsandbytes' CPU dequantize is wrong when blocks span rows
LLAMA = dict(hidden_size=64, intermediate_size=128)
QSTATE = "weight.quant_state.bitsandbytes__"


def _exact(model):
    """bitsandbytes' CPU eval forward would repack for a bf16 kernel (scales rounded); keep fp32."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model.eval()


def _from_pretrained(folder, **kw):
    from transformers import AutoModelForCausalLM

    return _exact(AutoModelForCausalLM.from_pretrained(folder, **kw))


def _check_same_bytes(reloaded, ours):
    """Every Linear4bit dequantizes (bitsandbytes' own function) bit for bit to our layer's weight."""
    count = 0
    for name, module in reloaded.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            layer = ours.get_submodule(name)
            layer = layer.innermost() if isinstance(layer, AdapterLayer) else layer
            want = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            assert torch.equal(layer.dequantize(), want), name
            count += 1
    assert count == sum(isinstance(m, QuantLinear) and m.bits == 4 for m in ours.modules()) > 0


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _layout(tensors):
    return {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}


def _qlora(seed=1):
    model = ak.quantize(tiny_llama(**LLAMA), bits=4)
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets="all-linear"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)  # B is zero at init: make the adapter change the output
    return model


@pytest.mark.parametrize("quant_type,double_quant", [("nf4", True), ("fp4", False)])
def test_saved_folder_is_what_transformers_bitsandbytes_writes(tmp_path, quant_type, double_quant):
    from transformers import BitsAndBytesConfig

    tiny_llama(**LLAMA).save_pretrained(tmp_path / "dense")
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32,
    )
    theirs = _from_pretrained(tmp_path / "dense", quantization_config=config, device_map="cpu")
    theirs.save_pretrained(tmp_path / "bnb")
    ours = ak.quantize(tiny_llama(**LLAMA), bits=4, quant_type=quant_type, double_quant=double_quant)
    ours.save_pretrained(tmp_path / "ours")

    want, got = _tensors(tmp_path / "bnb" / "model.safetensors"), _tensors(tmp_path / "ours" / "model.safetensors")
    assert _layout(got) == _layout(want)
    # the same bytes give the same file: their model converted to QuantLinear, saved by us
    ak.quantize(copy.deepcopy(theirs)).save_pretrained(tmp_path / "converted")
    converted = _tensors(tmp_path / "converted" / "model.safetensors")
    assert converted.keys() == want.keys()
    for key, value in want.items():
        if QSTATE in key:  # the JSON of quant_type, blocksize, dtype, shape (and the nested scales' facts)
            assert json.loads(bytes(converted[key].tolist())) == json.loads(bytes(value.tolist())), key
        else:
            assert torch.equal(converted[key], value), key
    saved = [json.loads((tmp_path / d / "config.json").read_text())["quantization_config"] for d in ("bnb", "ours")]
    assert saved[1].pop("llm_int8_skip_modules") == ["lm_head"]  # the head, which both keep dense
    saved[0].pop("llm_int8_skip_modules")
    assert saved[1] == saved[0]

    # our folder -> plain transformers: a bitsandbytes 4-bit model with our bytes
    reloaded = _from_pretrained(tmp_path / "ours")
    _check_same_bytes(reloaded, ours)
    assert torch.equal(reloaded.lm_head.weight, ours.lm_head.weight)
    ids = tokens(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
    # their folder -> load_state_dict into an adapterkit-quantized model: the same layers
    fresh = ak.quantize(tiny_llama(**LLAMA), bits=4, quant_type=quant_type, double_quant=double_quant)
    for module in fresh.modules():
        if isinstance(module, QuantLinear):
            module.codes.zero_()
    fresh.load_state_dict(load_file(tmp_path / "bnb" / "model.safetensors"))
    _check_same_bytes(theirs, fresh)


@pytest.mark.parametrize("kind", ["gpt2-conv1d", "llama-bf16"])
def test_conv1d_and_bf16_models_reload_the_same_bytes(tmp_path, kind):
    if kind == "gpt2-conv1d":  # Conv1D stores (in, out); QuantLinear and Linear4bit both hold (out, in)
        model = ak.quantize(tiny_gpt2(n_embd=64), bits=4)
    else:
        model = ak.quantize(tiny_llama(**LLAMA).to(torch.bfloat16), bits=4)
    model.save_pretrained(tmp_path)
    reloaded = _from_pretrained(tmp_path)
    _check_same_bytes(reloaded, model)
    ids = tokens(2, 9)
    scale = 1e-5 if kind == "gpt2-conv1d" else 2**-6  # bf16: a few roundings of 2^-8 in another order
    with torch.no_grad():
        assert_close_scaled(reloaded(ids).logits.float(), model(ids).logits.float(), rtol=0, atol_scale=scale)


def test_load_state_dict_of_state_dict_restores_exactly(tmp_path):
    """What the Trainer's resume does, in memory and through save_pretrained's file."""
    source = _qlora(seed=1)
    for state in (source.state_dict(), None):
        torch.manual_seed(5)
        target = _qlora(seed=2)
        target.model.layers[0].self_attn.q_proj.base.codes.zero_()
        if state is None:
            source.save_pretrained(tmp_path)
            state = load_file(tmp_path / "model.safetensors")
        assert not target.load_state_dict(state).missing_keys
        for (name, a), (_, b) in zip(source.named_buffers(), target.named_buffers()):
            assert torch.equal(a, b), name
        ids = tokens(2, 9)
        with torch.no_grad():
            assert torch.equal(target(ids).logits, source(ids).logits)


def test_qlora_save_pretrained_reloads_its_4bit_base(tmp_path):
    model = _qlora()
    model.save_pretrained(tmp_path)
    reloaded = _from_pretrained(tmp_path)  # the adapter's tensors are reported unexpected and left out
    _check_same_bytes(reloaded, model)
    # and back into adapterkit: the same bytes, the adapter from the same folder, the same outputs
    again = ak.quantize(reloaded)
    assert isinstance(again.model.layers[1].mlp.down_proj, QuantLinear)
    ak.attach(again, ak.LoRAConfig(rank=4, alpha=8, targets="all-linear"))
    saved = load_file(tmp_path / "model.safetensors")
    result = again.load_state_dict({k: v for k, v in saved.items() if ".adapters." in k}, strict=False)
    assert not [k for k in result.missing_keys if ".adapters." in k] and not result.unexpected_keys
    ids = tokens(2, 9)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_skipped_and_8bit_layers_reload_dense(tmp_path):
    """4-bit layers, an 8-bit layer (no bitsandbytes counterpart: saved dense) and a skipped one."""
    model = ak.quantize(tiny_llama(**LLAMA), bits=4, skip=["down_proj", "up_proj"])
    ak.quantize(model, bits=8, skip=["up_proj"])  # down_proj: 8-bit
    model.save_pretrained(tmp_path)
    skipped = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["llm_int8_skip_modules"]
    assert set(skipped) == {"lm_head"} | {f"model.layers.{i}.mlp.{p}" for i in (0, 1) for p in ("up_proj", "down_proj")}
    reloaded = _from_pretrained(tmp_path)
    _check_same_bytes(reloaded, model)
    for i in (0, 1):
        mlp, ours = reloaded.model.layers[i].mlp, model.model.layers[i].mlp
        assert type(mlp.down_proj) is torch.nn.Linear and torch.equal(mlp.down_proj.weight, ours.down_proj.dequantize())
        assert type(mlp.up_proj) is torch.nn.Linear and torch.equal(mlp.up_proj.weight, ours.up_proj.weight)
    ids = tokens(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    fresh = ak.quantize(tiny_llama(**LLAMA), bits=4, skip=["down_proj", "up_proj"])
    ak.quantize(fresh, bits=8, skip=["up_proj"])
    fresh.model.layers[0].mlp.down_proj.codes.zero_()
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(fresh.model.layers[0].mlp.down_proj.codes, model.model.layers[0].mlp.down_proj.codes)


def test_8bit_only_model_saves_without_quantization_config(tmp_path):
    model = ak.quantize(tiny_llama(**LLAMA), bits=8)
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = _from_pretrained(tmp_path)
    layer = model.model.layers[1].self_attn.o_proj
    assert torch.equal(reloaded.model.layers[1].self_attn.o_proj.weight, layer.dequantize())


def test_merge_drops_the_quantization_record():
    model = _qlora()
    assert model.config.quantization_config["load_in_4bit"]
    ak.merge(model)
    assert getattr(model.config, "quantization_config", None) is None


def test_layout_mismatch_is_an_error_naming_it():
    state = ak.quantize(tiny_llama(**LLAMA), bits=4, double_quant=True).state_dict()
    other = ak.quantize(tiny_llama(**LLAMA), bits=4, double_quant=False)
    with pytest.raises(AdapterFileError, match="double quantization"):
        other.load_state_dict(state)
    with pytest.raises(AdapterFileError, match="quant_type 'nf4'"):
        ak.quantize(tiny_llama(**LLAMA), bits=4, quant_type="fp4").load_state_dict(state)


def test_whole_model_trainer_checkpoints_of_a_qlora_model_resume_exactly(tmp_path):
    """Without ak.checkpoint_callback() the Trainer saves the whole model (save_pretrained): the 4-bit
    base in bitsandbytes' format; resuming from it restores base and adapter exactly."""
    from tests.io.test_io_checkpoints import _stop_at, _train

    whole = _qlora()
    _train(whole, tmp_path / "whole", callback=False)
    _train(_qlora(), tmp_path / "cut", callback=False, extra=[_stop_at(2)])
    middle = tmp_path / "cut" / "checkpoint-2"
    assert json.loads((middle / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    resumed = _qlora(seed=3)
    resumed.model.layers[0].mlp.up_proj.base.codes.zero_()  # the base must come from the checkpoint too
    _train(resumed, tmp_path / "cut", callback=False, resume=str(middle))
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    _check_same_bytes(_from_pretrained(middle), whole)
