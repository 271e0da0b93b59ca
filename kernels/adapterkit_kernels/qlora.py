"""The LoRA-fused quantized linear: y = x @ W^T + scale * (x @ A^T) @ B^T with one read of x.

x (M, K), W (N, K) quantized and frozen, A (r, K), B (N, r). Forward: ``_qmatmul_kernel`` with
its LoRA branch on (qmatmul.py). Backward (Hu et al. 2021, LoRA; QLoRA keeps W frozen):
    dh = scale * dy @ B;  dx = dy @ W + dh @ A (fused kernel for dy @ W);  dA = dh^T x;  dB = scale dy^T (x A^T)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .formats import QuantWeight
from .qmatmul import qmatmul_triton
from .qmatmul_grad import qmatmul_input_grad_triton
from .reference import lora_grads


def qlora_matmul_triton(x: Tensor, qw: QuantWeight, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """x (M, K) -> (M, N), in x's dtype."""
    return qmatmul_triton(x, qw, a, b, scale)


class QLoRATriton(torch.autograd.Function):
    """Gradients for x, A and B; W frozen. Keeps x, A, B (no dense W, no h)."""

    @staticmethod
    def forward(ctx, x: Tensor, qw: QuantWeight, a: Tensor, b: Tensor, scale: float):
        ctx.qw, ctx.scale = qw, scale
        ctx.save_for_backward(x, a, b)
        return qlora_matmul_triton(x, qw, a, b, scale)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, a, b = ctx.saved_tensors
        dy = dy.contiguous()
        needs = ctx.needs_input_grad
        dx, da, db = lora_grads(dy, x, a, b, ctx.scale, (needs[0], needs[2], needs[3]))
        if needs[0]:
            dx = qmatmul_input_grad_triton(dy, ctx.qw) + dx
        return dx, None, da, db, None
