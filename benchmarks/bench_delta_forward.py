"""LoHa and LoKr on one Linear layer: the forward + backward through the factors (what adapterkit runs)
against building dW and computing x dW^T (what PEFT runs), same adapter, same input.

Layer 512 -> 1376 (the benchmark model's gate / up projection), 512 tokens (batch 4 x 128), rank 8,
fp32 on CPU, fastest and median of 15 timed calls after 3 warm-up calls.

    OMP_NUM_THREADS=1 python benchmarks/bench_delta_forward.py
"""

from __future__ import annotations

import statistics
import time

import torch

import adapterkit as ak
from adapterkit.methods.loha import LoHa
from adapterkit.methods.lokr import LoKr
from adapterkit.methods.lycoris.layer import apply_delta


def _time(call, repeat: int = 15) -> tuple[float, float]:
    for _ in range(3):
        call().sum().backward()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call().sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * min(times), 1000 * statistics.median(times)


def main() -> None:
    linear = torch.nn.Linear(512, 1376).requires_grad_(False)
    x = torch.randn(512, 512)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; layer 512 -> 1376, 512 tokens, rank 8")
    print("| method | through the factors (fastest / median) | dense dW (fastest / median) |\n|---|---:|---:|")
    for cls, cfg in ((LoHa, ak.LoHaConfig(rank=8, init="random")), (LoKr, ak.LoKrConfig(rank=8, init="random"))):
        adapter = cls(linear, cfg)
        ours = _time(lambda: adapter(x, linear))  # noqa: B023  (called in this iteration)
        dense = _time(lambda: apply_delta(x, adapter.delta_weight(), linear))  # noqa: B023
        print(f"| {cfg.method} | {ours[0]:.1f} / {ours[1]:.1f} ms | {dense[0]:.1f} / {dense[1]:.1f} ms |")


if __name__ == "__main__":
    main()
