"""Which examples each process sees at each step: a pure function of (seed, step).

Epoch e visits the examples in the order ``randperm(n, seed + e)``. One optimizer step takes the
next global batch of G = batch_size x processes x grad_accum examples (a last partial batch is
dropped); micro-step k of process r gets the slice
``[(k * processes + r) * batch_size, ... + batch_size)`` of it. So one process with
``grad_accum = P`` sees the same global batches as P processes with ``grad_accum = 1``, and
resuming needs only the step number.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    n: int
    batch_size: int
    processes: int
    grad_accum: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def check(self) -> None:
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the training set has {self.n} examples, fewer than one global batch of "
                f"{self.global_batch} (optim.batch_size {self.batch_size} x {self.processes} processes x "
                f"optim.grad_accum {self.grad_accum}); lower the batch size or add data."
            )

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Example indices of this process's ``grad_accum`` micro-batches at optimizer step ``step``."""
        epoch, j = divmod(step, self.steps_per_epoch)
        batch = self.order(epoch)[j * self.global_batch : (j + 1) * self.global_batch].tolist()
        out = []
        for k in range(self.grad_accum):
            start = (k * self.processes + rank) * self.batch_size
            out.append(batch[start : start + self.batch_size])
        return out


def eval_shards(n: int, batch_size: int, processes: int, rank: int) -> list[list[int]]:
    """This process's evaluation batches: examples rank, rank + P, ... in order."""
    mine = list(range(rank, n, processes))
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
