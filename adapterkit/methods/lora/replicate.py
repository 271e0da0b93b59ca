"""``layer_replication``: stack copies of transformer blocks that share their weights (PEFT's option).

``[[0, 4], [2, 5]]`` turns blocks [0, 1, 2, 3, 4] into [0, 1, 2, 3, 2, 3, 4]: each entry [start, end)
appends copies of those blocks. A copy is a new module holding the very same parameters and buffers,
so the model grows in depth, not in weights, and each copy gets adapters of its own (the way
LLaMA-Pro-style expansion is fine-tuned with LoRA). As in PEFT (``replicate_layers``): the model's
``layers`` list (``model.model.layers``, BERT's ``encoder.layer``, Falcon's ``h``) is replaced,
``layer_idx`` of each copy's attention is renumbered and ``config.num_hidden_layers`` follows.
``ak.detach`` drops the adapters but keeps the deeper model; a file with ``layer_replication``
builds the same copies when loaded.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from torch import nn

from ...errors import ConfigError, UnsupportedModuleError


def check_map(owner: str, value: Any) -> Optional[tuple[tuple[int, int], ...]]:
    """None, or a tuple of (start, end) block ranges with 0 <= start < end."""
    if value is None:
        return None
    ok = (
        isinstance(value, (list, tuple))
        and value
        and all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
            and 0 <= p[0] < p[1]
            for p in value
        )
    )
    if not ok:
        raise ConfigError(
            f"{owner}.layer_replication is a list of [start, end) block ranges, e.g. [[0, 4], [2, 5]]; got {value!r}."
        )
    return tuple((int(a), int(b)) for a, b in value)


def _holder(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the blocks' ModuleList, and its attribute name (PEFT's search)."""
    inner = model
    while hasattr(inner, "model") and isinstance(inner.model, nn.Module):
        inner = inner.model
    if hasattr(inner, "bert"):
        inner = inner.bert
    for holder, attr in ((inner, "layers"), (getattr(inner, "encoder", None), "layer"), (inner, "h")):
        if holder is not None and isinstance(getattr(holder, attr, None), nn.ModuleList):
            return holder, attr
    raise UnsupportedModuleError(
        f"layer_replication: found no list of blocks in {type(model).__name__} (looked for "
        f"Llama's layers, BERT's encoder.layer, Falcon's h)."
    )


def _shared_copy(block: nn.Module) -> nn.Module:
    """A new module like ``block`` whose parameters and buffers are ``block``'s own tensors."""
    clone = copy.deepcopy(block)
    for (_name, module), (_, twin) in zip(block.named_modules(), clone.named_modules()):
        for pname, param in module.named_parameters(recurse=False):
            setattr(twin, pname, param)
        for bname, buf in module.named_buffers(recurse=False):
            setattr(twin, bname, buf)
    return clone


def replicate(model: nn.Module, ranges: tuple[tuple[int, int], ...]) -> None:
    """Replace the model's blocks by the copies ``ranges`` asks for (see the module docstring)."""
    holder, attr = _holder(model)
    blocks = getattr(holder, attr)
    if max(end for _, end in ranges) > len(blocks):
        raise ConfigError(
            f"layer_replication={[list(r) for r in ranges]} reaches past the model's {len(blocks)} blocks."
        )
    new = []
    for start, end in ranges:
        for i in range(start, end):
            block = _shared_copy(blocks[i])
            for module in block.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = len(new)
            new.append(block)
    setattr(holder, attr, nn.ModuleList(new))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(new)
