"""The dispatch point: ADAPTERKIT_BACKEND read at call time, the context manager, loud failures."""

import sys

import pytest
import torch

from adapterkit_kernels import ops, reference


@pytest.fixture
def counted(monkeypatch):
    """Counts calls into the Triton launcher and the reference."""
    pytest.importorskip("triton")
    from adapterkit_kernels import qmatmul

    calls = {"triton": 0, "reference": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(qmatmul, "qmatmul_triton", spy("triton", qmatmul.qmatmul_triton))
    monkeypatch.setattr(reference, "qmatmul", spy("reference", reference.qmatmul))
    return calls


def _qw():
    return ops.quantize(torch.randn(20, 64))


def test_environment_variable_is_read_at_each_call(monkeypatch, counted):
    qw, x = _qw(), torch.randn(3, 64)
    monkeypatch.setenv("ADAPTERKIT_BACKEND", "triton")
    ops.qmatmul(x, qw)
    assert counted == {"triton": 1, "reference": 0}
    monkeypatch.setenv("ADAPTERKIT_BACKEND", "reference")
    ops.qmatmul(x, qw)
    assert counted == {"triton": 1, "reference": 1}


def test_auto_on_cpu_takes_the_cpu_kernel_for_few_rows_and_the_cpp_dequantize_for_many(monkeypatch, counted):
    from adapterkit_kernels import qmatmul_cpu

    cpu = {"kernel": 0, "dense": 0}
    kernel, dense = qmatmul_cpu.qmatmul_cpu, qmatmul_cpu.dense_weight

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            cpu[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(qmatmul_cpu, "qmatmul_cpu", spy("kernel", kernel))
    monkeypatch.setattr(qmatmul_cpu, "dense_weight", spy("dense", dense))
    monkeypatch.delenv("ADAPTERKIT_BACKEND", raising=False)
    qw = _qw()
    on = int(qmatmul_cpu.available())  # the SIMD build; a portable build is not picked by auto
    ops.qmatmul(torch.randn(3, 64), qw)
    assert counted == {"triton": 0, "reference": 1 - on} and cpu == {"kernel": on, "dense": 0}
    ops.qmatmul(torch.randn(3, 64, dtype=torch.bfloat16), qw)  # bf16 too
    assert counted == {"triton": 0, "reference": 2 - 2 * on} and cpu == {"kernel": 2 * on, "dense": 0}
    many = torch.randn(qmatmul_cpu.SMALL_M[torch.float32] + 1, 64)  # many rows: C++ dequantize, torch's GEMM
    ops.qmatmul(many, qw)
    assert counted == {"triton": 0, "reference": 3 - 3 * on} and cpu == {"kernel": 2 * on, "dense": on}
    ops.qmatmul(torch.randn(3, 64, dtype=torch.float64), qw)  # fp64: the reference keeps its precision
    assert counted == {"triton": 0, "reference": 4 - 3 * on} and cpu == {"kernel": 2 * on, "dense": on}
    with ops.use_backend("reference"):  # the oracle stays pure PyTorch at every size
        ops.qmatmul(many, qw)
    assert counted == {"triton": 0, "reference": 5 - 3 * on} and cpu == {"kernel": 2 * on, "dense": on}


def test_context_manager_wins_and_nests(monkeypatch, counted):
    monkeypatch.setenv("ADAPTERKIT_BACKEND", "reference")
    qw, x = _qw(), torch.randn(3, 64)
    with ops.use_backend("triton"):
        ops.qmatmul(x, qw)
        with ops.use_backend("reference"):
            ops.qmatmul(x, qw)
        assert ops.requested_backend() == "triton"
    assert ops.requested_backend() == "reference"
    assert counted == {"triton": 1, "reference": 1}


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv("ADAPTERKIT_BACKEND", "cuda")
    with pytest.raises(ValueError, match="auto, reference, triton, cpu"):
        ops.qmatmul(torch.randn(3, 64), _qw())
    with pytest.raises(ValueError, match="unknown"):
        with ops.use_backend("tensorrt"):
            pass


def test_explicit_triton_fails_loudly_where_it_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors, no interpreter: Triton cannot run them
    with ops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            ops.qmatmul(torch.randn(3, 64), _qw())
    monkeypatch.setattr(ops, "triton_installed", lambda: False)
    with ops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="not installed"):
            ops.dequantize(_qw())
    qw = _qw()
    with ops.use_backend("auto"):  # auto falls back quietly
        assert torch.equal(ops.dequantize(qw), reference.dequantize(qw))


def test_import_is_light():
    """adapterkit and the kernels' formats/reference/ops never import triton or bitsandbytes."""
    import subprocess

    code = (
        "import sys, adapterkit, adapterkit_kernels.ops, adapterkit.quant; "
        "bad = [m for m in ('triton', 'bitsandbytes') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("bits", [4, 8])
def test_reused_dequantize_buffer_never_shows_in_results(bits):
    """The reference matmuls dequantize into one reused buffer per size (scratch.py): what they
    return, and what ``dequantize`` returns, stays right after the buffer is overwritten."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(48, 64), torch.randn(48, 64)  # the same size: the same buffer
    q1, q2 = (reference.quantize(w, bits, "nf4", 64, bits == 4) for w in (w1, w2))
    dense1, dense2 = reference.dequantize(q1), reference.dequantize(q2)  # fresh tensors
    assert dense1.data_ptr() != reference.dequantize(q1).data_ptr()
    x = torch.randn(5, 64, dtype=torch.float64).float()
    y1 = reference.qmatmul(x, q1)
    y2 = reference.qmatmul(x, q2)  # overwrites the buffer y1 was computed from
    g1 = reference.qmatmul_input_grad(y1, q1)
    torch.testing.assert_close(y1, x @ dense1.t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y2, x @ dense2.t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, y1 @ dense1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense1, reference.dequantize(q1))  # untouched by the matmuls
    half = reference.qmatmul(x.half(), q1)  # another dtype: its own buffer
    torch.testing.assert_close(half, (x.half() @ dense1.half().t()), rtol=1e-3, atol=1e-3)
