"""What the loop does for adapters that change while they train: AdaLoRA's penalty and allocator.

For each trainable AdaLoRA adapter: the loss of every micro-batch gets ``orthogonality(model,
name)`` added for the backward pass (PEFT adds it to ``outputs.loss``; the loss the loop logs is
the task's alone, comparable with other methods' runs), and after the k-th optimizer step (k = 1, 2, ...;
before the gradients are cleared) ``RankAllocator.step(model, k)`` updates the sensitivities and
masks; with ``total_step`` = the run's steps and ``tfinal = 0`` the final budget is set at the last
step. Its schedule is the adapter config's (``adapter:`` in the YAML: init_r, target_r, tinit,
tfinal, deltaT, beta1, beta2, orth_reg_weight, total_step).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError


class AdaptiveHooks:
    """The penalty and allocators of ``model``'s trainable AdaLoRA adapters (unwrapped model)."""

    def __init__(self, model: nn.Module, total: int):
        from ..inject import adapter_layers
        from ..methods.adalora import AdaLoRALayer, RankAllocator

        self.model = model
        names: dict[str, None] = {}
        for _, layer in adapter_layers(model):
            if isinstance(layer, AdaLoRALayer):
                names.update(
                    {n: None for n, a in layer.adapters.items() if any(p.requires_grad for p in a.parameters())}
                )
        self.allocators = {name: RankAllocator(model, name) for name in names}
        for name, allocator in self.allocators.items():
            c = allocator.config
            if c.total_step - c.tfinal > total:
                raise ConfigError(
                    f"adapter {name!r}: AdaLoRA sets its final rank budget at step total_step - tfinal = "
                    f"{c.total_step - c.tfinal}, but this run has {total} steps; set total_step to at most "
                    f"{total + c.tfinal} (e.g. the run's max_steps)."
                )

    def penalty(self) -> Optional[torch.Tensor]:
        """The orthogonality penalties to add to a micro-batch's loss (None: nothing to add)."""
        from ..methods.adalora import orthogonality

        if not self.allocators:
            return None
        return sum(orthogonality(self.model, name) for name in self.allocators)

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based), before the gradients are cleared."""
        for allocator in self.allocators.values():
            allocator.step(self.model, step)


def hooks_for(model: nn.Module, total: int) -> Optional[AdaptiveHooks]:
    """The hooks for ``model`` (None when it trains no AdaLoRA adapter). Sharded runs (FSDP,
    DeepSpeed) are refused: the penalty and the scores need whole A, E, B on every process."""
    from . import sharding

    hooks = AdaptiveHooks(model, total)
    if not hooks.allocators:
        return None
    if sharding.requested() or sharding.deepspeed_requested():
        raise ConfigError(
            "AdaLoRA trains on one process or under DDP; FSDP and DeepSpeed shard its tensors, "
            "which its rank allocator needs whole. Launch without FSDP / DeepSpeed."
        )
    return hooks
