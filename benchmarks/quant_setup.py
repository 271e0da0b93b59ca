"""The contenders of bench_quant.py, built on the same weights: one quantized linear layer, M x (K -> N).

Each builder returns ``fn(x) -> y`` for an input x (M, K); the LoRA branch (rank r, scale 2) is
added where ``lora`` is set. Weights: NF4, block 64, double quantization, on every side.
    adapterkit       ops.qlora_matmul / ops.qmatmul (Triton on CUDA; on CPU what ``auto`` picks: the C++
                     kernel up to qmatmul_cpu.SMALL_M rows, the PyTorch reference above)
    adapterkit_reference  the same on the PyTorch reference alone (CPU only: the C++ kernel's baseline)
    adapterkit_cpu_kernel the same on the C++ kernel at every M (CPU only: where auto should switch)
    bnb_dequant      bitsandbytes dequantize_4bit, then torch.matmul (+ the LoRA branch in torch)
    bnb_matmul_4bit  bitsandbytes matmul_4bit (+ the LoRA branch in torch)
    peft_bnb         PEFT's LoRA layer over a bitsandbytes Linear4bit (the QLoRA stack)
    dense            torch.matmul on the unquantized weight, no LoRA (the floor at large M)
"""

from __future__ import annotations

import torch
from torch import nn

from adapterkit_kernels import ops

SCALE = 2.0


class Layer:
    """One (N, K) weight in every format, and LoRA factors, on one device and dtype."""

    def __init__(self, k: int, n: int, rank: int, device: str, dtype: torch.dtype, need_bnb: bool = True):
        gen = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(n, k, generator=gen) / k**0.5
        self.k, self.n, self.rank, self.device, self.dtype = k, n, rank, device, dtype
        self.weight = w.to(device, dtype)
        self.qw = ops.quantize(self.weight, 4, "nf4", 64, double_quant=True)
        self.a = nn.Parameter((torch.randn(rank, k, generator=gen) / k**0.5).to(device, dtype))
        self.b = nn.Parameter((torch.randn(n, rank, generator=gen) * 0.01).to(device, dtype))
        if need_bnb:
            import bitsandbytes.functional as F

            self.packed, self.state = F.quantize_4bit(
                self.weight, blocksize=64, quant_type="nf4", compress_statistics=True
            )

    def lora_branch(self, x):
        return SCALE * ((x @ self.a.t()) @ self.b.t())


def adapterkit(layer: Layer, lora: bool, backend: str):
    def fn(x):
        with ops.use_backend(backend):
            if lora:
                return ops.qlora_matmul(x, layer.qw, layer.a, layer.b, SCALE)
            return ops.qmatmul(x, layer.qw)

    return fn


def bnb_dequant(layer: Layer, lora: bool):
    import bitsandbytes.functional as F

    def fn(x):
        y = x @ F.dequantize_4bit(layer.packed, layer.state).to(x.dtype).t()
        return y + layer.lora_branch(x) if lora else y

    return fn


def bnb_matmul_4bit(layer: Layer, lora: bool):
    import bitsandbytes as bnb

    def fn(x):
        y = bnb.matmul_4bit(x, layer.packed, quant_state=layer.state)
        return y + layer.lora_branch(x) if lora else y

    return fn


class _Holder(nn.Module):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def forward(self, x):
        return self.proj(x)


def peft_bnb(layer: Layer, lora: bool, training: bool):
    """PEFT LoRA (r, alpha = 2r: scale 2) over bnb Linear4bit; without LoRA, Linear4bit alone."""
    import bitsandbytes as bnb

    proj = bnb.nn.Linear4bit(
        layer.k, layer.n, bias=False, compute_dtype=layer.dtype, quant_type="nf4", compress_statistics=True
    )
    proj.weight = bnb.nn.Params4bit(
        layer.weight.detach().cpu().float(),
        requires_grad=False,
        quant_type="nf4",
        compress_statistics=True,
        blocksize=64,
    )
    model = _Holder(proj).to(layer.device)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=layer.rank, lora_alpha=2 * layer.rank, target_modules=["proj"]))
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(layer.dtype)
    model.train(training)
    return model


def dense(layer: Layer):
    def fn(x):
        return x @ layer.weight.t()

    return fn


def builders(layer: Layer, lora: bool, training: bool, backend: str, with_bnb: bool) -> dict:
    out = {"adapterkit": adapterkit(layer, lora, backend)}
    if layer.device == "cpu":
        out["adapterkit_reference"] = adapterkit(layer, lora, "reference")
        out["adapterkit_cpu_kernel"] = adapterkit(layer, lora, "cpu")  # the C++ kernel at every M
    if with_bnb:
        out["bnb_dequant"] = bnb_dequant(layer, lora)
        out["bnb_matmul_4bit"] = bnb_matmul_4bit(layer, lora)
        out["peft_bnb"] = peft_bnb(layer, lora, training)
    if not lora:
        out["dense"] = dense(layer)
    return out
