"""Adapter layers of the virtual-token methods: they wrap the input embeddings and hold the
adapters' tensors; their forward is the embedding's own. The model-level hook (hook.py) reads the
active adapters and feeds the virtual tokens in. One class per method, so ``summary`` names it."""

from __future__ import annotations

from torch import nn

from ...layer import AdapterLayer
from . import hook


class VirtualTokenLayer(AdapterLayer):
    """The input embeddings, unchanged, plus virtual-token adapters used by the model's hook."""

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def release(self, model: nn.Module) -> None:
        """Called after this layer left ``model``: drops the hook when no such layer remains."""
        hook.release(model)


class PromptLayer(VirtualTokenLayer):
    method = "prompt_tuning"


class PTuningLayer(VirtualTokenLayer):
    method = "p_tuning"


class PrefixLayer(VirtualTokenLayer):
    method = "prefix_tuning"
