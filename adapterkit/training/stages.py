"""Staged and partial fine-tuning: a ``stages:`` list, each stage choosing what trains.

A stage trains the union of: ``train`` items (``adapters``: the parameters the adapter made
trainable, ``head``: the task head, ``all``: every floating-point parameter), the top
``top_blocks`` transformer blocks (``ak.unfreeze(last=N)``) and ``modules`` (name suffixes or a
regex). Everything else is frozen for the stage. Each stage has its own learning rate, schedule,
warmup and length (``steps``, or ``epochs`` of the training set; neither: ``optim.max_steps``, else
``optim.epochs``); the optimizer and the schedule are rebuilt at its start.

Layer-wise decay (``layer_decay`` = d; Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT): in a
stack of L blocks, block i (0 = bottom) trains at lr * d^(L - i); the embeddings at lr * d^(L + 1);
everything else (head, final norm, adapters outside blocks) at lr.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from torch import nn

from ..anatomy import head_names, stacks
from ..errors import ConfigError
from .sections import SCHEDULES, OptimConfig, _at_least, _choice

TRAIN_ITEMS = ("adapters", "head", "all")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage; lr / schedule default to the optim section's, length to optim.max_steps or epochs."""

    name: str = ""
    train: tuple[str, ...] = ()
    top_blocks: int = 0
    modules: tuple[str, ...] = ()
    lr: Optional[float] = None
    schedule: Optional[str] = None
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    steps: Optional[int] = None
    epochs: Optional[int] = None
    layer_decay: Optional[float] = None

    def __post_init__(self):
        for item in self.train:
            _choice("stage", "train", item, TRAIN_ITEMS)
        _at_least("stage", "top_blocks", self.top_blocks, 0)
        if not (self.train or self.top_blocks or self.modules):
            raise ConfigError(
                "stage trains nothing; give train: [adapters | head | all], top_blocks: N or modules: [...]."
            )
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"stage.lr must be a positive number; got {self.lr!r}.")
        if self.schedule is not None:
            _choice("stage", "schedule", self.schedule, SCHEDULES)
        _at_least("stage", "steps", self.steps, 1, allow_none=True)
        _at_least("stage", "epochs", self.epochs, 1, allow_none=True)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(f"stage gives both steps ({self.steps}) and epochs ({self.epochs}); give one.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"stage.layer_decay must be in (0, 1]; got {self.layer_decay!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"stage.warmup_ratio must be in [0, 1); got {self.warmup_ratio!r}.")

    def optim(self, base: OptimConfig) -> OptimConfig:
        """The optim section this stage runs with."""
        changes = {"warmup_steps": self.warmup_steps, "warmup_ratio": self.warmup_ratio}
        if self.lr is not None:
            changes["lr"] = self.lr
        if self.schedule is not None:
            changes["schedule"] = self.schedule
        return dataclasses.replace(base, **changes)

    def length(self, base: OptimConfig, steps_per_epoch: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is None and base.max_steps:
            return base.max_steps
        return steps_per_epoch * (self.epochs or base.epochs)


def build_stages(data, build_section) -> tuple[StageConfig, ...]:
    """The stages from the config's list; an error names the stage's index and the key."""
    if data is None:
        return ()
    if not isinstance(data, (list, tuple)) or not data:
        raise ConfigError(f"config section 'stages' must be a non-empty list of stages; got {data!r}.")
    out = []
    for i, stage in enumerate(data):
        if isinstance(stage, dict) and isinstance(stage.get("train"), str):
            stage = dict(stage, train=[stage["train"]])  # train: head  ==  train: [head]
        try:
            out.append(build_section(StageConfig, stage, f"stages[{i}]"))
        except ConfigError as err:
            text = str(err).replace("stage.", f"stages[{i}].").replace("stage trains", f"stages[{i}] trains")
            text = text.replace("stage gives", f"stages[{i}] gives")
            raise ConfigError(text) from None
    return tuple(out)


def ends(stages, base: OptimConfig, steps_per_epoch: int) -> list[int]:
    """The optimizer step at which each stage ends (cumulative)."""
    out, total = [], 0
    for stage in stages:
        total += stage.length(base, steps_per_epoch)
        out.append(total)
    return out


def stage_at(step: int, stage_ends: list[int]) -> int:
    """The index of the stage that runs optimizer step ``step`` (0-based)."""
    for k, end in enumerate(stage_ends):
        if step < end:
            return k
    return len(stage_ends) - 1


def apply(model: nn.Module, stage: StageConfig, adapter_params: set[str], where: str = "stage") -> list[str]:
    """Freeze everything, then make this stage's parameters trainable; returns their names."""
    from ..heads import unfreeze

    for p in model.parameters():
        p.requires_grad_(False)
    names = {n: p for n, p in model.named_parameters()}
    chosen = set()
    if "all" in stage.train:
        chosen |= {n for n, p in names.items() if p.is_floating_point()}
    if "adapters" in stage.train:
        if not adapter_params:
            raise ConfigError(f"{where}.train: adapters, but the run has no adapter (adapter: null).")
        chosen |= adapter_params
    if "head" in stage.train:
        found = head_names(model)
        heads = [n for n in names if any(re.search(rf"(^|\.){re.escape(h)}\.", n) for h in found)]
        if not heads:
            raise ConfigError(
                f"{where}.train: head, but the model has no head (a classifier or score module, or an "
                "output head: get_output_embeddings())."
            )
        copies = {n.split(".adapters.")[0] for n in heads if ".adapters." in n}  # a head in train_modules
        chosen |= {n for n in heads if not any(n.startswith(c + ".base.") for c in copies)}
    for n in chosen:
        names[n].requires_grad_(True)
    if stage.top_blocks:
        unfreeze(model, last=stage.top_blocks)
    if stage.modules:
        unfreeze(model, modules=list(stage.modules))
    trained = [n for n, p in names.items() if p.requires_grad]
    if not trained:
        raise ConfigError(f"{where} trains no parameter of this model; check its train, top_blocks and modules.")
    return trained


def layer_factors(model: nn.Module, decay: float) -> dict[str, float]:
    """Each parameter's lr factor under layer-wise decay (see the module docstring)."""
    found_stacks = stacks(model)
    depth = {b.prefix: len(found) - b.index for found in found_stacks.values() for b in found}
    deepest = max([len(found) for found in found_stacks.values()], default=0)
    out = {}
    for name, _ in model.named_parameters():
        prefix = next((p for p in depth if name.startswith(p + ".")), None)
        if prefix is not None:
            out[name] = decay ** depth[prefix]
        elif "embed" in name:
            out[name] = decay ** (deepest + 1)
        else:
            out[name] = 1.0
    return out


def decayed_groups(model: nn.Module, lr: float, decay: float) -> list[dict]:
    """Optimizer param groups of the trainable parameters, one per lr factor."""
    factors = layer_factors(model, decay)
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(factors[name], []).append(p)
    return [{"params": ps, "lr": lr * f} for f, ps in sorted(groups.items(), reverse=True)]
