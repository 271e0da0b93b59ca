"""vLLM weight sync for adapterkit models in TRL's GRPO: the base model's own names, adapters folded in.

TRL's ``VLLMGeneration.sync_weights`` sends ``model.named_parameters()`` as they are; for an adapted
model those are ``...q_proj.base.weight`` and ``...q_proj.adapters.default.a``, names vLLM's copy of
the plain model does not have. ``VLLMWeightSync`` stands in for TRL's object on the trainer
(``trainer.vllm_generation``): everything else (``generate``, ``llm``, ``vllm_client``, ...) is TRL's
own, and ``sync_weights`` sends ``vllm_weights(model)``, i.e. ``ak.base_state_dict(model, merged=True)``
(W + the active adapters' updates, computed without changing the model), over the transport TRL
uses: ``VLLMClient.update_named_params`` in server mode, the engine's ``load_weights`` when colocated.

Whole (unsharded) weights only: single process, DDP, DeepSpeed ZeRO-1/2.
"""

from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from ..base_weights import base_state_dict
from ..errors import ConfigError


def vllm_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """What the sync sends: ``(name, tensor)`` with the un-adapted model's names, adapters merged."""
    return base_state_dict(model, merged=True)


def metadata(model: nn.Module) -> list[tuple[str, str, list[int]]]:
    """``(name, dtype, shape)`` of each tensor ``vllm_weights`` yields, as TRL's vLLM client announces them."""
    return [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in vllm_weights(model)]


class VLLMWeightSync:
    """TRL's vLLM generation object with a weight sync that sends ``vllm_weights(model)``."""

    def __init__(self, generation, model: nn.Module):
        if getattr(generation, "enable_sleep_mode", False):
            raise ConfigError(
                "vllm_enable_sleep_mode=True is not supported with adapterkit's weight sync. "
                "Set vllm_enable_sleep_mode=False."
            )
        self.generation = generation
        self.model = model
        self.announced = None  # the server's metadata: the same on every sync, computed once

    def __getattr__(self, name: str):
        # Only reached for names this object does not have: TRL's generation object answers them.
        if name in ("generation", "model", "announced"):
            raise AttributeError(name)
        return getattr(self.generation, name)

    def sync_weights(self) -> None:
        """Send the merged base weights to vLLM, then reset its prefix cache (as TRL does)."""
        gen = self.generation
        if gen.mode == "server":
            if not gen.accelerator.is_main_process:
                return  # nothing to gather: whole weights live on every process
            if self.announced is None:
                self.announced = metadata(self.model)
            gen.vllm_client.update_named_params(self.announced, vllm_weights(self.model))
            gen.vllm_client.reset_prefix_cache()
        else:
            engine = gen.llm.llm_engine.model_executor.driver_worker.model_runner.model
            for name, tensor in vllm_weights(self.model):
                engine.load_weights([(name, tensor)])
            gen.llm.reset_prefix_cache()
