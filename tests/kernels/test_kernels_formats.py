"""The 4-bit layout against bitsandbytes: same bytes, same dequantized values; int8 round trip."""

import pytest
import torch

from adapterkit_kernels import formats, reference

F = pytest.importorskip("bitsandbytes.functional")
SHAPES = [(64, 256), (96, 512), (33, 256)]  # rows of whole blocks, as every real model has


def _bnb_default_dequantize(packed, state, dtype):
    """bitsandbytes' own pure-PyTorch dequantize (its CPU C kernel is wrong when blocks span rows)."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    return _dequantize_4bit_compute(
        packed.view(-1), state.absmax, F.get_4bit_type(state.quant_type, "cpu"), state.blocksize, state.shape, dtype
    )


def test_code_tables_are_bitsandbytes():
    for quant_type in formats.QUANT_TYPES_4BIT:
        assert torch.equal(formats.code_table(quant_type), F.get_4bit_type(quant_type, device="cpu"))
    assert torch.equal(formats.dynamic_map(), F.create_dynamic_map())


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [32, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_4bit_bytes_and_values_match_bitsandbytes(quant_type, block, dtype):
    for shape in SHAPES:
        w = torch.randn(shape, dtype=dtype)
        packed, state = F.quantize_4bit(w, blocksize=block, quant_type=quant_type, compress_statistics=False)
        qw = reference.quantize_4bit(w, quant_type, block, double_quant=False)
        assert torch.equal(qw.codes, packed.view(-1))
        assert torch.equal(qw.absmax, state.absmax)
        assert torch.equal(reference.dequantize(qw, dtype), F.dequantize_4bit(packed, state))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_odd_shapes_match_bitsandbytes_reference_path(quant_type):
    for shape in [(17, 33), (5, 96), (64, 96), (64, 128)]:  # blocks span rows; an odd element count
        w = torch.randn(shape)
        packed, state = F.quantize_4bit(w, blocksize=256, quant_type=quant_type)
        qw = reference.quantize_4bit(w, quant_type, 256, double_quant=False)
        assert torch.equal(qw.codes, packed.view(-1))
        assert torch.equal(reference.dequantize(qw), _bnb_default_dequantize(packed, state, torch.float32))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [64, 128])
def test_double_quant_matches_bitsandbytes(quant_type, block):
    """Codes, nested absmax, offset and level table are identical. The 8-bit absmax codes are the
    nearest level; bitsandbytes' CPU search (a bucketed lookup with float error of about 1e-5)
    picks the other neighbour for a few values within a hair of the midpoint: allowed only there,
    and only for a small share (about 0.2% of the blocks)."""
    w = torch.randn(1024, 1024)
    packed, state = F.quantize_4bit(w, blocksize=block, quant_type=quant_type, compress_statistics=True)
    qw = reference.quantize_4bit(w, quant_type, block, double_quant=True)
    assert torch.equal(qw.codes, packed.view(-1))
    assert torch.equal(qw.nested_absmax, state.state2.absmax)
    assert torch.equal(qw.nested_offset, state.offset)
    assert torch.equal(qw.nested_levels, state.state2.code)
    differ = (qw.absmax != state.absmax).nonzero().view(-1)
    assert differ.numel() <= 0.005 * qw.absmax.numel()
    assert (qw.absmax[differ].long() - state.absmax[differ].long()).abs().max() <= 1 if differ.numel() else True
    # each differing value lies within 2e-5 (of its nested scale) of the midpoint of its two levels
    _, full_absmax = F.quantize_4bit(w, blocksize=block, quant_type=quant_type, compress_statistics=False)
    raw = full_absmax.absmax - state.offset
    scaled = raw / state.state2.absmax.repeat_interleave(256)[: raw.numel()]
    levels = state.state2.code.clone()
    levels[0] = -1.0  # the level bitsandbytes searches with
    lo, hi = (
        levels[torch.minimum(qw.absmax, state.absmax)[differ].long()],
        levels[torch.maximum(qw.absmax, state.absmax)[differ].long()],
    )
    assert ((scaled[differ] - (lo + hi) / 2).abs() <= 2e-5).all()
    # and with bitsandbytes' codes, the dequantized weight is bitsandbytes' own, bit for bit
    same = formats.QuantWeight(
        qw.codes, state.absmax, qw.shape, quant_type, block, qw.nested_absmax, qw.nested_offset, qw.nested_levels
    )
    assert torch.equal(reference.dequantize(same), F.dequantize_4bit(packed, state))


def test_int8_round_trip_error_is_half_a_step():
    w = torch.randn(48, 160)
    qw = reference.quantize_8bit(w, block=64)
    step = reference.block_absmax(qw).repeat_interleave(64)[: w.numel()].view(w.shape) / 127
    err = (reference.dequantize(qw) - w).abs()
    assert (err <= step / 2 + 1e-6).all()
    assert qw.codes.dtype == torch.int8 and qw.codes.abs().max() == 127


def test_bad_formats_are_refused():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="block size"):
        reference.quantize_4bit(w, "nf4", block=48)
    with pytest.raises(ValueError, match="quant_type"):
        reference.quantize_4bit(w, "nf3")
    with pytest.raises(ValueError, match="double quantization"):
        formats.check_format("int8", 64, double_quant=True)


def test_pack_layout_even_element_in_high_nibble():
    q = torch.tensor([1, 2, 3, 4, 5])
    packed = formats.pack_nibbles(q)
    assert packed.tolist() == [0x12, 0x34, 0x50]
    assert formats.unpack_nibbles(packed, 5).tolist() == q.tolist()
