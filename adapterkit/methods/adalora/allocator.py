"""RankAllocator: AdaLoRA's budget schedule and the masks of its least important triplets.

After each optimizer step (gradients still in place), for every trainable tensor P of the adapter
(A, E, B of each layer):

    I   = |P * grad P|                                 sensitivity, per element
    Ī  <- beta1 Ī + (1 - beta1) I                      smoothed sensitivity
    U  <- beta2 U + (1 - beta2) |I - Ī|                uncertainty
    s   = Ī * U                                        element score

triplet i of a layer scores S_i = s_E[i] + mean_j s_A[i, j] + mean_k s_B[k, i]. The budget b(t)
(triplets over all layers) is init_r * L up to step tinit, then falls as a cubic to target_r * L
at step total_step - tfinal: b = int((b0 - b1) (1 - (t - tinit) / (total_step - tfinal - tinit))^3 + b1).
Every deltaT steps the triplets whose S is at most the (b0 - b)-th smallest score have their E set
to zero. At step total_step - tfinal the final masks are fixed (the rank pattern); after it they
are applied again at every step. This is PEFT's ``RankAllocator`` / ``update_and_allocate``
(Zhang et al. 2023, arXiv:2303.10512), step for step; call it after ``optimizer.step()`` and before
``zero_grad()``::

    allocator = RankAllocator(model)            # the trainable AdaLoRA adapter ("default")
    for step, batch in enumerate(batches):
        loss = model(**batch).loss + orthogonality(model)
        loss.backward(); optimizer.step()
        allocator.step(model, step)
        optimizer.zero_grad()

The masks go into each layer's config as ``rank_pattern`` (a new frozen config, the same object on
every layer of the adapter), which is what ``save_adapter`` writes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from .config import AdaLoRAConfig
from .layers import AdaLoRALayer


class RankAllocator:
    """Sensitivity EMAs, the budget schedule and the masks for adapter ``name`` of ``model``."""

    def __init__(self, model: nn.Module, name: str = "default"):
        from ...inject import adapter_config

        config = adapter_config(model, name)
        if not isinstance(config, AdaLoRAConfig):
            raise ConfigError(f"adapter {name!r} is a {config.method} adapter; RankAllocator needs an AdaLoRA one.")
        self.name, self.config = name, config
        self.init_budget = sum(adapter.a.shape[0] for _, adapter in self._adapters(model))
        self.target_budget = config.target_r * len(list(self._adapters(model)))
        self.reset()

    def reset(self) -> None:
        self.ema: dict[tuple[str, str], Tensor] = {}  # (module, "a" / "e" / "b") -> smoothed sensitivity
        self.unc: dict[tuple[str, str], Tensor] = {}  # -> uncertainty

    def _adapters(self, model: nn.Module):
        """(module name, adapter) for each layer holding the adapter."""
        from ...inject import adapter_layers
        from ...io.state import logical_name

        for layer_name, layer in adapter_layers(model):
            if isinstance(layer, AdaLoRALayer) and self.name in layer.adapters:
                yield logical_name(model, layer_name), layer.adapters[self.name]

    # -- the schedule ----------------------------------------------------------------------
    def budget(self, step: int) -> tuple[int, bool]:
        """(budget in triplets, whether to mask at ``step``), PEFT's ``budget_schedule``."""
        c = self.config
        if step <= c.tinit:
            return self.init_budget, False
        if step > c.total_step - c.tfinal:
            return self.target_budget, True
        left = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_budget - self.target_budget) * (left**3) + self.target_budget)
        return budget, step % c.deltaT == 0

    def step(self, model: nn.Module, global_step: int) -> Optional[dict[str, list[bool]]]:
        """One allocation step after optimizer step ``global_step`` (counted as the caller likes, as
        for PEFT's ``update_and_allocate``; ``adapterkit train`` passes 1, 2, ...); the masks made at
        this step ({module: kept triplets}), or None."""
        c = self.config
        end = c.total_step - c.tfinal
        if global_step < end:
            self.update(model)
            budget, mask = self.budget(global_step)
            return self.mask(model, budget) if mask else None
        if global_step == end:  # the final masks
            pattern = self.mask(model, self.target_budget)
            self.reset()
            return pattern
        self.apply(model, dict(self.config.rank_pattern or ()))
        return None

    # -- sensitivities and scores ------------------------------------------------------------
    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """The EMAs of |P * grad P| for every tensor of the adapter."""
        b1, b2 = self.config.beta1, self.config.beta2
        for module, adapter in self._adapters(model):
            for part in ("a", "e", "b"):
                p = getattr(adapter, part)
                if p.grad is None:
                    raise InputError(
                        f"{module}: the AdaLoRA tensor {part!r} has no gradient; call "
                        "allocator.step after backward and before zero_grad."
                    )
                ipt = (p * p.grad).abs()
                key = (module, part)
                ema = b1 * self.ema.get(key, torch.zeros_like(p)) + (1 - b1) * ipt
                self.unc[key] = b2 * self.unc.get(key, torch.zeros_like(p)) + (1 - b2) * (ipt - ema).abs()
                self.ema[key] = ema

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        """{module: (r,) triplet scores}: s_E + mean over A's row + mean over B's column."""
        out = {}
        for module, _ in self._adapters(model):
            s = {part: self.ema[(module, part)] * self.unc[(module, part)] for part in ("a", "e", "b")}
            a = s["a"].mean(dim=1)  # (r, in) -> (r,)
            b = s["b"].mean(dim=0)  # (out, r) -> (r,)
            out[module] = s["e"].view(-1) + (a + b)
        return out

    @torch.no_grad()
    def mask(self, model: nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero E of the triplets scoring at most the (init - budget)-th smallest score; the kept
        triplets, also set as the adapter's rank pattern."""
        scores = self.scores(model)
        k = self.init_budget - budget
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k)[0].item() if k > 0 else -float("inf")
        pattern = {module: (s > threshold).tolist() for module, s in scores.items()}
        self.apply(model, pattern)
        return pattern

    @torch.no_grad()
    def apply(self, model: nn.Module, pattern: dict) -> None:
        """E of the triplets ``pattern`` drops set to zero; ``pattern`` recorded in the config."""
        adapters = list(self._adapters(model))
        for module, adapter in adapters:
            kept = pattern.get(module)
            if kept is not None and len(kept) == adapter.e.shape[0]:
                adapter.e.masked_fill_(~torch.tensor(kept, device=adapter.e.device).view(-1, 1), 0.0)
        full = {m: tuple(p) for m, p in pattern.items() if len(p) == self.config.init_r}
        if full and full != dict(self.config.rank_pattern or ()):
            self.config = dataclasses.replace(self.config, rank_pattern=full)
            for _, adapter in adapters:
                adapter.config = self.config
