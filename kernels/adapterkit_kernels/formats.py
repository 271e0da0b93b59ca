"""The quantized weight layouts: the single definition every other file uses.

4-bit (QLoRA, Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"):
    a weight W (out, in) is flattened row-major, cut into blocks of ``block`` elements (64 by
    default, 32-256 allowed) and each block stored as 4-bit codes c with its absmax a:
        W[i] = code[c[i]] * a[i // block]
    ``code`` is NF4 (normal-quantile levels) or FP4 (1 sign, 2 exponent, 1 mantissa bit), both
    normalised to [-1, 1]. Two codes share a byte, the even element in the HIGH nibble. Byte for
    byte what ``bitsandbytes.functional.quantize_4bit`` writes.
    Double quantization: the absmax vector itself is stored as 8-bit codes of bitsandbytes'
    signed dynamic map, blockwise (block 256), after subtracting its mean ``offset``:
        a[j] = dynamic[q[j]] * nested_absmax[j // 256] + offset
    The 256 levels travel with each weight (``nested_levels``), so that a layer converted from
    bitsandbytes dequantizes with exactly the map it was saved with.
8-bit: blockwise symmetric int8, W[i] = q[i] * a[i // block] / 127, q in [-127, 127].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

QUANT_TYPES_4BIT = ("nf4", "fp4")
QUANT_TYPE_8BIT = "int8"
BLOCKS = (32, 64, 128, 256)
DEFAULT_BLOCK = 64
NESTED_BLOCK = 256
INT8_MAX = 127.0

# NF4 levels: quantiles of N(0, 1) with an exact zero (QLoRA appendix E), as bitsandbytes lists them.
_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]
# FP4 (e2m1, exponent bias 2) in bit-pattern order, before normalising by the largest magnitude.
_FP4 = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]

_CACHE: dict = {}


def code_table(quant_type: str, device=None) -> Tensor:
    """The 16 fp32 levels of a 4-bit type, indexed by code; normalised to [-1, 1]."""
    key = (quant_type, str(device))
    if key not in _CACHE:
        if quant_type not in QUANT_TYPES_4BIT:
            raise ValueError(f"quant_type {quant_type!r} is not a 4-bit type; expected one of {QUANT_TYPES_4BIT}")
        data = torch.tensor(_NF4 if quant_type == "nf4" else _FP4, dtype=torch.float32)
        data.div_(data.abs().max())
        _CACHE[key] = data.to(device)
    return _CACHE[key]


def byte_pairs(quant_type: str, device=None) -> Tensor:
    """(256,) int64: byte i's high- and low-nibble fp32 levels, side by side in one 8-byte word.

    The reference dequantize gathers one word per code byte: measured 20% faster than gathering
    rows of a (256, 2) float table.
    """
    key = ("pairs", quant_type, str(device))
    if key not in _CACHE:
        code, byte = code_table(quant_type, device), torch.arange(256, device=device)
        pairs = torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1).contiguous()  # (256, 2) fp32
        _CACHE[key] = pairs.view(torch.int64).view(-1)
    return _CACHE[key]


def dynamic_map(device=None) -> Tensor:
    """bitsandbytes' signed 8-bit dynamic map (Dettmers 2015): 256 sorted fp32 levels in [-0.993, 1]."""
    key = ("dynamic", str(device))
    if key not in _CACHE:
        data = []
        for i in range(7):  # 7 exponent bits at most; fewer fraction bits as the exponent shrinks
            bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
            means = (bounds[:-1] + bounds[1:]) / 2.0
            data += ((10 ** (-6 + i)) * means).tolist()
            data += (-(10 ** (-6 + i)) * means).tolist()
        data += [0, 1.0]
        data += [0] * (256 - len(data))
        data.sort()
        _CACHE[key] = torch.tensor(data, dtype=torch.float32).to(device)
    return _CACHE[key]


@dataclass(frozen=True)
class QuantWeight:
    """A quantized (out, in) weight: the tensors and the facts needed to read them.

    codes:  4-bit: uint8 (ceil(n / 2),) two codes a byte; 8-bit: int8 (n,)
    absmax: fp32 (blocks,), or uint8 (blocks,) codes of the dynamic map when double-quantized
    nested_absmax: fp32 (ceil(blocks / 256),), nested_offset: fp32 () and nested_levels: fp32 (256,)
        when double-quantized
    """

    codes: Tensor
    absmax: Tensor
    shape: tuple
    quant_type: str
    block: int = DEFAULT_BLOCK
    nested_absmax: Optional[Tensor] = None
    nested_offset: Optional[Tensor] = None
    nested_levels: Optional[Tensor] = None

    @property
    def bits(self) -> int:
        return 8 if self.quant_type == QUANT_TYPE_8BIT else 4

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.codes.device


def num_blocks(numel: int, block: int) -> int:
    return -(-numel // block)


def storage_shapes(shape, quant_type: str, block: int, double_quant: bool) -> dict:
    """Shapes and dtypes of a QuantWeight's tensors, so an empty one can be built and then loaded."""
    n = shape[0] * shape[1]
    blocks = num_blocks(n, block)
    if quant_type == QUANT_TYPE_8BIT:
        return {"codes": ((n,), torch.int8), "absmax": ((blocks,), torch.float32)}
    out = {"codes": ((-(-n // 2),), torch.uint8)}
    if double_quant:
        out["absmax"] = ((blocks,), torch.uint8)
        out["nested_absmax"] = ((num_blocks(blocks, NESTED_BLOCK),), torch.float32)
        out["nested_offset"] = ((), torch.float32)
        out["nested_levels"] = ((256,), torch.float32)
    else:
        out["absmax"] = ((blocks,), torch.float32)
    return out


def check_format(quant_type: str, block: int, double_quant: bool = False) -> None:
    """Raise ValueError for a layout adapterkit cannot store."""
    if quant_type not in QUANT_TYPES_4BIT + (QUANT_TYPE_8BIT,):
        raise ValueError(f"quant_type {quant_type!r} is unknown; expected 'nf4', 'fp4' or 'int8'")
    if block not in BLOCKS:
        raise ValueError(f"block size {block} is not supported; expected one of {BLOCKS}")
    if double_quant and quant_type == QUANT_TYPE_8BIT:
        raise ValueError("double quantization applies to 4-bit weights only; use double_quant=False for int8")


def pack_nibbles(q: Tensor) -> Tensor:
    """(n,) integer codes in [0, 16) -> (ceil(n / 2),) uint8, the even element in the high nibble."""
    q = q.to(torch.uint8)
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])
    return (q[0::2] << 4) | q[1::2]


def unpack_nibbles(packed: Tensor, n: int) -> Tensor:
    """(ceil(n / 2),) uint8 -> (n,) int64 codes."""
    out = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return out[:n].long()
