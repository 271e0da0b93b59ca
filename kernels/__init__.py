"""adapterkit_kernels: quantized formats, pure-PyTorch references and Triton kernels.

Triton is imported lazily, only by the op files, so ``import adapterkit_kernels`` works without it.
"""
