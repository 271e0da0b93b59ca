"""Whole modules trained and saved with an adapter (``train_modules``): e.g. a new head.

The base module stays frozen and untouched; each adapter that trains it holds its own full copy.
The first active adapter that has a copy computes the output; otherwise the base does.
In a mixed-adapter batch (adapterkit/rows.py) row i goes through the copy of its adapter k(i), or
through the base when k(i) has none:  y_i = copy_k(i)(x_i)  |  base(x_i).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from ..errors import InputError
from ..layer import AdapterLayer


class TrainedModule(AdapterLayer):
    """A frozen module and per-adapter trainable copies of it."""

    method = "train_modules"

    def forward(self, *args, **kwargs):
        if self.rows is not None:
            return self._per_row(*args, **kwargs)
        copies = self.active_adapters()
        return (copies[0] if copies else self.base)(*args, **kwargs)

    def _per_row(self, x, *args, **kwargs):
        # x (B, ...) -> (B, ...): each adapter's copy on its rows, the base on the others
        if not isinstance(x, Tensor):
            raise InputError(
                f"adapter_names: {type(self.base).__name__} takes a {type(x).__name__}, "
                f"not a tensor whose rows can be split among adapters."
            )
        groups = {} if self.disabled else self.rows.groups(x.shape[0], x.device)
        groups = {name: rows for name, rows in groups.items() if name in self.adapters}
        covered = sum(rows.numel() for rows in groups.values())
        y = self.base(x, *args, **kwargs) if covered < x.shape[0] else None
        for name, rows in groups.items():
            out = self.adapters[name](x.index_select(0, rows), *args, **kwargs)
            if y is None:
                y = out.new_empty((x.shape[0], *out.shape[1:]))
            y = y.index_copy(0, rows, out)
        return y

    def merged(self) -> nn.Module:
        copies = self.active_adapters()
        return copies[0] if copies else self.base


def trainable_copy(module: nn.Module) -> nn.Module:
    """A trainable deep copy of ``module`` as the user built it: adapter layers another adapter put
    inside it are replaced by their base modules, so the copy's state dict has the module's own
    keys (PEFT's ``modules_to_save`` layout), never nested adapter keys."""
    twin = copy.deepcopy(module)
    while True:
        found = next(((n, m) for n, m in twin.named_modules() if n and isinstance(m, AdapterLayer)), None)
        if found is None:
            break
        parent, _, attr = found[0].rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, attr, found[1].innermost())
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin
