"""QuantLinear: a frozen linear layer whose weight is stored in 4 or 8 bits.

y = x @ dequant(W)^T + b, computed by ``adapterkit_kernels.ops.qmatmul`` (Triton on CUDA: the
weight is dequantized tile by tile in registers, never held dense; the PyTorch reference
elsewhere). Layout: ``adapterkit_kernels.formats`` (4-bit NF4/FP4 as QLoRA, Dettmers et al. 2023,
byte-compatible with bitsandbytes; 8-bit blockwise int8).

The packed codes and scales are buffers; ``state_dict`` names them as bitsandbytes' ``Linear4bit``
does (``bnb_format``: ``weight``, ``weight.absmax``, ...) and ``load_state_dict`` reads that form or
the buffers' own names. ``.to(device)`` moves them, and ``.to(dtype)`` / ``.half()`` change only the
compute dtype (and the bias), with torch's own rules and no override of ``Module`` internals:

- torch casts only floating-point tensors, so the fp32 scales are kept as their bit patterns in
  int32 buffers (``raw``); ``quant_weight()`` views them back as fp32, without a copy;
- the compute dtype is the dtype of a 0-element non-persistent buffer, ``compute``, which those
  casts convert like any other floating buffer.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from adapterkit_kernels import formats, ops
from adapterkit_kernels.formats import QuantWeight

from . import bnb_format
from .bnb_format import raw, real

STORED = ("codes", "absmax", "nested_absmax", "nested_offset", "nested_levels")


class QuantLinear(nn.Module):
    """A quantized ``nn.Linear``: ``in_features``, ``out_features``, ``bias``, ``dequantize()``."""

    is_quantized_base = True  # adapterkit.bases: LoRA, DoRA and merge treat it as a linear base

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 4,
        quant_type: str = "nf4",
        block: int = formats.DEFAULT_BLOCK,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        if bits == 8:
            quant_type, double_quant = formats.QUANT_TYPE_8BIT, False
        formats.check_format(quant_type, block, double_quant)
        self.in_features, self.out_features = in_features, out_features
        self.quant_type, self.block, self.double_quant = quant_type, block, double_quant
        self.register_buffer("compute", torch.empty(0, dtype=compute_dtype, device=device), persistent=False)
        shapes = formats.storage_shapes((out_features, in_features), quant_type, block, double_quant)
        for name, (shape, dtype) in shapes.items():
            self.register_buffer(name, raw(torch.zeros(shape, dtype=dtype, device=device)))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device)) if bias else None
        bnb_format.hook(self)  # state_dict in bitsandbytes' format

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in: set here, or by ``.to(dtype)`` / ``.half()`` / ``.bfloat16()``."""
        return self.compute.dtype

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute = torch.empty(0, dtype=dtype, device=self.codes.device)

    def stored(self, name: str) -> Tensor:
        """One of ``STORED`` in its real dtype (the fp32 scales viewed back from their int32 bits).

        Plain attribute access: ``get_buffer`` resolves a dotted path first, ~3 us a call, four calls
        per forward (measured in decoding, benchmarks/quant.md)."""
        return real(getattr(self, name))

    @property
    def bits(self) -> int:
        return 8 if self.quant_type == formats.QUANT_TYPE_8BIT else 4

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_weight(
        cls, qw: QuantWeight, bias: Optional[Tensor] = None, compute_dtype: torch.dtype = torch.float32
    ) -> "QuantLinear":
        """A layer holding an already quantized weight (no re-quantizing)."""
        out_features, in_features = qw.shape
        layer = cls(
            in_features,
            out_features,
            bias is not None,
            qw.bits,
            qw.quant_type,
            qw.block,
            qw.double_quant,
            compute_dtype,
            device="meta",
        )
        for name in STORED:
            tensor = getattr(qw, name)
            if tensor is not None:
                setattr(layer, name, raw(tensor.detach().reshape(getattr(layer, name).shape)))  # a registered buffer
        layer.compute_dtype = compute_dtype  # on the codes' device (built on "meta")
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(compute_dtype).clone(), requires_grad=bias.requires_grad)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        quant_type: str = "nf4",
        block: int = formats.DEFAULT_BLOCK,
        double_quant: bool = True,
        compute_dtype: Optional[torch.dtype] = None,
    ) -> "QuantLinear":
        """Quantize an ``nn.Linear``'s weight (out, in); compute dtype defaults to the weight's."""
        qw = ops.quantize(linear.weight, bits, quant_type, block, double_quant and bits == 4)
        return cls.from_weight(qw, linear.bias, compute_dtype or linear.weight.dtype)

    @classmethod
    def from_conv1d(
        cls,
        conv,
        bits: int = 4,
        quant_type: str = "nf4",
        block: int = formats.DEFAULT_BLOCK,
        double_quant: bool = True,
        compute_dtype: Optional[torch.dtype] = None,
    ) -> "QuantLinear":
        """Quantize a transformers ``Conv1D`` (GPT-2: y = x @ W + b, W stored (in, out))."""
        weight = conv.weight.detach().t().contiguous()  # (out, in)
        qw = ops.quantize(weight, bits, quant_type, block, double_quant and bits == 4)
        return cls.from_weight(qw, conv.bias, compute_dtype or conv.weight.dtype)

    # -- reading ------------------------------------------------------------------------------
    def quant_weight(self) -> QuantWeight:
        nested = {name: self.stored(name) for name in STORED[2:]} if self.double_quant else {}
        shape = (self.out_features, self.in_features)
        return QuantWeight(self.codes, self.stored("absmax"), shape, self.quant_type, self.block, **nested)

    def dequantize(self) -> Tensor:
        """The dense (out, in) weight in the compute dtype."""
        return ops.dequantize(self.quant_weight(), self.compute_dtype)

    def forward(self, x: Tensor, lora: Optional[tuple[Tensor, Tensor, float]] = None) -> Tensor:
        """x (..., in) -> (..., out): x @ W^T + b, computed in the compute dtype, returned in x's.

        ``lora`` = (A (r, in), B (out, r), scale): also add scale * (x @ A^T) @ B^T in the same pass
        over x (the fused kernel on CUDA); gradients flow to x, A and B.
        """
        if lora is None:
            y = ops.qmatmul(x.to(self.compute_dtype), self.quant_weight(), self.bias)
        else:
            a, b, scale = lora
            y = ops.qlora_matmul(x.to(self.compute_dtype), self.quant_weight(), a, b, scale, self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        kind = f"{self.quant_type}, block={self.block}" + (", double_quant" if self.double_quant else "")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {kind}, compute_dtype={self.compute_dtype}"
        )
