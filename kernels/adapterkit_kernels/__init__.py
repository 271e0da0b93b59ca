"""adapterkit_kernels: quantized formats, pure-PyTorch references and Triton kernels.

    formats       the layouts (NF4/FP4 + double quantization, int8), byte-compatible with bitsandbytes
    reference     pure-PyTorch quantize / dequantize / matmuls: the CPU path and the test oracle
    dequant       Triton: dequantize to a dense weight
    qmatmul       Triton: fused dequantize + matmul (+ LoRA branch), decode split-K; autograd Function
    qmatmul_grad  Triton: the input gradient dy @ W, fused the same way
    qlora         Triton: the LoRA-fused forward's autograd Function
    qmatmul_cpu   C++ (csrc/qmatmul_cpu.cpp, built at first use): the matmul for few rows on CPU
    ops           the one dispatch point (ADAPTERKIT_BACKEND = auto | reference | triton | cpu)

Triton is imported lazily, only by the op files, so ``import adapterkit_kernels`` works without it.
Kernel chain: ``_qmatmul_kernel`` (jit) -> ``qmatmul_triton`` (launcher) -> ``reference.qmatmul``
(oracle) -> ``ops.qmatmul`` (public).
"""
