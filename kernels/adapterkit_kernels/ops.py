"""The one dispatch point for quantized ops: Triton kernels, the C++ CPU kernel, or the pure-PyTorch reference.

Backend, read every time an op runs (so a running process can switch it):
    ADAPTERKIT_BACKEND = auto | reference | triton | cpu   (environment variable; default auto)
    with use_backend("reference"): ...                      (in code; wins over the variable)
``auto`` takes Triton for CUDA tensors when triton imports; on CPU, the C++ kernel
(qmatmul_cpu.py) for a matmul of at most ``qmatmul_cpu.SMALL_M[dtype]`` rows (fp32, bf16 or fp16 inputs)
when it builds with SIMD (not while ``torch.compile`` traces); the reference otherwise (quietly).
``triton`` asks for the kernels: on CPU tensors they run only under TRITON_INTERPRET=1 (how CI
tests them); without triton, or on CPU without the interpreter, it fails loudly.
``cpu`` asks for the C++ kernel for every CPU matmul (any number of rows); where it cannot run
(not built, a CUDA tensor, fp64, rows that are not whole blocks) it fails loudly.
Under ``auto`` and ``cpu``, what the kernel does not take on CPU (many rows, backward, ``dequantize``)
dequantizes W with the same extension's one-pass C++ code (fp32 / bf16, whole blocks) for torch's
matmul: the reference's values, faster; the reference's torch ops where it does not apply.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from typing import Iterator, Optional

import torch
from torch import Tensor

from . import formats, qmatmul_cpu, reference
from ._launch import interpreting
from .formats import QuantWeight

BACKENDS = ("auto", "reference", "triton", "cpu")
_local = threading.local()


def requested_backend() -> str:
    """The backend asked for now: the innermost ``use_backend``, else ADAPTERKIT_BACKEND, else auto."""
    stack = getattr(_local, "stack", None)
    name = stack[-1] if stack else os.environ.get("ADAPTERKIT_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ADAPTERKIT_BACKEND={name!r} is not a backend; expected one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the block with ``name`` as the backend (auto, reference or triton)."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; expected one of {', '.join(BACKENDS)}")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def uses_triton(tensor: Tensor, name: Optional[str] = None) -> bool:
    """Whether an op on ``tensor`` runs the Triton kernels under the current backend (``name``: it, already read)."""
    name = name or requested_backend()
    if name in ("reference", "cpu"):
        return False
    runnable = triton_installed() and (tensor.is_cuda or interpreting())
    if name == "auto":
        return tensor.is_cuda and triton_installed()
    if not runnable:
        why = (
            "triton is not installed"
            if not triton_installed()
            else f"the tensors are on {tensor.device} (Triton needs CUDA, or TRITON_INTERPRET=1 set before import)"
        )
        raise RuntimeError(
            f"backend 'triton' was requested but {why}; "
            "use ADAPTERKIT_BACKEND=auto or reference, or install triton / move to a GPU"
        )
    return True


def uses_cpu_kernel(x: Tensor, qw: QuantWeight, name: Optional[str] = None) -> bool:
    """Whether a matmul of ``x`` (M, K) with ``qw`` runs the C++ CPU kernel under the current backend."""
    name = name or requested_backend()
    if name == "cpu":
        why = (
            f"the tensors are on {x.device}"
            if x.device.type != "cpu" or qw.device.type != "cpu"
            else f"x is {x.dtype} (the kernel takes float32, bfloat16 and float16)"
            if x.dtype not in qmatmul_cpu.DTYPES
            else f"the weight's rows ({qw.shape[1]} elements) are not whole blocks of {qw.block}"
            if not qmatmul_cpu.fits(qw)
            else None
        )
        if why:
            raise RuntimeError(f"backend 'cpu' was requested but {why}; use ADAPTERKIT_BACKEND=auto or reference")
        qmatmul_cpu.build()  # raises, saying why, where it cannot be built
        return True
    return (
        name == "auto"
        and x.device.type == "cpu"
        and x.shape[0] <= qmatmul_cpu.SMALL_M.get(x.dtype, 0)
        and qmatmul_cpu.fits(qw)
        and not torch.compiler.is_compiling()
        and qmatmul_cpu.available()
    )


def uses_cpu_dequantize(qw: QuantWeight, dtype: torch.dtype, name: Optional[str] = None) -> bool:
    """Whether dequantizing ``qw`` to ``dtype`` (for a matmul the kernel does not take: many rows, and
    every backward) runs the extension's one-pass C++ code (``qmatmul_cpu.dequantize_cpu``) rather than
    the reference's torch ops: under ``auto`` or ``cpu``, on CPU, fp32 / bf16, whole blocks, when the
    extension builds with SIMD."""
    return (
        (name or requested_backend()) in ("auto", "cpu")
        and qmatmul_cpu.dense_fits(qw, dtype)
        and not torch.compiler.is_compiling()
        and qmatmul_cpu.available()
    )


def _dense_matmul(x: Tensor, qw: QuantWeight, name: str):
    """The autograd Function for a matmul of many rows on CPU (or wherever no kernel applies)."""
    return qmatmul_cpu.QMatmulDense if uses_cpu_dequantize(qw, x.dtype, name) else reference.QMatmulReference


# -- public ops --------------------------------------------------------------------------------
def quantize(
    weight: Tensor,
    bits: int = 4,
    quant_type: str = "nf4",
    block: int = formats.DEFAULT_BLOCK,
    double_quant: bool = True,
) -> QuantWeight:
    """(out, in) float weight -> QuantWeight (reference code on every backend: it runs once)."""
    return reference.quantize(weight, bits, quant_type, block, double_quant)


def dequantize(qw: QuantWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """QuantWeight -> dense (out, in) weight in ``dtype``."""
    if uses_triton(qw.codes):
        from .dequant import dequantize_triton

        return dequantize_triton(qw, dtype)
    if uses_cpu_dequantize(qw, dtype):
        return qmatmul_cpu.dequantize_cpu(qw, dtype)
    return reference.dequantize(qw, dtype)


def qmatmul(x: Tensor, qw: QuantWeight, bias: Optional[Tensor] = None) -> Tensor:
    """x (..., K) -> x @ W^T + bias (..., N), differentiable in x (and bias)."""
    x2, name = x.reshape(-1, x.shape[-1]), requested_backend()
    if uses_triton(x2, name):
        from .qmatmul import QMatmulTriton

        y = QMatmulTriton.apply(x2, qw)
    elif uses_cpu_kernel(x2, qw, name):  # no autograd node where no gradient is asked for (decoding)
        grad = torch.is_grad_enabled() and x2.requires_grad
        y = qmatmul_cpu.QMatmulCPU.apply(x2, qw) if grad else qmatmul_cpu.qmatmul_cpu(x2, qw)
    else:
        y = _dense_matmul(x2, qw, name).apply(x2, qw)
    return reference.maybe_bias(y, bias).view(*x.shape[:-1], qw.shape[0])


def qlora_matmul(
    x: Tensor, qw: QuantWeight, a: Tensor, b: Tensor, scale: float, bias: Optional[Tensor] = None
) -> Tensor:
    """x (..., K) -> x @ W^T + scale * (x @ A^T) @ B^T + bias (..., N); A (r, K), B (N, r)."""
    x2, name = x.reshape(-1, x.shape[-1]), requested_backend()
    if uses_triton(x2, name):
        from .qlora import QLoRATriton

        y = QLoRATriton.apply(x2, qw, a, b, float(scale))
    elif not uses_cpu_kernel(x2, qw, name):
        y = reference.qlora(x2, qw, a, b, float(scale), _dense_matmul(x2, qw, name))
    elif torch.is_grad_enabled():
        y = reference.qlora(x2, qw, a, b, float(scale), qmatmul_cpu.QMatmulCPU)
    else:  # decoding: the LoRA branch in the same call, no autograd nodes
        y = qmatmul_cpu.qmatmul_cpu(x2, qw, lora=(a, b, float(scale)))
    return reference.maybe_bias(y, bias).view(*x.shape[:-1], qw.shape[0])


def qmatmul_input_grad(dy: Tensor, qw: QuantWeight) -> Tensor:
    """dy (M, N) -> dy @ W (M, K) (the backward of qmatmul, exposed for tests and benchmarks)."""
    if uses_triton(dy):
        from .qmatmul_grad import qmatmul_input_grad_triton

        return qmatmul_input_grad_triton(dy, qw)
    if uses_cpu_dequantize(qw, dy.dtype):
        return dy @ qmatmul_cpu.dense_weight(qw, dy.dtype)
    return reference.qmatmul_input_grad(dy, qw)
