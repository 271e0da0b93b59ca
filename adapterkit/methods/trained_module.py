"""Whole modules trained and saved with an adapter (``train_modules``): e.g. a new head.

The base module stays frozen and untouched; each adapter that trains it holds its own full copy.
The first active adapter that has a copy computes the output; otherwise the base does.
"""
from __future__ import annotations

import copy

from torch import nn

from ..layer import AdapterLayer


class TrainedModule(AdapterLayer):
    """A frozen module and per-adapter trainable copies of it."""

    method = "train_modules"

    def forward(self, *args, **kwargs):
        copies = self.active_adapters()
        return (copies[0] if copies else self.base)(*args, **kwargs)

    def merged(self) -> nn.Module:
        copies = self.active_adapters()
        return copies[0] if copies else self.base


def trainable_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin
