"""QuantLinear and ak.quantize: forward, state, dtype moves, bitsandbytes and transformers agreement."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adapterkit as ak
from adapterkit import bases
from adapterkit.quant import QuantLinear, from_bnb_linear4bit
from adapterkit.quant.linear import STORED
from tests.models import tiny_gpt2, tiny_llama, tokens

# hidden sizes that are multiples of the block: bitsandbytes' CPU dequantize is wrong when blocks span rows
LLAMA = dict(hidden_size=64, intermediate_size=128)


def _layer(bits=4, **kw):
    torch.manual_seed(0)
    return QuantLinear.from_linear(nn.Linear(128, 48), bits=bits, **kw)


@pytest.mark.parametrize("bits,quant_type,double_quant", [(4, "nf4", True), (4, "fp4", False), (8, "nf4", False)])
def test_forward_is_linear_of_dequantized_weight(bits, quant_type, double_quant):
    layer = _layer(bits, quant_type=quant_type, double_quant=double_quant)
    x = torch.randn(2, 5, 128)
    assert torch.allclose(layer(x), F.linear(x, layer.dequantize(), layer.bias), atol=1e-6)
    assert bases.base_kind(layer) == "quant" and bases.features(layer) == (128, 48)


def test_lora_in_the_forward_is_base_plus_branch_with_gradients():
    layer = _layer()
    x = torch.randn(2, 3, 128)
    a = torch.randn(4, 128, requires_grad=True)
    b = torch.randn(48, 4, requires_grad=True)
    fused = layer(x, lora=(a, b, 0.5))
    plain = layer(x) + 0.5 * (x @ a.t()) @ b.t()
    assert torch.allclose(fused, plain, atol=1e-5)
    grads = torch.autograd.grad(fused.sum(), (a, b))
    want = torch.autograd.grad(plain.sum(), (a, b))
    for got, ref in zip(grads, want):
        assert torch.allclose(got, ref, atol=1e-4)


def test_quantization_error_is_small():
    torch.manual_seed(0)
    dense = nn.Linear(256, 64)
    x = torch.randn(16, 256)
    for bits, bound in ((4, 0.15), (8, 0.01)):
        layer = QuantLinear.from_linear(dense, bits=bits)
        rel = ((layer(x) - dense(x)).norm() / dense(x).norm()).item()
        assert rel < bound, (bits, rel)


def test_state_dict_round_trip_and_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    layer = _layer()
    save_file(layer.state_dict(), tmp_path / "q.safetensors")
    fresh = QuantLinear(128, 48, bias=True, bits=4, quant_type="nf4", double_quant=True)
    fresh.load_state_dict(load_file(tmp_path / "q.safetensors"))
    x = torch.randn(3, 128)
    assert torch.equal(fresh(x), layer(x))
    assert set(layer.state_dict()) == {
        "weight",
        "bias",
        "weight.absmax",
        "weight.quant_map",
        "weight.nested_absmax",
        "weight.nested_quant_map",
        "weight.quant_state.bitsandbytes__nf4",
    }
    stored = [n for n in STORED if n in dict(layer.named_buffers())]
    own = {n: layer.stored(n) for n in stored} | {"bias": layer.bias}  # the buffers' own names load too
    other = QuantLinear(128, 48, bias=True, bits=4, quant_type="nf4", double_quant=True)
    other.load_state_dict(own)
    assert torch.equal(other(x), layer(x))


def test_dtype_moves_keep_codes_and_scales():
    layer = _layer()
    before = {n: layer.stored(n).clone() for n in STORED}
    dense = layer.dequantize()
    layer.to(torch.float16)
    assert layer.compute_dtype == torch.float16 and layer.bias.dtype == torch.float16
    for name, tensor in before.items():  # codes and scales untouched: same dtype, same values
        assert layer.stored(name).dtype == tensor.dtype and torch.equal(layer.stored(name), tensor), name
    assert layer.dequantize().dtype == torch.float16
    torch.testing.assert_close(layer.dequantize(), dense.half())
    assert layer(torch.randn(2, 128, dtype=torch.float16)).dtype == torch.float16
    layer.bfloat16()
    assert layer.compute_dtype == torch.bfloat16 and layer.stored("nested_absmax").dtype == torch.float32
    layer.float()
    assert layer.compute_dtype == torch.float32 and torch.equal(layer.dequantize(), dense)
    assert "compute" not in layer.state_dict()  # the compute dtype is not a saved tensor


def test_quantize_model_keeps_head_and_skips():
    model = ak.quantize(tiny_llama(**LLAMA), bits=4, skip=["down_proj"])
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert kinds["lm_head"] is nn.Linear
    assert kinds["model.layers.0.mlp.down_proj"] is nn.Linear
    assert kinds["model.layers.0.self_attn.q_proj"] is QuantLinear
    assert isinstance(model.model.embed_tokens, nn.Embedding)


def test_gpt2_conv1d_layers_are_quantized_transposed():
    from transformers.pytorch_utils import Conv1D

    dense = tiny_gpt2(n_embd=64)
    quant = ak.quantize(copy.deepcopy(dense), bits=8)  # 8-bit: close enough to compare outputs
    attn = quant.transformer.h[0].attn.c_attn
    assert isinstance(attn, QuantLinear) and (attn.in_features, attn.out_features) == (64, 192)
    assert not any(isinstance(m, Conv1D) for m in quant.modules())
    source = dense.transformer.h[0].attn.c_attn
    assert torch.allclose(attn.dequantize(), source.weight.t(), atol=source.weight.abs().max().item() / 127)
    ids = tokens(2, 9)
    with torch.no_grad():
        assert torch.allclose(quant(ids).logits, dense(ids).logits, atol=2e-2)


def test_quantize_errors_say_what_to_do():
    with pytest.raises(ak.ConfigError, match="bits=3"):
        ak.quantize(tiny_llama(), bits=3)
    with pytest.raises(ak.ConfigError, match="'nf4'"):
        ak.quantize(tiny_llama(), quant_type="int4")
    with pytest.raises(ak.ConfigError, match="block=48"):
        ak.quantize(tiny_llama(), block=48)


def test_memory_about_half_a_byte_per_parameter():
    dense = nn.Linear(2048, 2048, bias=False)
    double = QuantLinear.from_linear(dense, bits=4, double_quant=True)
    single = QuantLinear.from_linear(dense, bits=4, double_quant=False)

    def per_param(layer):
        return sum(b.numel() * b.element_size() for b in layer.buffers()) / dense.weight.numel()

    assert 0.5 < per_param(double) < 0.52  # 0.5 + 1/64 + 4/(64*256) (+ a 1 KiB level table)
    assert per_param(single) == pytest.approx(0.5 + 4 / 64)


# -- bitsandbytes and transformers --------------------------------------------------------------
def _bnb_model(tmp_path, double_quant, quant_type="nf4"):
    """The model as transformers loads it with BitsAndBytesConfig. On CPUs with AVX512-BF16,
    bitsandbytes' eval forward repacks each layer for a bf16 kernel (scales rounded to bf16, about
    1e-3 off fp32); that kernel is turned off here so both sides compute in fp32."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(**LLAMA).save_pretrained(tmp_path)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, device_map="cpu").eval()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_logits_match_transformers_bitsandbytes(tmp_path, quant_type):
    pytest.importorskip("bitsandbytes")
    loaded = _bnb_model(tmp_path, double_quant=False, quant_type=quant_type)
    ours = ak.quantize(tiny_llama(**LLAMA), bits=4, quant_type=quant_type, double_quant=False)
    ids = tokens(2, 9)
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, loaded(ids).logits, atol=1e-4)


def test_double_quant_logits_match_transformers_bitsandbytes(tmp_path):
    pytest.importorskip("bitsandbytes")
    loaded = _bnb_model(tmp_path, double_quant=True)
    ours = ak.quantize(tiny_llama(**LLAMA), bits=4, double_quant=True)
    ids = tokens(2, 9)
    with torch.no_grad():  # (a rare near-tie absmax code could differ: see test_kernels_formats)
        assert torch.allclose(ours(ids).logits, loaded(ids).logits, atol=1e-4)


def test_bitsandbytes_model_converts_with_the_same_bytes(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    loaded = _bnb_model(tmp_path, double_quant=True)
    source = loaded.model.layers[0].self_attn.q_proj
    assert isinstance(source, bnb.nn.Linear4bit)
    packed = source.weight.data.clone()
    ids = tokens(2, 9)
    with torch.no_grad():
        want = loaded(ids).logits
        converted = ak.quantize(copy.deepcopy(loaded))
        got = converted(ids).logits
    layer = converted.model.layers[0].self_attn.q_proj
    assert isinstance(layer, QuantLinear) and layer.double_quant
    assert torch.equal(layer.codes, packed.view(-1))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in converted.modules())
    assert torch.allclose(got, want, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(
            from_bnb_linear4bit(source).dequantize(),
            bnb.functional.dequantize_4bit(source.weight.data, source.weight.quant_state),
        )


def test_conversion_reads_bitsandbytes_cpu_inference_packing(tmp_path):
    """A layer bitsandbytes already repacked for its AVX512-BF16 kernel converts to the same codes."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    source = _bnb_model(tmp_path, double_quant=True).model.layers[0].mlp.up_proj
    packed = copy.deepcopy(source)
    packed.weight.data, packed.weight.quant_state = _convert_weight_packed_for_cpu(
        packed.weight.data, packed.weight.quant_state
    )
    ours = from_bnb_linear4bit(packed)
    assert torch.equal(ours.codes, source.weight.data.view(-1))
    want = from_bnb_linear4bit(source).dequantize()
    assert torch.allclose(ours.dequantize(), want, rtol=1e-2, atol=1e-3)  # scales were rounded to bf16
