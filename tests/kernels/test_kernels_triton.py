"""Every Triton op against the PyTorch reference: forward and backward, odd shapes, 4 and 8 bits.

On CPU they run under the Triton interpreter (TRITON_INTERPRET=1, set in conftest): fp32 and fp16
only (the interpreter's bf16 is wrong); small shapes, large blocks. Marked ``gpu``: the same at
realistic shapes in fp16/bf16 on CUDA.
"""

import pytest
import torch

from adapterkit_kernels import ops, reference

pytest.importorskip("triton")

# max |triton - reference| / max |reference|, per dtype (the reference runs in fp32)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
FORMATS = [("nf4", True), ("fp4", False), ("int8", False)]
SHAPES = [(5, 70, 96), (37, 33, 130)]  # (M, N, K): nothing a multiple of the blocks


def _weight(n, k, quant_type, double_quant, device="cpu"):
    w = torch.randn(n, k, device=device) / k**0.5
    bits = 8 if quant_type == "int8" else 4
    return ops.quantize(w, bits, quant_type, 64, double_quant)


def _close(got, want):
    err = (got.float() - want.float()).abs().max().item()
    assert err <= TOLERANCE[got.dtype] * want.float().abs().max().item() + 1e-6, err


@pytest.mark.parametrize("quant_type,double_quant", FORMATS)
def test_dequantize_bit_exact(quant_type, double_quant):
    qw = _weight(33, 130, quant_type, double_quant)
    with ops.use_backend("triton"):
        got = ops.dequantize(qw)
        half = ops.dequantize(qw, torch.float16)
    assert torch.equal(got, reference.dequantize(qw))
    assert torch.equal(half, reference.dequantize(qw, torch.float16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("quant_type,double_quant", FORMATS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_qmatmul_forward_backward(m, n, k, quant_type, double_quant, dtype):
    qw = _weight(n, k, quant_type, double_quant)
    x = torch.randn(m, k, dtype=dtype, requires_grad=True)
    dy = torch.randn(m, n, dtype=dtype)
    with ops.use_backend("triton"):
        y = ops.qmatmul(x, qw)
        (dx,) = torch.autograd.grad(y, x, dy)
    xr = x.detach().float().requires_grad_()
    yr = reference.QMatmulReference.apply(xr, qw)
    (dxr,) = torch.autograd.grad(yr, xr, dy.float())
    assert y.dtype == dtype and dx.dtype == dtype
    _close(y, yr)
    _close(dx, dxr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("quant_type,double_quant", FORMATS[:2])
def test_qlora_forward_backward(quant_type, double_quant, dtype):
    m, n, k, r = 37, 70, 130, 5  # rank below the 16 tl.dot needs: padded inside
    qw = _weight(n, k, quant_type, double_quant)
    x = torch.randn(m, k, dtype=dtype, requires_grad=True)
    a = (torch.randn(r, k) / k**0.5).to(dtype).requires_grad_()
    b = (torch.randn(n, r) / r**0.5).to(dtype).requires_grad_()
    dy = torch.randn(m, n, dtype=dtype)
    with ops.use_backend("triton"):
        y = ops.qlora_matmul(x, qw, a, b, scale=2.0)
        grads = torch.autograd.grad(y, (x, a, b), dy)
    ref_in = [t.detach().float().requires_grad_() for t in (x, a, b)]
    yr = reference.qlora(ref_in[0], qw, ref_in[1], ref_in[2], 2.0)
    ref_grads = torch.autograd.grad(yr, ref_in, dy.float())
    _close(y, yr)
    for got, want in zip(grads, ref_grads):
        _close(got, want)


def test_qlora_equals_base_plus_lora_branch():
    qw = _weight(70, 96, "nf4", True)
    x, a, b = torch.randn(9, 96), torch.randn(4, 96), torch.randn(70, 4)
    with ops.use_backend("triton"):
        fused = ops.qlora_matmul(x, qw, a, b, 0.5)
        base = ops.qmatmul(x, qw)
    _close(fused, base + 0.5 * (x @ a.t()) @ b.t())


@pytest.mark.parametrize("quant_type,double_quant", FORMATS[:2])
def test_decode_split_k(quant_type, double_quant):
    """The decode path (few rows, K split over programs, partial sums added) with and without LoRA."""
    from adapterkit_kernels.qmatmul import qmatmul_triton

    qw = _weight(40, 300, quant_type, double_quant)
    x, a, b = torch.randn(3, 300), torch.randn(16, 300) * 0.05, torch.randn(40, 16) * 0.05
    blocks = {"BM": 16, "BN": 32, "BK": 64, "SPLIT_K": 3}
    _close(qmatmul_triton(x, qw, blocks=blocks), reference.qmatmul(x, qw))
    _close(qmatmul_triton(x, qw, a, b, 1.5, blocks=blocks), reference.qlora_matmul(x, qw, a, b, 1.5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 16, 512])
def test_cuda_realistic_shapes(m, dtype):
    from adapterkit_kernels._launch import interpreting

    if interpreting():  # conftest turns the interpreter on by default
        pytest.skip("run with TRITON_INTERPRET=0 to test the compiled kernels")
    n, k, r = 4096, 4096, 16
    qw = _weight(n, k, "nf4", True, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=dtype, requires_grad=True)
    a = (torch.randn(r, k, device="cuda") / k**0.5).to(dtype).requires_grad_()
    b = (torch.randn(n, r, device="cuda") / r**0.5).to(dtype).requires_grad_()
    dy = torch.randn(m, n, device="cuda", dtype=dtype)
    with ops.use_backend("triton"):
        y = ops.qlora_matmul(x, qw, a, b, 2.0)
        grads = torch.autograd.grad(y, (x, a, b), dy)
        # compiled code may fuse level * nested + offset into one FMA: an ulp, not a bit-exact match
        assert torch.allclose(ops.dequantize(qw), reference.dequantize(qw), rtol=1e-6, atol=1e-7)
    ref_in = [t.detach().float().requires_grad_() for t in (x, a, b)]
    yr = reference.qlora(ref_in[0], qw, ref_in[1], ref_in[2], 2.0)
    _close(y, yr)
    for got, want in zip(grads, torch.autograd.grad(yr, ref_in, dy.float())):
        _close(got, want)
