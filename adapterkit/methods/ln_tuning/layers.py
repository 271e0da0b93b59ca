"""LN tuning: a trainable copy of a norm per adapter, and the layer that holds them.

    y = norm_a(x)      norm_a: adapter a's copy of the norm (gamma (dim,), beta (dim,) if any)
One adapter at a time (PEFT's rule: copies do not add up). Merging writes the copy's tensors into
the base norm's own tensors; merging in place keeps the base's values to put them back.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...errors import AdapterNameError, MergeError
from ...layer import AdapterLayer


class NormCopy(nn.Module):
    """One adapter's trainable copy of the norm (``norm``) and the config it was made with."""

    def __init__(self, base: nn.Module, config):
        super().__init__()
        self.config = config
        self.norm = copy.deepcopy(base)
        for p in self.norm.parameters():
            p.requires_grad_(True)

    def forward(self, *args, **kwargs):
        return self.norm(*args, **kwargs)


class LNTuningLayer(AdapterLayer):
    """A frozen norm and per-adapter trainable copies of it."""

    method = "ln_tuning"

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        copies = self.active_adapters()
        if len(copies) > 1:
            raise AdapterNameError(
                f"LN tuning runs one adapter at a time; {len(copies)} are active here ({list(self.active)}). "
                f"Call ak.set_active(model, name) with one of them."
            )
        return (copies[0] if copies else self.base)(x, *args, **kwargs)

    def merged(self) -> nn.Module:
        """The base norm holding the active copy's values (the base itself when none is active)."""
        copies = self.active_adapters()
        if len(copies) > 1:
            raise MergeError(f"LN tuning merges one adapter at a time; active here: {list(self.active)}.")
        base = self.innermost()
        if copies:
            self._write(base, copies[0].norm)
        return base

    # -- merging in place (adapterkit/inplace.py): the base's tensors take the copy's values --
    def merge_in_place(self, names) -> None:
        """Write adapter ``names[0]``'s values into the base norm (checked by the caller), keep the base's."""
        assert len(names) == 1
        base, twin = self.innermost(), self.adapters[names[0]].norm
        kept = {k: t.detach().clone() for k, t in base.state_dict().items()}
        self._write(base, twin)
        self.merged_names, self.merged_fold = tuple(names), kept

    def unmerge_in_place(self) -> None:
        with torch.no_grad():
            for key, tensor in self.innermost().state_dict(keep_vars=True).items():
                tensor.copy_(self.merged_fold[key])
        self.merged_names, self.merged_fold = (), None

    @staticmethod
    @torch.no_grad()
    def _write(base: nn.Module, twin: nn.Module) -> None:
        theirs = twin.state_dict()
        for key, tensor in base.state_dict(keep_vars=True).items():
            tensor.copy_(theirs[key])
