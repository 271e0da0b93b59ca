"""Reused buffers for a dense weight that a matmul consumes at once (the CPU reference path).

On CPU, writing a fresh 64 MiB tensor costs more than computing what goes into it: the pages
are new, and each first touch faults. Dequantizing a 4096 x 4096 NF4 weight took 56 ms into
fresh memory and 7.5 ms into a reused buffer (one thread, torch 2.13.0+cpu). So the reference
matmuls dequantize into this thread's buffer for that size, dtype and device, and the product
they return is a fresh tensor: the buffer is free again as soon as the matmul has run. Memory:
one dense weight per distinct size (the transient copy a dequantize + matmul holds anyway), per
thread that runs the reference path.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_LOCAL = threading.local()


def scratch(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """This thread's 1-D buffer of ``numel`` elements; its contents are whatever was last put there."""
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    key = (numel, dtype, torch.device(device))
    buf = buffers.get(key)
    if buf is None:
        buf = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf
