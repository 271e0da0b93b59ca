"""The CPU quantized matmul for few rows of x: C++ (csrc/qmatmul_cpu.cpp), built at first use.

y (M, N) = x (M, K) @ W^T (+ add): each row of W is decoded once, in registers, and multiplied with
every row of x, instead of dequantizing W to a dense fp32 copy and calling a GEMM (the reference).
At M = 1 that copy is nearly all the work; from some M on, the GEMM's speed wins, so ``ops`` sends
only M <= ``SMALL_M[x.dtype]`` here (measured in benchmarks/quant.md). Inputs in fp32, bf16 or
fp16; the sums run in fp32. For more rows, and for every backward (dy @ W), the same extension
dequantizes W in one pass into a reused buffer for torch's matmul (``dense_weight``,
``QMatmulDense``): the reference's values, written several times faster than its torch ops.

Built by torch's own extension tooling (``torch.utils.cpp_extension.load``: a C++ compiler and
ninja), for this machine's processor (``-march=native``; AVX-512 where it has it, else portable
loops, which ``ops`` does not choose by itself), cached under torch's extension folder
(``TORCH_EXTENSIONS_DIR``, else torch's default) in a folder named for this torch, Python and
processor, so the build (~30-60 s) happens once per machine and environment; torch rebuilds it when
the source changes.
Where it cannot be built, ``available()`` says so once, as a warning, and the reference runs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import formats, reference
from .formats import QuantWeight
from .scratch import scratch

NAME = "adapterkit_qmatmul_cpu"
SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "qmatmul_cpu.cpp")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]  # no fused multiply-add in W = level * absmax

_lock = threading.Lock()
_built: dict = {}  # "module" or "error"; "fast": what available() found; "bf16": what bf16_dot() found


def _cpu_tag() -> str:
    """A short hash of this processor's feature flags: a build for another CPU (-march=native) is not reused."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha1((flags or platform.processor()).encode()).hexdigest()[:8]


def build():
    """The compiled extension module (built on the first call in this process); raises if it cannot be."""
    module = _built.get("module")
    if module is not None:  # built: no lock on the per-call path
        return module
    with _lock:
        if "module" in _built:
            return _built["module"]
        if "error" in _built:
            raise _built["error"]
        from torch.utils import cpp_extension

        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        tag = f"{NAME}-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-cpu{_cpu_tag()}"
        folder = os.path.join(root, tag.replace("+", "_"))
        fresh = not os.path.isdir(folder)
        if fresh:
            print(f"adapterkit: building the CPU quantized-matmul kernel into {folder} (once)", file=sys.stderr)
        start = time.perf_counter()
        try:
            os.makedirs(folder, exist_ok=True)
            module = cpp_extension.load(
                name=NAME, sources=[SOURCE], extra_cflags=FLAGS, build_directory=folder, verbose=False
            )
        except Exception as err:  # no compiler, no ninja, a read-only cache folder, ...
            _built["error"] = RuntimeError(f"the CPU quantized-matmul kernel could not be built: {err}")
            raise _built["error"] from err
        if fresh:
            print(f"adapterkit: built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        _built["module"] = module
        return module


def available() -> bool:
    """Whether the kernel is built (building it now if needed) and decodes with SIMD; warns once if it
    cannot be built. ``ops`` picks it by itself only when this is True."""
    if "fast" not in _built:
        try:
            _built["fast"] = bool(build().vectorized())
        except RuntimeError as err:
            _built["fast"] = False
            warnings.warn(f"adapterkit: {err}; using the dequantize + matmul path", RuntimeWarning, stacklevel=2)
    return _built["fast"]


def bf16_dot() -> bool:
    """Whether bf16 inputs with a 4-bit W run as bf16 dot products (AVX512-BF16); builds it if needed."""
    if "bf16" not in _built:
        _built["bf16"] = bool(build().bf16_dot())
    return _built["bf16"]


def fits(qw: QuantWeight) -> bool:
    """Whether the layout suits the kernel: on CPU, and each row whole blocks (blocks never straddle rows)."""
    return qw.device.type == "cpu" and qw.shape[1] % qw.block == 0


DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # inputs the kernel takes (it computes in fp32)
# Rows of x up to which ops.py takes this kernel, per input dtype: where it was faster than
# dequantize + torch's matmul on every measured shape (benchmarks/quant.md: SmolLM2's and 4096 x 4096).
# bf16 stops earliest: torch's bf16 matmul is the fastest of the three on CPUs with AVX512-BF16;
# fp16 latest: torch's fp16 matmul is the slowest there.
SMALL_M = {torch.float32: 64, torch.bfloat16: 32, torch.float16: 128}


def qmatmul_cpu(x: Tensor, qw: QuantWeight, add: Optional[Tensor] = None, lora=None) -> Tensor:
    """x (M, K) -> x @ W^T (M, N) in x's dtype, or ``add`` (M, N) with it added in place.

    The sums run in fp32. W is fp32, except for bf16 inputs with a 4-bit W where the build has bf16
    dot products (``bf16_dot()``, AVX512-BF16): then W is rounded to bf16 first, as the reference
    rounds it, and the result is the reference's up to summation order. Elsewhere (fp16; bf16 with
    an 8-bit W or without AVX512-BF16) the reference's W rounded to the dtype differs from the
    kernel's fp32 W, so the two agree to that dtype's rounding, not bit for bit.
    ``lora`` = (A (r, K), B (N, r), scale): also add scale * (x @ A^T) @ B^T, in the same pass (no
    gradient flows through this call: for decoding; training goes through ``QMatmulCPU``).
    """
    if not fits(qw) or x.device.type != "cpu" or x.dtype not in DTYPES:
        raise ValueError(
            f"the CPU kernel needs float32 / bfloat16 / float16 CPU inputs and a weight whose rows are whole "
            f"blocks; got x {x.dtype} on {x.device}, weight {tuple(qw.shape)} on {qw.device}, block {qw.block}"
        )
    module = build()
    bf16 = x.dtype == torch.bfloat16 and qw.bits == 4 and bf16_dot()
    xin = x.contiguous() if bf16 else _fp32(x)
    if add is None:
        out = torch.zeros(x.shape[0], qw.shape[0])
    else:
        out = add if add.dtype == torch.float32 and add.is_contiguous() else add.to(torch.float32).contiguous()
    a, b, scale = (None, None, 0.0) if lora is None else lora
    if lora is not None:
        a, b = _fp32(a), _fp32(b)
    module.qmatmul_add(xin, *_weight_args(qw), out, a, b, scale)
    if add is not None and out is not add:
        return add.copy_(out)
    return out.to(x.dtype)


def _weight_args(qw: QuantWeight) -> tuple:
    """The weight's arguments of both C++ entry points: codes, the 16 levels (4-bit; empty for
    8-bit), absmax, the double-quant nested absmax / offset / levels (or None), the block."""
    table = formats.code_table(qw.quant_type) if qw.bits == 4 else torch.empty(0)
    nested = (qw.nested_absmax, qw.nested_offset, qw.nested_levels) if qw.double_quant else (None, None, None)
    return (qw.codes.contiguous(), table, qw.absmax.contiguous(), *nested, qw.block)


def _fp32(t: Tensor) -> Tensor:
    """The tensor's values as a contiguous fp32 tensor (itself when it is one: the per-call path)."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.detach().to(torch.float32).contiguous()


DENSE_DTYPES = (torch.float32, torch.bfloat16)  # what dense_weight writes in C++


def dense_fits(qw: QuantWeight, dtype: torch.dtype) -> bool:
    """Whether ``dense_weight`` writes this weight in C++: on CPU, whole blocks, fp32 or bf16."""
    return qw.device.type == "cpu" and qw.numel % qw.block == 0 and dtype in DENSE_DTYPES


def dequantize_cpu(qw: QuantWeight, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
    """W (N, K) dense in ``dtype`` (fp32 / bf16, where ``dense_fits``), into ``out`` or a fresh tensor,
    in one C++ pass: the reference's values (fp32 bit for bit; bf16 rounded as the reference rounds,
    but weights below 2^-126 in magnitude flushed to 0), several times faster than its torch ops."""
    if not dense_fits(qw, dtype):
        raise ValueError(
            f"the C++ dequantize takes whole blocks on CPU into fp32 / bf16; got {dtype}, a weight "
            f"{tuple(qw.shape)} on {qw.device} in blocks of {qw.block}"
        )
    out = torch.empty(qw.shape, dtype=dtype) if out is None else out
    build().dequantize(*_weight_args(qw), out)
    return out


def dense_weight(qw: QuantWeight, dtype: torch.dtype) -> Tensor:
    """W (N, K) dense in ``dtype``, in this thread's reused buffer for the size (scratch.py: valid
    until the next reuse; for a matmul that consumes it at once): ``dequantize_cpu`` where it
    fits, else the reference."""
    if not dense_fits(qw, dtype):
        return reference.dequantize(qw, dtype, reuse=True)
    return dequantize_cpu(qw, dtype, scratch(qw.numel, dtype, qw.device).view(qw.shape))


class QMatmulDense(reference.QMatmulReference):
    """y = x @ W^T for many rows of x, where torch's matmul beats the kernel: W dequantized by the
    C++ code (``dense_weight``) into a reused buffer, then torch's matmul; backward the same way
    (dx = dy @ W). The reference's numerics, faster. ``add`` (M, N): accumulate into it in place."""

    @staticmethod
    def forward(ctx, x: Tensor, qw: QuantWeight, add: Optional[Tensor] = None):
        ctx.qw = qw
        weight = dense_weight(qw, x.dtype)
        if add is None:
            return x @ weight.t()
        ctx.mark_dirty(add)
        return add.addmm_(x, weight.t())

    @staticmethod
    def backward(ctx, dy: Tensor):
        needs = ctx.needs_input_grad
        dx = dy @ dense_weight(ctx.qw, dy.dtype) if needs[0] else None
        return (dx, None, dy) if len(needs) == 3 else (dx, None)


class QMatmulCPU(QMatmulDense):
    """y = x @ W^T through the C++ kernel; backward as ``QMatmulDense``'s (dequantize, dy @ W).

    ``add`` (M, N): accumulate into it in place instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, qw: QuantWeight, add: Optional[Tensor] = None):
        ctx.qw = qw
        if add is not None:
            ctx.mark_dirty(add)
        return qmatmul_cpu(x, qw, add)
