"""Settings that fit a memory budget, ranked by estimated throughput.

The global batch (optim.batch_size x optim.grad_accum examples, so the tokens per optimizer step)
stays as configured; what varies is how it is reached and what the base is stored in:
micro-batch size (a divisor of the global batch, grad_accum the rest), gradient checkpointing,
the base in 16-bit / 8-bit / 4-bit, bf16 instead of fp32, 8-bit AdamW.

Estimated throughput (relative, higher is better; a model, not a measurement):

    speed = u(tokens per micro-batch) / (recompute x dequantize x precision)
    u(n)       = n / (n + 512)    a GPU's matmuls reach half their speed at ~512 tokens
    recompute  = 6 / 4 = 1.5      with checkpointing: a frozen base costs a forward (2P FLOPs per
                                  token) and an input-gradient backward (2P); recomputing adds 2P
    dequantize = 1.15 (4-bit), 1.10 (8-bit)   unpacking weights inside the matmul kernels
    precision  = 2 for float32    TF32 tensor cores run at half the bf16 rate
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .estimate import Estimate, estimate
from .settings import Quant, Settings
from .shape import ModelShape
from .weights import inventory

HALF_SPEED_TOKENS = 512
RECOMPUTE = 1.5
DEQUANT = {None: 1.0, 8: 1.10, 4: 1.15}
FP32 = 2.0


@dataclasses.dataclass(frozen=True)
class Option:
    """One way to run that fits: its settings, estimate, relative speed and the YAML keys to set."""

    settings: Settings
    estimate: Estimate
    speed: float
    changes: dict


def speed(s: Settings) -> float:
    tokens = s.tokens
    cost = (RECOMPUTE if s.checkpointing else 1.0) * DEQUANT[s.quant.bits if s.quant else None]
    cost *= FP32 if s.dtype == "float32" else 1.0
    return tokens / (tokens + HALF_SPEED_TOKENS) / cost


def _divisors(n: int) -> list[int]:
    return [m for m in range(1, n + 1) if n % m == 0]


def candidates(base: Settings) -> list[Settings]:
    """Every combination searched (see the module docstring)."""
    total = base.batch_size * base.grad_accum
    quants = [None, Quant(bits=8), Quant(bits=4)]
    if base.quant is not None and base.quant.bits in (4, 8):
        quants[1 if base.quant.bits == 8 else 2] = base.quant
    dtypes = [base.dtype] + (["bfloat16"] if base.dtype == "float32" else [])
    optimizers = [base.optimizer] + (["adamw8bit"] if base.optimizer == "adamw" else [])
    out = []
    for micro in _divisors(total):
        for ckpt in (False, True):
            for quant in quants:
                for dtype in dtypes:
                    for opt in optimizers:
                        out.append(
                            base.replace(
                                batch_size=micro,
                                grad_accum=total // micro,
                                checkpointing=ckpt,
                                quant=quant,
                                dtype=dtype,
                                optimizer=opt,
                            )
                        )
    return out


def changes(base: Settings, s: Settings) -> dict:
    """The training-config keys to set to go from ``base`` to ``s``."""
    old, new = base.yaml_keys(), s.yaml_keys()
    out = {k: v for k, v in new.items() if old.get(k) != v}
    if s.quant is None and base.quant is not None:
        out["quantization"] = None
    elif s.quant is not None and s.quant != base.quant:
        out["quantization.bits"] = s.quant.bits
    return out


def fitting(shape: ModelShape, base: Settings, budget: int, limit: Optional[int] = 10) -> tuple[list, Optional[Option]]:
    """(options that fit in ``budget`` bytes, fastest first; the smallest option when none fits)."""
    cache: dict = {}
    found, smallest = [], None
    for s in candidates(base):
        key = (s.quant, s.dtype)
        if key not in cache:
            cache[key] = inventory(shape, s)
        est = estimate(shape, s, cache[key])
        option = Option(s, est, speed(s), changes(base, s))
        if smallest is None or est.total < smallest.estimate.total:
            smallest = option
        if est.total <= budget:
            found.append(option)
    found.sort(key=lambda o: (-o.speed, len(o.changes), o.estimate.total))
    kept, shapes = [], set()
    for o in found:  # of options differing only in the optimizer, the one with fewer changes
        key = (o.settings.batch_size, o.settings.checkpointing, o.settings.quant, o.settings.dtype)
        if key not in shapes:
            shapes.add(key)
            kept.append(o)
    return (kept[:limit] if limit else kept), (None if found else smallest)
