"""The C++ CPU matmul for few rows (kernels/adapterkit_kernels/csrc/qmatmul_cpu.cpp) against the
pure-PyTorch reference: every format, odd shapes, the in-place add, backward, threads, a whole
quantized model's greedy generation, and loud failures where it cannot run."""

import pytest
import torch

from adapterkit_kernels import ops, qmatmul_cpu, reference

FORMATS = [  # (bits, quant_type, double_quant, block)
    (4, "nf4", True, 64),
    (4, "nf4", False, 128),
    (4, "fp4", False, 32),
    (4, "fp4", True, 256),
    (8, "int8", False, 64),
    (8, "int8", False, 256),
]


# Tolerance per input dtype, relative to the result's scale: fp32 differs from the reference by
# summation order only; bf16 / fp16 results are fp32 sums rounded to the dtype (one rounding step).
TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _close(got, want):
    tol = TOL[got.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


def _weight(bits, quant_type, double_quant, block, n=37, k=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ops.quantize(torch.randn(n, k, generator=gen), bits, quant_type, block, double_quant)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[1]}-dq{int(f[2])}-b{f[3]}")
@pytest.mark.parametrize("m", [1, 3, 8, 9, 17])
def test_forward_equals_the_reference(fmt, m):
    qw = _weight(*fmt)
    x = torch.randn(m, 512)
    want = reference.qmatmul(x, qw)  # dequantize, then x @ W^T
    _close(qmatmul_cpu.qmatmul_cpu(x, qw), want)
    add = torch.randn(m, qw.shape[0])
    out = add.clone()
    assert qmatmul_cpu.qmatmul_cpu(x, qw, out) is out  # accumulated in place
    _close(out, add + want)
    a, b = torch.randn(5, 512), torch.randn(qw.shape[0], 5)  # rank 5: the LoRA branch in the same call
    _close(qmatmul_cpu.qmatmul_cpu(x, qw, lora=(a, b, 0.7)), reference.qlora_matmul(x, qw, a, b, 0.7))


ROW_LENGTHS = [  # (format, K): one 32-weight step, one block, longer than the kernel's 1024-weight chunk
    (FORMATS[2], 32),  # fp4, block 32
    (FORMATS[2], 1056),  # 1024 + 32
    (FORMATS[2], 2400),  # 2 x 1024 + 352
    (FORMATS[3], 256),  # fp4, block 256
    (FORMATS[3], 1280),  # 1024 + 256
    (FORMATS[4], 64),  # int8, block 64
    (FORMATS[4], 2432),  # 2 x 1024 + 384
]


@pytest.mark.parametrize("fmt,k", ROW_LENGTHS, ids=lambda v: f"{v[1]}-b{v[3]}" if isinstance(v, tuple) else f"k{v}")
@pytest.mark.parametrize("m", [1, 2, 5])
def test_row_lengths_across_the_kernel_chunks(fmt, k, m):
    """Rows shorter than the kernel's unrolled step and longer than its chunk, with a shorter last
    chunk; 1-2 rows of x take the unrolled loop, 5 the plain one."""
    qw = _weight(*fmt, n=19, k=k)
    x = torch.randn(m, k)
    _close(qmatmul_cpu.qmatmul_cpu(x, qw), reference.qmatmul(x, qw))
    a, b = torch.randn(3, k), torch.randn(19, 3)
    _close(qmatmul_cpu.qmatmul_cpu(x, qw, lora=(a, b, 2.0)), reference.qlora_matmul(x, qw, a, b, 2.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fmt", FORMATS[:1] + FORMATS[4:5], ids=["nf4", "int8"])
def test_half_inputs_are_summed_in_fp32(fmt, dtype):
    """bf16 / fp16 x: the fp32 result rounded to x's dtype (the fp32 reference on the same values), and
    within the dtype's own rounding of W of the reference in that dtype (which rounds W first)."""
    qw = _weight(*fmt, n=45, k=256)
    x = torch.randn(3, 256).to(dtype)
    got = qmatmul_cpu.qmatmul_cpu(x, qw)
    assert got.dtype == dtype
    _close(got, reference.qmatmul(x.float(), qw).to(dtype))
    want = reference.qmatmul(x, qw)  # W rounded to the dtype, then the dtype's matmul
    torch.testing.assert_close(got, want, rtol=0, atol=8 * TOL[dtype] * want.abs().max().item())
    add = torch.randn(3, 45).to(dtype)
    out = add.clone()
    assert qmatmul_cpu.qmatmul_cpu(x, qw, out) is out
    _close(out, (add.float() + reference.qmatmul(x.float(), qw)).to(dtype))


@pytest.mark.parametrize("fmt", FORMATS[:4], ids=lambda f: f"{f[1]}-dq{int(f[2])}-b{f[3]}")
@pytest.mark.parametrize("m", [1, 6, 11])
def test_bf16_inputs_with_a_4bit_weight_take_the_references_bf16_weight(fmt, m):
    """With bf16 dot products (AVX512-BF16) the kernel rounds W to bf16 as the reference does and sums
    the exact bf16 products in fp32: the result is x @ W_bf16^T in fp32, rounded once to bf16 (each
    element within one bf16 step of it). Without them it keeps W in fp32 (the dtype's tolerance)."""
    qw = _weight(*fmt, n=45, k=2304)  # 1024 + 1024 + 256: three chunks
    x = torch.randn(m, 2304).to(torch.bfloat16)
    w16 = reference.dequantize(qw).to(torch.bfloat16)  # the reference's W for bf16 inputs
    want = x.float() @ w16.float().t()  # exact products, fp32 sums
    got = qmatmul_cpu.qmatmul_cpu(x, qw)
    a, b = torch.randn(4, 2304), torch.randn(45, 4)
    lora = qmatmul_cpu.qmatmul_cpu(x, qw, lora=(a, b, 0.5))
    want_lora = want + 0.5 * (x.float() @ a.t()) @ b.t()
    if qmatmul_cpu.bf16_dot():
        for out, ref in ((got, want), (lora, want_lora)):
            torch.testing.assert_close(out.float(), ref, rtol=2**-8, atol=1e-6 * ref.abs().max().item())
    else:
        _close(got, want.to(torch.bfloat16))
        _close(lora, want_lora.to(torch.bfloat16))


@pytest.mark.parametrize("fmt", FORMATS[:1] + FORMATS[4:5], ids=["nf4", "int8"])
def test_forward_and_backward_through_ops_equal_the_reference(fmt):
    qw = _weight(*fmt, n=45, k=256)
    a, b = torch.randn(8, 256, requires_grad=True), torch.randn(45, 8, requires_grad=True)
    x = torch.randn(2, 5, 256, requires_grad=True)  # (B, T, K): 10 rows
    results = {}
    for backend in ("cpu", "reference"):
        with ops.use_backend(backend):
            y = ops.qmatmul(x, qw) + ops.qlora_matmul(x, qw, a, b, 0.5)
        grads = torch.autograd.grad(y.square().sum(), (x, a, b))
        results[backend] = (y, *grads)
    for got, want in zip(results["cpu"], results["reference"]):
        _close(got, want)


def test_threads_split_the_rows_of_w_and_agree():
    qw, x = _weight(4, "nf4", True, 64, n=301), torch.randn(4, 512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qmatmul_cpu.qmatmul_cpu(x, qw)
        torch.set_num_threads(2)
        two = qmatmul_cpu.qmatmul_cpu(x, qw)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each output is one row's sum, whichever thread computes it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[1]}-dq{int(f[2])}-b{f[3]}")
def test_cpp_dequantize_writes_the_references_weight(fmt, dtype):
    """The one-pass C++ dequantize (many rows, backward, ops.dequantize): the reference's values bit for
    bit, in fp32 and rounded to bf16, also where blocks straddle rows (96 elements a row)."""
    for n, k in ((45, 256), (100, 96)):
        qw = _weight(*fmt, n=n, k=k)
        if qw.numel % qw.block:
            continue  # not whole blocks: dense_fits says no and the reference runs (next assertion)
        assert torch.equal(qmatmul_cpu.dequantize_cpu(qw, dtype), reference.dequantize(qw, dtype))
        assert torch.equal(ops.dequantize(qw, dtype), reference.dequantize(qw, dtype))
    odd = _weight(*fmt, n=3, k=fmt[3] + 16)
    assert not qmatmul_cpu.dense_fits(odd, dtype)
    assert torch.equal(ops.dequantize(odd, dtype), reference.dequantize(odd, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_many_rows_equal_the_reference_bit_for_bit_forward_and_backward(dtype):
    """Above the kernel's rows (auto: C++ dequantize into a reused buffer, torch's matmul) the numbers
    are the reference's exactly: the same W, the same torch matmuls."""
    qw = _weight(4, "nf4", True, 64, n=45, k=256)
    m = qmatmul_cpu.SMALL_M[dtype] + 3
    results = {}
    for backend in ("auto", "reference"):
        x = torch.randn(m, 256, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_()
        a = torch.randn(8, 256, generator=torch.Generator().manual_seed(2)).to(dtype).requires_grad_()
        b = torch.randn(45, 8, generator=torch.Generator().manual_seed(3)).to(dtype).requires_grad_()
        with ops.use_backend(backend):
            y = ops.qmatmul(x, qw) + ops.qlora_matmul(x, qw, a, b, 0.5)
            grads = torch.autograd.grad(y.square().sum(), (x, a, b))
            dx = ops.qmatmul_input_grad(y.detach(), qw)
        results[backend] = (y, *grads, dx)
    for got, want in zip(results["auto"], results["reference"]):
        assert torch.equal(got, want)


def _tiny_quantized_llama(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapterkit as ak

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    ak.quantize(model, bits=4, quant_type="nf4", double_quant=True)
    return ak.attach(model, ak.LoRAConfig(rank=4, targets="all-linear", init="random")).to(dtype)


def _greedy(model, prompt, backend):
    with ops.use_backend(backend), torch.no_grad():
        return model.generate(
            prompt, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0
        )


def test_a_quantized_model_generates_the_same_tokens_as_on_the_reference():
    """Greedy decoding (one row per step after the prompt) with the kernel, token for token, against the
    reference; the scores of every step within fp32 summation order."""
    model = _tiny_quantized_llama(torch.float32)
    prompt = torch.randint(0, 96, (1, 5))
    runs = {backend: _greedy(model, prompt, backend) for backend in ("cpu", "reference")}
    assert torch.equal(runs["cpu"].sequences, runs["reference"].sequences)
    for got, want in zip(runs["cpu"].scores, runs["reference"].scores):
        _close(got, want)


def test_a_bf16_quantized_model_generates_as_on_the_reference():
    """A model kept in bf16 (the kernel's bf16 path): every step's scores within bf16 rounding of the
    reference's, and the same token at every step, unless the reference's two best scores are closer
    than twice the two runs' largest difference at that step (then either token is right, and the
    runs may part there: the comparison stops)."""
    model = _tiny_quantized_llama(torch.bfloat16)
    prompt = torch.randint(0, 96, (1, 5))
    runs = {backend: _greedy(model, prompt, backend) for backend in ("cpu", "reference")}
    for step, (got, want) in enumerate(zip(runs["cpu"].scores, runs["reference"].scores)):
        got, want = got.float(), want.float()
        torch.testing.assert_close(got, want, rtol=0, atol=4 * TOL[torch.bfloat16] * want.abs().max().item())
        token, ref_token = runs["cpu"].sequences[0, 5 + step], runs["reference"].sequences[0, 5 + step]
        if token != ref_token:
            best, second = want.topk(2).values[0]
            assert best - second <= 2 * (got - want).abs().max(), f"step {step}: a clear choice differs"
            break


def test_explicit_cpu_backend_fails_loudly_where_it_cannot_run(monkeypatch):
    qw = _weight(4, "nf4", True, 64, n=8, k=64)
    with ops.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="float64"):
            ops.qmatmul(torch.randn(2, 64, dtype=torch.float64), qw)
        odd = ops.quantize(torch.randn(8, 96), block=64)  # rows of 96: not whole blocks of 64
        with pytest.raises(RuntimeError, match="not whole blocks"):
            ops.qmatmul(torch.randn(2, 96), odd)
    with pytest.raises(ValueError, match="whole blocks"):
        qmatmul_cpu.qmatmul_cpu(torch.randn(2, 96), odd)


def test_a_kernel_that_cannot_be_built_fails_explicit_requests_and_auto_falls_back_once(monkeypatch):
    def broken():
        raise RuntimeError("the CPU quantized-matmul kernel could not be built: no compiler")

    monkeypatch.setattr(qmatmul_cpu, "build", broken)
    monkeypatch.setattr(qmatmul_cpu, "_built", {})
    qw, x = _weight(4, "nf4", True, 64, n=8, k=64), torch.randn(2, 64)
    with ops.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="no compiler"):
            ops.qmatmul(x, qw)
    with pytest.warns(RuntimeWarning, match="dequantize"):
        y = ops.qmatmul(x, qw)  # auto: the reference, with one warning
    assert torch.equal(y, reference.qmatmul(x, qw))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.qmatmul(x, qw)  # no second warning
