"""All or nothing: a call that changes a model either finishes or leaves the model as it was.

``unchanged_on_error(model)`` records, before the call:
- the structure: every module's children (so replaced and added modules can be put back);
- every parameter's ``requires_grad`` and every module's train/eval flag;
- every adapter layer's active adapters and disabled flag.
If the block raises, all of that is restored and the error goes on. Adapter layers that the failed
call added and that set up model-level hooks remove them through their ``release`` (as ``detach``
does). Tensor values are not recorded: the calls that use this change the model's structure and
flags, and write values only into tensors they created.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

from .layer import AdapterLayer, own_method


class Snapshot:
    """What ``unchanged_on_error`` puts back; also used by tests to compare a model before and after."""

    def __init__(self, model: nn.Module):
        modules = list(model.modules())
        self.children = {m: list(m.named_children()) for m in modules}
        self.training = {m: m.training for m in modules}
        self.grad = {p: p.requires_grad for p in model.parameters()}
        self.layers = {m: (m.active, m.disabled) for m in modules if isinstance(m, AdapterLayer)}

    def restore(self, model: nn.Module) -> None:
        added = [m for m in model.modules() if isinstance(m, AdapterLayer) and m not in self.layers]
        for module, children in self.children.items():
            now = dict(module.named_children())
            for name, child in children:
                if now.get(name) is not child:
                    setattr(module, name, child)
            for name in set(now) - {n for n, _ in children}:
                delattr(module, name)
        for module, flag in self.training.items():
            module.training = flag
        for p, flag in self.grad.items():
            p.requires_grad_(flag)
        for layer, (active, off) in self.layers.items():
            layer.active, layer.disabled = active, off
        for layer in added:
            release = own_method(layer, "release")
            if release is not None:
                release(model)

    def state(self) -> dict[str, Any]:
        """A comparable summary: module names and types, flags, active adapters (for tests)."""
        return {
            "children": {id(m): [(n, id(c)) for n, c in ch] for m, ch in self.children.items()},
            "training": {id(m): t for m, t in self.training.items()},
            "grad": {id(p): g for p, g in self.grad.items()},
            "layers": {id(m): v for m, v in self.layers.items()},
        }


@contextlib.contextmanager
def unchanged_on_error(model: nn.Module) -> Iterator[None]:
    """Run the block; if it raises, put ``model`` back as it was before it (see module docstring)."""
    snapshot = Snapshot(model)
    try:
        yield
    except BaseException:
        snapshot.restore(model)
        raise
